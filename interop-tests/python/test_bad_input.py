"""Hostile and malformed input: the broker closes the offending connection (MQTT 5: after a
DISCONNECT with a reason code), does not allocate what a header merely claims, and keeps
serving everyone else, retained messages intact."""

import random
import socket
import struct
import time

import pytest

import rawmqtt
from clients import V311, V5

MALFORMED, PROTOCOL_ERROR = 0x81, 0x82
RAW_MODERN = pytest.mark.parametrize("version", [rawmqtt.V311, rawmqtt.V5], ids=["3.1.1", "5"])


class Bystander:
    """A well-behaved subscriber and a retained message, checked after the abuse."""

    def __init__(self, port, client):
        self.sub = client(port, "bystander", V5)
        self.sub.connect()
        self.sub.subscribe("healthy/#", 1)
        self.pub = client(port, "bystander-pub", V311)
        self.pub.connect()
        self.pub.publish("healthy/retained", b"intact", 1, retain=True)
        assert self.sub.expect().payload == b"intact"
        self.port, self.client = port, client

    def check(self):
        assert self.sub.c.is_connected() and self.pub.c.is_connected()
        self.pub.publish("healthy/live", b"still routing", 1)
        assert self.sub.expect().payload == b"still routing"
        late = self.client(self.port, "late", V5)
        late.connect()
        late.subscribe("healthy/retained", 1)
        m = late.expect()
        assert (m.payload, m.retain) == (b"intact", True)


@pytest.fixture
def bystander(port, client):
    return Bystander(port, client)


def connected(port, raw, version, client_id="bad"):
    c = raw(port, version)
    assert c.connect(client_id=client_id).rc == 0
    return c


def assert_rejected(c, version, reasons):
    """The broker closes; an MQTT 5 connection first gets DISCONNECT with one of `reasons`."""
    packets = c.read_until_closed(3)
    got = [(p.type, rawmqtt.reason_code(p)) for p in packets]
    if version == rawmqtt.V5:
        assert len(got) == 1 and got[0][0] == rawmqtt.DISCONNECT and got[0][1] in reasons, \
            f"expected DISCONNECT with {[hex(r) for r in reasons]}, got {[(t, hex(r)) for t, r in got]}"
    else:
        assert got == [], f"MQTT 3.1.1 has no error packet after CONNACK; got {got}"


# ---------------------------------------------------------------- before CONNECT

@pytest.mark.parametrize("garbage", [
    b"\xff" * 16,
    b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"\x10\x00",                      # CONNECT with an empty body
    b"\x10\x04\x00\x04MQ",            # CONNECT cut inside the protocol name
    bytes(random.Random(7).randrange(256) for _ in range(512)),
], ids=["ff", "http", "empty-connect", "short-connect", "random"])
def test_garbage_closes_connection(port, raw, bystander, garbage):
    c = raw(port)
    c.send(garbage)
    packets = c.read_until_closed(3)
    assert all(p.type == rawmqtt.CONNACK and p.body[1] != 0 for p in packets), packets
    bystander.check()


@pytest.mark.parametrize("first", [
    rawmqtt.packet(rawmqtt.PINGREQ, 0, b""),
    rawmqtt.subscribe([("a/b", 0)]),
    rawmqtt.publish("a/b", b"x"),
    rawmqtt.disconnect(),
], ids=["pingreq", "subscribe", "publish", "disconnect"])
def test_first_packet_not_connect_closes(port, raw, client, first):
    # [MQTT-3.1.0-1]: the first packet from the client MUST be CONNECT.
    w = client(port, "w", V311)
    w.connect()
    w.subscribe("a/#", 0)
    c = raw(port)
    c.send(first)
    assert c.read_until_closed(3) == []
    w.publish("a/marker", b"m")
    assert w.until("a/marker") == []  # the PUBLISH was not routed


@RAW_MODERN
def test_second_connect_is_a_protocol_violation(port, raw, version):
    # [MQTT-3.1.0-2]: a second CONNECT is a protocol violation; disconnect.
    c = connected(port, raw, version)
    c.send(rawmqtt.connect(version, client_id="again"))
    assert_rejected(c, version, [PROTOCOL_ERROR])


