"""Fixtures: the real `tributary` binary on a free loopback port, and clients.

`broker` starts a fresh broker per test (it starts in milliseconds, and a
fresh one means no retained message or session leaks between tests).
`start_broker(env={...}, config="toml")` starts one with overrides or a config file.
On failure the broker's log (debug level) is attached to the report.

Run (after `cargo build -p tributary`):
    target/interop-venv/bin/python -m pytest -q interop-tests/python
GATEWAY_BIN overrides the binary (default: target/debug/tributary of this repository).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import rawmqtt
from clients import V311, Client

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("GATEWAY_BIN", REPO / "target" / "debug" / "tributary"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """One running `tributary` process."""

    def __init__(self, env: dict[str, str] | None = None, config: str | None = None):
        self.port = free_port()
        args = []
        self.config = None
        if config is not None:
            self.config = tempfile.NamedTemporaryFile("w", prefix="tributary-", suffix=".toml", delete=False)
            self.config.write(config)
            self.config.close()
            args = ["--config", self.config.name]
        self.log = tempfile.NamedTemporaryFile(prefix="tributary-", suffix=".log", delete=False)
        full_env = dict(os.environ)
        full_env.update({
            "TRIBUTARY_LISTENERS__TCP__DEFAULT__BIND": f"127.0.0.1:{self.port}",
            # Concurrent brokers must not fight over the MQTT-SN UDP port.
            "TRIBUTARY_MQTTSN__BIND": "127.0.0.1:0",
            # ... nor over the CoAP one.
            "TRIBUTARY_COAP__BIND": "127.0.0.1:0",
            # ... nor over the LwM2M one; object definitions from the repository.
            "TRIBUTARY_LWM2M__BIND": "127.0.0.1:0",
            "TRIBUTARY_LWM2M__XML_DIR": str(REPO / "config" / "lwm2m_xml"),
            # ... nor over STOMP's (TCP and HTTP).
            "TRIBUTARY_STOMP__BIND": "127.0.0.1:0",
            "TRIBUTARY_STOMP__WS_BIND": "127.0.0.1:0",
            # ... nor over the WebSocket and HTTP API ports (tests that use them pass their own).
            "TRIBUTARY_LISTENERS__WS__DEFAULT__BIND": "127.0.0.1:0",
            "TRIBUTARY_API__BIND": "127.0.0.1:0",
            "TRIBUTARY_LOG__LEVEL": "debug",
            # Fresh broker, fresh state: no test shares a store (durability
            # tests pass their own data directory).
            "TRIBUTARY_STORAGE__BACKEND": "memory",
            "NO_COLOR": "1",
        })
        full_env.pop("RUST_LOG", None)
        full_env.update(env or {})
        # A value of None removes the variable (e.g. to let the file's setting apply).
        full_env = {k: v for k, v in full_env.items() if v is not None}
        self.proc = subprocess.Popen([str(BIN), *args], env=full_env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tributary exited with {self.proc.returncode}:\n{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"tributary did not listen on {self.port} within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return re.sub(r"\x1b\[[0-9;]*m", "", Path(self.log.name).read_text(errors="replace"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"tributary did not exit within {timeout}s of SIGTERM")
        return self.proc.returncode

    def cleanup(self) -> None:
        try:
            self.terminate()
        finally:
            self.log.close()
            os.unlink(self.log.name)
            if self.config is not None:
                os.unlink(self.config.name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for broker in getattr(item, "_brokers", []):
            lines = broker.output().splitlines()
            report.sections.append((f"tributary log (port {broker.port}, last 150 lines)",
                                    "\n".join(lines[-150:])))


@pytest.fixture
def start_broker(request):
    """Factory: start_broker(env={"TRIBUTARY_MQTT__...": "..."}, config="toml text") -> Broker.

    Every broker started is stopped (SIGTERM) at teardown."""
    brokers: list[Broker] = []
    request.node._brokers = brokers

    def start(env: dict[str, str] | None = None, config: str | None = None) -> Broker:
        for attempt in range(3):  # the free port may be taken between probe and bind
            try:
                b = Broker(env, config)
                brokers.append(b)
                return b
            except RuntimeError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    yield start
    for b in brokers:
        b.cleanup()


@pytest.fixture
def broker(start_broker) -> Broker:
    return start_broker()


@pytest.fixture
def port(broker) -> int:
    return broker.port


@pytest.fixture
def client(request):
    """Factory: client(port, client_id, version, ...) -> clients.Client, closed at teardown."""
    made: list[Client] = []

    def make(port: int, client_id: str = "", version=V311, **kw) -> Client:
        c = Client(port, client_id, version, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def raw():
    """Factory: raw(port, version) -> rawmqtt.RawClient, closed at teardown."""
    made: list[rawmqtt.RawClient] = []

    def make(port: int, version: int = rawmqtt.V311, timeout: float = 5.0) -> rawmqtt.RawClient:
        c = rawmqtt.RawClient(port, version, timeout)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def pki(tmp_path):
    """A throw-away CA (sec.Pki) with a server certificate for localhost and
    127.0.0.1 in `pki.server` (certfile, keyfile)."""
    from sec import Pki

    ca = Pki(tmp_path / "ca")
    ca.server = ca.issue("localhost", server=True, stem="server")
    return ca


@pytest.fixture
def gated_auth():
    """sec.GatedAuthServer: an HTTP authentication backend whose 'gated' answers wait for `.gate`."""
    from sec import GatedAuthServer

    s = GatedAuthServer()
    yield s
    s.close()
