"""A tiny MQTT 3.1 / 3.1.1 / 5.0 packet writer and reader over a raw socket.

paho-mqtt validates what it sends and hides what it receives; these tests
sometimes need to send what a well-behaved client never would (QoS 3,
garbage, a 200 MB length) and to see the exact bytes the broker answers
with (CONNACK return codes, DISCONNECT reason codes, topic aliases).

Only what the tests use is here: encode CONNECT / SUBSCRIBE / PUBLISH /
acks / DISCONNECT, and read one packet at a time, decoding the few packet
types the tests inspect.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

# Packet types (MQTT 5 §2.1.2).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP = 8, 9, 10, 11, 12, 13
DISCONNECT, AUTH = 14, 15

# Protocol levels.
V31, V311, V5 = 3, 4, 5

# Property identifiers (MQTT 5 §2.2.2.2) and their wire types.
PAYLOAD_FORMAT = 0x01
MESSAGE_EXPIRY = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_ID = 0x0B
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTH_METHOD = 0x15
AUTH_DATA = 0x16
REQUEST_PROBLEM_INFO = 0x17
WILL_DELAY = 0x18
REQUEST_RESPONSE_INFO = 0x19
RESPONSE_INFO = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_AVAILABLE = 0x28
SUBSCRIPTION_ID_AVAILABLE = 0x29
SHARED_SUB_AVAILABLE = 0x2A

_BYTE = {PAYLOAD_FORMAT, REQUEST_PROBLEM_INFO, REQUEST_RESPONSE_INFO, MAXIMUM_QOS, RETAIN_AVAILABLE,
         WILDCARD_AVAILABLE, SUBSCRIPTION_ID_AVAILABLE, SHARED_SUB_AVAILABLE}
_U16 = {SERVER_KEEP_ALIVE, RECEIVE_MAXIMUM, TOPIC_ALIAS_MAXIMUM, TOPIC_ALIAS}
_U32 = {MESSAGE_EXPIRY, SESSION_EXPIRY, WILL_DELAY, MAXIMUM_PACKET_SIZE}
_VARINT = {SUBSCRIPTION_ID}
_STRING = {CONTENT_TYPE, RESPONSE_TOPIC, ASSIGNED_CLIENT_ID, AUTH_METHOD, RESPONSE_INFO,
           SERVER_REFERENCE, REASON_STRING}
_BINARY = {CORRELATION_DATA, AUTH_DATA}


# ---------------------------------------------------------------- encoding

def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def properties(props: list[tuple[int, object]] | None) -> bytes:
    """Encode a property list [(id, value)], value a pair for USER_PROPERTY."""
    out = bytearray()
    for pid, value in props or []:
        out += varint(pid)
        if pid in _BYTE:
            out += bytes([value])
        elif pid in _U16:
            out += struct.pack("!H", value)
        elif pid in _U32:
            out += struct.pack("!I", value)
        elif pid in _VARINT:
            out += varint(value)
        elif pid in _STRING or pid in _BINARY:
            out += string(value)
        elif pid == USER_PROPERTY:
            out += string(value[0]) + string(value[1])
        else:
            raise ValueError(f"unknown property {pid:#x}")
    return varint(len(out)) + bytes(out)


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + varint(len(body)) + body


@dataclass
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    props: list | None = None  # MQTT 5 will properties


def connect(version: int = V311, client_id: str | bytes = "", clean: bool = True, keepalive: int = 60,
            will: Will | None = None, props: list | None = None, username: str | None = None,
            password: bytes | None = None, flags_extra: int = 0) -> bytes:
    name = "MQIsdp" if version == V31 else "MQTT"
    flags = flags_extra | (0x02 if clean else 0)
    if will:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = string(name) + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == V5:
        body += properties(props)
    body += string(client_id)
    if will:
        if version == V5:
            body += properties(will.props)
        body += string(will.topic) + string(will.payload)
    if username is not None:
        body += string(username)
    if password is not None:
        body += string(password)
    return packet(CONNECT, 0, body)


def publish(topic: str | bytes, payload: bytes = b"", qos: int = 0, retain: bool = False, dup: bool = False,
            packet_id: int = 1, version: int = V311, props: list | None = None) -> bytes:
    body = string(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    if version == V5:
        body += properties(props)
    flags = (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    return packet(PUBLISH, flags, body + payload)


def subscribe(filters: list[tuple[str, int]], packet_id: int = 1, version: int = V311,
              props: list | None = None) -> bytes:
    """filters: [(filter, options byte)]; for 3.1.1 the options byte is the QoS."""
    body = struct.pack("!H", packet_id)
    if version == V5:
        body += properties(props)
    for f, opts in filters:
        body += string(f) + bytes([opts])
    return packet(SUBSCRIBE, 0x02, body)


def ack(ptype: int, packet_id: int) -> bytes:
    """PUBACK / PUBREC / PUBREL / PUBCOMP with reason code success (omitted)."""
    return packet(ptype, 0x02 if ptype == PUBREL else 0, struct.pack("!H", packet_id))


def disconnect(version: int = V311, reason: int | None = None, props: list | None = None) -> bytes:
    if version != V5 or (reason is None and not props):
        return packet(DISCONNECT, 0, b"")
    return packet(DISCONNECT, 0, bytes([reason or 0]) + properties(props))


# ---------------------------------------------------------------- decoding

@dataclass
class Packet:
    type: int
    flags: int
    body: bytes

    @property
    def name(self) -> str:
        names = ["?", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP", "SUBSCRIBE",
                 "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT", "AUTH"]
        return names[self.type]


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, mult = 0, 1
    while True:
        b = buf[pos]
        pos += 1
        value += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            return value, pos


def read_string(buf: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("!H", buf, pos)
    return buf[pos + 2:pos + 2 + n], pos + 2 + n


def read_properties(buf: bytes, pos: int) -> tuple[dict, int]:
    """Decode properties into {id: value}; USER_PROPERTY and SUBSCRIPTION_ID map to lists."""
    length, pos = read_varint(buf, pos)
    end = pos + length
    props: dict = {}
    while pos < end:
        pid, pos = read_varint(buf, pos)
        if pid in _BYTE:
            value, pos = buf[pos], pos + 1
        elif pid in _U16:
            (value,), pos = struct.unpack_from("!H", buf, pos), pos + 2
        elif pid in _U32:
            (value,), pos = struct.unpack_from("!I", buf, pos), pos + 4
        elif pid in _VARINT:
            value, pos = read_varint(buf, pos)
        elif pid in _STRING:
            raw, pos = read_string(buf, pos)
            value = raw.decode()
        elif pid in _BINARY:
            value, pos = read_string(buf, pos)
        elif pid == USER_PROPERTY:
            k, pos = read_string(buf, pos)
            v, pos = read_string(buf, pos)
            value = (k.decode(), v.decode())
        else:
            raise ValueError(f"unknown property {pid:#x}")
        if pid in (USER_PROPERTY, SUBSCRIPTION_ID):
            props.setdefault(pid, []).append(value)
        else:
            props[pid] = value
    return props, end


@dataclass
class Connack:
    session_present: bool
    rc: int
    props: dict = field(default_factory=dict)


def parse_connack(p: Packet, version: int) -> Connack:
    assert p.type == CONNACK, f"expected CONNACK, got {p.name}"
    props = read_properties(p.body, 2)[0] if version == V5 and len(p.body) > 2 else {}
    return Connack(bool(p.body[0] & 1), p.body[1], props)


@dataclass
class Publish:
    topic: bytes
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None
    props: dict


def parse_publish(p: Packet, version: int) -> Publish:
    assert p.type == PUBLISH, f"expected PUBLISH, got {p.name}"
    qos = (p.flags >> 1) & 3
    topic, pos = read_string(p.body, 0)
    packet_id = None
    if qos:
        (packet_id,) = struct.unpack_from("!H", p.body, pos)
        pos += 2
    props = {}
    if version == V5:
        props, pos = read_properties(p.body, pos)
    return Publish(topic, p.body[pos:], qos, bool(p.flags & 1), bool(p.flags & 8), packet_id, props)


def reason_code(p: Packet) -> int:
    """Reason code of a v5 DISCONNECT / AUTH (absent = 0x00)."""
    return p.body[0] if p.body else 0


def suback_codes(p: Packet, version: int) -> list[int]:
    assert p.type == SUBACK, f"expected SUBACK, got {p.name}"
    pos = 2
    if version == V5:
        pos = read_properties(p.body, pos)[1]
    return list(p.body[pos:])


# ---------------------------------------------------------------- connection

class Closed(Exception):
    """The broker closed the connection."""


class RawClient:
    """A socket speaking MQTT by hand. Reads are bounded by timeouts."""

    def __init__(self, port: int, version: int = V311, timeout: float = 5.0):
        self.version = version
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    # -- writing
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self, **kw) -> Connack:
        """Send CONNECT, return the CONNACK."""
        self.send(connect(version=self.version, **kw))
        return parse_connack(self.expect(CONNACK), self.version)

    def subscribe(self, filters: list[tuple[str, int]], packet_id: int = 1, props=None) -> list[int]:
        self.send(subscribe(filters, packet_id, self.version, props))
        return suback_codes(self.expect(SUBACK), self.version)

    def publish(self, topic, payload=b"", **kw) -> None:
        self.send(publish(topic, payload, version=self.version, **kw))

    def disconnect(self, reason=None, props=None) -> None:
        self.send(disconnect(self.version, reason, props))

    def abort(self) -> None:
        """Close with a TCP reset: no DISCONNECT, no FIN handshake."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- reading
    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no packet from the broker in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no packet from the broker in time") from None
        except ConnectionResetError:
            data = b""
        if not data:
            raise Closed()
        self.buf += data

    def read(self, timeout: float | None = None) -> Packet:
        """Next packet; raises Closed at end of stream, TimeoutError when none arrives."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self.buf) >= 2:
                try:
                    length, pos = read_varint(self.buf, 1)
                except IndexError:
                    length, pos = None, 0
                if length is not None and len(self.buf) >= pos + length:
                    p = Packet(self.buf[0] >> 4, self.buf[0] & 0x0F, self.buf[pos:pos + length])
                    self.buf = self.buf[pos + length:]
                    return p
            self._fill(deadline)

    def expect(self, ptype: int, timeout: float | None = None) -> Packet:
        p = self.read(timeout)
        assert p.type == ptype, f"expected packet type {ptype}, got {p.name} {p.body!r}"
        return p

    def expect_publish(self, timeout: float | None = None) -> Publish:
        return parse_publish(self.expect(PUBLISH, timeout), self.version)

    def read_until_closed(self, timeout: float = 5.0) -> list[Packet]:
        """Packets received until the broker closes; fails if it has not closed within timeout."""
        deadline = time.monotonic() + timeout
        packets = []
        while True:
            try:
                packets.append(self.read(max(deadline - time.monotonic(), 0.001)))
            except Closed:
                return packets
            except TimeoutError:
                raise AssertionError(f"broker did not close the connection within {timeout}s "
                                     f"(received {[p.name for p in packets]})") from None
