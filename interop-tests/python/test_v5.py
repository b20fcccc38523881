"""MQTT 5 features: properties, expiry, subscription options and identifiers, topic aliases,
flow control, packet size limits, server-side limits announced in CONNACK, enhanced auth."""

import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

import rawmqtt
from clients import V311, V5, props


def connect_props(**kw):
    return props(PacketTypes.CONNECT, **kw)


def pair(port, client, sub_props=None):
    sub, pub = client(port, "sub", V5), client(port, "pub", V5)
    sub.connect(properties=sub_props)
    pub.connect()
    return sub, pub


# ---------------------------------------------------------------- message properties

def test_message_expiry_drops_expired_message_for_offline_session(port, raw, client):
    s = raw(port, rawmqtt.V5)
    assert s.connect(client_id="exp", clean=False, props=[(rawmqtt.SESSION_EXPIRY, 60)]).rc == 0
    s.subscribe([("exp/t", 1)])
    s.disconnect()
    s.read_until_closed()
    pub = client(port, "pub", V5)
    pub.connect()
    pub.publish("exp/t", b"short-lived", 1, properties=props(MessageExpiryInterval=1))
    pub.publish("exp/t", b"long-lived", 1, properties=props(MessageExpiryInterval=60))
    pub.publish("exp/t", b"forever", 1)
    time.sleep(2.0)  # let the 1 s expiry pass
    back = client(port, "exp", V5)
    assert back.connect(clean_start=False, properties=connect_props(SessionExpiryInterval=60))[1]
    got = back.expect_n(2)
    # [MQTT-3.3.2-5]: an expired message is not delivered to the subscriber.
    assert [m.payload for m in got] == [b"long-lived", b"forever"]
    # [MQTT-3.3.2-6]: the forwarded interval is the received one minus the time waited.
    assert 1 <= got[0].properties.MessageExpiryInterval <= 58
    assert not hasattr(got[1].properties, "MessageExpiryInterval")
    back.assert_nothing(0.2)


def test_message_expiry_forwarded_to_online_subscriber(port, client):
    sub, pub = pair(port, client)
    sub.subscribe("exp/live", 1)
    pub.publish("exp/live", b"x", 1, properties=props(MessageExpiryInterval=30))
    assert 0 < sub.expect().properties.MessageExpiryInterval <= 30


def test_retained_message_expires(port, client):
    pub = client(port, "pub", V5)
    pub.connect()
    pub.publish("exp/ret", b"stale", 1, retain=True, properties=props(MessageExpiryInterval=1))
    pub.publish("exp/ret2", b"fresh", 1, retain=True, properties=props(MessageExpiryInterval=60))
    time.sleep(1.6)
    s = client(port, "s", V5)
    s.connect()
    s.subscribe("exp/#", 1)
    m = s.expect()
    assert (m.topic, m.payload, m.retain) == ("exp/ret2", b"fresh", True)
    assert m.properties.MessageExpiryInterval <= 59
    pub.publish("exp/marker", b"m", 1)
    assert s.until("exp/marker") == []


def test_user_properties_passed_through_in_order(port, client):
    sub, pub = pair(port, client)
    sub.subscribe("up/t", 1)
    pairs = [("z", "1"), ("a", "2"), ("z", "3"), ("ünï", "cödé"), ("empty", "")]
    pub.publish("up/t", b"x", 1, properties=props(UserProperty=pairs))
    assert sub.expect().properties.UserProperty == pairs  # [MQTT-3.3.2-17], [MQTT-3.3.2-18]


