"""STOMP over WebSocket (`/stomp/websocket` on the HTTP listener) with
stomp.py's WebSocket connection class, and raw WebSocket checks with
websocket-client: subprotocol negotiation, frames split across messages."""

from __future__ import annotations

import pytest
import websocket
from stomp.adapter.ws import WSStompConnection

from stomp_support import Collector, connect, start_stomp, stomp_broker  # noqa: F401 (fixtures)


def ws_connect(port: int, **kw):
    conn = WSStompConnection([("127.0.0.1", port)], ws_path="/stomp/websocket",
                             header={"Sec-WebSocket-Protocol": "v12.stomp"}, **kw)
    listener = Collector()
    conn.set_listener("collector", listener)
    conn.connect(wait=True)
    return conn, listener


def test_stomp_py_over_websocket(stomp_broker):
    conn, l = ws_connect(stomp_broker.http_port)
    conn.subscribe(destination="ws/chat", id="1", ack="client-individual", receipt="r")
    assert l.receipt() == "r"
    conn.send(destination="ws/chat", body="over websocket", headers={"x-from": "py"})
    m = l.message()
    assert m.body == "over websocket"
    assert m.headers["x-from"] == "py" and m.headers["subscription"] == "1"
    conn.ack(m.headers["ack"])
    tx = conn.begin()
    conn.send(destination="ws/chat", body="tx", transaction=tx)
    assert l.no_message(0.3)
    conn.commit(tx)
    assert l.message().body == "tx"
    conn.disconnect(receipt="bye")
    assert l.receipt() == "bye"


def test_websocket_and_tcp_clients_meet(stomp_broker):
    ws, wl = ws_connect(stomp_broker.http_port)
    ws.subscribe(destination="mix/#", id="w", receipt="r")
    assert wl.receipt() == "r"
    tcp, _ = connect(stomp_broker.stomp_port, "1.1")
    tcp.send(destination="mix/a", body="from tcp")
    assert wl.message().body == "from tcp"
    ws.disconnect()
    tcp.disconnect()


@pytest.mark.parametrize("offered,chosen", [
    (["v12.stomp", "v11.stomp"], "v12.stomp"),
    (["v10.stomp"], "v10.stomp"),
    (["v11.stomp", "v10.stomp"], "v11.stomp"),
])
def test_subprotocol_negotiation(stomp_broker, offered, chosen):
    ws = websocket.create_connection(f"ws://127.0.0.1:{stomp_broker.http_port}/stomp/websocket",
                                     subprotocols=offered, timeout=5)
    assert ws.getsubprotocol() == chosen
    ws.close()


def test_frame_split_across_messages_and_several_per_message(stomp_broker):
    ws = websocket.create_connection(f"ws://127.0.0.1:{stomp_broker.http_port}/stomp/websocket", timeout=5)
    ws.send("CONNECT\naccept-version:1.2\nhost:h\n\n\0")
    assert ws.recv().startswith("CONNECTED\n")
    ws.send("SUBSCRIBE\nid:1\ndestination:sp\n\n\0SEND\ndestination:sp\n")
    ws.send("content-length:3\n\nabc\0")
    m = ws.recv()
    assert m.startswith("MESSAGE\n") and m.endswith("\n\nabc\0")
    ws.close()


def test_bad_frame_over_websocket(stomp_broker):
    ws = websocket.create_connection(f"ws://127.0.0.1:{stomp_broker.http_port}/stomp/websocket", timeout=5)
    ws.send("HELLO\n\n\0")
    err = ws.recv()
    assert err.startswith("ERROR\n") and "message:" in err
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        while True:
            if not ws.recv():
                raise websocket.WebSocketConnectionClosedException()


def test_sockjs_websocket_accepts_the_hixie76_draft(stomp_broker):
    """SockJS's websocket transport in the pre-RFC 6455 draft hixie-76, as old
    browsers and HAProxy-fronted clients speak it: the 101 comes before the
    client's 8-byte key (the key numbers and the expected MD5 answer are the
    draft's and sockjs-protocol's test_haproxy), then STOMP inside SockJS
    frames inside 0x00 … 0xFF frames."""
    import json
    import socket

    port = stomp_broker.http_port
    path = "/stomp/000/hixie/websocket"
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n"
               "Upgrade: WebSocket\r\nOrigin: http://127.0.0.1\r\n"
               "Sec-WebSocket-Key1: 4 @1  46546xW%0l 1 5\r\n"
               "Sec-WebSocket-Key2: 12998 5 Y3 1  .P00\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        assert chunk, "closed during the handshake"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 101")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["upgrade"].lower() == "websocket" and headers["connection"].lower() == "upgrade"
    assert headers["sec-websocket-location"] == f"ws://127.0.0.1:{port}{path}"
    assert headers["sec-websocket-origin"] == "http://127.0.0.1"
    assert "content-length" not in headers
    s.sendall(b"aaaaaaaa")

    def read(n):
        nonlocal rest
        while len(rest) < n:
            chunk = s.recv(4096)
            assert chunk, "closed"
            rest += chunk
        out, rest = rest[:n], rest[n:]
        return out

    def frame():
        assert read(1) == b"\x00"
        out = b""
        while (c := read(1)) != b"\xff":
            out += c
        return out.decode()

    assert read(16) == b"\xca4\x00\xd8\xa5\x08G\x97,\xd5qZ\xba\xbfC{"
    assert frame() == "o"

    def send_stomp(text):
        s.sendall(b"\x00" + json.dumps([text]).encode() + b"\xff")

    send_stomp("CONNECT\naccept-version:1.2\nhost:x\n\n\0")
    connected = frame()
    assert connected.startswith("a[") and json.loads(connected[1:])[0].startswith("CONNECTED\n")
    send_stomp("SUBSCRIBE\nid:0\ndestination:old/browser\n\n\0SEND\ndestination:old/browser\n\nhello\0")
    msg = json.loads(frame()[1:])[0]
    assert msg.startswith("MESSAGE\n") and msg.endswith("\n\nhello\0")
    s.sendall(b"\xff\x00")  # the draft's closing handshake
    s.close()