def test_wrong_protocol_name_refused(port, raw):
    # [MQTT-3.1.2-1]; MQTT 5 §3.1.2.1: may answer CONNACK 0x84, then MUST close.
    c = raw(port)
    c.send(rawmqtt.packet(rawmqtt.CONNECT, 0, rawmqtt.string("MQTX") + bytes([4, 2, 0, 60]) + rawmqtt.string("id")))
    packets = c.read_until_closed(3)
    assert all(p.type == rawmqtt.CONNACK and p.body[1] in (0x01, 0x84) for p in packets), packets


@pytest.mark.parametrize("version", [rawmqtt.V31, rawmqtt.V311], ids=["3.1", "3.1.1"])
def test_connect_reserved_flag_closes(port, raw, version):
    # [MQTT-3.1.2-3]: the reserved CONNECT flag must be 0, else disconnect.
    c = raw(port)
    c.send(rawmqtt.connect(version, client_id="rsv", flags_extra=0x01))
    assert c.read_until_closed(3) == []


def test_v5_connect_reserved_flag_is_malformed(port, raw):
    c = raw(port, rawmqtt.V5)
    c.send(rawmqtt.connect(rawmqtt.V5, client_id="rsv", flags_extra=0x01))
    packets = c.read_until_closed(3)
    # MQTT 5 §3.1.2.3: Malformed Packet; the server may send CONNACK 0x81 first [MQTT-3.1.4-1/2].
    assert all(p.type == rawmqtt.CONNACK and p.body[1] == MALFORMED for p in packets), packets


def test_v311_password_without_username_closes(port, raw):
    # [MQTT-3.1.2-22]: password flag set with username flag 0 → invalid, close.
    c = raw(port)
    c.send(rawmqtt.connect(rawmqtt.V311, client_id="pw", password=b"secret"))
    packets = c.read_until_closed(3)
    assert all(p.type == rawmqtt.CONNACK and p.body[1] != 0 for p in packets), packets


@pytest.mark.parametrize("flags", [0x08, 0x18, 0x20], ids=["will-qos1-no-will", "will-qos3", "will-retain-no-will"])
def test_v311_inconsistent_will_flags_close(port, raw, flags):
    # [MQTT-3.1.2-13], [MQTT-3.1.2-14], [MQTT-3.1.2-15].
    c = raw(port)
    c.send(rawmqtt.connect(rawmqtt.V311, client_id="wf", flags_extra=flags))
    packets = c.read_until_closed(3)
    assert all(p.type == rawmqtt.CONNACK and p.body[1] != 0 for p in packets), packets


# ---------------------------------------------------------------- malformed packets after CONNECT

@RAW_MODERN
def test_publish_with_qos_3_closes(port, raw, bystander, version):
    # [MQTT-3.3.1-4]: both QoS bits set → close (MQTT 5: Malformed Packet 0x81).
    c = connected(port, raw, version)
    body = rawmqtt.string("healthy/qos3") + b"\x00\x01" + (b"\x00" if version == rawmqtt.V5 else b"") + b"x"
    c.send(rawmqtt.packet(rawmqtt.PUBLISH, 0x06, body))
    assert_rejected(c, version, [MALFORMED, PROTOCOL_ERROR])
    bystander.check()


@RAW_MODERN
def test_oversized_remaining_length_refused_without_allocation(broker, raw, bystander, version):
    # A header claiming 200 MB: refused from the fixed header alone (max packet size 1 MiB),
    # not buffered. MQTT 5: DISCONNECT 0x95 (Packet too large).
    c = connected(broker.port, raw, version)
    rss_before = broker.rss_kib()
    c.send(b"\x30" + rawmqtt.varint(200_000_000) + b"\x00\x05hello")
    assert_rejected(c, version, [0x95])  # at once: the body is never awaited
    assert broker.rss_kib() - rss_before < 50 * 1024, "broker memory grew by tens of MB"
    bystander.check()


