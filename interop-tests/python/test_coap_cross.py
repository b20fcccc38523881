"""Cross-protocol: CoAP publish → MQTT 5 subscriber (QoS, retain, expiry and
content type carried) and MQTT 5 publish → CoAP observer (content format,
Max-Age, CON for QoS 1)."""

from __future__ import annotations

from clients import V5, props
from coap_support import (  # noqa: F401
    CON, CONTENT_FORMAT, GET, NON, OBSERVE, POST, coap_broker, raw_coap, request, uint,
)

MAX_AGE = 14


def test_coap_publish_to_mqtt5_subscriber(coap_broker, raw_coap, client):
    b = coap_broker()
    sub = client(b.port, "sub", V5)
    sub.connect()
    sub.subscribe("x/#", 2)
    c = raw_coap(b.coap_port)
    r = c.exchange(request(CON, POST, "ps/x/y", 1, b"\x01", ("qos=2", "retain=true", "expiry=60"),
                           b'{"t":21}', ((CONTENT_FORMAT, uint(50)),)))
    assert r.code_str == "2.04"
    m = sub.expect()
    assert (m.topic, m.payload, m.qos, m.retain) == ("x/y", b'{"t":21}', 2, False)
    assert m.properties.ContentType == "application/json"
    assert m.properties.PayloadFormatIndicator == 1
    assert 0 < m.properties.MessageExpiryInterval <= 60
    # Retained: a later subscriber gets it with the retain flag.
    late = client(b.port, "late", V5)
    late.connect()
    late.subscribe("x/y", 1)
    m = late.expect()
    assert (m.payload, m.qos, m.retain) == (b'{"t":21}', 1, True)
    assert 0 < m.properties.MessageExpiryInterval <= 60


def test_mqtt5_publish_to_coap_observer(coap_broker, raw_coap, client):
    b = coap_broker()
    c = raw_coap(b.coap_port)
    r = c.exchange(request(CON, GET, "ps/m/+", 1, b"\x33", options=((OBSERVE, b""),)))
    assert r.code_str == "2.05"
    pub = client(b.port, "pub", V5)
    pub.connect()
    pub.publish("m/1", b"<a/>", 1, properties=props(ContentType="application/link-format", MessageExpiryInterval=30))
    n = c.recv()
    assert (n.mtype, n.code_str, n.token, n.payload) == (CON, "2.05", b"\x33", b"<a/>")
    assert n.uint(CONTENT_FORMAT) == 40
    assert 0 < n.uint(MAX_AGE) <= 30
    assert n.uint(OBSERVE) > r.uint(OBSERVE)
    pub.publish("m/2", b"q0", 0)
    # The CON is unacknowledged: the QoS 0 one waits behind it (one CON in flight).
    c.assert_silent(0.3)
    c.send(request(2, 0, "", n.mid, b""))  # empty ACK
    n2 = c.recv()
    assert (n2.mtype, n2.payload) == (NON, b"q0")
    assert n2.uint(OBSERVE) > n.uint(OBSERVE)


def test_notify_type_non(coap_broker, raw_coap, client):
    b = coap_broker(env={"TRIBUTARY_COAP__NOTIFY_TYPE": "non", "TRIBUTARY_COAP__MOUNTPOINT": "gw/"})
    c = raw_coap(b.coap_port)
    c.exchange(request(CON, GET, "ps/n", 1, b"\x01", options=((OBSERVE, b""),)))
    pub = client(b.port, "pub")
    pub.connect()
    pub.publish("gw/n", b"via mountpoint", 2)
    n = c.recv()
    assert (n.mtype, n.payload) == (NON, b"via mountpoint")
