"""MQTT over WebSocket and secure WebSocket (RFC 6455, MQTT §6, DESIGN §2).

paho-mqtt's websockets transport does the everyday traffic; a tiny raw
WebSocket client (below) checks what paho cannot show: the subprotocol
echoed, 404 for another path, a packet split over two frames, several
packets in one frame, text frames refused, and X-Forwarded-For.
"""

from __future__ import annotations

import base64
import os
import socket
import struct

import pytest

import rawmqtt
from clients import V5, V311
from sec import API_CONFIG, Pki, api, free_port, mqtt_client, wait_port


def ws_broker(start_broker, extra: str = "", api_port: int | None = None):
    port = free_port()
    env = {"TRIBUTARY_LISTENERS__WS__DEFAULT__BIND": f"127.0.0.1:{port}"}
    config = extra
    if api_port is not None:
        env["TRIBUTARY_API__BIND"] = f"127.0.0.1:{api_port}"
        config += API_CONFIG
    broker = start_broker(env=env, config=config or None)
    wait_port(port)
    if api_port is not None:
        wait_port(api_port)
    return broker, port


class RawWs:
    """Just enough of a WebSocket client: handshake, masked frames out, frames in."""

    def __init__(self, port: int, path: str = "/mqtt", protocols: str | None = "mqtt",
                 headers: dict[str, str] | None = None):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if protocols is not None:
            lines.append(f"Sec-WebSocket-Protocol: {protocols}")
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        self.s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.s.recv(1)
            if not chunk:
                break
            head += chunk
        status_line, *header_lines = head.decode(errors="replace").split("\r\n")
        self.status = int(status_line.split()[1]) if status_line else 0
        self.headers = {}
        for h in header_lines:
            if ":" in h:
                k, v = h.split(":", 1)
                self.headers[k.strip().lower()] = v.strip()
        self.buf = b""

    def send_frame(self, payload: bytes, opcode: int = 2) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.s.sendall(head + mask + masked)

    def _need(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self) -> tuple[int, bytes]:
        b0, b1 = self._need(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._need(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._need(8))[0]
        return b0 & 0x0F, self._need(n)

    def recv_mqtt(self) -> bytes:
        """Payload bytes of the next binary frame."""
        while True:
            op, data = self.recv_frame()
            if op == 2:
                return data
            if op == 8:
                raise EOFError("close frame")

    def close(self):
        self.s.close()


@pytest.mark.parametrize("version", [V311, V5])
def test_paho_over_websocket(start_broker, client, version):
    broker, ws_port = ws_broker(start_broker)
    sub = mqtt_client(ws_port, "ws-sub", version, transport="websockets")
    sub.connect()
    assert sub.subscribe("ws/#", 1) == [1]
    pub = client(broker.port, "tcp-pub", version)
    pub.connect()
    pub.publish("ws/t", b"over the web", qos=1)
    m = sub.expect()
    assert (m.topic, m.payload) == ("ws/t", b"over the web")
    # And the other way round.
    assert pub.subscribe("back/#", 0) == [0]
    sub.publish("back/t", b"from ws", qos=1)
    assert pub.expect().payload == b"from ws"
    sub.close()


@pytest.mark.parametrize("offered,echoed", [
    ("mqtt", "mqtt"),
    ("mqttv3.1", "mqttv3.1"),
    ("mqtt-v3", "mqtt-v3"),
    ("mqtt-v3.1.1", "mqtt-v3.1.1"),
    ("mqtt-v5", "mqtt-v5"),
    ("chat, mqtt-v5, mqtt", "mqtt-v5"),
])
def test_first_supported_subprotocol_is_echoed(start_broker, offered, echoed):
    _, ws_port = ws_broker(start_broker)
    ws = RawWs(ws_port, protocols=offered)
    assert ws.status == 101
    assert ws.headers.get("sec-websocket-protocol") == echoed
    ws.close()


def test_no_subprotocol_is_accepted_unsupported_only_is_refused(start_broker):
    _, ws_port = ws_broker(start_broker)
    ws = RawWs(ws_port, protocols=None)
    assert ws.status == 101 and "sec-websocket-protocol" not in ws.headers
    ws.close()
    ws = RawWs(ws_port, protocols="chat, superchat")
    assert ws.status == 400
    ws.close()


def test_other_paths_are_404(start_broker):
    _, ws_port = ws_broker(start_broker)
    ws = RawWs(ws_port, path="/other")
    assert ws.status == 404
    ws.close()


def test_packet_spanning_frames_and_frames_holding_packets(start_broker, client):
    broker, ws_port = ws_broker(start_broker)
    ws = RawWs(ws_port)
    connect = rawmqtt.connect(rawmqtt.V311, "raw-ws")
    ws.send_frame(connect[:5])
    ws.send_frame(connect[5:])
    assert ws.recv_mqtt() == b"\x20\x02\x00\x00"
    # SUBSCRIBE and PINGREQ in one frame: SUBACK and PINGRESP come back.
    ws.send_frame(rawmqtt.subscribe([("frames/#", 0)], 1) + b"\xc0\x00")
    got = b""
    while len(got) < 7:
        got += ws.recv_mqtt()
    assert got == b"\x90\x03\x00\x01\x00" + b"\xd0\x00"
    pub = client(broker.port, "frame-pub")
    pub.connect()
    pub.publish("frames/x", b"p")
    data = ws.recv_mqtt()
    assert data[0] >> 4 == rawmqtt.PUBLISH and data.endswith(b"p")
    ws.close()


def test_text_frames_close_the_connection(start_broker):
    _, ws_port = ws_broker(start_broker)
    ws = RawWs(ws_port)
    ws.send_frame(rawmqtt.connect(rawmqtt.V311, "texter"), opcode=1)
    with pytest.raises((EOFError, ConnectionResetError, socket.timeout)):
        while True:
            ws.recv_mqtt()
    ws.close()


def client_ip(start_broker, listener_toml: str, header: str, value: str) -> str:
    api_port = free_port()
    _, ws_port = ws_broker(start_broker, listener_toml, api_port=api_port)
    ws = RawWs(ws_port, headers={header: value})
    ws.send_frame(rawmqtt.connect(rawmqtt.V311, "behind-proxy"))
    assert ws.recv_mqtt() == b"\x20\x02\x00\x00"
    status, body, _ = api(api_port, "GET", "/api/v5/clients/behind-proxy")
    assert status == 200, body
    ws.close()
    return body["ip_address"]


def test_x_forwarded_for_sets_the_client_address(start_broker):
    chain = ('[listeners.ws.default]\nproxy_address_header = "x-forwarded-for"\n'
             'trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]\n')
    assert client_ip(start_broker, chain, "X-Forwarded-For", "203.0.113.9, 10.0.0.1") == "203.0.113.9"
    rfc7239 = '[listeners.ws.default]\nproxy_address_header = "forwarded"\n'
    assert client_ip(start_broker, rfc7239, "Forwarded", 'for="[2001:db8::9]:4711"') == "2001:db8::9"


def test_a_forged_forwarding_header_does_not_choose_the_address(start_broker):
    # Attack (issue #16): a client writes its own X-Forwarded-For. The proxy
    # (here: the loopback peer, trusted by default) appends what it saw, so
    # only the rightmost untrusted entry counts, not the forged leftmost one.
    header = '[listeners.ws.default]\nproxy_address_header = "x-forwarded-for"\n'
    assert client_ip(start_broker, header, "X-Forwarded-For", "6.6.6.6, 203.0.113.9") == "203.0.113.9"
    # From a peer that is not a trusted proxy, the header is not believed.
    untrusted = header + 'trusted_proxies = ["192.0.2.1"]\n'
    assert client_ip(start_broker, untrusted, "X-Forwarded-For", "203.0.113.9") == "127.0.0.1"


def test_forwarded_header_ignored_unless_configured(start_broker):
    api_port = free_port()
    _, ws_port = ws_broker(start_broker, api_port=api_port)
    ws = RawWs(ws_port, headers={"X-Forwarded-For": "203.0.113.9"})
    ws.send_frame(rawmqtt.connect(rawmqtt.V311, "direct"))
    assert ws.recv_mqtt() == b"\x20\x02\x00\x00"
    status, body, _ = api(api_port, "GET", "/api/v5/clients/direct")
    assert body["ip_address"] == "127.0.0.1", body
    ws.close()


def test_secure_websocket(start_broker, client, tmp_path):
    pki = Pki(tmp_path / "ca")
    cert, key = pki.issue("localhost", server=True, stem="server")
    port = free_port()
    broker = start_broker(config=f"""
[listeners.wss.default]
bind = "127.0.0.1:{port}"

[listeners.wss.default.ssl_options]
certfile = "{cert}"
keyfile = "{key}"
""")
    wait_port(port)
    sub = mqtt_client(port, "wss-sub", V5, transport="websockets", ca=str(pki.ca_file))
    sub.connect()
    assert sub.subscribe("wss/#", 2) == [2]
    pub = client(broker.port, "wss-pub", V5)
    pub.connect()
    pub.publish("wss/t", b"tls+ws", qos=2)
    m = sub.expect()
    assert (m.payload, m.qos) == (b"tls+ws", 2)
    sub.close()