def test_request_response_properties_passed_through(port, client):
    sub, pub = pair(port, client)
    sub.subscribe("rr/req", 2)
    p = props(ResponseTopic="rr/resp/42", CorrelationData=b"\x00\xffid-42", ContentType="text/plain; charset=utf-8",
              PayloadFormatIndicator=1)
    pub.publish("rr/req", "héllo".encode(), 2, properties=p)
    m = sub.expect()
    q = m.properties
    assert (q.ResponseTopic, q.CorrelationData) == ("rr/resp/42", b"\x00\xffid-42")  # [MQTT-3.3.2-15], -16
    assert q.ContentType == "text/plain; charset=utf-8"  # [MQTT-3.3.2-20]
    assert q.PayloadFormatIndicator == 1  # [MQTT-3.3.2-4]
    # The responder answers on the response topic with the correlation data.
    pub.subscribe("rr/resp/+", 1)
    sub.publish(q.ResponseTopic, b"reply", 1, properties=props(CorrelationData=q.CorrelationData))
    r = pub.expect()
    assert (r.topic, r.payload, r.properties.CorrelationData) == ("rr/resp/42", b"reply", b"\x00\xffid-42")


def test_properties_kept_in_retained_message(port, client):
    pub = client(port, "pub", V5)
    pub.connect()
    pub.publish("rp/t", b"{}", 1, retain=True,
                properties=props(ContentType="application/json", UserProperty=[("k", "v")]))
    s = client(port, "s", V5)
    s.connect()
    s.subscribe("rp/t", 1)
    m = s.expect()
    assert m.properties.ContentType == "application/json"
    assert m.properties.UserProperty == [("k", "v")]


def test_properties_reach_v311_subscriber_as_plain_message(port, client):
    sub = client(port, "old", V311)
    sub.connect()
    sub.subscribe("mix/t", 1)
    pub = client(port, "pub", V5)
    pub.connect()
    pub.publish("mix/t", b"payload", 1, properties=props(UserProperty=[("a", "b")], ContentType="x"))
    assert sub.expect().payload == b"payload"


# ---------------------------------------------------------------- subscription identifiers and options

def test_subscription_identifier(port, client):
    sub, pub = pair(port, client)
    sub.subscribe("sid/a", 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42))
    sub.subscribe("sid/plain", 1)
    pub.publish("sid/a", b"1", 1)
    pub.publish("sid/plain", b"2", 1)
    a, plain = sub.expect_n(2)
    assert a.properties.SubscriptionIdentifier == [42]  # [MQTT-3.3.4-3]
    assert not hasattr(plain.properties, "SubscriptionIdentifier")


def test_overlapping_subscriptions_one_copy_with_all_identifiers(port, client):
    # [MQTT-3.3.4-2]: delivered at the max QoS of the matching subscriptions;
    # [MQTT-3.3.4-4]: a single copy carries the identifiers of all matching subscriptions.
    sub, pub = pair(port, client)
    sub.subscribe("ov/+", 0, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=5))
    sub.subscribe("ov/t", 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=7))
    sub.subscribe("ov/#", 0)  # no identifier
    pub.publish("ov/t", b"x", 2)
    pub.publish("ov/marker", b"m", 0)
    got = sub.until("ov/marker")
    assert len(got) == 1, [(m.topic, m.properties) for m in got]
    assert sorted(got[0].properties.SubscriptionIdentifier) == [5, 7]
    assert got[0].qos == 1


def test_subscription_identifier_on_retained_delivery_and_replacement(port, client):
    sub, pub = pair(port, client)
    pub.publish("sidr/t", b"kept", 1, retain=True)
    sub.subscribe("sidr/t", 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=9))
    m = sub.expect()
    assert (m.payload, m.retain, m.properties.SubscriptionIdentifier) == (b"kept", True, [9])
    # Re-subscribing replaces the subscription, identifier included [MQTT-3.8.4-3].
    sub.subscribe("sidr/t", options=SubscribeOptions(qos=1, retainHandling=2),
                  properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=10))
    pub.publish("sidr/t", b"new", 1)
    assert sub.expect().properties.SubscriptionIdentifier == [10]


def test_no_local(port, client):
    me, other = pair(port, client)
    me.subscribe("nl/t", options=SubscribeOptions(qos=1, noLocal=True))
    me.publish("nl/t", b"mine", 1)
    other.publish("nl/t", b"theirs", 1)
    assert me.expect().payload == b"theirs"  # [MQTT-3.8.3-3]
    me.assert_nothing(0.2)