def test_oversized_connect_refused_without_allocation(broker, raw, bystander):
    c = raw(broker.port)
    rss_before = broker.rss_kib()
    c.send(b"\x10" + rawmqtt.varint(200_000_000) + b"\x00\x04MQTT\x05")
    packets = c.read_until_closed(2)
    assert all(p.type == rawmqtt.CONNACK and p.body[1] != 0 for p in packets), packets
    assert broker.rss_kib() - rss_before < 50 * 1024
    bystander.check()


@RAW_MODERN
def test_remaining_length_over_four_bytes_is_malformed(port, raw, version):
    # MQTT §1.5.5 / §2.2.3: the Variable Byte Integer has at most 4 bytes.
    c = connected(port, raw, version)
    c.send(b"\x30\xff\xff\xff\xff\x01")
    assert_rejected(c, version, [MALFORMED, 0x95])


@pytest.mark.parametrize("topic", [b"bad/\xff\xfe", b"bad/\xc0\xaf", b"bad/\xed\xa0\x80", b"bad/\x00nul"],
                         ids=["ff-fe", "overlong", "surrogate", "nul"])
@RAW_MODERN
def test_publish_with_invalid_utf8_topic_closes(port, raw, client, bystander, version, topic):
    # [MQTT-1.5.3-1] ill-formed UTF-8 (incl. surrogates), [MQTT-1.5.3-2] U+0000: close
    # (MQTT 5: Malformed Packet 0x81).
    w = client(port, "w", V311)
    w.connect()
    w.subscribe("bad/#", 1)
    c = connected(port, raw, version)
    c.publish(topic, b"x", qos=1)
    assert_rejected(c, version, [MALFORMED])
    w.publish("bad/marker", b"m", 1)
    assert w.until("bad/marker") == []  # nothing was routed
    bystander.check()


@RAW_MODERN
def test_publish_topic_with_wildcard_closes(port, raw, version):
    # [MQTT-3.3.2-2]: no wildcards in a PUBLISH topic (MQTT 5: 0x90 Topic Name invalid).
    c = connected(port, raw, version)
    c.publish("a/+/b", b"x", qos=0)
    assert_rejected(c, version, [0x90, MALFORMED, PROTOCOL_ERROR])


@RAW_MODERN
def test_publish_with_empty_topic_and_no_alias_closes(port, raw, version):
    # [MQTT-4.7.3-1] (3.1.1); MQTT 5 §3.3.2.1: empty topic without Topic Alias is a Protocol Error.
    c = connected(port, raw, version)
    c.publish("", b"x", qos=0)
    assert_rejected(c, version, [PROTOCOL_ERROR, 0x90, MALFORMED])


@RAW_MODERN
def test_qos1_publish_with_packet_id_zero_closes(port, raw, version):
    # [MQTT-2.3.1-1]: QoS > 0 packets carry a non-zero Packet Identifier.
    c = connected(port, raw, version)
    c.publish("pid/zero", b"x", qos=1, packet_id=0)
    assert_rejected(c, version, [MALFORMED, PROTOCOL_ERROR])


@RAW_MODERN
def test_subscribe_with_wrong_fixed_header_flags_closes(port, raw, version):
    # [MQTT-3.8.1-1]: SUBSCRIBE flags must be 0010.
    c = connected(port, raw, version)
    good = rawmqtt.subscribe([("a/b", 0)], 1, version)
    c.send(bytes([0x80]) + good[1:])
    assert_rejected(c, version, [MALFORMED])


@RAW_MODERN
def test_subscribe_without_filters_closes(port, raw, version):
    # [MQTT-3.8.3-3] (3.1.1) / MQTT 5 §3.8.3: at least one filter.
    c = connected(port, raw, version)
    body = b"\x00\x01" + (b"\x00" if version == rawmqtt.V5 else b"")
    c.send(rawmqtt.packet(rawmqtt.SUBSCRIBE, 0x02, body))
    assert_rejected(c, version, [PROTOCOL_ERROR, MALFORMED])


