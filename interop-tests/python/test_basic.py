"""Connect, publish/subscribe, wildcards, $SYS, retained messages.

MQTT 3.1.1 (OASIS 2014) and MQTT 5.0 (OASIS 2019) conformance statements
are cited as [MQTT-x.y.z-n].
"""

import time

import pytest
from paho.mqtt.subscribeoptions import SubscribeOptions

import rawmqtt
from clients import V31, V311, V5, VERSIONS

ALL = pytest.mark.parametrize("version", [V31, V311, V5], ids=["3.1", "3.1.1", "5"])
MODERN = pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5"])


# ---------------------------------------------------------------- CONNECT / CONNACK

@ALL
def test_connect_accepted(port, client, version):
    rc, session_present, _ = client(port, "c1", version).connect()
    assert rc == 0
    assert session_present is False  # [MQTT-3.2.2-1]: clean session → session present 0


@pytest.mark.parametrize("version", [rawmqtt.V31, rawmqtt.V311], ids=["3.1", "3.1.1"])
def test_connack_bytes_v3(port, raw, version):
    c = raw(port, version)
    c.send(rawmqtt.connect(version, client_id="bytes"))
    p = c.read()
    assert (p.type, p.flags, p.body) == (rawmqtt.CONNACK, 0, b"\x00\x00")


def test_connack_v5_properties(port, raw):
    c = raw(port, rawmqtt.V5)
    ack = c.connect(client_id="props")
    assert ack.rc == 0 and not ack.session_present
    # The broker supports retain, wildcards, shared subscriptions and QoS 2 by default:
    # absent properties mean "available" [MQTT-3.2.2.3].
    assert ack.props.get(rawmqtt.RETAIN_AVAILABLE, 1) == 1
    assert ack.props.get(rawmqtt.WILDCARD_AVAILABLE, 1) == 1
    assert ack.props.get(rawmqtt.SHARED_SUB_AVAILABLE, 1) == 1
    assert rawmqtt.MAXIMUM_QOS not in ack.props
    assert rawmqtt.ASSIGNED_CLIENT_ID not in ack.props  # the client gave one


def test_v31_client_id_longer_than_23_refused(port, raw):
    # MQTT 3.1 §3.1: "If the Client ID contains more than 23 characters, the server
    # responds to the CONNECT message with a CONNACK return code 2: Identifier Rejected."
    c = raw(port, rawmqtt.V31)
    ack = c.connect(client_id="x" * 24)
    assert ack.rc == 2
    c.read_until_closed()


def test_v31_client_id_of_23_accepted(port, raw):
    ack = raw(port, rawmqtt.V31).connect(client_id="x" * 23)
    assert ack.rc == 0


def test_v31_empty_client_id_refused(port, raw):
    # MQTT 3.1: the client id is 1-23 characters; an empty one is rejected with rc 2.
    c = raw(port, rawmqtt.V31)
    ack = c.connect(client_id="")
    assert ack.rc == 2
    c.read_until_closed()


def test_v311_empty_client_id_without_clean_session_refused(port, raw):
    # [MQTT-3.1.3-8]: zero-byte ClientId with CleanSession 0 → CONNACK 0x02, then close.
    c = raw(port, rawmqtt.V311)
    ack = c.connect(client_id="", clean=False)
    assert (ack.rc, ack.session_present) == (2, False)
    c.read_until_closed()


def test_v311_empty_client_id_with_clean_session_accepted(port, raw, client):
    # [MQTT-3.1.3-6]: the server assigns a unique id; the connection works.
    c = raw(port, rawmqtt.V311)
    assert c.connect(client_id="", clean=True).rc == 0
    assert c.subscribe([("anon/t", 1)]) == [1]
    pub = client(port, "pub")
    pub.connect()
    pub.publish("anon/t", b"hello", 1)
    msg = c.expect_publish()
    assert (msg.topic, msg.payload) == (b"anon/t", b"hello")


