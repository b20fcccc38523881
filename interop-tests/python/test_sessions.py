"""Session takeover, persistent sessions, session expiry, shared subscriptions."""

import time

import pytest

import rawmqtt
from clients import V311, V5, props
from paho.mqtt.packettypes import PacketTypes

MODERN = pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5"])


def connect_props(**kw):
    return props(PacketTypes.CONNECT, **kw)


# ---------------------------------------------------------------- takeover

def test_v311_takeover_closes_first_connection(port, raw, client):
    # [MQTT-3.1.4-2]: an existing client with the same id is disconnected.
    first = raw(port, rawmqtt.V311)
    assert first.connect(client_id="dup").rc == 0
    second = client(port, "dup", V311)
    second.connect()
    assert first.read_until_closed() == []
    second.subscribe("take/t", 1)
    second.publish("take/t", b"still works", 1)
    assert second.expect().payload == b"still works"


def test_v5_takeover_sends_disconnect_0x8e(port, raw, client):
    # MQTT 5 [MQTT-3.1.4-3]: DISCONNECT with Reason Code 0x8E (Session taken over), then close.
    first = raw(port, rawmqtt.V5)
    assert first.connect(client_id="dup5").rc == 0
    second = client(port, "dup5", V5)
    second.connect()
    packets = first.read_until_closed()
    assert [(p.type, rawmqtt.reason_code(p)) for p in packets] == [(rawmqtt.DISCONNECT, 0x8E)]


def test_v5_takeover_seen_by_paho(port, client):
    first, second = client(port, "dupp", V5), client(port, "dupp", V5)
    first.connect()
    second.connect()
    assert first.disconnected.wait(5)
    assert first.disconnect_reason == 142
    assert second.c.is_connected()


def test_takeover_keeps_persistent_session(port, client):
    first = client(port, "keep", V311, clean_session=False)
    first.connect()
    first.subscribe("keep/t", 1)
    second = client(port, "keep", V311, clean_session=False)
    _, session_present, _ = second.connect()
    assert session_present  # the session, with its subscription, moved to the new connection
    pub = client(port, "p", V311)
    pub.connect()
    pub.publish("keep/t", b"x", 1)
    assert second.expect().payload == b"x"


# ---------------------------------------------------------------- persistent sessions (3.1.1)

def go_offline_raw(port, raw, version, client_id, filters, props=None):
    """Connect a persistent session, subscribe, DISCONNECT, and wait for the broker to close."""
    c = raw(port, version)
    kw = {"props": props} if version == rawmqtt.V5 else {}
    assert c.connect(client_id=client_id, clean=False, **kw).rc == 0
    c.subscribe(filters)
    c.disconnect()
    c.read_until_closed()


def test_v311_persistent_session_queues_messages_while_offline(port, client):
    sub = client(port, "persist", V311, clean_session=False)
    _, session_present, _ = sub.connect()
    assert session_present is False  # nothing stored yet [MQTT-3.2.2-3]
    sub.subscribe("p/t", 1)
    sub.disconnect()
    pub = client(port, "pub", V311)
    pub.connect()
    for i in range(5):
        pub.publish("p/t", f"m{i}".encode(), 1)
    back = client(port, "persist", V311, clean_session=False)
    _, session_present, _ = back.connect()
    assert session_present is True  # [MQTT-3.2.2-2]
    assert [m.payload for m in back.expect_n(5)] == [f"m{i}".encode() for i in range(5)]
    back.assert_nothing(0.2)


def test_v311_qos0_queued_for_offline_session(port, raw, client):
    # Default config: mqueue_store_qos0 = true.
    go_offline_raw(port, raw, rawmqtt.V311, "q0", [("q0/t", 1)])
    pub = client(port, "pub", V311)
    pub.connect()
    pub.publish("q0/t", b"zero", 0)
    pub.publish("q0/t", b"one", 1)
    back = client(port, "q0", V311, clean_session=False)
    assert back.connect()[1] is True
    got = [(m.payload, m.qos) for m in back.expect_n(2)]
    assert got == [(b"zero", 0), (b"one", 1)]


def test_v311_qos2_queued_for_offline_session_delivered_once(port, raw, client):
    go_offline_raw(port, raw, rawmqtt.V311, "q2", [("q2/t", 2)])
    pub = client(port, "pub", V311)
    pub.connect()
    pub.publish("q2/t", b"exactly once", 2)
    back = client(port, "q2", V311, clean_session=False)
    back.connect()
    m = back.expect()
    assert (m.payload, m.qos) == (b"exactly once", 2)
    back.assert_nothing(0.2)