@pytest.mark.parametrize("options", [0x03, 0xC0, 0x30], ids=["qos3", "reserved-bits", "retain-handling-3"])
@RAW_MODERN
def test_subscribe_with_invalid_options_closes(port, raw, version, options):
    # [MQTT-3.8.3-4] (3.1.1: QoS byte other than 0-2 / reserved bits); MQTT 5 [MQTT-3.8.3-5] reserved
    # bits, Retain Handling 3 and QoS 3 are Malformed / Protocol Errors.
    if version == rawmqtt.V311 and options == 0x30:
        options = 0x10  # 3.1.1: any upper bit is reserved
    c = connected(port, raw, version)
    c.send(rawmqtt.subscribe([("a/b", options)], 1, version))
    assert_rejected(c, version, [MALFORMED, PROTOCOL_ERROR])


def test_v5_no_local_on_shared_subscription(port, raw):
    # [MQTT-3.8.3-4] (v5): No Local on a shared subscription is a Protocol Error.
    c = connected(port, raw, rawmqtt.V5)
    c.send(rawmqtt.subscribe([("$share/g/t", 0x04 | 1)], 1, rawmqtt.V5))
    assert_rejected(c, rawmqtt.V5, [PROTOCOL_ERROR])


def test_v5_subscription_identifier_zero(port, raw):
    # MQTT 5 §3.8.2.1.2: a Subscription Identifier of 0 is a Protocol Error.
    c = connected(port, raw, rawmqtt.V5)
    c.send(rawmqtt.subscribe([("a/b", 0)], 1, rawmqtt.V5, props=[(rawmqtt.SUBSCRIPTION_ID, 0)]))
    assert_rejected(c, rawmqtt.V5, [PROTOCOL_ERROR, MALFORMED])


def test_v5_topic_alias_zero(port, raw):
    # [MQTT-3.3.2-8]: Topic Alias 0 is not permitted. The spec defines 0x94 (Topic Alias invalid)
    # for an alias above the maximum; a plain Protocol Error is as good here.
    c = connected(port, raw, rawmqtt.V5)
    c.publish("ta/t", b"x", props=[(rawmqtt.TOPIC_ALIAS, 0)])
    assert_rejected(c, rawmqtt.V5, [0x94, PROTOCOL_ERROR])


def test_v5_topic_alias_above_maximum(start_broker, raw):
    # [MQTT-3.3.2-9]: a Topic Alias above the server's Topic Alias Maximum → 0x94.
    b = start_broker({"TRIBUTARY_MQTT__MAX_TOPIC_ALIAS": "2"})
    c = raw(b.port, rawmqtt.V5)
    assert c.connect(client_id="ta").props[rawmqtt.TOPIC_ALIAS_MAXIMUM] == 2
    c.publish("ta/t", b"x", props=[(rawmqtt.TOPIC_ALIAS, 3)])
    assert_rejected(c, rawmqtt.V5, [0x94])


def test_v5_unknown_topic_alias(port, raw):
    # MQTT 5 §3.3.2.3.4: empty topic with an alias never set → Protocol Error.
    c = connected(port, raw, rawmqtt.V5)
    c.publish("", b"x", props=[(rawmqtt.TOPIC_ALIAS, 5)])
    assert_rejected(c, rawmqtt.V5, [PROTOCOL_ERROR])


def test_v5_duplicate_property_is_protocol_error(port, raw):
    # MQTT 5 §2.2.2.2: including a single-valued property twice is a Protocol Error.
    c = connected(port, raw, rawmqtt.V5)
    c.publish("dup/p", b"x", props=[(rawmqtt.CONTENT_TYPE, "a"), (rawmqtt.CONTENT_TYPE, "b")])
    assert_rejected(c, rawmqtt.V5, [PROTOCOL_ERROR, MALFORMED])


def test_v5_property_length_past_packet_end_is_malformed(port, raw):
    c = connected(port, raw, rawmqtt.V5)
    body = rawmqtt.string("p/len") + b"\x40" + b"\x03\x00"  # claims 64 bytes of properties
    c.send(rawmqtt.packet(rawmqtt.PUBLISH, 0, body))
    assert_rejected(c, rawmqtt.V5, [MALFORMED])


# ---------------------------------------------------------------- acknowledgements and QoS 2 state