def test_v5_empty_client_id_gets_assigned_identifier(port, client):
    a, b = client(port, "", V5), client(port, "", V5)
    ids = []
    for c in (a, b):
        rc, _, props = c.connect()
        assert rc == 0
        assigned = getattr(props, "AssignedClientIdentifier", None)  # [MQTT-3.2.2-16]
        assert assigned, "no Assigned Client Identifier in CONNACK"
        ids.append(assigned)
    assert ids[0] != ids[1]
    # Both clients work under their assigned identifiers.
    a.subscribe("assigned/t", 0)
    b.publish("assigned/t", b"x")
    assert a.expect().payload == b"x"


def test_unsupported_protocol_level_refused(port, raw):
    # [MQTT-3.1.2-2]: unsupported protocol level → CONNACK 0x01 then close.
    c = raw(port)
    c.send(rawmqtt.connect(6, client_id="lvl6"))
    packets = c.read_until_closed()
    if packets:
        assert packets[0].type == rawmqtt.CONNACK
        assert packets[0].body[1] in (0x01, 0x84)


# ---------------------------------------------------------------- QoS round trips

@pytest.mark.parametrize("qos", [0, 1, 2])
@ALL
def test_round_trip(port, client, version, qos):
    sub, pub = client(port, "sub", version), client(port, "pub", version)
    sub.connect()
    pub.connect()
    assert sub.subscribe("rt/topic", qos) == [qos]
    payloads = [f"m{i}-q{qos}".encode() for i in range(5)]
    for p in payloads:
        pub.publish("rt/topic", p, qos)
    got = sub.expect_n(5)
    assert [m.payload for m in got] == payloads  # ordered per topic [MQTT-4.6.0-6]
    assert all(m.qos == qos and m.topic == "rt/topic" and not m.retain for m in got)
    sub.assert_nothing(0.2)  # exactly once, even for QoS 2


@pytest.mark.parametrize("sub_qos,pub_qos", [(0, 1), (0, 2), (1, 2), (2, 1), (2, 0), (1, 0)])
@MODERN
def test_delivered_at_min_of_publish_and_granted_qos(port, client, version, sub_qos, pub_qos):
    # [MQTT-3.8.4-6] / MQTT 5 §3.8.4: delivered QoS = min(publish QoS, granted QoS).
    sub, pub = client(port, "sub", version), client(port, "pub", version)
    sub.connect()
    pub.connect()
    assert sub.subscribe("down/t", sub_qos) == [sub_qos]
    pub.publish("down/t", b"x", pub_qos)
    assert sub.expect().qos == min(sub_qos, pub_qos)


def test_large_payload_round_trip(port, client):
    sub, pub = client(port, "sub", V5), client(port, "pub", V5)
    sub.connect()
    pub.connect()
    sub.subscribe("big", 1)
    payload = bytes(range(256)) * 1024  # 256 KiB, every byte value
    pub.publish("big", payload, 1)
    assert sub.expect().payload == payload


def test_mixed_versions_interoperate(port, client):
    subs = [client(port, f"s{v}", v) for v in (V31, V311, V5)]
    for s in subs:
        s.connect()
        s.subscribe("mixed/#", 1)
    for i, v in enumerate((V31, V311, V5)):
        p = client(port, f"p{v}", v)
        p.connect()
        p.publish(f"mixed/{i}", str(i).encode(), 1)
    for s in subs:
        assert sorted(m.payload for m in s.expect_n(3)) == [b"0", b"1", b"2"]


# ---------------------------------------------------------------- wildcards and $SYS

TOPICS = ["sport", "sport/", "sport/tennis", "sport/tennis/player2", "sport/tennis/player1/ranking",
          "sport/golf/player1", "/finance", "finance", "$SYS/x/player1"]
SENTINEL = "sport/tennis/player1"  # matches every filter below, published last

