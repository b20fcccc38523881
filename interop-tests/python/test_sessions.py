"""Session takeover, persistent sessions, session expiry, shared subscriptions."""

import queue
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
    got = []  # (member index, payload)
    deadline = time.monotonic() + 5
    while len(got) < n and time.monotonic() < deadline:
        for i, m in enumerate(members):
            try:
                got.append((i, int(m.messages.get(timeout=0.02).payload)))
            except queue.Empty:
                pass
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


# ---------------------------------------------------------------- redelivery and ordering

@pytest.mark.parametrize("version", [rawmqtt.V311, rawmqtt.V5], ids=["3.1.1", "5"])
def test_inflight_then_queued_messages_redelivered_in_order(port, raw, client, version):
    # [MQTT-4.4.0-1] resend unacknowledged PUBLISH (DUP=1) on reconnect, then the queue,
    # preserving order [MQTT-4.6.0-2].
    props_ = {"props": [(rawmqtt.SESSION_EXPIRY, 60)]} if version == rawmqtt.V5 else {}
    sub = raw(port, version)
    assert sub.connect(client_id="order", clean=False, **props_).rc == 0
    sub.subscribe([("ord/t", 1)])
    pub = client(port, "pub", V5)
    pub.connect()
    pub.publish("ord/t", b"0", 1)
    assert sub.expect_publish().payload == b"0"
    sub.abort()  # not acknowledged
    for i in (1, 2, 3):
        pub.publish("ord/t", str(i).encode(), 1)
    back = raw(port, version)
    assert back.connect(client_id="order", clean=False, **props_).session_present
    got = []
    for _ in range(4):
        p = back.expect_publish()
        got.append((p.payload, p.dup))
        back.send(rawmqtt.ack(rawmqtt.PUBACK, p.packet_id))
    # Order is kept and the unacknowledged one is resent with DUP. Messages 1-3
    # carry DUP too when they were written to the aborted socket before the
    # broker saw it go (a race with the abort); either is correct.
    assert [payload for payload, _ in got] == [b"0", b"1", b"2", b"3"]
    assert got[0][1] is True


def test_qos2_pubrel_resent_after_reconnect(port, raw, client):
    # [MQTT-4.4.0-1]: after PUBREC, the server resends PUBREL (not the PUBLISH) on reconnect.
    sub = raw(port, rawmqtt.V311)
    assert sub.connect(client_id="q2rel", clean=False).rc == 0
    sub.subscribe([("q2rel/t", 2)])
    pub = client(port, "pub", V311)
    pub.connect()
    pub.publish("q2rel/t", b"two", 2)
    p = sub.expect_publish()
    sub.send(rawmqtt.ack(rawmqtt.PUBREC, p.packet_id))
    rel = sub.expect(rawmqtt.PUBREL)
    assert rel.flags == 0x02 and rel.body[:2] == p.packet_id.to_bytes(2, "big")
    sub.abort()  # before PUBCOMP
    back = raw(port, rawmqtt.V311)
    assert back.connect(client_id="q2rel", clean=False).session_present
    rel = back.expect(rawmqtt.PUBREL)
    assert rel.body[:2] == p.packet_id.to_bytes(2, "big")
    back.send(rawmqtt.ack(rawmqtt.PUBCOMP, p.packet_id))
    with pytest.raises(TimeoutError):
        back.read(0.3)  # and the message itself is not delivered again


def test_takeover_moves_inflight_messages(port, raw, client):
    first = raw(port, rawmqtt.V311)
    assert first.connect(client_id="mover", clean=False).rc == 0
    first.subscribe([("mv/t", 1)])
    pub = client(port, "pub", V311)
    pub.connect()
    pub.publish("mv/t", b"in flight", 1)
    assert first.expect_publish().payload == b"in flight"  # not acknowledged
    second = raw(port, rawmqtt.V311)
    assert second.connect(client_id="mover", clean=False).session_present
    p = second.expect_publish()
    assert (p.payload, p.dup) == (b"in flight", True)