def test_without_no_local_own_messages_come_back(port, client):
    me = client(port, "me", V5)
    me.connect()
    me.subscribe("nl/echo", options=SubscribeOptions(qos=1, noLocal=False))
    me.publish("nl/echo", b"mine", 1)
    assert me.expect().payload == b"mine"


def test_suback_reason_codes(port, raw):
    # paho refuses to send an invalid filter, so this one is raw.
    r = raw(port, rawmqtt.V5)
    r.connect(client_id="s")
    codes = r.subscribe([("ok/q0", 0), ("ok/q2", 2), ("bad/#/x", 1), ("ok/q1", 1)])
    assert codes == [0, 2, 0x8F, 1]  # 0x8F Topic Filter invalid; the others granted


# ---------------------------------------------------------------- topic aliases

def test_topic_alias_client_to_server(port, client):
    sub, pub = pair(port, client)
    sub.subscribe("alias/#", 1)
    pub.publish("alias/one", b"1", 1, properties=props(TopicAlias=1))
    pub.publish("", b"2", 1, properties=props(TopicAlias=1))        # [MQTT-3.3.2-12]
    pub.publish("alias/two", b"3", 1, properties=props(TopicAlias=1))  # re-map alias 1
    pub.publish("", b"4", 1, properties=props(TopicAlias=1))
    got = [(m.topic, m.payload) for m in sub.expect_n(4)]
    assert got == [("alias/one", b"1"), ("alias/one", b"2"), ("alias/two", b"3"), ("alias/two", b"4")]


def _receive_with_aliases(port, raw, client, alias_max, topics):
    r = raw(port, rawmqtt.V5)
    props_ = [(rawmqtt.TOPIC_ALIAS_MAXIMUM, alias_max)] if alias_max is not None else []
    assert r.connect(client_id="aliased", props=props_).rc == 0
    r.subscribe([("sa/#", 0)])
    pub = client(port, "pub", V5)
    pub.connect()
    for t in topics:
        pub.publish(t, t.encode(), 0)
    aliases, resolved, used = {}, [], []
    for _ in topics:
        p = r.expect_publish()
        alias = p.props.get(rawmqtt.TOPIC_ALIAS)
        if alias is not None:
            used.append(alias)
            assert 1 <= alias <= (alias_max or 0), f"alias {alias} beyond the announced maximum {alias_max}"
            if p.topic:
                aliases[alias] = p.topic
            else:
                assert alias in aliases, f"empty topic with unestablished alias {alias}"
        else:
            assert p.topic, "empty topic without a topic alias"
        topic = p.topic or aliases[alias]
        assert p.payload == topic  # the alias resolves to the right topic
        resolved.append(topic.decode())
    assert resolved == topics
    return used


def test_server_uses_topic_aliases_when_client_allows(port, raw, client):
    topics = ["sa/a", "sa/a", "sa/b", "sa/a", "sa/b", "sa/c", "sa/a"]
    used = _receive_with_aliases(port, raw, client, 10, topics)
    assert used, "broker never used a topic alias toward the client"


def test_server_respects_small_topic_alias_maximum(port, raw, client):
    topics = ["sa/1", "sa/2", "sa/3", "sa/4", "sa/1", "sa/4", "sa/2", "sa/3"]
    _receive_with_aliases(port, raw, client, 2, topics)


@pytest.mark.parametrize("alias_max", [None, 0])
def test_server_sends_no_alias_when_client_did_not_allow(port, raw, client, alias_max):
    # [MQTT-3.1.2-26]: Topic Alias Maximum absent or 0 → the server sends no Topic Alias.
    used = _receive_with_aliases(port, raw, client, alias_max, ["sa/x", "sa/x", "sa/y"])
    assert used == []


# ---------------------------------------------------------------- flow control and sizes

