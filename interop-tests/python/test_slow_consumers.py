"""Slow consumers are isolated (issue #15), for every protocol a subscriber
can speak: a QoS 1 subscriber that never reads (MQTT, STOMP) or never
acknowledges (MQTT-SN, CoAP observe) sits next to a fast MQTT subscriber on
the same topic. The publisher (paho, QoS 1) must keep at least 90 % of the
throughput it has without the slow one, and the fast subscriber must get
every message.

Each round uses a fresh slow subscriber on a fresh topic, so every round
pays the slow one's full cost: its socket buffers fill, its queue reaches
its bound, the publisher is paused once for at most `limits.max_pause`, the
gateway then sees the subscriber makes no progress and its overflow policy
applies (counted in `tributary_messages_dropped_total{reason="queue_full"}`).
Each round measures the publisher alone, then next to the slow one, back
to back; the test takes the median of five such per-round ratios, so the
ratio is not a wall-clock threshold, and a noisy neighbour (or one fast
outlier round, which a best-of comparison would make the baseline) costs a
round, not the test.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import rawmqtt
import stomp_support
from coap_support import CON, GET, OBSERVE, RawCoap, free_udp_port, request, wait_coap_ready
from conftest import free_port
from mqttsn_support import SUBSCRIBE, SUBACK, SnRaw, wait_for_gateway
from sec import API_CONFIG, api

N = 10000  # messages per round: about a second, so the one pause is a small part of it
PAYLOAD = 1500  # bytes: N of them overflow any socket buffer
ROUNDS = 5
WAIT = 60.0

CONFIG = API_CONFIG + """
[mqtt]
max_mqueue_len = 200

[limits]
max_pause = "50ms"

