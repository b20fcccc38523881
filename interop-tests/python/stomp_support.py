"""STOMP helpers for the interop tests: a broker with STOMP on free ports,
a queue-backed stomp.py listener, and a raw STOMP socket for frames no
well-behaved client would send.

Fixtures (import them into a test module with `from stomp_support import *`):
  start_stomp(env={...}, config="toml") -> Broker with .stomp_port and .http_port
  stomp_broker -> a default one
"""

from __future__ import annotations

import queue
import socket
import time

import pytest
import stomp

from conftest import free_port

__all__ = ["start_stomp", "stomp_broker", "Collector", "RawStomp", "connect", "wait_port",
           "CONNECTIONS"]

# stomp.py connection classes by version.
CONNECTIONS = {"1.0": stomp.Connection10, "1.1": stomp.Connection11, "1.2": stomp.Connection12}


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listening on {port}")


@pytest.fixture
def start_stomp(start_broker):
    """Factory: a broker whose STOMP TCP and HTTP listeners are on free loopback ports."""

    def start(env: dict[str, str] | None = None, config: str | None = None):
        for attempt in range(3):
            tcp, http = free_port(), free_port()
            full = {
                "TRIBUTARY_STOMP__BIND": f"127.0.0.1:{tcp}",
                "TRIBUTARY_STOMP__WS_BIND": f"127.0.0.1:{http}",
            }
            full.update(env or {})
            try:
                b = start_broker(env=full, config=config)
                wait_port(tcp)
                wait_port(http)
            except (RuntimeError, AssertionError):
                if attempt == 2:
                    raise
                continue
            b.stomp_port, b.http_port = tcp, http
            return b
        raise AssertionError("unreachable")

    return start


@pytest.fixture
def stomp_broker(start_stomp):
    return start_stomp()


class Collector(stomp.ConnectionListener):
    """Queues every MESSAGE, RECEIPT and ERROR; remembers disconnection."""

    def __init__(self):
        self.messages: queue.Queue = queue.Queue()
        self.receipts: queue.Queue = queue.Queue()
        self.errors: queue.Queue = queue.Queue()
        self.heartbeat_timeouts = 0
        self.disconnected = False

    def on_message(self, frame):
        self.messages.put(frame)

    def on_receipt(self, frame):
        self.receipts.put(frame.headers.get("receipt-id"))

    def on_error(self, frame):
        self.errors.put(frame)

    def on_heartbeat_timeout(self):
        self.heartbeat_timeouts += 1

    def on_disconnected(self):
        self.disconnected = True

    def message(self, timeout: float = 5.0):
        return self.messages.get(timeout=timeout)

    def no_message(self, wait: float = 0.3) -> bool:
        try:
            self.messages.get(timeout=wait)
            return False
        except queue.Empty:
            return True

    def receipt(self, timeout: float = 5.0) -> str:
        return self.receipts.get(timeout=timeout)

    def error(self, timeout: float = 5.0):
        return self.errors.get(timeout=timeout)


def connect(port: int, version: str = "1.2", **kw):
    """A connected stomp.py client and its collector."""
    conn = CONNECTIONS[version]([("127.0.0.1", port)], **kw)
    listener = Collector()
    conn.set_listener("collector", listener)
    conn.connect(wait=True)
    return conn, listener


class RawStomp:
    """A bare socket speaking STOMP bytes."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self) -> tuple[str, dict[str, str], bytes] | None:
        """The next frame (command, headers, body), skipping heart-beats; None on EOF."""
        while True:
            self.buf = self.buf.lstrip(b"\r\n")
            end = self.buf.find(b"\n\n")
            if end >= 0:
                head = self.buf[:end].decode()
                lines = head.split("\n")
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers.setdefault(k, v)
                start = end + 2
                if "content-length" in headers:
                    n = int(headers["content-length"])
                    if len(self.buf) >= start + n + 1:
                        body = self.buf[start:start + n]
                        self.buf = self.buf[start + n + 1:]
                        return lines[0], headers, body
                else:
                    nul = self.buf.find(b"\0", start)
                    if nul >= 0:
                        body = self.buf[start:nul]
                        self.buf = self.buf[nul + 1:]
                        return lines[0], headers, body
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()