@RAW_MODERN
def test_pubrel_for_unknown_packet_id_answered(port, raw, version):
    # [MQTT-4.3.3-11]/MQTT 5 §3.7.2.1: PUBCOMP (v5 reason 0x92 Packet Identifier not found allowed).
    c = connected(port, raw, version)
    c.send(rawmqtt.ack(rawmqtt.PUBREL, 77))
    p = c.expect(rawmqtt.PUBCOMP)
    assert p.body[:2] == b"\x00\x4d"
    assert (p.body[2] if len(p.body) > 2 else 0) in (0x00, 0x92)


@RAW_MODERN
def test_qos2_duplicate_publish_delivered_once(port, raw, client, version):
    # [MQTT-4.3.3-9/10] (method B): a resent QoS 2 PUBLISH before PUBREL is not routed again.
    w = client(port, "w", V311)
    w.connect()
    # QoS 1 on purpose: paho hands a QoS 2 message to the application only at PUBREL, so a QoS 1
    # marker could overtake it.
    w.subscribe("q2dup/#", 1)
    c = connected(port, raw, version)
    c.publish("q2dup/t", b"once", qos=2, packet_id=9)
    assert c.expect(rawmqtt.PUBREC).body[:2] == b"\x00\x09"
    c.publish("q2dup/t", b"once", qos=2, packet_id=9, dup=True)
    assert c.expect(rawmqtt.PUBREC).body[:2] == b"\x00\x09"
    c.send(rawmqtt.ack(rawmqtt.PUBREL, 9))
    assert c.expect(rawmqtt.PUBCOMP).body[:2] == b"\x00\x09"
    w.publish("q2dup/marker", b"m", 1)
    assert [m.payload for m in w.until("q2dup/marker")] == [b"once"]


# ---------------------------------------------------------------- resource exhaustion

def test_silent_connection_closed_after_connect_timeout(start_broker, raw):
    b = start_broker({"TRIBUTARY_MQTT__CONNECT_TIMEOUT": "1s"})
    c = raw(b.port)
    start = time.monotonic()
    assert c.read_until_closed(4) == []
    assert 0.8 <= time.monotonic() - start <= 3.0


def test_trickled_connect_does_not_extend_connect_timeout(start_broker, raw):
    # DESIGN: the first CONNECT must arrive within a deadline "that trickled bytes do not extend".
    b = start_broker({"TRIBUTARY_MQTT__CONNECT_TIMEOUT": "1s"})
    c = raw(b.port)
    connect = rawmqtt.connect(rawmqtt.V311, client_id="t" * 200)
    start = time.monotonic()
    closed = False
    for byte in connect:
        try:
            c.send(bytes([byte]))
        except OSError:
            closed = True
            break
        try:
            c.read(0.1)
        except TimeoutError:
            pass
        except rawmqtt.Closed:
            closed = True
            break
        if time.monotonic() - start > 4:
            break
    elapsed = time.monotonic() - start
    assert closed, f"still open after {elapsed:.1f}s of trickling"
    assert elapsed <= 3.0


def test_half_open_flood_does_not_block_new_clients(port, client):
    socks = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
        socks[-1].sendall(b"\x10")  # and one that starts a CONNECT and stops
        # Served while the 200 idle sockets are still open (each step has its own timeout).
        c = client(port, "normal", V5)
        c.connect()
        c.subscribe("flood/t", 1)
        c.publish("flood/t", b"through", 1)
        assert c.expect().payload == b"through"
    finally:
        for s in socks:
            s.close()


def test_many_clients_abort_at_once(port, raw, bystander):
    conns = []
    for i in range(50):
        c = raw(port, rawmqtt.V5 if i % 2 else rawmqtt.V311)
        c.send(rawmqtt.connect(c.version, client_id=f"abort{i}"))
        conns.append(c)
    for c in conns:
        c.expect(rawmqtt.CONNACK)
    for c in conns:
        c.abort()
    bystander.check()