[coap]
notify_type = "qos"
subscribe_qos = "qos1"
"""


@pytest.fixture
def gw(start_broker):
    for attempt in range(3):
        ports = {"api": free_port(), "stomp": free_port(), "http": free_port(),
                 "sn": free_udp_port(), "coap": free_udp_port()}
        env = {
            "TRIBUTARY_API__BIND": f"127.0.0.1:{ports['api']}",
            "TRIBUTARY_STOMP__BIND": f"127.0.0.1:{ports['stomp']}",
            "TRIBUTARY_STOMP__WS_BIND": f"127.0.0.1:{ports['http']}",
            "TRIBUTARY_MQTTSN__BIND": f"127.0.0.1:{ports['sn']}",
            "TRIBUTARY_COAP__BIND": f"127.0.0.1:{ports['coap']}",
            "TRIBUTARY_STOMP__SUBSCRIBE_QOS": "1",
            # Debug logging of every dropped message would dominate the run.
            "TRIBUTARY_LOG__LEVEL": "info",
        }
        try:
            b = start_broker(env=env, config=CONFIG)
            stomp_support.wait_port(ports["stomp"])
            wait_for_gateway(ports["sn"])
            wait_coap_ready(ports["coap"])
        except (RuntimeError, AssertionError):
            if attempt == 2:
                raise
            continue
        b.ports = ports
        return b
    raise AssertionError("unreachable")


def dropped_queue_full(b) -> float:
    status, text, _ = api(b.ports["api"], "GET", "/api/v5/prometheus/stats")
    assert status == 200
    for line in text.splitlines():
        if line.startswith('tributary_messages_dropped_total{reason="queue_full"}'):
            return float(line.split()[-1])
    raise AssertionError("no queue_full drop counter in the metrics")


class FastSubscriber:
    """A paho QoS 1 subscriber that reads as fast as it can."""

    def __init__(self, port: int, topic: str):
        self.got: set[bytes] = set()
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fast-{topic}")
        self.c.on_message = self._on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe(topic, 1)
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, c, u, m):
        with self.lock:
            self.got.add(m.payload[:16])

    def wait_all(self, n: int) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            with self.lock:
                have = len(self.got)
            if have >= n:
                return
            assert time.monotonic() < deadline, f"fast subscriber got only {have} of {n}"
            time.sleep(0.01)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def publish_rate(port: int, topic: str) -> float:
    """Publish N QoS 1 messages; acknowledged messages per second."""
    done = threading.Event()
    acked = [0]

    def on_publish(c, u, mid, rc, props):
        acked[0] += 1
        if acked[0] == N:
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{topic}")
    c.max_inflight_messages_set(64)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        start = time.monotonic()
        for i in range(N):
            c.publish(topic, f"{i:016d}".encode() + b"x" * (PAYLOAD - 16), 1)
        assert done.wait(WAIT), f"only {acked[0]} of {N} acknowledged"
        return N / (time.monotonic() - start)
    finally:
        c.loop_stop()
        c.disconnect()


# -------------------------------------------------- the slow parties


def slow_mqtt(b, topic: str):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", b.port))
    s.sendall(rawmqtt.connect(client_id=f"slow-{topic}"))
    assert s.recv(4)[0] == 0x20, "no CONNACK"
    s.sendall(rawmqtt.subscribe([(topic, 1)]))
    assert s.recv(5)[0] == 0x90, "no SUBACK"
    return s  # and never read again


def slow_stomp(b, topic: str, ack: str = "client"):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", b.ports["stomp"]))
    s.sendall(b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00")
    assert s.recv(9).startswith(b"CONNECTED")
    s.sendall(f"SUBSCRIBE\nid:1\ndestination:{topic}\nack:{ack}\nreceipt:r\n\n\x00".encode())
    buf = b""
    while b"RECEIPT" not in buf:
        buf += s.recv(512)
    return s  # never reads, never acknowledges


def slow_mqttsn(b, topic: str):
    c = SnRaw(b.ports["sn"])
    assert c.connect(f"slow-{topic}") == 0
    mid = c.next_id()
    c.send(SUBSCRIBE, bytes([0x20]) + struct.pack(">H", mid) + topic.encode())
    c.expect(SUBACK)
    return c  # never acknowledges a PUBLISH


def slow_coap(b, topic: str):
    c = RawCoap(b.ports["coap"])
    r = c.exchange(request(CON, GET, f"ps/{topic}", 1, b"\x42", options=((OBSERVE, b""),)))
    assert r.uint(OBSERVE) is not None, "observation not registered"
    return c  # never acknowledges a confirmable notification


SLOW = {"mqtt": slow_mqtt, "stomp": slow_stomp, "mqtt-sn": slow_mqttsn, "coap-observe": slow_coap}


@pytest.mark.parametrize("kind", list(SLOW))
def test_a_slow_subscriber_does_not_hold_the_publisher_or_the_fast_one(gw, kind):
    base_rates, slow_rates, stuck = [], [], []
    for r in range(ROUNDS):
        topic = f"iso/{r}/alone"
        fast = FastSubscriber(gw.port, topic)
        base_rates.append(publish_rate(gw.port, topic))
        fast.wait_all(N)
        fast.close()

        topic = f"iso/{r}/slow"
        fast = FastSubscriber(gw.port, topic)
        before = dropped_queue_full(gw)
        stuck.append(SLOW[kind](gw, topic))
        slow_rates.append(publish_rate(gw.port, topic))
        fast.wait_all(N)
        fast.close()
        # The slow one was really stuck: it reached its bound and lost
        # messages by its policy, counted.
        assert dropped_queue_full(gw) > before, "the slow subscriber never reached its queue bound"
    ratios = sorted(slow / alone for slow, alone in zip(slow_rates, base_rates))
    ratio = ratios[len(ratios) // 2]
    print(f"{kind}: alone {[round(x) for x in base_rates]} msg/s, "
          f"with a slow one {[round(x) for x in slow_rates]} msg/s, "
          f"ratios {[round(x, 2) for x in ratios]}, median {ratio:.2f}")
    assert ratio >= 0.9, f"publisher kept only {ratio:.0%} of its throughput next to a slow {kind} subscriber"
    for s in stuck:
        s.close()


def limit_counter(b, name: str) -> float:
    status, text, _ = api(b.ports["api"], "GET", "/api/v5/prometheus/stats")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(f"tributary_{name}_total "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} counter in the metrics")


@pytest.mark.parametrize("kind", ["mqtt", "stomp"])
def test_a_peer_that_stops_reading_is_closed_after_the_write_stall_limit(start_broker, kind):
    api_port, stomp_port = free_port(), free_port()
    b = start_broker(env={"TRIBUTARY_API__BIND": f"127.0.0.1:{api_port}",
                          "TRIBUTARY_STOMP__BIND": f"127.0.0.1:{stomp_port}",
                          "TRIBUTARY_LIMITS__WRITE_STALL_TIMEOUT": "1s",
                          "TRIBUTARY_LOG__LEVEL": "info"}, config=API_CONFIG)
    b.ports = {"api": api_port, "stomp": stomp_port}
    stomp_support.wait_port(stomp_port)
    topic = f"stall/{kind}"
    # A STOMP subscriber in auto mode: nothing waits for its acknowledgement,
    # so only its socket can hold the writes.
    stuck = slow_stomp(b, topic, ack="auto") if kind == "stomp" else slow_mqtt(b, topic)
    before = limit_counter(b, "limit_write_stall")
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="stall-pub")
    c.connect("127.0.0.1", b.port)
    c.loop_start()
    try:
        deadline = time.monotonic() + WAIT
        while limit_counter(b, "limit_write_stall") == before:
            assert time.monotonic() < deadline, "the stalled connection was never closed"
            for _ in range(500):
                c.publish(topic, b"x" * 8192, 0)
            time.sleep(0.2)
        assert c.is_connected(), "the publisher paid for the stalled subscriber"
    finally:
        c.loop_stop()
        c.disconnect()
    # Closed: the socket drains what the kernel held, then ends.
    stuck.settimeout(WAIT)
    while True:
        try:
            if not stuck.recv(1 << 20):
                break
        except ConnectionResetError:
            break
    stuck.close()
