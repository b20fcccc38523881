"""MQTT-SN test support: a broker with the MQTT-SN gateway on a known UDP
port, a raw-datagram MQTT-SN client (for what the `mqtt-sn-12` CLIs cannot
do: sleeping, QoS -1, predefined and short topics, REGISTER from the
gateway, SEARCHGW, dropped packets), and wrappers for the `mqtt_sn_pub` /
`mqtt_sn_sub` command-line clients of the PyPI package `mqtt-sn-12`.

Fixtures are imported by the test modules (`from mqttsn_support import ...`).
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

WAIT = 5.0
BIN = Path(sys.executable).parent

# Message types (MQTT-SN 1.2 §5.2.2).
ADVERTISE, SEARCHGW, GWINFO = 0x00, 0x01, 0x02
CONNECT, CONNACK, WILLTOPICREQ, WILLTOPIC, WILLMSGREQ, WILLMSG = 0x04, 0x05, 0x06, 0x07, 0x08, 0x09
REGISTER, REGACK, PUBLISH, PUBACK, PUBCOMP, PUBREC, PUBREL = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x10
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 0x12, 0x13, 0x14, 0x15
PINGREQ, PINGRESP, DISCONNECT = 0x16, 0x17, 0x18
WILLTOPICUPD, WILLTOPICRESP, WILLMSGUPD, WILLMSGRESP = 0x1A, 0x1B, 0x1C, 0x1D
ENCAPSULATED = 0xFE

NORMAL, PREDEFINED, SHORT = 0, 1, 2
QOS_BITS = {0: 0x00, 1: 0x20, 2: 0x40, -1: 0x60}
ACCEPTED, CONGESTION, INVALID_TOPIC_ID, NOT_SUPPORTED = 0, 1, 2, 3


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame(msg_type: int, body: bytes = b"") -> bytes:
    n = 2 + len(body)
    if n <= 255:
        return bytes([n, msg_type]) + body
    return b"\x01" + struct.pack(">H", n + 2) + bytes([msg_type]) + body


def parse(datagram: bytes) -> tuple[int, bytes]:
    """(MsgType, body) of one datagram."""
    if datagram[0] == 1:
        return datagram[3], datagram[4:]
    return datagram[1], datagram[2:]


class SnRaw:
    """A raw MQTT-SN client on its own UDP socket."""

    def __init__(self, port: int, timeout: float = WAIT):
        self.addr = ("127.0.0.1", port)
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind(("127.0.0.1", 0))
        self.s.settimeout(timeout)
        self.msg_id = 0
        self.registered: dict[int, str] = {}

    def close(self):
        self.s.close()

    def next_id(self) -> int:
        self.msg_id = self.msg_id % 0xFFFF + 1
        return self.msg_id

    def send(self, msg_type: int, body: bytes = b""):
        self.s.sendto(frame(msg_type, body), self.addr)

    def send_raw(self, datagram: bytes):
        self.s.sendto(datagram, self.addr)

    def recv(self, timeout: float = WAIT) -> tuple[int, bytes]:
        self.s.settimeout(timeout)
        data, _ = self.s.recvfrom(65535)
        return parse(data)

    def expect(self, msg_type: int, timeout: float = WAIT) -> bytes:
        t, body = self.recv(timeout)
        assert t == msg_type, f"expected type {msg_type:#04x}, got {t:#04x} {body!r}"
        return body

    def assert_nothing(self, timeout: float = 0.3):
        try:
            t, body = self.recv(timeout)
        except socket.timeout:
            return
        raise AssertionError(f"unexpected message type {t:#04x} {body!r}")

    # -- flows
    def connect(self, client_id: str, duration: int = 60, clean: bool = True, will: bool = False) -> int:
        flags = (0x04 if clean else 0) | (0x08 if will else 0)
        self.send(CONNECT, bytes([flags, 0x01]) + struct.pack(">H", duration) + client_id.encode())
        if will:
            return -1
        return self.expect(CONNACK)[0]

    def register(self, topic: str) -> int:
        mid = self.next_id()
        self.send(REGISTER, struct.pack(">HH", 0, mid) + topic.encode())
        body = self.expect(REGACK)
        topic_id, got_mid, rc = struct.unpack(">HHB", body)
        assert (got_mid, rc) == (mid, ACCEPTED), body
        return topic_id

    def publish(self, topic_id: int, payload: bytes, qos: int = 0, kind: int = NORMAL, retain: bool = False,
                msg_id: int | None = None, dup: bool = False):
        if msg_id is None:
            msg_id = self.next_id() if qos in (1, 2) else 0
        flags = QOS_BITS[qos] | kind | (0x10 if retain else 0) | (0x80 if dup else 0)
        self.send(PUBLISH, bytes([flags]) + struct.pack(">HH", topic_id, msg_id) + payload)
        return msg_id

    def subscribe(self, topic: str | int, qos: int = 0, kind: int = NORMAL) -> tuple[int, int, int]:
        """Returns (granted qos, topic id, return code)."""
        mid = self.next_id()
        if kind == NORMAL:
            t = topic.encode()
        elif kind == SHORT:
            t = topic.encode()
            assert len(t) == 2
        else:
            t = struct.pack(">H", topic)
        self.send(SUBSCRIBE, bytes([QOS_BITS[qos] | kind]) + struct.pack(">H", mid) + t)
        body = self.expect(SUBACK)
        flags, topic_id, got_mid, rc = struct.unpack(">BHHB", body)
        assert got_mid == mid
        return (flags >> 5) & 3, topic_id, rc

    def next_publish(self, timeout: float = WAIT, auto_regack: bool = True) -> dict:
        """The next PUBLISH (answering REGISTERs on the way), as a dict."""
        deadline = time.monotonic() + timeout
        while True:
            t, body = self.recv(max(0.01, deadline - time.monotonic()))
            if t == REGISTER and auto_regack:
                topic_id, mid = struct.unpack(">HH", body[:4])
                self.registered[topic_id] = body[4:].decode()
                self.send(REGACK, struct.pack(">HHB", topic_id, mid, ACCEPTED))
                continue
            assert t == PUBLISH, f"expected PUBLISH, got {t:#04x} {body!r}"
            flags = body[0]
            topic_id, mid = struct.unpack(">HH", body[1:5])
            return {
                "dup": bool(flags & 0x80), "qos": (flags >> 5) & 3, "retain": bool(flags & 0x10),
                "kind": flags & 3, "topic_id": topic_id, "msg_id": mid, "payload": body[5:],
                "topic": self.registered.get(topic_id) if flags & 3 == NORMAL else None,
            }

    def ack(self, p: dict):
        """Acknowledge a received PUBLISH per its QoS (QoS 2: PUBREC, PUBREL, PUBCOMP)."""
        if p["qos"] == 1:
            self.send(PUBACK, struct.pack(">HHB", p["topic_id"], p["msg_id"], ACCEPTED))
        elif p["qos"] == 2:
            self.send(PUBREC, struct.pack(">H", p["msg_id"]))
            assert struct.unpack(">H", self.expect(PUBREL))[0] == p["msg_id"]
            self.send(PUBCOMP, struct.pack(">H", p["msg_id"]))

    def publish_qos2(self, topic_id: int, payload: bytes, kind: int = NORMAL):
        mid = self.publish(topic_id, payload, qos=2, kind=kind)
        assert struct.unpack(">H", self.expect(PUBREC))[0] == mid
        self.send(PUBREL, struct.pack(">H", mid))
        assert struct.unpack(">H", self.expect(PUBCOMP))[0] == mid

    def disconnect(self, duration: int | None = None):
        self.send(DISCONNECT, b"" if duration is None else struct.pack(">H", duration))
        self.expect(DISCONNECT)


def short_id(name: str) -> int:
    b = name.encode()
    return (b[0] << 8) | b[1]


def wait_for_gateway(port: int, timeout: float = WAIT):
    """SEARCHGW until GWINFO: the UDP socket binds just after the TCP listener."""
    s = SnRaw(port, timeout=0.2)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.send(SEARCHGW, b"\x00")
            try:
                if s.recv(0.2)[0] == GWINFO:
                    return
            except socket.timeout:
                continue
        raise AssertionError(f"MQTT-SN gateway not answering on UDP {port}")
    finally:
        s.close()


@pytest.fixture
def start_sn(start_broker):
    """Factory: start_sn(config="extra toml", env={...}) -> Broker with `.sn_port` (MQTT-SN UDP)."""

    def start(config: str | None = None, env: dict[str, str] | None = None):
        for attempt in range(3):
            sn_port = free_udp_port()
            full = {"TRIBUTARY_MQTTSN__BIND": f"127.0.0.1:{sn_port}"}
            full.update(env or {})
            try:
                b = start_broker(env=full, config=config)
                # The probed port may have gone to another UDP listener bound
                # to port 0: then MQTT-SN cannot bind. Try another.
                wait_for_gateway(sn_port)
            except (RuntimeError, AssertionError):
                if attempt == 2:
                    raise
                continue
            b.sn_port = sn_port
            return b
        raise AssertionError("unreachable")

    return start


@pytest.fixture
def sn_broker(start_sn):
    return start_sn()


@pytest.fixture
def sn(request):
    """Factory: sn(port) -> SnRaw, closed at teardown."""
    made: list[SnRaw] = []

    def make(port: int, timeout: float = WAIT) -> SnRaw:
        c = SnRaw(port, timeout)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def sn_pub(port: int, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """Run `mqtt_sn_pub -p PORT ARGS...` to completion."""
    return subprocess.run([str(BIN / "mqtt_sn_pub"), "-p", str(port), *args], capture_output=True,
                          text=True, timeout=timeout)


def sn_sub(port: int, *args: str) -> subprocess.Popen:
    """Start `mqtt_sn_sub -p PORT ARGS...` in the background (stdout: one payload per line)."""
    return subprocess.Popen([str(BIN / "mqtt_sn_sub"), "-p", str(port), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