# filter -> topics (from TOPICS) it matches, MQTT 3.1.1 §4.7 / MQTT 5 §4.7.
FILTERS = {
    "sport/tennis/player1": [],
    "sport/#": ["sport", "sport/", "sport/tennis", "sport/tennis/player2", "sport/tennis/player1/ranking",
                "sport/golf/player1"],  # '#' also matches the parent level [MQTT 4.7.1.2]
    "sport/tennis/#": ["sport/tennis", "sport/tennis/player2", "sport/tennis/player1/ranking"],
    "sport/+/player1": ["sport/golf/player1"],
    "sport/tennis/+": ["sport/tennis/player2"],
    "+/+/+": ["sport/tennis/player2", "sport/golf/player1"],
    "+/tennis/#": ["sport/tennis", "sport/tennis/player2", "sport/tennis/player1/ranking"],
    "+/+/player1": ["sport/golf/player1"],  # not $SYS/x/player1 [MQTT-4.7.2-1]
    "#": [t for t in TOPICS if not t.startswith("$")],  # [MQTT-4.7.2-1]
}


@MODERN
def test_wildcard_matching(port, client, version):
    subs = {}
    for i, f in enumerate(FILTERS):
        s = client(port, f"w{i}", version)
        s.connect()
        assert s.subscribe(f, 1) == [1]
        subs[f] = s
    pub = client(port, "wpub", version)
    pub.connect()
    for t in TOPICS + [SENTINEL]:
        pub.publish(t, t.encode(), 1)
    for f, s in subs.items():
        got = [m.topic for m in s.until(SENTINEL)]
        assert got == FILTERS[f], f"filter {f!r}"


@MODERN
def test_plus_matches_empty_level(port, client, version):
    s = client(port, "s", version)
    s.connect()
    s.subscribe([("+/+", 1), ("/+", 1)])
    pub = client(port, "p", version)
    pub.connect()
    pub.publish("/finance", b"1", 1)  # matches +/+ and /+
    pub.publish("a/b/c", b"2", 1)     # matches neither
    pub.publish("x/", b"3", 1)        # matches +/+
    pub.publish("end/end", b"end", 1)
    got = [(m.topic, m.payload) for m in s.until("end/end")]
    # /finance matches two subscriptions: 3.1.1 allows one copy per subscription, MQTT 5 one copy.
    assert set(got) == {("/finance", b"1"), ("x/", b"3")}
    assert got.count(("x/", b"3")) == 1


@MODERN
def test_sys_topics_not_matched_by_leading_wildcards(port, client, version):
    # [MQTT-4.7.2-1]: '#' and '+' at the first level do not match topics starting with '$'.
    # ($SYS itself is the broker's: clients may not publish there, so the
    # test uses another '$' topic.)
    everything, dollar_all, plus = client(port, "all", version), client(port, "dollar", version), \
        client(port, "plus", version)
    for c, f in ((everything, "#"), (dollar_all, "$app/#"), (plus, "+/test")):
        c.connect()
        c.subscribe(f, 1)
    pub = client(port, "p", version)
    pub.connect()
    pub.publish("$app/test", b"dollar", 1)
    pub.publish("marker/test", b"m", 1)
    assert everything.until("marker/test") == []
    assert plus.until("marker/test") == []
    m = dollar_all.expect()
    assert (m.topic, m.payload) == ("$app/test", b"dollar")


# ---------------------------------------------------------------- retained messages

