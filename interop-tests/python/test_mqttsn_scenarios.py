"""MQTT-SN scenarios the CLI clients cannot produce, with raw datagrams:
discovery, sleeping clients, QoS -1, predefined and short topics, REGISTER
from the gateway, retransmission to a client that drops a packet, lost
clients, forwarder encapsulation, bad datagrams."""

from __future__ import annotations

import socket
import struct
import time

from mqttsn_support import (  # noqa: F401 (fixtures)
    ACCEPTED, CONNACK, DISCONNECT, ENCAPSULATED, GWINFO, INVALID_TOPIC_ID, NORMAL, PINGREQ, PINGRESP,
    PREDEFINED, PUBACK, PUBLISH, REGISTER, SEARCHGW, SHORT, WILLMSG, WILLMSGREQ, WILLTOPIC, WILLTOPICREQ,
    frame, parse, short_id, sn, sn_broker, start_sn,
)

PREDEFINED_CONFIG = """
[[mqttsn.predefined]]
id = 1
topic = "pre/one"
"""


def test_searchgw_is_answered_with_gwinfo(start_sn, sn):
    b = start_sn(env={"TRIBUTARY_MQTTSN__GATEWAY_ID": "42"})
    c = sn(b.sn_port)
    c.send(SEARCHGW, b"\x01")
    assert c.expect(GWINFO) == b"\x2a"


def test_sleeping_client_gets_buffered_messages_on_pingreq(sn_broker, sn, client):
    c = sn(sn_broker.sn_port)
    assert c.connect("sleepy", duration=30) == ACCEPTED
    assert c.subscribe("zz", qos=0, kind=SHORT)[2] == ACCEPTED
    c.disconnect(duration=60)
    m = client(sn_broker.port, "mqtt-pub")
    m.connect()
    for i in range(3):
        m.publish("zz", f"m{i}".encode(), qos=1)
    c.assert_nothing(0.5)  # asleep: nothing is sent
    c.send(PINGREQ, b"sleepy")
    got = [c.next_publish()["payload"] for _ in range(3)]
    assert got == [b"m0", b"m1", b"m2"]
    c.expect(PINGRESP)
    # Back asleep: the next message waits for the next PINGREQ.
    m.publish("zz", b"later", qos=1)
    c.assert_nothing(0.5)
    c.send(PINGREQ, b"sleepy")
    assert c.next_publish()["payload"] == b"later"
    c.expect(PINGRESP)


def test_sleeping_client_that_never_wakes_is_lost(start_sn, sn, client):
    b = start_sn()
    m = client(b.port, "watcher")
    m.connect()
    m.subscribe("wills/#", 0)
    c = sn(b.sn_port)
    c.connect("drowsy", duration=30, will=True)
    c.expect(WILLTOPICREQ)
    c.send(WILLTOPIC, b"\x00wills/drowsy")
    c.expect(WILLMSGREQ)
    c.send(WILLMSG, b"never woke")
    assert c.expect(CONNACK) == bytes([ACCEPTED])
    c.disconnect(duration=1)  # supervised at 1.5 s
    msg = m.expect(timeout=5)
    assert (msg.topic, msg.payload) == ("wills/drowsy", b"never woke")


def test_qos_minus_one_predefined_and_short(start_sn, sn, client):
    b = start_sn(config=PREDEFINED_CONFIG)
    m = client(b.port, "mqtt-sub")
    m.connect()
    m.subscribe("#", 1)
    c = sn(b.sn_port)  # never connects
    c.publish(1, b"via predefined", qos=-1, kind=PREDEFINED)
    c.publish(short_id("xy"), b"via short", qos=-1, kind=SHORT)
    got = sorted((x.topic, x.payload, x.qos) for x in m.expect_n(2))
    assert got == [("pre/one", b"via predefined", 0), ("xy", b"via short", 0)]
    c.assert_nothing()


def test_qos_minus_one_can_be_switched_off(start_sn, sn, client):
    b = start_sn(env={"TRIBUTARY_MQTTSN__ENABLE_QOS3": "false"})
    m = client(b.port, "mqtt-sub")
    m.connect()
    m.subscribe("#", 0)
    sn(b.sn_port).publish(short_id("xy"), b"dropped", qos=-1, kind=SHORT)
    m.assert_nothing(0.5)


def test_predefined_topic_both_directions(start_sn, sn, client):
    b = start_sn(config=PREDEFINED_CONFIG)
    c = sn(b.sn_port)
    c.connect("pre")
    assert c.subscribe(1, qos=1, kind=PREDEFINED) == (1, 1, ACCEPTED)
    m = client(b.port, "mqtt")
    m.connect()
    m.publish("pre/one", b"down", qos=1)
    p = c.next_publish()
    assert (p["kind"], p["topic_id"], p["payload"], p["qos"]) == (PREDEFINED, 1, b"down", 1)
    c.ack(p)
    # Unknown predefined id: "invalid topic id".
    c.publish(99, b"x", qos=1, kind=PREDEFINED)
    body = c.expect(PUBACK)
    assert body[-1] == INVALID_TOPIC_ID


