"""Limits tripped against the real binary, and each one counted in the
metrics: connections per listener, connection rate, per-client message
rate (MQTT 5 DISCONNECT 0x96, or throttling), per-client byte rate and
subscriptions per client (SUBACK 0x97 / 0x80)."""

from __future__ import annotations

import socket
import time

import rawmqtt
from clients import V5, V311
from sec import API_CONFIG, api, free_port, wait_port


def start(start_broker, config: str, env: dict | None = None):
    port = free_port()
    env = dict(env or {})
    env["TRIBUTARY_API__BIND"] = f"127.0.0.1:{port}"
    broker = start_broker(env=env, config=config + API_CONFIG)
    wait_port(port)
    return broker, port


def metric(api_port: int, name: str) -> int:
    return api(api_port, "GET", "/api/v5/metrics")[1][name]


def tcp_listener(api_port: int) -> dict:
    listeners = api(api_port, "GET", "/api/v5/listeners")[1]
    return next(l for l in listeners if l["id"] == "tcp:default")


def connack_or_closed(port: int, client_id: str) -> int | None:
    """CONNACK return code, or None when the broker closed the socket at once."""
    try:
        c = rawmqtt.RawClient(port, rawmqtt.V311, timeout=2)
        try:
            return c.connect(client_id=client_id).rc
        finally:
            c.close()
    except (rawmqtt.Closed, ConnectionError, socket.timeout, OSError):
        return None


def test_max_connections_per_listener(start_broker, raw):
    broker, api_port = start(start_broker, "[listeners.tcp.default]\nmax_connections = 2\n")
    # The harness's start-up probe takes a slot until the broker has accepted
    # it and seen it close: wait for both, or it may take a held client's slot.
    deadline = time.monotonic() + 5
    while not ((l := tcp_listener(api_port))["accepted"] >= 1 and l["current_connections"] == 0):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    held = [raw(broker.port, rawmqtt.V311) for _ in range(2)]
    for i, c in enumerate(held):
        assert c.connect(client_id=f"held-{i}").rc == 0
    assert connack_or_closed(broker.port, "third") is None
    assert metric(api_port, "connections.refused") >= 1
    assert tcp_listener(api_port)["refused"] >= 1
    held[0].close()
    deadline = time.monotonic() + 5
    while connack_or_closed(broker.port, "fourth") != 0:
        assert time.monotonic() < deadline, "slot not freed"
        time.sleep(0.05)


def test_connection_rate_per_listener(start_broker):
    broker, api_port = start(start_broker, "[listeners.tcp.default]\nmax_conn_rate = 3\n")
    time.sleep(1.1)  # the start-up probe took a token; let the bucket refill
    results = [connack_or_closed(broker.port, f"rate-{i}") for i in range(8)]
    assert results.count(0) >= 3 and None in results, results
    assert metric(api_port, "connections.refused") >= 1


def test_message_rate_disconnects_mqtt5_with_0x96(start_broker, raw):
    broker, api_port = start(start_broker, '[limits]\nmessages_rate = 5\nrate_exceeded = "disconnect"\n')
    c = raw(broker.port, rawmqtt.V5)
    assert c.connect(client_id="chatty").rc == 0
    for i in range(20):
        try:
            c.send(rawmqtt.publish("rate/x", b"m", version=rawmqtt.V5))
        except OSError:
            break
    packets = c.read_until_closed()
    disconnect = [p for p in packets if p.type == rawmqtt.DISCONNECT]
    assert disconnect and rawmqtt.reason_code(disconnect[0]) == 0x96
    assert metric(api_port, "rate.limited") >= 1