def test_v311_retry_interval_resends_while_connected(start_broker, raw, client):
    # Config retry_interval: MQTT 3.1.1 QoS 1 PUBLISH unacknowledged are resent with DUP.
    b = start_broker({"TRIBUTARY_MQTT__RETRY_INTERVAL": "1s"})
    sub = raw(b.port, rawmqtt.V311)
    sub.connect(client_id="retry")
    sub.subscribe([("retry/t", 1)])
    pub = client(b.port, "pub", V311)
    pub.connect()
    pub.publish("retry/t", b"again", 1)
    first = sub.expect_publish()
    again = sub.expect_publish(3)
    assert (again.payload, again.dup, again.packet_id) == (b"again", True, first.packet_id)


def test_v5_no_resend_while_connected(start_broker, raw, client):
    # MQTT 5 [MQTT-4.4.0-1]: resending is only allowed on reconnect, never during a connection.
    b = start_broker({"TRIBUTARY_MQTT__RETRY_INTERVAL": "1s"})
    sub = raw(b.port, rawmqtt.V5)
    sub.connect(client_id="noretry")
    sub.subscribe([("retry/t", 1)])
    pub = client(b.port, "pub", V5)
    pub.connect()
    pub.publish("retry/t", b"once", 1)
    sub.expect_publish()
    with pytest.raises(TimeoutError):
        sub.read(2.0)


@pytest.mark.parametrize("policy,expected", [("drop_oldest", [b"2", b"3", b"4"]), ("drop_newest", [b"0", b"1", b"2"])])
def test_offline_queue_overflow_policy(start_broker, raw, client, policy, expected):
    b = start_broker({"TRIBUTARY_MQTT__MAX_MQUEUE_LEN": "3", "TRIBUTARY_MQTT__MQUEUE_OVERFLOW": policy})
    go_offline_raw(b.port, raw, rawmqtt.V311, "ovf", [("ovf/t", 1)])
    pub = client(b.port, "pub", V311)
    pub.connect()
    for i in range(5):
        pub.publish("ovf/t", str(i).encode(), 1)
    back = client(b.port, "ovf", V311, clean_session=False)
    back.connect()
    assert [m.payload for m in back.expect_n(3)] == expected
    back.assert_nothing(0.2)


def test_max_inflight_window_for_v311(start_broker, raw, client):
    b = start_broker({"TRIBUTARY_MQTT__MAX_INFLIGHT": "2"})
    sub = raw(b.port, rawmqtt.V311)
    sub.connect(client_id="win")
    sub.subscribe([("win/t", 1)])
    pub = client(b.port, "pub", V311)
    pub.connect()
    for i in range(4):
        pub.publish("win/t", str(i).encode(), 1)
    first = [sub.expect_publish(), sub.expect_publish()]
    with pytest.raises(TimeoutError):
        sub.read(0.3)
    for p in first:
        sub.send(rawmqtt.ack(rawmqtt.PUBACK, p.packet_id))
    rest = [sub.expect_publish(), sub.expect_publish()]
    assert [p.payload for p in first + rest] == [b"0", b"1", b"2", b"3"]


@pytest.mark.parametrize("sub_qos,pub_qos", [(2, 0), (1, 0), (1, 2)])
def test_upgrade_qos(start_broker, client, sub_qos, pub_qos):
    # upgrade_qos = true delivers at the subscription's QoS, as EMQX's `upgrade_qos` ("force
    # upgrade of QoS level according to subscription"). NB default.toml describes it
    # differently ("Deliver at the publish QoS even when the subscription's QoS is lower").
    b = start_broker({"TRIBUTARY_MQTT__UPGRADE_QOS": "true"})
    sub, pub = client(b.port, "s", V311), client(b.port, "p", V311)
    sub.connect()
    pub.connect()
    sub.subscribe("up/t", sub_qos)
    pub.publish("up/t", b"x", pub_qos)
    assert sub.expect().qos == sub_qos