def test_receive_maximum_one_still_delivers_everything_in_order(port, client):
    sub, pub = pair(port, client, connect_props(ReceiveMaximum=1))
    sub.subscribe("rm/t", 1)
    n = 30
    for i in range(n):
        pub.publish("rm/t", str(i).encode(), 1)
    assert [int(m.payload) for m in sub.expect_n(n)] == list(range(n))


def test_receive_maximum_bounds_unacknowledged_publishes(port, raw, client):
    # [MQTT-3.3.4-9]: the server sends no more than Receive Maximum unacknowledged QoS 1/2 PUBLISH.
    r = raw(port, rawmqtt.V5)
    assert r.connect(client_id="rm2", props=[(rawmqtt.RECEIVE_MAXIMUM, 2)]).rc == 0
    r.subscribe([("rm2/t", 1)])
    pub = client(port, "pub", V5)
    pub.connect()
    for i in range(6):
        pub.publish("rm2/t", str(i).encode(), 1)
    received = []
    while len(received) < 6:
        window = [r.expect_publish(), r.expect_publish()]
        with pytest.raises(TimeoutError):
            r.read(0.3)  # a third would exceed the window
        for p in window:
            received.append(int(p.payload))
            r.send(rawmqtt.ack(rawmqtt.PUBACK, p.packet_id))
    assert received == list(range(6))


def test_client_maximum_packet_size(port, client):
    # [MQTT-3.1.2-24]: the server does not send packets larger than the client's Maximum
    # Packet Size; it discards the message as if delivered [MQTT-3.1.2-25].
    sub, pub = pair(port, client, connect_props(MaximumPacketSize=100))
    sub.subscribe("mps/t", 1)
    pub.publish("mps/t", b"x" * 500, 1)
    pub.publish("mps/t", b"small", 1)
    m = sub.expect()
    assert m.payload == b"small"
    sub.assert_nothing(0.2)
    assert sub.c.is_connected()


def test_server_maximum_packet_size(start_broker, raw):
    b = start_broker({"TRIBUTARY_MQTT__MAX_PACKET_SIZE": "1024"})
    r = raw(b.port, rawmqtt.V5)
    ack = r.connect(client_id="big")
    assert ack.props[rawmqtt.MAXIMUM_PACKET_SIZE] == 1024
    r.publish("mps/in", b"y" * 2000, qos=0)
    packets = r.read_until_closed(3)
    # MQTT 5 §3.2.2.3.6: a packet over the limit → DISCONNECT 0x95 (Packet too large).
    assert [(p.type, rawmqtt.reason_code(p)) for p in packets] == [(rawmqtt.DISCONNECT, 0x95)]


def test_server_receive_maximum_enforced(start_broker, raw):
    # MQTT 5 §3.3.4: more unacknowledged incoming QoS 2 PUBLISH than the server's Receive
    # Maximum → DISCONNECT 0x93 (Receive Maximum exceeded).
    b = start_broker({"TRIBUTARY_MQTT__RECEIVE_MAXIMUM": "2"})
    r = raw(b.port, rawmqtt.V5)
    assert r.connect(client_id="flood").props[rawmqtt.RECEIVE_MAXIMUM] == 2
    for pid in (1, 2):
        r.publish("rx/t", b"q2", qos=2, packet_id=pid)
        assert r.expect(rawmqtt.PUBREC).body[:2] == bytes([0, pid])
    r.publish("rx/t", b"q2", qos=2, packet_id=3)  # no PUBREL sent for 1 and 2
    packets = r.read_until_closed(3)
    assert [(p.type, rawmqtt.reason_code(p)) for p in packets] == [(rawmqtt.DISCONNECT, 0x93)]


# ---------------------------------------------------------------- CONNECT / CONNACK properties