def test_message_rate_throttles_by_default(start_broker, client):
    broker, api_port = start(start_broker, "[limits]\nmessages_rate = 10\n")
    sub = client(broker.port, "t-sub")
    sub.connect()
    sub.subscribe("thr/#", 0)
    pub = client(broker.port, "t-pub", V5)
    pub.connect()
    for i in range(25):
        pub.c.publish("thr/x", str(i).encode())
    msgs = sub.expect_n(25, timeout=10)
    # 10 in the first burst, then 10 per second: the publisher's reads were
    # paused (counted below) and nothing was lost.
    assert [m.payload for m in msgs] == [str(i).encode() for i in range(25)]  # throttled, not dropped
    assert pub.c.is_connected()
    assert metric(api_port, "rate.limited") >= 1


def test_byte_rate_throttles(start_broker, client):
    broker, api_port = start(start_broker, "[limits]\nbytes_rate = 20000\n")
    sub = client(broker.port, "b-sub")
    sub.connect()
    sub.subscribe("bytes/#", 0)
    pub = client(broker.port, "b-pub")
    pub.connect()
    for _ in range(5):
        pub.c.publish("bytes/x", b"x" * 10000)
    # 50 kB at 20 kB/s with a 20 kB burst: the publisher's reads pause
    # (counted), and every message still arrives.
    assert [len(m.payload) for m in sub.expect_n(5, timeout=10)] == [10000] * 5
    assert metric(api_port, "rate.limited") >= 1


def test_max_subscriptions_per_client(start_broker, client):
    broker, api_port = start(start_broker, "[limits]\nmax_subscriptions = 2\n")
    c5 = client(broker.port, "subs-5", V5)
    c5.connect()
    assert c5.subscribe([("a/1", 0), ("a/2", 0), ("a/3", 0)]) == [0, 0, 0x97]
    assert c5.subscribe("a/1", 1) == [1]  # re-subscribing an existing filter is not a new one
    c3 = client(broker.port, "subs-3", V311)
    c3.connect()
    assert c3.subscribe([("b/1", 0), ("b/2", 0), ("b/3", 0)]) == [0, 0, 0x80]
    assert metric(api_port, "subscriptions.refused_quota") == 2


def test_max_topic_levels_refused_and_counted(start_broker, raw, client):
    broker, api_port = start(start_broker, "[mqtt]\nmax_topic_levels = 3\n")
    c5 = client(broker.port, "levels-5", V5)
    c5.connect()
    assert c5.subscribe([("a/b/c", 0), ("a/b/c/d", 0)]) == [0, 0x8F]  # Topic Filter invalid
    r = raw(broker.port, rawmqtt.V5)
    r.connect(client_id="levels-pub")
    r.send(rawmqtt.publish("a/b/c/d", b"deep", qos=1, packet_id=1, version=rawmqtt.V5))
    closing = r.read_until_closed()
    assert closing and closing[-1].type == rawmqtt.DISCONNECT
    assert rawmqtt.reason_code(closing[-1]) == 0x90  # Topic Name invalid
    assert metric(api_port, "topic.levels_exceeded") == 2


def test_retained_limits_refused_and_counted(start_broker, client):
    broker, api_port = start(start_broker,
                             "[retainer]\nmax_retained_messages = 2\nmax_payload_size = 10\n")
    pub = client(broker.port, "ret-pub")
    pub.connect()
    pub.publish("ret/1", b"one", qos=1, retain=True)
    pub.publish("ret/2", b"two", qos=1, retain=True)
    pub.publish("ret/3", b"three", qos=1, retain=True)  # store full
    pub.publish("ret/1", b"0123456789ABC", qos=1, retain=True)  # payload too large
    pub.publish("ret/2", b"TWO", qos=1, retain=True)  # replacing one is always allowed
    sub = client(broker.port, "ret-sub")
    sub.connect()
    sub.subscribe("ret/#", 0)
    got = {m.topic: m.payload for m in sub.expect_n(2)}
    assert got == {"ret/1": b"one", "ret/2": b"TWO"}
    sub.assert_nothing(0.3)
    assert metric(api_port, "retained.refused") == 2
    assert metric(api_port, "retained") == 2