@MODERN
def test_retained_set_replace_clear(port, client, version):
    pub = client(port, "pub", version)
    pub.connect()

    def fresh_subscriber(name):
        """What a new subscriber gets on subscribe, before a live marker message."""
        s = client(port, name, version)
        s.connect()
        s.subscribe("ret/t", 1)
        pub.publish("ret/t", b"live", 1)
        out = []
        while True:
            m = s.expect()
            if m.payload == b"live":
                assert m.retain is False  # established subscription [MQTT-3.3.1-9]
                return out
            out.append((m.payload, m.retain, m.qos))

    pub.publish("ret/t", b"one", 1, retain=True)
    assert fresh_subscriber("s1") == [(b"one", True, 1)]  # [MQTT-3.3.1-6], retain flag set [MQTT-3.3.1-8]
    pub.publish("ret/t", b"two", 1, retain=True)
    assert fresh_subscriber("s2") == [(b"two", True, 1)]  # replaced [MQTT-3.3.1-5]
    pub.publish("ret/t", b"", 1, retain=True)
    assert fresh_subscriber("s3") == []  # cleared [MQTT-3.3.1-10], [MQTT-3.3.1-11]


@MODERN
def test_retained_delivered_at_min_qos_and_to_wildcards(port, client, version):
    pub = client(port, "pub", version)
    pub.connect()
    for i in range(3):
        pub.publish(f"rw/{i}", f"r{i}".encode(), 2, retain=True)
    s = client(port, "s", version)
    s.connect()
    s.subscribe("rw/+", 1)
    got = sorted((m.topic, m.payload, m.retain, m.qos) for m in s.expect_n(3))
    assert got == [(f"rw/{i}", f"r{i}".encode(), True, 1) for i in range(3)]
    s.assert_nothing(0.2)


@MODERN
def test_empty_retained_publish_is_forwarded_to_current_subscribers(port, client, version):
    # MQTT 3.1.1 §3.3.1.3: a zero-byte retained PUBLISH is "processed as normal by the Server
    # and sent to Clients with a subscription matching the topic name".
    s, pub = client(port, "s", version), client(port, "p", version)
    s.connect()
    pub.connect()
    s.subscribe("ret/empty", 1)
    pub.publish("ret/empty", b"", 1, retain=True)
    m = s.expect()
    assert (m.topic, m.payload, m.retain) == ("ret/empty", b"", False)


@MODERN
def test_retained_message_not_sent_again_to_existing_session_on_publish(port, client, version):
    s, pub = client(port, "s", version), client(port, "p", version)
    s.connect()
    pub.connect()
    s.subscribe("ret/live", 1)
    pub.publish("ret/live", b"v1", 1, retain=True)
    m = s.expect()
    assert (m.payload, m.retain) == (b"v1", False)  # [MQTT-3.3.1-9]
    s.assert_nothing(0.2)


def _retain_test_setup(port, client):
    pub = client(port, "pub", V5)
    pub.connect()
    pub.publish("rh/t", b"kept", 1, retain=True)
    s = client(port, "s", V5)
    s.connect()
    return pub, s


def _retained_before_marker(s, pub):
    pub.publish("rh/marker", b"m", 1)
    return [(m.topic, m.payload, m.retain) for m in s.until("rh/marker")]


def test_v5_retain_handling_0_sends_on_every_subscribe(port, client):
    pub, s = _retain_test_setup(port, client)
    s.subscribe("rh/marker", 1)
    for _ in range(2):
        s.subscribe("rh/t", options=SubscribeOptions(qos=1, retainHandling=0))
        assert _retained_before_marker(s, pub) == [("rh/t", b"kept", True)]


def test_v5_retain_handling_1_sends_only_for_new_subscription(port, client):
    pub, s = _retain_test_setup(port, client)
    s.subscribe("rh/marker", 1)
    s.subscribe("rh/t", options=SubscribeOptions(qos=1, retainHandling=1))
    assert _retained_before_marker(s, pub) == [("rh/t", b"kept", True)]
    s.subscribe("rh/t", options=SubscribeOptions(qos=1, retainHandling=1))  # already exists
    assert _retained_before_marker(s, pub) == []  # [MQTT-3.3.1-10] (v5)


def test_v5_retain_handling_2_never_sends_on_subscribe(port, client):
    pub, s = _retain_test_setup(port, client)
    s.subscribe("rh/marker", 1)
    s.subscribe("rh/t", options=SubscribeOptions(qos=1, retainHandling=2))
    assert _retained_before_marker(s, pub) == []  # [MQTT-3.3.1-11] (v5)
    pub.publish("rh/t", b"new", 1)  # but the subscription works
    assert s.expect().payload == b"new"