def test_request_problem_information(start_broker, raw):
    # [MQTT-3.1.2-29]: with Request Problem Information 0 the server sends no Reason String
    # on packets other than PUBLISH, CONNACK and DISCONNECT.
    b = start_broker(config='[[authorization.rules]]\npermission = "deny"\naction = "publish"\n'
                            'topics = ["secret/#"]\n')
    results = {}
    for rpi in (1, 0):
        r = raw(b.port, rawmqtt.V5)
        assert r.connect(client_id=f"rpi{rpi}", props=[(rawmqtt.REQUEST_PROBLEM_INFO, rpi)]).rc == 0
        r.publish("secret/x", b"x", qos=1, packet_id=7)
        p = r.expect(rawmqtt.PUBACK)
        assert p.body[2] == 0x87  # Not authorized
        results[rpi] = rawmqtt.read_properties(p.body, 3)[0] if len(p.body) > 3 else {}
    assert rawmqtt.REASON_STRING not in results[0]
    assert rawmqtt.REASON_STRING in results[1]  # informative when asked (the default)


def test_server_keep_alive(start_broker, client):
    b = start_broker({"TRIBUTARY_MQTT__SERVER_KEEP_ALIVE": "60"})
    c = client(b.port, "ska", V5, keepalive=10)
    _, _, p = c.connect()
    assert p.ServerKeepAlive == 60  # [MQTT-3.2.2-21]


def test_server_keep_alive_is_enforced(start_broker, raw):
    # [MQTT-3.2.2-22]: the client must use the server's value, so the server enforces it.
    b = start_broker({"TRIBUTARY_MQTT__SERVER_KEEP_ALIVE": "1"})
    r = raw(b.port, rawmqtt.V5)
    ack = r.connect(client_id="ska1", keepalive=600)
    assert ack.props[rawmqtt.SERVER_KEEP_ALIVE] == 1
    start = time.monotonic()
    packets = r.read_until_closed(4)
    assert 1.0 <= time.monotonic() - start <= 3.0
    assert [(p.type, rawmqtt.reason_code(p)) for p in packets] in ([], [(rawmqtt.DISCONNECT, 0x8D)])


def test_session_expiry_capped_and_announced(port, raw):
    # [MQTT-3.2.2-?]/§3.2.2.3.2: when the server uses a different Session Expiry Interval it
    # says so in CONNACK. Default max_session_expiry is 2h.
    ack = raw(port, rawmqtt.V5).connect(client_id="cap", props=[(rawmqtt.SESSION_EXPIRY, 0xFFFFFFFF)])
    assert ack.props[rawmqtt.SESSION_EXPIRY] == 7200


def test_connack_announces_configured_limits(start_broker, raw):
    b = start_broker({"TRIBUTARY_MQTT__MAX_QOS_ALLOWED": "1", "TRIBUTARY_MQTT__RETAIN_AVAILABLE": "false",
                      "TRIBUTARY_MQTT__WILDCARD_SUBSCRIPTION": "false",
                      "TRIBUTARY_MQTT__SHARED_SUBSCRIPTION": "false", "TRIBUTARY_MQTT__MAX_TOPIC_ALIAS": "3"})
    r = raw(b.port, rawmqtt.V5)
    ack = r.connect(client_id="limits")
    assert ack.props[rawmqtt.MAXIMUM_QOS] == 1
    assert ack.props[rawmqtt.RETAIN_AVAILABLE] == 0
    assert ack.props[rawmqtt.WILDCARD_AVAILABLE] == 0
    assert ack.props[rawmqtt.SHARED_SUB_AVAILABLE] == 0
    assert ack.props[rawmqtt.TOPIC_ALIAS_MAXIMUM] == 3
    # SUBACK: QoS 2 request granted 1; wildcard → 0xA2; shared → 0x9E.
    assert r.subscribe([("l/q2", 2), ("l/#", 0), ("$share/g/l", 0)]) == [1, 0xA2, 0x9E]