def test_v311_clean_session_discards_stored_session(port, raw, client):
    go_offline_raw(port, raw, rawmqtt.V311, "cs", [("cs/t", 1)])
    pub = client(port, "pub", V311)
    pub.connect()
    pub.publish("cs/t", b"dropped", 1)
    clean = client(port, "cs", V311, clean_session=True)
    assert clean.connect()[1] is False  # [MQTT-3.2.2-1]
    clean.disconnect()
    # ... and the old subscription is gone too [MQTT-3.1.2-6].
    again = client(port, "cs", V311, clean_session=False)
    assert again.connect()[1] is False
    pub.publish("cs/t", b"after", 1)
    again.subscribe("cs/marker", 1)
    pub.publish("cs/marker", b"m", 1)
    assert again.until("cs/marker") == []


def test_v311_unacked_qos1_redelivered_with_dup_after_reconnect(port, raw, client):
    # [MQTT-4.4.0-1]: on reconnect with CleanSession 0, unacknowledged PUBLISH packets are
    # resent with DUP=1 [MQTT-3.3.1-1].
    sub = raw(port, rawmqtt.V311)
    assert sub.connect(client_id="dup-redeliver", clean=False).rc == 0
    sub.subscribe([("redo/t", 1)])
    pub = client(port, "pub", V311)
    pub.connect()
    pub.publish("redo/t", b"unacked", 1)
    first = sub.expect_publish()
    assert (first.payload, first.dup) == (b"unacked", False)
    sub.abort()  # no PUBACK
    again = raw(port, rawmqtt.V311)
    assert again.connect(client_id="dup-redeliver", clean=False).session_present
    resent = again.expect_publish()
    assert (resent.payload, resent.qos, resent.dup) == (b"unacked", 1, True)
    assert resent.packet_id == first.packet_id
    again.send(rawmqtt.ack(rawmqtt.PUBACK, resent.packet_id))


# ---------------------------------------------------------------- MQTT 5 session expiry

def test_v5_session_kept_within_expiry_interval(port, raw, client):
    go_offline_raw(port, raw, rawmqtt.V5, "sei", [("sei/t", 1)], props=[(rawmqtt.SESSION_EXPIRY, 30)])
    pub = client(port, "pub", V5)
    pub.connect()
    pub.publish("sei/t", b"queued", 1)
    back = client(port, "sei", V5)
    _, session_present, _ = back.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=30))
    assert session_present is True
    assert back.expect().payload == b"queued"


def test_v5_session_gone_after_expiry_interval(port, raw, client):
    go_offline_raw(port, raw, rawmqtt.V5, "sei1", [("sei1/t", 1)], props=[(rawmqtt.SESSION_EXPIRY, 1)])
    pub = client(port, "pub", V5)
    pub.connect()
    pub.publish("sei1/t", b"lost with the session", 1)
    time.sleep(1.6)  # the interval under test (1 s) must elapse
    back = client(port, "sei1", V5)
    _, session_present, _ = back.connect(clean_start=False)
    assert session_present is False  # [MQTT-3.1.2-23]: session discarded after expiry
    back.subscribe("sei1/marker", 1)
    pub.publish("sei1/marker", b"m", 1)
    assert back.until("sei1/marker") == []


def test_v5_session_expiry_zero_ends_session_at_disconnect(port, raw, client):
    go_offline_raw(port, raw, rawmqtt.V5, "sei0", [("sei0/t", 1)])  # no property = 0
    back = client(port, "sei0", V5)
    assert back.connect(clean_start=False)[1] is False


def test_v5_disconnect_can_shorten_session_expiry(port, raw, client):
    c = raw(port, rawmqtt.V5)
    assert c.connect(client_id="shorten", clean=False, props=[(rawmqtt.SESSION_EXPIRY, 60)]).rc == 0
    c.subscribe([("sh/t", 1)])
    c.disconnect(0, [(rawmqtt.SESSION_EXPIRY, 0)])  # MQTT 5 §3.14.2.2.2
    c.read_until_closed()
    back = client(port, "shorten", V5)
    assert back.connect(clean_start=False)[1] is False


def test_v5_clean_start_discards_session(port, raw, client):
    go_offline_raw(port, raw, rawmqtt.V5, "cstart", [("cstart/t", 1)], props=[(rawmqtt.SESSION_EXPIRY, 60)])
    pub = client(port, "pub", V5)
    pub.connect()
    pub.publish("cstart/t", b"dropped", 1)
    back = client(port, "cstart", V5)
    _, session_present, _ = back.connect(clean_start=True, properties=connect_props(SessionExpiryInterval=60))
    assert session_present is False  # [MQTT-3.1.2-4]
    back.subscribe("cstart/marker", 1)
    pub.publish("cstart/marker", b"m", 1)
    assert back.until("cstart/marker") == []