def test_v5_queued_messages_respect_receive_maximum_and_packet_size(port, raw, client):
    go_offline_raw(port, raw, rawmqtt.V5, "limits", [("lim/t", 1)], props=[(rawmqtt.SESSION_EXPIRY, 60)])
    pub = client(port, "pub", V5)
    pub.connect()
    pub.publish("lim/t", b"a", 1)
    pub.publish("lim/t", b"B" * 500, 1)  # larger than the client will accept
    pub.publish("lim/t", b"c", 1)
    pub.publish("lim/t", b"d", 1)
    back = raw(port, rawmqtt.V5)
    ack = back.connect(client_id="limits", clean=False, props=[
        (rawmqtt.SESSION_EXPIRY, 60), (rawmqtt.RECEIVE_MAXIMUM, 1), (rawmqtt.MAXIMUM_PACKET_SIZE, 100)])
    assert ack.session_present
    got = []
    for _ in range(3):
        p = back.expect_publish()
        with pytest.raises(TimeoutError):
            back.read(0.2)  # Receive Maximum 1: nothing more until acknowledged
        got.append(p.payload)
        back.send(rawmqtt.ack(rawmqtt.PUBACK, p.packet_id))
    assert got == [b"a", b"c", b"d"]


def test_v5_queued_messages_keep_subscription_identifier_and_aliases_reset(port, raw, client):
    # Topic alias mappings do not survive the connection [MQTT-3.3.2-7]: the first PUBLISH
    # after reconnecting must carry the topic name.
    sub = raw(port, rawmqtt.V5)
    sub.connect(client_id="sidq", clean=False, props=[(rawmqtt.SESSION_EXPIRY, 60), (rawmqtt.TOPIC_ALIAS_MAXIMUM, 5)])
    sub.subscribe([("sidq/t", 1)], props=[(rawmqtt.SUBSCRIPTION_ID, 3)])
    pub = client(port, "pub", V5)
    pub.connect()
    for i in range(2):
        pub.publish("sidq/t", b"live", 1)
        sub.send(rawmqtt.ack(rawmqtt.PUBACK, sub.expect_publish().packet_id))
    sub.disconnect()
    sub.read_until_closed()
    pub.publish("sidq/t", b"queued", 1)
    back = raw(port, rawmqtt.V5)
    assert back.connect(client_id="sidq", clean=False,
                        props=[(rawmqtt.SESSION_EXPIRY, 60), (rawmqtt.TOPIC_ALIAS_MAXIMUM, 5)]).session_present
    p = back.expect_publish()
    assert (p.topic, p.payload) == (b"sidq/t", b"queued")
    assert p.props.get(rawmqtt.SUBSCRIPTION_ID) == [3]


def test_v5_client_topic_alias_not_carried_to_new_connection(port, raw):
    c = raw(port, rawmqtt.V5)
    c.connect(client_id="alias1")
    c.publish("al/t", b"x", props=[(rawmqtt.TOPIC_ALIAS, 1)])
    c.disconnect()
    c.read_until_closed()
    c2 = raw(port, rawmqtt.V5)
    c2.connect(client_id="alias1")
    c2.publish("", b"y", props=[(rawmqtt.TOPIC_ALIAS, 1)])  # unknown on this connection
    packets = c2.read_until_closed()
    assert [(p.type, rawmqtt.reason_code(p)) for p in packets] == [(rawmqtt.DISCONNECT, 0x82)]


def test_will_delivered_to_offline_persistent_subscriber(port, raw, client):
    go_offline_raw(port, raw, rawmqtt.V311, "heir", [("estate/#", 1)])
    dying = raw(port, rawmqtt.V311)
    dying.connect(client_id="dying", will=rawmqtt.Will("estate/will", b"all to heir", 1))
    dying.abort()
    back = client(port, "heir", V311, clean_session=False)
    # The will is published asynchronously after the abort; reconnect until it has been queued.
    deadline = time.monotonic() + 3
    while True:
        back.connect()
        try:
            assert back.expect(0.3).payload == b"all to heir"
            return
        except AssertionError:
            assert time.monotonic() < deadline, "will not delivered to the persistent session"
            back.disconnect()


def test_v311_takeover_with_clean_session_discards_subscriptions(port, raw, client):
    first = raw(port, rawmqtt.V311)
    assert first.connect(client_id="tkc", clean=False).rc == 0
    first.subscribe([("tkc/t", 1)])
    second = raw(port, rawmqtt.V311)
    ack = second.connect(client_id="tkc", clean=True)
    assert (ack.rc, ack.session_present) == (0, False)
    assert first.read_until_closed() == []
    pub = client(port, "pub", V311)
    pub.connect()
    pub.publish("tkc/t", b"old subscription", 1)
    with pytest.raises(TimeoutError):
        second.read(0.3)