@pytest.mark.parametrize("rap", [False, True])
def test_v5_retain_as_published(port, client, rap):
    s, pub = client(port, "s", V5), client(port, "p", V5)
    s.connect()
    pub.connect()
    s.subscribe("rap/t", options=SubscribeOptions(qos=1, retainAsPublished=rap))
    pub.publish("rap/t", b"r", 1, retain=True)
    pub.publish("rap/t", b"n", 1, retain=False)
    got = [(m.payload, m.retain) for m in s.expect_n(2)]
    # [MQTT-3.3.1-12]: RAP=0 → RETAIN 0; [MQTT-3.3.1-13]: RAP=1 → RETAIN as published.
    assert got == [(b"r", rap), (b"n", False)]


def test_v5_retained_on_subscribe_has_retain_flag_even_without_rap(port, client):
    pub, s = _retain_test_setup(port, client)
    s.subscribe("rh/t", options=SubscribeOptions(qos=1, retainAsPublished=False))
    m = s.expect()
    assert (m.payload, m.retain) == (b"kept", True)


def test_retained_survives_publisher_disconnect(port, client):
    pub = client(port, "pub", V311)
    pub.connect()
    pub.publish("ret/gone", b"still here", 1, retain=True)
    pub.disconnect()
    s = client(port, "s", V311)
    s.connect()
    s.subscribe("ret/#", 0)
    m = s.expect()
    assert (m.topic, m.payload, m.retain, m.qos) == ("ret/gone", b"still here", True, 0)


@pytest.mark.parametrize("name", list(VERSIONS))
def test_unsubscribe_stops_delivery(port, client, name):
    version = VERSIONS[name]
    s, pub = client(port, "s", version), client(port, "p", version)
    s.connect()
    pub.connect()
    s.subscribe([("u/a", 1), ("u/b", 1)])
    s.unsubscribe("u/a")
    pub.publish("u/a", b"a", 1)
    pub.publish("u/b", b"b", 1)
    assert [m.topic for m in s.until("u/b")] == []


def test_v5_unsubscribe_reason_codes(port, client):
    s = client(port, "s", V5)
    s.connect()
    s.subscribe("u/x", 1)
    assert s.unsubscribe(["u/x", "u/never"]) == [0x00, 0x11]  # Success, No subscription existed


# ---------------------------------------------------------------- retained matching corner cases

def test_retained_sys_topics_not_sent_to_leading_wildcards(port, client):
    # [MQTT-4.7.2-1] applies to retained messages sent on subscribe too.
    pub = client(port, "pub", V5)
    pub.connect()
    pub.publish("$app/ret", b"dollar", 1, retain=True)
    pub.publish("plain/ret", b"plain", 1, retain=True)
    for f, expected in (("#", [("plain/ret", b"plain")]), ("+/ret", [("plain/ret", b"plain")]),
                        ("$share/g/#", [])):
        s = client(port, f"s{len(f)}", V5)
        s.connect()
        s.subscribe([(f, 1), ("marker", 1)])
        pub.publish("marker", b"m", 1)
        assert [(m.topic, m.payload) for m in s.until("marker")] == expected, f
    s = client(port, "sys", V5)
    s.connect()
    s.subscribe("$app/ret", 1)
    assert s.expect().payload == b"dollar"


def test_retained_matching_parent_level_and_empty_levels(port, client):
    pub = client(port, "pub", V311)
    pub.connect()
    for t in ("sport", "sport/", "a//b", "a/x/b", "a/x/y/b"):
        pub.publish(t, t.encode(), 1, retain=True)
    cases = {"sport/#": {"sport", "sport/"}, "a/+/b": {"a//b", "a/x/b"}, "+": {"sport"},
             "a/#": {"a//b", "a/x/b", "a/x/y/b"}, "+/": {"sport/"}}
    for i, (f, expected) in enumerate(cases.items()):
        s = client(port, f"s{i}", V311)
        s.connect()
        s.subscribe(f, 1)
        got = {m.topic for m in s.expect_n(len(expected))}
        assert got == expected, f
        s.assert_nothing(0.1)