def test_v5_qos0_queued_for_offline_session(port, raw, client):
    go_offline_raw(port, raw, rawmqtt.V5, "v5q0", [("v5q0/t", 2)], props=[(rawmqtt.SESSION_EXPIRY, 60)])
    pub = client(port, "pub", V5)
    pub.connect()
    for q in (0, 1, 2):
        pub.publish("v5q0/t", f"q{q}".encode(), q)
    back = client(port, "v5q0", V5)
    assert back.connect(clean_start=False)[1] is True
    assert [(m.payload, m.qos) for m in back.expect_n(3)] == [(b"q0", 0), (b"q1", 1), (b"q2", 2)]


# ---------------------------------------------------------------- shared subscriptions

@MODERN
def test_shared_subscription_round_robin(port, client, version):
    members = [client(port, f"m{i}", version) for i in range(2)]
    for m in members:
        m.connect()
        assert m.subscribe("$share/g/sh/t", 1) == [1]
    plain = client(port, "plain", version)
    plain.connect()
    plain.subscribe("sh/t", 1)
    pub = client(port, "pub", version)
    pub.connect()
    n = 20
    for i in range(n):
        pub.publish("sh/t", str(i).encode(), 1)

    assert sorted(int(m.payload) for m in plain.expect_n(n)) == list(range(n))
    # Each message goes to exactly one member of the group (MQTT 5 §4.8.2).
    got = []
    deadline = time.monotonic() + 5
    while len(got) < n and time.monotonic() < deadline:
        for i, m in enumerate(members):
            while not m.messages.empty():
                got.append((i, int(m.messages.get().payload)))
    assert sorted(p for _, p in got) == list(range(n)), got
    for m in members:
        m.assert_nothing(0.1)
    counts = [sum(1 for i, _ in got if i == k) for k in range(2)]
    assert min(counts) >= n // 4, f"not balanced: {counts}"
    # Round robin (the default strategy) alternates members.
    by_payload = [i for i, _ in sorted(got, key=lambda x: x[1])]
    switches = sum(1 for a, b in zip(by_payload, by_payload[1:]) if a != b)
    assert switches >= n // 2, f"members do not alternate: {by_payload}"


def test_shared_subscription_groups_are_independent(port, client):
    a, b = client(port, "ga", V5), client(port, "gb", V5)
    for c, f in ((a, "$share/g1/ind/#"), (b, "$share/g2/ind/#")):
        c.connect()
        c.subscribe(f, 1)
    pub = client(port, "pub", V5)
    pub.connect()
    for i in range(4):
        pub.publish(f"ind/{i}", b"x", 1)
    assert len(a.expect_n(4)) == 4 and len(b.expect_n(4)) == 4


def test_shared_subscription_gets_no_retained_messages_on_subscribe(port, client):
    # MQTT 5 §3.3.1.3 / §4.8.2: retained messages are sent when a new *non-shared*
    # subscription is made; they are not sent to a shared subscription.
    pub = client(port, "pub", V5)
    pub.connect()
    pub.publish("shr/t", b"retained", 1, retain=True)
    m = client(port, "member", V5)
    m.connect()
    m.subscribe("$share/g/shr/t", 1)
    pub.publish("shr/t", b"live", 1)
    assert [x.payload for x in m.expect_n(1)] == [b"live"]


def test_shared_subscription_unsubscribe(port, client):
    a, b = client(port, "ua", V5), client(port, "ub", V5)
    for c in (a, b):
        c.connect()
        c.subscribe("$share/g/us/t", 1)
    assert a.unsubscribe("$share/g/us/t") == [0]
    pub = client(port, "pub", V5)
    pub.connect()
    for i in range(4):
        pub.publish("us/t", str(i).encode(), 1)
    assert [m.payload for m in b.expect_n(4)] == [b"0", b"1", b"2", b"3"]
    a.assert_nothing(0.1)


def test_shared_subscription_member_leaving_redistributes(port, raw, client):
    a = raw(port, rawmqtt.V5)
    assert a.connect(client_id="la").rc == 0
    a.subscribe([("$share/g/lv/t", 1)])
    b = client(port, "lb", V5)
    b.connect()
    b.subscribe("$share/g/lv/t", 1)
    a.disconnect()
    a.read_until_closed()
    pub = client(port, "pub", V5)
    pub.connect()
    for i in range(4):
        pub.publish("lv/t", str(i).encode(), 1)
    assert [m.payload for m in b.expect_n(4)] == [b"0", b"1", b"2", b"3"]