def test_client_that_never_reads_does_not_block_others(port, raw, client, bystander):
    # A subscriber that stops reading: its socket buffers fill, publishers are not slowed.
    slow = raw(port)
    assert slow.connect(client_id="slow").rc == 0
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.subscribe([("heavy/#", 0)])
    pub = client(port, "heavy-pub", V311)
    pub.connect()
    payload = b"z" * 8192
    for i in range(300):  # ~2.4 MB toward a reader that reads nothing
        pub.publish("heavy/t", payload, 0)
    pub.publish("heavy/t", payload, 1)  # acknowledged: the publisher was not held up
    bystander.check()


def test_rawmqtt_varint_helper():
    assert rawmqtt.varint(200_000_000) == bytes([0x80, 0x84, 0xAF, 0x5F])
    assert rawmqtt.read_varint(b"\x00" + rawmqtt.varint(268_435_455), 1) == (268_435_455, 5)
    assert struct.pack("!H", 77) == b"\x00\x4d"


# ---------------------------------------------------------------- more header and property checks

@pytest.mark.parametrize("prop", [
    [(rawmqtt.RECEIVE_MAXIMUM, 0)],                                # §3.1.2.11.3
    [(rawmqtt.MAXIMUM_PACKET_SIZE, 0)],                            # §3.1.2.11.4
    [(rawmqtt.SESSION_EXPIRY, 5), (rawmqtt.SESSION_EXPIRY, 5)],    # §3.1.2.11.2
    [(rawmqtt.REQUEST_PROBLEM_INFO, 2)],                           # §3.1.2.11.7
], ids=["receive-max-0", "max-packet-0", "duplicate-session-expiry", "rpi-2"])
def test_v5_invalid_connect_properties_refused(port, raw, prop):
    # Protocol Errors in CONNECT: CONNACK with a reason code >= 0x80 (0x82 or 0x81), then close.
    c = raw(port, rawmqtt.V5)
    c.send(rawmqtt.connect(rawmqtt.V5, client_id="props", props=prop))
    packets = c.read_until_closed(3)
    assert all(p.type == rawmqtt.CONNACK and p.body[1] in (MALFORMED, PROTOCOL_ERROR) for p in packets), packets


@RAW_MODERN
def test_will_topic_with_wildcard_refused(port, raw, version):
    # [MQTT-3.1.3-11] the Will Topic is a UTF-8 topic name; wildcards are not allowed in topic names.
    c = raw(port, version)
    c.send(rawmqtt.connect(version, client_id="wildwill", will=rawmqtt.Will("will/#", b"x")))
    packets = c.read_until_closed(3)
    assert all(p.type == rawmqtt.CONNACK and p.body[1] != 0 for p in packets), packets


@RAW_MODERN
def test_pubrel_with_wrong_flags_closes(port, raw, version):
    # [MQTT-3.6.1-1]: PUBREL fixed header flags must be 0010.
    c = connected(port, raw, version)
    c.publish("pr/t", b"x", qos=2, packet_id=5)
    c.expect(rawmqtt.PUBREC)
    c.send(rawmqtt.packet(rawmqtt.PUBREL, 0, b"\x00\x05"))
    assert_rejected(c, version, [MALFORMED])


@RAW_MODERN
def test_unsubscribe_with_wrong_flags_closes(port, raw, version):
    # [MQTT-3.10.1-1]: UNSUBSCRIBE fixed header flags must be 0010.
    c = connected(port, raw, version)
    body = b"\x00\x03" + (b"\x00" if version == rawmqtt.V5 else b"") + rawmqtt.string("a/b")
    c.send(rawmqtt.packet(rawmqtt.UNSUBSCRIBE, 0, body))
    assert_rejected(c, version, [MALFORMED])


@RAW_MODERN
def test_reserved_packet_type_closes(port, raw, version):
    c = connected(port, raw, version)
    c.send(b"\x00\x00")  # packet type 0 is reserved
    assert_rejected(c, version, [MALFORMED, PROTOCOL_ERROR])


def test_v311_auth_packet_closes(port, raw):
    c = connected(port, raw, rawmqtt.V311)
    c.send(rawmqtt.packet(rawmqtt.AUTH, 0, b""))  # AUTH does not exist before MQTT 5
    assert c.read_until_closed(3) == []