def test_retained_payload_over_limit_not_stored_but_delivered(start_broker, client):
    b = start_broker({"TRIBUTARY_RETAINER__MAX_PAYLOAD_SIZE": "10"})
    live = client(b.port, "live", V311)
    live.connect()
    live.subscribe("lim/#", 1)
    pub = client(b.port, "pub", V311)
    pub.connect()
    pub.publish("lim/big", b"x" * 20, 1, retain=True)
    pub.publish("lim/small", b"y" * 5, 1, retain=True)
    assert [m.topic for m in live.expect_n(2)] == ["lim/big", "lim/small"]
    late = client(b.port, "late", V311)
    late.connect()
    late.subscribe("lim/#", 1)
    assert late.expect().topic == "lim/small"
    late.assert_nothing(0.2)


# ---------------------------------------------------------------- configured limits, auth, ACL

def test_anonymous_refused_when_not_allowed(start_broker, raw):
    # default.toml: `allow_anonymous` = "Accept clients that present no credentials."
    # Refusal is CONNACK 0x05 Not authorized (3.1.1) / 0x87 Not authorized (5), then close.
    b = start_broker(config="[authentication]\nallow_anonymous = false\n")
    for version, code in ((rawmqtt.V311, 0x05), (rawmqtt.V5, 0x87)):
        c = raw(b.port, version)
        ack = c.connect(client_id=f"anon{version}")
        assert ack.rc == code, f"MQTT level {version}: anonymous client got CONNACK {ack.rc:#x}"
        c.read_until_closed()


@pytest.mark.parametrize("version,code", [(rawmqtt.V311, 0x02), (rawmqtt.V5, 0x85)], ids=["3.1.1", "5"])
def test_client_id_longer_than_configured_maximum(start_broker, raw, version, code):
    b = start_broker({"TRIBUTARY_MQTT__MAX_CLIENTID_LEN": "23"})
    assert raw(b.port, version).connect(client_id="x" * 23).rc == 0
    c = raw(b.port, version)
    assert c.connect(client_id="y" * 24).rc == code  # Identifier rejected / Client Identifier not valid
    c.read_until_closed()


def test_listener_connection_limit(start_broker, raw):
    b = start_broker({"TRIBUTARY_LISTENERS__TCP__DEFAULT__MAX_CONNECTIONS": "2"})

    def connect_when_a_slot_is_free(client_id):
        # The fixture's readiness probe, or a connection just closed, may hold a slot for a moment.
        deadline = time.monotonic() + 3
        while True:
            c = raw(b.port, rawmqtt.V5)
            try:
                assert c.connect(client_id=client_id).rc == 0
                return c
            except (rawmqtt.Closed, OSError):
                assert time.monotonic() < deadline, "no connection slot became free"
                time.sleep(0.02)

    keep = [connect_when_a_slot_is_free(f"k{i}") for i in range(2)]
    extra = raw(b.port, rawmqtt.V5)
    with pytest.raises((rawmqtt.Closed, OSError)):
        extra.connect(client_id="extra")
    keep[0].disconnect()
    keep[0].read_until_closed()
    keep[0].close()
    connect_when_a_slot_is_free("later")


ACL = '''
[[authorization.rules]]
permission = "deny"
action = "subscribe"
topics = ["private/#"]

[[authorization.rules]]
permission = "deny"
action = "publish"
topics = ["readonly/#"]
'''


