"""Last will: when it is published and when it is not (MQTT 3.1.1 §3.1.2.5, MQTT 5 §3.1.2.5, §3.1.3.2)."""

import socket
import time

import pytest

import rawmqtt
from clients import V311, V5
from rawmqtt import Will

RAW_ALL = pytest.mark.parametrize("version", [rawmqtt.V31, rawmqtt.V311, rawmqtt.V5], ids=["3.1", "3.1.1", "5"])
RAW_MODERN = pytest.mark.parametrize("version", [rawmqtt.V311, rawmqtt.V5], ids=["3.1.1", "5"])


def watcher(port, client, topic="will/#"):
    w = client(port, "watcher", V5)
    w.connect()
    w.subscribe(topic, 2)
    return w


def willer(port, raw, version, will, client_id="willer", **kw):
    c = raw(port, version)
    assert c.connect(client_id=client_id, will=will, **kw).rc == 0
    return c


@RAW_ALL
def test_will_not_sent_on_normal_disconnect(port, raw, client, version):
    w = watcher(port, client)
    c = willer(port, raw, version, Will("will/t", b"gone", 1))
    c.disconnect()  # [MQTT-3.1.2-10]: the will is discarded on DISCONNECT
    assert c.read_until_closed() == []
    pub = client(port, "pub", V311)
    pub.connect()
    pub.publish("will/marker", b"m", 1)
    assert w.until("will/marker") == []
    w.assert_nothing(0.3)


def test_will_not_sent_on_normal_disconnect_paho(port, client):
    w = watcher(port, client)
    c = client(port, "paho-willer", V5).will_set("will/paho", b"gone", 1)
    c.connect()
    c.disconnect()
    w.assert_nothing(0.5)


@pytest.mark.parametrize("how", ["reset", "fin"])
@RAW_ALL
def test_will_sent_when_connection_drops(port, raw, client, version, how):
    w = watcher(port, client)
    c = willer(port, raw, version, Will("will/t", b"dropped", 1))
    if how == "reset":
        c.abort()
    else:
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
    m = w.expect(3)
    assert (m.topic, m.payload, m.qos, m.retain) == ("will/t", b"dropped", 1, False)


def test_will_sent_when_paho_socket_is_shut_down(port, client):
    w = watcher(port, client)
    c = client(port, "paho-willer", V311).will_set("will/paho", b"socket died", 2)
    c.connect()
    c.c.socket().shutdown(socket.SHUT_RDWR)
    m = w.expect(3)
    assert (m.topic, m.payload, m.qos) == ("will/paho", b"socket died", 2)


@RAW_MODERN
def test_will_sent_on_protocol_violation(port, raw, client, version):
    # MQTT 3.1.1 §3.1.2.5: the will is published when the server closes the connection
    # because of a protocol error.
    w = watcher(port, client)
    c = willer(port, raw, version, Will("will/t", b"violator", 0))
    c.send(bytes([0x36, 0x05]) + rawmqtt.string("x") + b"\x00\x01")  # PUBLISH with QoS 3
    c.read_until_closed()
    assert w.expect(3).payload == b"violator"


@RAW_MODERN
def test_retained_will(port, raw, client, version):
    w = watcher(port, client)
    willer(port, raw, version, Will("will/ret", b"last words", 1, retain=True)).abort()
    m = w.expect(3)
    assert (m.payload, m.retain) == (b"last words", False)  # live delivery [MQTT-3.3.1-9]
    late = client(port, "late", V311)
    late.connect()
    late.subscribe("will/ret", 1)
    m = late.expect()
    assert (m.payload, m.retain) == (b"last words", True)  # stored as retained [MQTT-3.1.2-17]


@RAW_MODERN
def test_will_sent_on_keep_alive_timeout(port, raw, client, version):
    # [MQTT-3.1.2-24]: no packet within 1.5 x keep alive → the server disconnects,
    # and a dropped connection publishes the will.
    w = watcher(port, client)
    c = willer(port, raw, version, Will("will/ka", b"silent", 1), keepalive=1)
    start = time.monotonic()
    m = w.expect(4)
    elapsed = time.monotonic() - start
    assert m.payload == b"silent"
    assert 1.0 <= elapsed <= 3.0, f"will after {elapsed:.2f}s for keep alive 1s"
    packets = c.read_until_closed(1)
    if version == rawmqtt.V5 and packets:
        assert [(p.type, rawmqtt.reason_code(p)) for p in packets] == [(rawmqtt.DISCONNECT, 0x8D)]
    else:
        assert packets == []


def test_keep_alive_satisfied_by_pings(port, raw):
    # [MQTT-3.12.4-1]: PINGREQ answered by PINGRESP; a client that pings stays connected.
    c = raw(port)
    assert c.connect(client_id="pinger", keepalive=1).rc == 0
    for _ in range(4):  # 2 s, past 1.5 x keep alive
        time.sleep(0.5)
        c.send(rawmqtt.packet(rawmqtt.PINGREQ, 0, b""))
        assert c.read(2).type == rawmqtt.PINGRESP