def test_qos_above_maximum_qos_disconnects(start_broker, raw):
    # [MQTT-3.2.2-11]: a PUBLISH above the announced Maximum QoS → DISCONNECT 0x9B.
    b = start_broker({"TRIBUTARY_MQTT__MAX_QOS_ALLOWED": "1"})
    r = raw(b.port, rawmqtt.V5)
    r.connect(client_id="q2")
    r.publish("q/t", b"x", qos=2, packet_id=1)
    assert [(p.type, rawmqtt.reason_code(p)) for p in r.read_until_closed()] == [(rawmqtt.DISCONNECT, 0x9B)]


def test_retain_when_unavailable_disconnects(start_broker, raw):
    # [MQTT-3.2.2-14]: a retained PUBLISH when Retain Available is 0 → DISCONNECT 0x9A.
    b = start_broker({"TRIBUTARY_MQTT__RETAIN_AVAILABLE": "false"})
    r = raw(b.port, rawmqtt.V5)
    r.connect(client_id="ret")
    r.publish("r/t", b"x", qos=0, retain=True)
    assert [(p.type, rawmqtt.reason_code(p)) for p in r.read_until_closed()] == [(rawmqtt.DISCONNECT, 0x9A)]


# ---------------------------------------------------------------- enhanced authentication

def test_unknown_authentication_method_refused(port, client):
    c = client(port, "auth", V5)
    rc, _, _ = c.connect(properties=connect_props(AuthenticationMethod="SCRAM-SHA-1"), check=False)
    assert rc == 0x8C  # Bad authentication method (MQTT 5 §4.12)
    assert c.disconnected.wait(3)


def test_unknown_authentication_method_refused_raw(port, raw):
    r = raw(port, rawmqtt.V5)
    ack = r.connect(client_id="auth", props=[(rawmqtt.AUTH_METHOD, "SCRAM-SHA-1"), (rawmqtt.AUTH_DATA, b"n,,n=u")])
    assert ack.rc == 0x8C
    assert r.read_until_closed() == []  # [MQTT-3.2.2-7]: close after a failing CONNACK


def test_auth_packet_without_authentication_method(port, raw):
    # [MQTT-4.12.0-2] forbids it; the server treats it as a Protocol Error (DISCONNECT 0x82).
    r = raw(port, rawmqtt.V5)
    assert r.connect(client_id="auth2").rc == 0
    r.send(rawmqtt.packet(rawmqtt.AUTH, 0, bytes([0x18, 0x00])))
    assert [(p.type, rawmqtt.reason_code(p)) for p in r.read_until_closed()] == [(rawmqtt.DISCONNECT, 0x82)]



def test_server_maximum_packet_size_boundary(start_broker, raw):
    # Maximum Packet Size is the total packet size, fixed header included (MQTT 5 §3.2.2.3.6).
    b = start_broker({"TRIBUTARY_MQTT__MAX_PACKET_SIZE": "1024"})
    for total, accepted in ((1024, True), (1025, False)):
        r = raw(b.port, rawmqtt.V5)
        r.connect(client_id=f"edge{total}")
        # 1 (type) + 2 (remaining length) + 3 (topic "t") + 1 (no properties) + payload
        pkt = rawmqtt.publish("t", b"x" * (total - 7), version=rawmqtt.V5)
        assert len(pkt) == total
        r.send(pkt + rawmqtt.packet(rawmqtt.PINGREQ, 0, b""))
        if accepted:
            assert r.read().type == rawmqtt.PINGRESP
        else:
            assert [(p.type, rawmqtt.reason_code(p)) for p in r.read_until_closed()] == [(rawmqtt.DISCONNECT, 0x95)]


def test_client_maximum_packet_size_boundary(port, raw, client):
    s = raw(port, rawmqtt.V5)
    s.connect(client_id="edge", props=[(rawmqtt.MAXIMUM_PACKET_SIZE, 100)])
    s.subscribe([("m/t", 0)])
    pub = client(port, "pub", V5)
    pub.connect()
    # PUBLISH to the subscriber: 1 + 1 + 5 ("m/t") + 1 (properties) + payload = 8 + payload.
    for n in (91, 92, 93, 94):
        pub.publish("m/t", b"y" * n, 0)
    pub.publish("m/t", b"end", 0)
    sizes = []
    while True:
        p = s.expect_publish()
        if p.payload == b"end":
            break
        sizes.append(len(p.payload))
    assert sizes == [91, 92]