def test_gateway_registers_topics_for_wildcard_subscriptions(sn_broker, sn, client):
    c = sn(sn_broker.sn_port)
    c.connect("wild")
    assert c.subscribe("home/+/temp", qos=0) == (0, 0, ACCEPTED)
    m = client(sn_broker.port, "mqtt")
    m.connect()
    m.publish("home/kitchen/temp", b"20", qos=1)
    m.publish("home/cellar/temp", b"12", qos=1)
    # Each concrete topic is REGISTERed (ids from 1025) before its PUBLISH.
    t, body = c.recv()
    assert t == REGISTER
    topic_id, mid = struct.unpack(">HH", body[:4])
    assert (topic_id, body[4:]) == (1025, b"home/kitchen/temp")
    c.assert_nothing(0.3)  # the PUBLISH waits for the REGACK
    c.send(0x0B, struct.pack(">HHB", topic_id, mid, ACCEPTED))
    p = c.next_publish()
    assert (p["topic_id"], p["payload"]) == (1025, b"20")
    p = c.next_publish()
    assert (p["topic"], p["topic_id"], p["payload"]) == ("home/cellar/temp", 1026, b"12")


def test_publish_dropped_by_the_client_is_retransmitted(start_sn, sn, client):
    b = start_sn(env={"TRIBUTARY_MQTTSN__RETRY_INTERVAL": "1s"})
    c = sn(b.sn_port)
    c.connect("lossy")
    c.subscribe("ab", qos=1, kind=SHORT)
    m = client(b.port, "mqtt")
    m.connect()
    m.publish("ab", b"important", qos=1)
    first = c.next_publish()
    assert not first["dup"]
    # "Drop" it: no PUBACK. The gateway resends after Tretry with DUP set.
    t0 = time.monotonic()
    again = c.next_publish(timeout=5)
    assert again["dup"] and again["msg_id"] == first["msg_id"] and again["payload"] == b"important"
    assert time.monotonic() - t0 >= 0.5
    c.ack(again)
    c.assert_nothing(1.5)


def test_client_that_never_acknowledges_is_lost_after_nretry(start_sn, sn, client):
    b = start_sn(env={"TRIBUTARY_MQTTSN__RETRY_INTERVAL": "1s", "TRIBUTARY_MQTTSN__MAX_RETRIES": "2"})
    m = client(b.port, "mqtt")
    m.connect()
    m.subscribe("wills/#", 0)
    c = sn(b.sn_port)
    c.connect("deaf", duration=300, will=True)
    c.expect(WILLTOPICREQ)
    c.send(WILLTOPIC, b"\x00wills/deaf")
    c.expect(WILLMSGREQ)
    c.send(WILLMSG, b"gone")
    c.expect(CONNACK)
    c.subscribe("ab", qos=1, kind=SHORT)
    m.publish("ab", b"x", qos=1)
    msg = m.expect(timeout=8)
    assert (msg.topic, msg.payload) == ("wills/deaf", b"gone")
    sends = 0
    try:
        while True:
            t, _ = c.recv(0.3)
            sends += t == PUBLISH
    except socket.timeout:
        pass
    assert sends == 3  # first send + Nretry = 2 resends


def test_unknown_client_is_told_to_reconnect(sn_broker, sn):
    c = sn(sn_broker.sn_port)
    c.send(PINGREQ)
    c.expect(DISCONNECT)


def test_bad_datagrams_are_dropped_and_affect_nobody(sn_broker, sn):
    good = sn(sn_broker.sn_port)
    good.connect("good")
    good.subscribe("ab", qos=0, kind=SHORT)
    bad = sn(sn_broker.sn_port)
    for datagram in [b"", b"\x05", b"\x00\x16", b"\x09\x0c\x00", b"\x02\x03", b"\x02\x17\xff", b"\x01\x00",
                     bytes(range(256))]:
        bad.send_raw(datagram)
    bad.assert_nothing(0.3)
    good.publish(short_id("ab"), b"still fine", kind=SHORT)
    assert good.next_publish()["payload"] == b"still fine"


def test_forwarder_encapsulation(sn_broker):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    try:
        node = b"\x00\x42"
        def wrap(inner: bytes) -> bytes:
            return bytes([3 + len(node), ENCAPSULATED, 0x00]) + node + inner
        connect = frame(0x04, bytes([0x04, 0x01, 0, 60]) + b"behind-fwd")
        s.sendto(wrap(connect), ("127.0.0.1", sn_broker.sn_port))
        data, _ = s.recvfrom(1024)
        assert data[1] == ENCAPSULATED and data[3:5] == node, data
        t, body = parse(data[5:])
        assert (t, body) == (CONNACK, bytes([ACCEPTED]))
        s.sendto(wrap(frame(PINGREQ)), ("127.0.0.1", sn_broker.sn_port))
        data, _ = s.recvfrom(1024)
        assert parse(data[5:])[0] == PINGRESP
    finally:
        s.close()


def test_periodic_advertise(start_sn):
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5)
    try:
        to = f"127.0.0.1:{listener.getsockname()[1]}"
        start_sn(env={"TRIBUTARY_MQTTSN__GATEWAY_ID": "9", "TRIBUTARY_MQTTSN__ADVERTISE__ENABLED": "true",
                      "TRIBUTARY_MQTTSN__ADVERTISE__INTERVAL": "1s",
                      "TRIBUTARY_MQTTSN__ADVERTISE__BROADCAST": to})
        for _ in range(2):  # at start, then every interval
            data, _ = listener.recvfrom(64)
            assert parse(data) == (0x00, bytes([9, 0, 1])), data
    finally:
        listener.close()
