"""Durable storage across kill -9 (issue #4): the gateway is killed with
SIGKILL in the middle of QoS 1 and QoS 2 traffic and restarted on the same
data directory. Payloads carry sequence numbers; every message the broker
acknowledged (PUBACK for QoS 1, the completed PUBREC/PUBCOMP flow for
QoS 2) must be delivered after the restart, QoS 2 exactly once, and
retained messages must survive.

The broker runs with `durability = "fsync"` (the default) on a per-test
temporary data directory. No test depends on timing: the kill happens once
a number of acknowledgements has been seen, whatever the speed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import rawmqtt
from conftest import BIN, free_port
from sec import API_CONFIG, api

WAIT = 20.0  # upper bound for anything that should happen "soon" on a loaded machine


class DurableBroker:
    """A `tributary` process on a fixed port and data directory that can be
    SIGKILLed and started again on the same ones."""

    def __init__(self, data_dir: str, durability: str = "fsync", batch_window: str = "0s",
                 api_port: int | None = None, env: dict[str, str | None] | None = None):
        """`env` overrides the settings below; a value of None removes one (so
        `{"TRIBUTARY_MQTT__MAX_MQUEUE_LEN": None}` tests the shipped queue bound)."""
        self.extra_env = env or {}
        self.data_dir = data_dir
        self.durability = durability
        self.batch_window = batch_window
        self.api_port = api_port
        self.config = None
        if api_port is not None:
            self.config = os.path.join(os.path.dirname(data_dir), "api.toml")
            Path(self.config).write_text(API_CONFIG)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.logs: list[str] = []
        self.start()

    def start(self) -> None:
        log = tempfile.NamedTemporaryFile(prefix="tributary-durable-", suffix=".log", delete=False)
        self.logs.append(log.name)
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        env.update({
            "TRIBUTARY_LISTENERS__TCP__DEFAULT__BIND": f"127.0.0.1:{self.port}",
            "TRIBUTARY_MQTTSN__BIND": "127.0.0.1:0",
            "TRIBUTARY_COAP__BIND": "127.0.0.1:0",
            "TRIBUTARY_STOMP__BIND": "127.0.0.1:0",
            "TRIBUTARY_STOMP__WS_BIND": "127.0.0.1:0",
            "TRIBUTARY_LISTENERS__WS__DEFAULT__BIND": "127.0.0.1:0",
            "TRIBUTARY_API__BIND": f"127.0.0.1:{self.api_port or 0}",
            "TRIBUTARY_STORAGE__BACKEND": "fjall",
            "TRIBUTARY_STORAGE__DATA_DIR": self.data_dir,
            "TRIBUTARY_STORAGE__DURABILITY": self.durability,
            "TRIBUTARY_STORAGE__BATCH_WINDOW": self.batch_window,
            # Room for every message of a test: the queue bound is not under test here.
            "TRIBUTARY_MQTT__MAX_MQUEUE_LEN": "100000",
            "TRIBUTARY_LOG__LEVEL": "info",
            "NO_COLOR": "1",
        })
        for k, v in self.extra_env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        args = ["--config", self.config] if self.config else []
        self.proc = subprocess.Popen([str(BIN), *args], env=env, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tributary exited with {self.proc.returncode}:\n{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"tributary did not listen on {self.port}:\n{self.output()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> None:
        self.kill9()
        self.start()

    def output(self) -> str:
        return "\n".join(Path(p).read_text(errors="replace") for p in self.logs if Path(p).exists())

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for p in self.logs:
            try:
                os.unlink(p)
            except OSError:
                pass


@pytest.fixture
def durable(request):
    """Factory: durable(durability="fsync", batch_window="0s") -> DurableBroker on a
    fresh data directory."""
    made: list[DurableBroker] = []
    dirs: list[str] = []

    def make(durability: str = "fsync", batch_window: str = "0s", api_port: int | None = None,
             env: dict[str, str | None] | None = None) -> DurableBroker:
        d = tempfile.mkdtemp(prefix="tributary-data-")
        dirs.append(d)
        b = DurableBroker(os.path.join(d, "data"), durability, batch_window, api_port, env)
        made.append(b)
        return b

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for b in made:
        if failed:
            print(b.output()[-20000:])
        b.cleanup()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# ---------------------------------------------------------------- clients


class Subscriber:
    """A paho subscriber with a persistent session that reconnects by itself
    (keeping its own session state, as a real client does) and records every
    payload it is handed, in order."""

    def __init__(self, port: int, client_id: str, topic: str, qos: int):
        self.got: list[bytes] = []
        self.dups = 0
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.session_present: list[bool] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=False)
        self.c.reconnect_delay_set(min_delay=1, max_delay=1)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *a: self.connected.clear()
        self.c.on_message = self._on_message
        self.topic, self.qos = topic, qos
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(WAIT), "subscriber did not connect"

    def _on_connect(self, c, u, flags, rc, props):
        self.session_present.append(bool(flags.session_present))
        if not flags.session_present:
            c.subscribe(self.topic, self.qos)
        self.connected.set()

    def _on_message(self, c, u, msg):
        with self.lock:
            self.got.append(bytes(msg.payload))
            self.dups += int(msg.dup)

    def count(self) -> int:
        with self.lock:
            return len(self.got)

    def wait_for(self, wanted: set[bytes], timeout: float = WAIT) -> set[bytes]:
        """Wait until every payload of `wanted` arrived; returns what is missing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                missing = wanted - set(self.got)
            if not missing:
                return missing
            time.sleep(0.05)
        with self.lock:
            return wanted - set(self.got)

    def stop(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class Publisher:
    """Publishes seq-numbered payloads as fast as its inflight window lets it,
    recording which ones the broker acknowledged (paho's on_publish: PUBACK
    for QoS 1, PUBCOMP for QoS 2). Stops at the first disconnection: it
    never resends, so each payload is published once."""

    def __init__(self, port: int, client_id: str, topic: str, qos: int, count: int):
        self.acked_mids: set[int] = set()
        self.lock = threading.Lock()
        self.mids: dict[int, bytes] = {}
        self.stopped = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=True,
                             reconnect_on_failure=False)
        self.c.max_inflight_messages_set(50)
        self.c.max_queued_messages_set(0)
        self.c.on_publish = self._on_publish
        self.c.on_disconnect = lambda *a: self.stopped.set()
        connected = threading.Event()
        self.c.on_connect = lambda *a: connected.set()
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        assert connected.wait(WAIT), "publisher did not connect"
        self.topic, self.qos, self.count = topic, qos, count
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _on_publish(self, c, u, mid, rc, props):
        # paho's network thread; never take a lock that is held around publish().
        with self.lock:
            self.acked_mids.add(mid)

    def _run(self) -> None:
        for seq in range(self.count):
            if self.stopped.is_set():
                return
            payload = f"seq-{seq:06d}".encode()
            info = self.c.publish(self.topic, payload, self.qos)
            self.mids[info.mid] = payload
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked_mids)

    def wait_acked(self, n: int) -> None:
        deadline = time.monotonic() + WAIT
        while self.acked_count() < n:
            assert time.monotonic() < deadline, f"only {self.acked_count()} acknowledged"
            time.sleep(0.005)

    def stop(self) -> set[bytes]:
        """Stop; the payloads the broker acknowledged."""
        self.stopped.set()
        self.thread.join(WAIT)
        self.c.loop_stop()
        with self.lock:
            return {self.mids[m] for m in self.acked_mids}