def test_acl_denies_subscribe_and_publish(start_broker, client):
    b = start_broker(config=ACL)
    for version, denied in ((V311, 0x80), (V5, 0x87)):
        c = client(b.port, f"acl{version}", version)
        c.connect()
        assert c.subscribe([("private/x", 1), ("readonly/x", 1)]) == [denied, 1]
        c.publish("readonly/x", b"dropped", 1)  # acknowledged but not routed
        c.publish("public/marker", b"m", 1)
        c.subscribe("public/marker", 1)
        c.publish("public/marker", b"m", 1)
        assert [m.topic for m in c.until("public/marker")] == []
        assert c.c.is_connected()


def test_acl_deny_action_disconnect(start_broker, raw):
    # deny_action = "disconnect": a denied PUBLISH closes an MQTT 3.1.1 connection (which has no
    # way to report the denial). MQTT 5 clients get PUBACK 0x87 instead (not tested here).
    b = start_broker(config='[authorization]\ndeny_action = "disconnect"\n' + ACL)
    c = raw(b.port, rawmqtt.V311)
    assert c.connect(client_id="acld").rc == 0
    c.publish("readonly/x", b"x", qos=1, packet_id=1)
    assert c.read_until_closed() == []


def test_sys_topics_published_at_sys_interval(start_broker, client):
    # default.toml: node.sys_interval = "How often $SYS topics are published";
    # node.name is "a level of $SYS/brokers/{name}/... topics".
    b = start_broker({"TRIBUTARY_NODE__SYS_INTERVAL": "1s"})
    s = client(b.port, "sys", V5)
    s.connect()
    s.subscribe("$SYS/#", 0)
    m = s.expect(3.5)
    assert m.topic.startswith("$SYS/brokers/tributary@127.0.0.1/"), m.topic


# ---------------------------------------------------------------- subscription replacement and literal unsubscribe

@MODERN
def test_resubscribe_replaces_subscription_and_resends_retained(port, client, version):
    # [MQTT-3.8.4-3]: an identical filter replaces the existing subscription (new QoS), the
    # retained messages are re-sent, and the flow of publications is not interrupted.
    pub = client(port, "pub", version)
    pub.connect()
    pub.publish("rs/t", b"kept", 2, retain=True)
    s = client(port, "s", version)
    s.connect()
    s.subscribe("rs/t", 0)
    m = s.expect()
    assert (m.payload, m.retain, m.qos) == (b"kept", True, 0)
    assert s.subscribe("rs/t", 1) == [1]
    m = s.expect()
    assert (m.payload, m.retain, m.qos) == (b"kept", True, 1)
    pub.publish("rs/t", b"live", 2)
    m = s.expect()
    assert (m.payload, m.qos) == (b"live", 1)
    s.assert_nothing(0.2)  # one subscription, one copy


@MODERN
def test_unsubscribe_matches_filters_literally(port, client, version):
    # [MQTT-3.10.4-1]: UNSUBSCRIBE compares filters character by character; 'u/+' does not
    # remove 'u/x'.
    s, pub = client(port, "s", version), client(port, "p", version)
    s.connect()
    pub.connect()
    s.subscribe("ul/x", 1)
    s.unsubscribe("ul/+")
    pub.publish("ul/x", b"still subscribed", 1)
    assert s.expect().payload == b"still subscribed"


@MODERN
def test_unicode_topics_and_empty_payload(port, client, version):
    s, pub = client(port, "s", version), client(port, "p", version)
    s.connect()
    pub.connect()
    s.subscribe("uni/+/温度", 1)
    pub.publish("uni/🏠 room/温度", b"", 1)
    m = s.expect()
    assert (m.topic, m.payload) == ("uni/🏠 room/温度", b"")


def test_long_topic_round_trip(port, client):
    s, pub = client(port, "s", V5), client(port, "p", V5)
    s.connect()
    pub.connect()
    topic = "long/" + "/".join(["level"] * 100) + "/" + "x" * 30000
    s.subscribe("long/#", 1)
    pub.publish(topic, b"deep", 1)
    assert s.expect().topic == topic
