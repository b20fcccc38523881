"""CoAP test support: a broker with its CoAP listener on a known UDP port,
libcoap's `coap-client-notls` runner, and a raw CoAP-over-UDP client for
what no client library will send (duplicates, malformed datagrams).

The raw client's encoder/decoder is written from RFC 7252 §3 here, on
purpose independent of the gateway's codec (coap-lite).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field

import pytest

COAP_CLIENT = shutil.which("coap-client-notls") or shutil.which("coap-client")
requires_libcoap = pytest.mark.skipif(COAP_CLIENT is None,
                                      reason="libcoap's coap-client-notls is not installed (Debian libcoap3-bin)")

CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST, PUT, DELETE = 1, 2, 3, 4
OBSERVE, URI_PATH, CONTENT_FORMAT, URI_QUERY, BLOCK2, BLOCK1 = 6, 11, 12, 15, 23, 27


def code(c: str) -> int:
    cls, detail = c.split(".")
    return int(cls) << 5 | int(detail)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- raw messages (RFC 7252 §3)

@dataclass
class Msg:
    mtype: int
    code: int
    mid: int
    token: bytes = b""
    options: list[tuple[int, bytes]] = field(default_factory=list)
    payload: bytes = b""

    def opt(self, number: int) -> bytes | None:
        return next((v for n, v in self.options if n == number), None)

    def uint(self, number: int) -> int | None:
        v = self.opt(number)
        return None if v is None else int.from_bytes(v, "big")

    @property
    def code_str(self) -> str:
        return f"{self.code >> 5}.{self.code & 31:02d}"


def _ext(v: int) -> tuple[int, bytes]:
    if v < 13:
        return v, b""
    if v < 269:
        return 13, bytes([v - 13])
    return 14, struct.pack(">H", v - 269)


def encode(m: Msg) -> bytes:
    out = bytearray([0x40 | m.mtype << 4 | len(m.token), m.code]) + struct.pack(">H", m.mid) + m.token
    last = 0
    for number, value in sorted(m.options, key=lambda o: o[0]):
        d, dext = _ext(number - last)
        l, lext = _ext(len(value))
        out += bytes([d << 4 | l]) + dext + lext + value
        last = number
    if m.payload:
        out += b"\xff" + m.payload
    return bytes(out)


def decode(data: bytes) -> Msg:
    tkl = data[0] & 0x0F
    m = Msg(mtype=(data[0] >> 4) & 3, code=data[1], mid=struct.unpack(">H", data[2:4])[0], token=data[4:4 + tkl])
    i, number = 4 + tkl, 0
    while i < len(data):
        if data[i] == 0xFF:
            m.payload = data[i + 1:]
            break
        d, l = data[i] >> 4, data[i] & 0x0F
        i += 1
        vals = []
        for nib in (d, l):
            if nib == 13:
                vals.append(data[i] + 13)
                i += 1
            elif nib == 14:
                vals.append(struct.unpack(">H", data[i:i + 2])[0] + 269)
                i += 2
            else:
                vals.append(nib)
        number += vals[0]
        m.options.append((number, data[i:i + vals[1]]))
        i += vals[1]
    return m


def uint(v: int) -> bytes:
    return v.to_bytes((v.bit_length() + 7) // 8, "big")


def request(mtype: int, method: int, path: str, mid: int, token: bytes = b"\x01", query: tuple[str, ...] = (),
            payload: bytes = b"", options: tuple[tuple[int, bytes], ...] = ()) -> Msg:
    opts = [(URI_PATH, seg.encode()) for seg in path.strip("/").split("/") if seg]
    opts += [(URI_QUERY, q.encode()) for q in query]
    opts += list(options)
    return Msg(mtype, method, mid, token, opts, payload)


class RawCoap:
    """A UDP socket talking raw CoAP to the gateway."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))
        self.timeout = timeout

    def send(self, data: bytes | Msg) -> None:
        self.sock.send(encode(data) if isinstance(data, Msg) else data)

    def recv(self, timeout: float | None = None) -> Msg:
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        return decode(self.sock.recv(65536))

    def exchange(self, m: Msg) -> Msg:
        self.send(m)
        return self.recv()

    def assert_silent(self, timeout: float = 0.3) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        raise AssertionError(f"unexpected datagram {decode(data)}")

    def close(self) -> None:
        self.sock.close()


def wait_coap_ready(port: int, timeout: float = 10.0) -> None:
    """Ping (empty CON) until the gateway answers RST (RFC 7252 §4.3)."""
    raw = RawCoap(port, timeout=0.2)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            raw.send(Msg(CON, 0, 0xBEEF))
            try:
                if raw.recv().mtype == RST:
                    return
            except (socket.timeout, ConnectionRefusedError):
                time.sleep(0.05)
        raise RuntimeError(f"CoAP listener on {port} did not answer a ping")
    finally:
        raw.close()


@pytest.fixture
def coap_broker(start_broker):
    """Factory: coap_broker(env=..., config=...) -> conftest.Broker with `.coap_port`."""

    def start(env: dict[str, str] | None = None, config: str | None = None):
        for attempt in range(3):  # the free UDP port may be taken between probe and bind
            port = free_udp_port()
            full = {"TRIBUTARY_COAP__BIND": f"127.0.0.1:{port}"}
            full.update(env or {})
            try:
                b = start_broker(full, config)
            except RuntimeError:
                if attempt == 2:
                    raise
                continue
            b.coap_port = port
            wait_coap_ready(port)
            return b
        raise AssertionError("unreachable")

    return start


@pytest.fixture
def raw_coap():
    made: list[RawCoap] = []

    def make(port: int, timeout: float = 5.0) -> RawCoap:
        c = RawCoap(port, timeout)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


# ---------------------------------------------------------------- libcoap

def coap_client(*args: str, timeout: float = 30.0, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run coap-client-notls with `args`; returns the completed process (stdout as bytes)."""
    return subprocess.run([COAP_CLIENT, *args], input=stdin, capture_output=True, timeout=timeout)


def coap_client_bg(*args: str) -> subprocess.Popen:
    return subprocess.Popen([COAP_CLIENT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# ---------------------------------------------------------------- aiocoap

def run(coro, timeout: float = 30.0):
    """Run an aiocoap coroutine to completion from a synchronous test."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