def go_offline(port: int, client_id: str, topic: str, qos: int) -> None:
    raw = rawmqtt.RawClient(port)
    assert raw.connect(client_id=client_id, clean=False).rc == 0
    assert raw.subscribe([(topic, qos)]) == [qos]
    raw.disconnect()
    raw.close()


# ---------------------------------------------------------------- tests


# A 10 ms batch window keeps every commit open long enough that a kill lands
# between an acknowledgement and its commit if the broker ever acknowledged
# early: without it the window is a fraction of a millisecond and an early
# acknowledgement would rarely be caught.
WINDOW = "10ms"


@pytest.mark.parametrize("qos", [1, 2])
def test_kill9_offline_persistent_session_keeps_every_acknowledged_message(durable, qos):
    b = durable(batch_window=WINDOW)
    topic = f"dur/offline/{qos}"
    go_offline(b.port, "sub-off", topic, qos)
    pub = Publisher(b.port, "pub-off", topic, qos, 5000)
    pub.wait_acked(300)
    b.kill9()  # mid-stream: the publisher is still sending
    acked = pub.stop()
    assert len(acked) >= 300
    b.start()
    # The restored subscription is active before its client is back.
    late = rawmqtt.RawClient(b.port)
    assert late.connect(client_id="late-pub").rc == 0
    # At the test's QoS: paho hands QoS 2 messages over on PUBREL, so a QoS 1
    # one would overtake them in the client, not in the broker.
    late.publish(topic, b"zz-after-restart", qos=qos, packet_id=1)
    if qos == 1:
        late.expect(rawmqtt.PUBACK)
    else:
        late.expect(rawmqtt.PUBREC)
        late.send(rawmqtt.ack(rawmqtt.PUBREL, 1))
        late.expect(rawmqtt.PUBCOMP)
    sub = Subscriber(b.port, "sub-off", topic, qos)
    assert sub.session_present == [True]
    missing = sub.wait_for(acked | {b"zz-after-restart"})
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
    got = list(sub.got)
    if qos == 2:
        assert len(got) == len(set(got)), "a QoS 2 message was delivered twice"
    # Per-publisher order is kept.
    assert got == sorted(got)
    sub.stop()