def test_paho_keepalive_keeps_connection(port, client):
    c = client(port, "paho-ka", V5, keepalive=1)
    c.connect()
    assert not c.disconnected.wait(2.0)  # past 1.5 x keep alive
    c.subscribe("ka/t", 1)
    c.publish("ka/t", b"alive", 1)
    assert c.expect().payload == b"alive"


# ---------------------------------------------------------------- MQTT 5 will specifics

def test_v5_will_delay_interval(port, raw, client):
    w = watcher(port, client)
    will = Will("will/delay", b"late", 1, props=[(rawmqtt.WILL_DELAY, 2)])
    willer(port, raw, rawmqtt.V5, will, props=[(rawmqtt.SESSION_EXPIRY, 30)]).abort()
    start = time.monotonic()
    m = w.expect(5)
    elapsed = time.monotonic() - start
    assert m.payload == b"late"
    assert 1.8 <= elapsed <= 4.0, f"will after {elapsed:.2f}s for Will Delay Interval 2s"


def test_v5_will_delay_cancelled_by_reconnect(port, raw, client):
    # MQTT 5 §3.1.3.2.2: "If a new Network Connection to this Session is made before the Will
    # Delay Interval has passed, the Server MUST NOT send the Will Message" [MQTT-3.1.3-9].
    w = watcher(port, client)
    will = Will("will/delay", b"must not arrive", 1, props=[(rawmqtt.WILL_DELAY, 1)])
    willer(port, raw, rawmqtt.V5, will, client_id="delayed", props=[(rawmqtt.SESSION_EXPIRY, 30)]).abort()
    back = raw(port, rawmqtt.V5)
    assert back.connect(client_id="delayed", clean=False, props=[(rawmqtt.SESSION_EXPIRY, 30)]).session_present
    w.assert_nothing(2.0)  # twice the delay


def test_v5_will_sent_when_session_expires_before_will_delay(port, raw, client):
    # MQTT 5 §3.1.3.2.2: the will is published when the delay passes *or the session ends*,
    # whichever happens first.
    w = watcher(port, client)
    will = Will("will/expiry", b"session ended", 1, props=[(rawmqtt.WILL_DELAY, 60)])
    willer(port, raw, rawmqtt.V5, will, props=[(rawmqtt.SESSION_EXPIRY, 1)]).abort()
    start = time.monotonic()
    m = w.expect(4)
    assert m.payload == b"session ended"
    assert time.monotonic() - start <= 3.0


def test_v5_disconnect_with_will_message_reason(port, raw, client):
    # MQTT 5 §3.14.2.1: reason 0x04 "Disconnect with Will Message": the will is published.
    w = watcher(port, client)
    c = willer(port, raw, rawmqtt.V5, Will("will/04", b"asked for it", 1))
    c.disconnect(0x04)
    c.read_until_closed()
    assert w.expect(3).payload == b"asked for it"


def test_v5_will_properties_forwarded(port, raw, client):
    w = watcher(port, client)
    will = Will("will/props", b'{"state":"offline"}', 1, props=[
        (rawmqtt.PAYLOAD_FORMAT, 1),
        (rawmqtt.CONTENT_TYPE, "application/json"),
        (rawmqtt.RESPONSE_TOPIC, "will/reply"),
        (rawmqtt.CORRELATION_DATA, b"\x00\x01corr"),
        (rawmqtt.USER_PROPERTY, ("k", "v1")),
        (rawmqtt.USER_PROPERTY, ("k", "v2")),
        (rawmqtt.USER_PROPERTY, ("a", "b")),
    ])
    willer(port, raw, rawmqtt.V5, will).abort()
    m = w.expect(3)
    p = m.properties
    assert m.payload == b'{"state":"offline"}'
    assert p.PayloadFormatIndicator == 1
    assert p.ContentType == "application/json"
    assert p.ResponseTopic == "will/reply"
    assert p.CorrelationData == b"\x00\x01corr"
    assert p.UserProperty == [("k", "v1"), ("k", "v2"), ("a", "b")]  # order kept [MQTT-3.1.3-10]


def test_v5_disconnect_normal_discards_will(port, raw, client):
    w = watcher(port, client)
    c = willer(port, raw, rawmqtt.V5, Will("will/00", b"no", 1), props=[(rawmqtt.SESSION_EXPIRY, 10)])
    c.disconnect(0x00)
    assert c.read_until_closed() == []
    pub = client(port, "pub", V311)
    pub.connect()
    pub.publish("will/marker", b"m", 1)
    assert w.until("will/marker") == []
