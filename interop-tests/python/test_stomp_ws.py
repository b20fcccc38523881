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