@pytest.mark.parametrize("requested,announced", [(120, 60), (0, 60), (5, None)])
def test_max_keep_alive_caps_client_keep_alive(start_broker, raw, requested, announced):
    # mqtt.max_keep_alive: a longer or zero keep-alive is cut to the cap and announced as
    # Server Keep Alive; a shorter one is kept (no property) [MQTT-3.2.2-21].
    b = start_broker({"TRIBUTARY_MQTT__MAX_KEEP_ALIVE": "60"})
    ack = raw(b.port, rawmqtt.V5).connect(client_id=f"cap{requested}", keepalive=requested)
    assert ack.props.get(rawmqtt.SERVER_KEEP_ALIVE) == announced


def test_disconnect_setting_session_expiry_after_zero_is_protocol_error(port, raw, client):
    # [MQTT-3.14.2-2]: Session Expiry 0 in CONNECT and non-zero in DISCONNECT is a Protocol
    # Error: the server answers DISCONNECT 0x82, and as the DISCONNECT was not valid the will
    # is published.
    w = client(port, "w", V5)
    w.connect()
    w.subscribe("sei/will", 1)
    c = raw(port, rawmqtt.V5)
    assert c.connect(client_id="sei-err", will=rawmqtt.Will("sei/will", b"not a clean goodbye", 1)).rc == 0
    c.disconnect(0, [(rawmqtt.SESSION_EXPIRY, 60)])
    assert [(p.type, rawmqtt.reason_code(p)) for p in c.read_until_closed()] == [(rawmqtt.DISCONNECT, 0x82)]
    assert w.expect(3).payload == b"not a clean goodbye"


def test_pubrec_with_error_reason_ends_qos2_flow(port, raw, client):
    # MQTT 5 §4.3.3: a PUBREC with Reason Code >= 0x80 ends the exchange: no PUBREL, and the
    # slot counts as acknowledged for Receive Maximum [MQTT-3.3.4-9].
    s = raw(port, rawmqtt.V5)
    s.connect(client_id="rec-err", props=[(rawmqtt.RECEIVE_MAXIMUM, 1)])
    s.subscribe([("recerr/t", 2)])
    pub = client(port, "pub", V5)
    pub.connect()
    pub.publish("recerr/t", b"refused", 2)
    pub.publish("recerr/t", b"next", 2)
    p = s.expect_publish()
    assert p.payload == b"refused"
    s.send(rawmqtt.packet(rawmqtt.PUBREC, 0, p.packet_id.to_bytes(2, "big") + b"\x80"))
    nxt = s.expect_publish()  # not a PUBREL
    assert nxt.payload == b"next"


def test_message_expires_while_waiting_for_the_inflight_window(port, raw, client):
    # [MQTT-3.3.2-5]: a message whose expiry passes before onward delivery starts is not sent,
    # also when it waits behind a full Receive Maximum window of a connected client.
    s = raw(port, rawmqtt.V5)
    s.connect(client_id="window", props=[(rawmqtt.RECEIVE_MAXIMUM, 1)])
    s.subscribe([("win/t", 1)])
    pub = client(port, "pub", V5)
    pub.connect()
    pub.publish("win/t", b"first", 1)
    pub.publish("win/t", b"expiring", 1, properties=props(MessageExpiryInterval=1))
    pub.publish("win/t", b"third", 1)
    first = s.expect_publish()
    assert first.payload == b"first"
    time.sleep(1.6)  # hold the window past the 1 s expiry
    s.send(rawmqtt.ack(rawmqtt.PUBACK, first.packet_id))
    assert s.expect_publish().payload == b"third"