@pytest.mark.parametrize("qos", [1, 2])
def test_kill9_connected_persistent_subscriber_gets_every_acknowledged_message(durable, qos):
    b = durable(batch_window=WINDOW)
    topic = f"dur/online/{qos}"
    sub = Subscriber(b.port, "sub-on", topic, qos)
    pub = Publisher(b.port, "pub-on", topic, qos, 5000)
    pub.wait_acked(300)
    b.kill9()
    acked = pub.stop()
    before = sub.count()
    b.start()
    # The subscriber reconnects by itself (clean session = false) and finds its session.
    deadline = time.monotonic() + WAIT
    while len(sub.session_present) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sub.session_present[:2] == [False, True]
    missing = sub.wait_for(acked)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
    got = list(sub.got)
    if qos == 2:
        dup = {p for p in got if got.count(p) > 1}
        assert not dup, f"QoS 2 delivered twice: {sorted(dup)[:5]} (received {before} before the kill)"
    sub.stop()


def test_kill9_retained_messages_survive_with_their_properties(durable):
    b = durable()
    v5 = rawmqtt.RawClient(b.port, rawmqtt.V5)
    assert v5.connect(client_id="ret-pub").rc == 0
    v5.publish("dur/ret/a", b"kept", qos=1, retain=True, packet_id=1,
               props=[(rawmqtt.CONTENT_TYPE, "text/plain")])
    v5.expect(rawmqtt.PUBACK)
    v5.publish("dur/ret/b", b"gone", qos=1, retain=True, packet_id=2)
    v5.expect(rawmqtt.PUBACK)
    v5.publish("dur/ret/b", b"", qos=1, retain=True, packet_id=3)  # cleared
    v5.expect(rawmqtt.PUBACK)
    b.restart()  # SIGKILL, same data directory
    sub = rawmqtt.RawClient(b.port, rawmqtt.V5)
    assert sub.connect(client_id="ret-sub").rc == 0
    sub.subscribe([("dur/ret/#", 1)])
    m = sub.expect_publish()
    assert (m.topic, m.payload, m.retain) == (b"dur/ret/a", b"kept", True)
    assert m.props.get(rawmqtt.CONTENT_TYPE) == "text/plain"
    with pytest.raises(TimeoutError):
        sub.read(timeout=0.5)


def test_kill9_unacknowledged_delivery_is_resent_with_dup_and_same_packet_id(durable):
    b = durable()
    sub = rawmqtt.RawClient(b.port)
    assert sub.connect(client_id="dup-sub", clean=False).rc == 0
    sub.subscribe([("dur/dup", 1)])
    pub = rawmqtt.RawClient(b.port)
    assert pub.connect(client_id="dup-pub").rc == 0
    pub.publish("dur/dup", b"first", qos=1, packet_id=1)
    pub.expect(rawmqtt.PUBACK)
    first = sub.expect_publish()  # never acknowledged
    assert (first.payload, first.dup) == (b"first", False)
    # This PUBACK waits for a commit made after `first` was recorded
    # inflight: once it arrives, that state is on disk too.
    pub.publish("dur/dup", b"second", qos=1, packet_id=2)
    pub.expect(rawmqtt.PUBACK)
    b.restart()
    again = rawmqtt.RawClient(b.port)
    assert again.connect(client_id="dup-sub", clean=False).session_present
    resent = again.expect_publish()
    assert (resent.payload, resent.dup, resent.packet_id) == (b"first", True, first.packet_id)
    again.send(rawmqtt.ack(rawmqtt.PUBACK, resent.packet_id))
    nxt = again.expect_publish()
    assert nxt.payload == b"second"
    again.send(rawmqtt.ack(rawmqtt.PUBACK, nxt.packet_id))


def test_expired_messages_are_dropped_on_restore(durable):
    b = durable()
    sub = rawmqtt.RawClient(b.port, rawmqtt.V5)
    assert sub.connect(client_id="exp-sub", clean=False, props=[(rawmqtt.SESSION_EXPIRY, 600)]).rc == 0
    sub.subscribe([("dur/exp", 1)])
    sub.disconnect()
    sub.close()
    pub = rawmqtt.RawClient(b.port, rawmqtt.V5)
    assert pub.connect(client_id="exp-pub").rc == 0
    pub.publish("dur/exp", b"short", qos=1, packet_id=1, props=[(rawmqtt.MESSAGE_EXPIRY, 1)])
    pub.expect(rawmqtt.PUBACK)
    pub.publish("dur/exp", b"long", qos=1, packet_id=2, props=[(rawmqtt.MESSAGE_EXPIRY, 600)])
    pub.expect(rawmqtt.PUBACK)
    b.kill9()
    time.sleep(1.5)  # let the 1 s expiry pass while the broker is down
    b.start()
    again = rawmqtt.RawClient(b.port, rawmqtt.V5)
    assert again.connect(client_id="exp-sub", clean=False, props=[(rawmqtt.SESSION_EXPIRY, 600)]).session_present
    m = again.expect_publish()
    assert m.payload == b"long"
    again.send(rawmqtt.ack(rawmqtt.PUBACK, m.packet_id))
    with pytest.raises(TimeoutError):
        again.read(timeout=0.5)


def test_corrupt_store_fails_startup_with_a_clear_message(durable):
    b = durable()
    b.kill9()
    # The engine's format marker replaced by garbage.
    Path(b.data_dir, "version").write_bytes(b"garbage")
    with pytest.raises(RuntimeError) as err:
        b.start()
    text = str(err.value)
    assert "storage" in text and b.data_dir in text, text


@pytest.mark.skipif(not os.environ.get("DURABILITY_SMALL_FS"),
                    reason="needs DURABILITY_SMALL_FS: a directory on a small filesystem "
                           "(e.g. `mount -t tmpfs -o size=3m tmpfs /mnt/small`)")
def test_full_disk_refuses_publishes_with_0x97_and_keeps_running():
    data = tempfile.mkdtemp(prefix="tributary-full-", dir=os.environ["DURABILITY_SMALL_FS"])
    b = DurableBroker(os.path.join(data, "data"))
    try:
        go_offline(b.port, "full-sub", "dur/full", 1)
        pub = rawmqtt.RawClient(b.port, rawmqtt.V5)
        assert pub.connect(client_id="full-pub").rc == 0
        payload = b"x" * 60_000
        reasons = []
        for pid in range(1, 2000):
            pub.publish("dur/full", payload, qos=1, packet_id=pid)
            ack = pub.expect(rawmqtt.PUBACK, timeout=WAIT)
            reasons.append(ack.body[2] if len(ack.body) > 2 else 0)
            if reasons[-1] == 0x97:
                break
        assert reasons[-1] == 0x97, f"no refusal after {len(reasons)} publishes"
        assert all(r == 0 for r in reasons[:-1])
        # Still serving: a publish that needs no storage goes through.
        pub.publish("dur/nobody", b"fine", qos=1, packet_id=1)
        ok = pub.expect(rawmqtt.PUBACK)
        assert ok.body[2] == 0x10  # no matching subscribers: nothing to store
        assert b.proc.poll() is None, "the gateway crashed"
        assert "store write failed" in b.output()
    finally:
        b.cleanup()
        shutil.rmtree(data, ignore_errors=True)


def test_store_disk_usage_is_in_the_metrics(tmp_path):
    b = DurableBroker(str(tmp_path / "data"), api_port=free_port())
    try:
        go_offline(b.port, "m-sub", "dur/m", 1)
        pub = rawmqtt.RawClient(b.port)
        assert pub.connect(client_id="m-pub").rc == 0
        pub.publish("dur/m", b"x" * 1000, qos=1, packet_id=1)
        pub.expect(rawmqtt.PUBACK)
        deadline = time.monotonic() + WAIT
        metrics = {}
        while time.monotonic() < deadline:
            status, metrics, _ = api(b.api_port, "GET", "/api/v5/metrics")
            if status == 200 and metrics.get("store.disk_bytes", 0) > 0 and metrics.get("store.commits", 0) > 0:
                break
            time.sleep(0.1)
        assert metrics.get("store.disk_bytes", 0) > 0, metrics
        assert metrics.get("store.commits", 0) >= 1 and metrics.get("store.commit_failures") == 0
    finally:
        b.cleanup()
