"""CoAP message layer over the wire with a raw UDP client (RFC 7252 §4, RFC 7641):
duplicate CON, malformed datagrams, pings, tokens, unknown critical options,
RST cancelling an observation, CON notification retransmission and give-up."""

from __future__ import annotations

import time

from coap_support import (  # noqa: F401
    ACK, CON, GET, NON, OBSERVE, POST, RST, Msg, code, coap_broker, encode, raw_coap, request, uint,
)


def test_duplicate_con_is_answered_again_and_published_once(coap_broker, raw_coap, client):
    b = coap_broker()
    sub = client(b.port, "sub")
    sub.connect()
    sub.subscribe("dup", 1)
    c = raw_coap(b.coap_port)
    datagram = encode(request(CON, POST, "ps/dup", 0x4242, b"\x0a\x0b", ("qos=1",), b"once"))
    c.send(datagram)
    first = c.recv()
    c.send(datagram)  # a retransmission: same message id
    second = c.recv()
    assert (first.mtype, first.code_str, first.mid, first.token) == (ACK, "2.04", 0x4242, b"\x0a\x0b")
    assert second == first
    assert sub.expect().payload == b"once"
    sub.assert_nothing(0.5)


def test_malformed_con_gets_rst_and_other_peers_are_unaffected(coap_broker, raw_coap):
    b = coap_broker()
    bad, good = raw_coap(b.coap_port), raw_coap(b.coap_port)
    bad.send(bytes([0x49, 0x02, 0x12, 0x34]) + bytes(9))  # token length 9: reserved
    r = bad.recv()
    assert (r.mtype, r.code, r.mid) == (RST, 0, 0x1234)
    bad.send(bytes([0x50, 0x02, 0x00, 0x01, 0xF1, 0x00]))  # NON with option delta 15: ignored
    bad.assert_silent()
    bad.send(b"\x40")  # too short: ignored
    bad.assert_silent()
    ok = good.exchange(request(CON, POST, "ps/fine", 7, b"\x01", payload=b"x"))
    assert ok.code_str == "2.04"
    # The bad peer can still talk.
    assert bad.exchange(request(CON, POST, "ps/fine", 8, b"\x01", payload=b"x")).code_str == "2.04"
    assert "malformed CoAP message" in b.output()


def test_ping_and_tokens(coap_broker, raw_coap):
    b = coap_broker()
    c = raw_coap(b.coap_port)
    r = c.exchange(Msg(CON, 0, 0x0101))
    assert (r.mtype, r.code, r.mid) == (RST, 0, 0x0101)
    for n in range(9):
        token = bytes(range(n))
        r = c.exchange(request(CON, POST, "ps/tok", 0x200 + n, token, payload=b"x"))
        assert (r.code_str, r.token) == ("2.04", token)


def test_unknown_critical_option_is_4_02(coap_broker, raw_coap):
    b = coap_broker()
    c = raw_coap(b.coap_port)
    r = c.exchange(request(CON, POST, "ps/x", 1, options=((2049, b"v"),), payload=b"x"))
    assert r.code_str == "4.02"
    r = c.exchange(request(CON, POST, "ps/x", 2, options=((2048, b"v"),), payload=b"x"))
    assert r.code_str == "2.04", "an unknown elective option is ignored"


def test_observe_needs_a_token(coap_broker, raw_coap):
    b = coap_broker()
    c = raw_coap(b.coap_port)
    r = c.exchange(request(CON, GET, "ps/t", 1, b"", options=((OBSERVE, b""),)))
    assert r.code_str == "4.00"


def test_rst_to_notification_cancels(coap_broker, raw_coap, client):
    b = coap_broker()
    c = raw_coap(b.coap_port)
    r = c.exchange(request(CON, GET, "ps/r/+", 1, b"\x77", options=((OBSERVE, b""),)))
    assert r.code_str == "2.05" and r.uint(OBSERVE) is not None
    pub = client(b.port, "pub")
    pub.connect()
    pub.publish("r/1", b"first", 0)
    n = c.recv()
    assert (n.mtype, n.token, n.payload) == (NON, b"\x77", b"first")
    c.send(Msg(RST, 0, n.mid))
    time.sleep(0.2)
    pub.publish("r/1", b"second", 0)
    c.assert_silent(0.5)


def test_observe_1_deregisters(coap_broker, raw_coap, client):
    b = coap_broker()
    c = raw_coap(b.coap_port)
    c.exchange(request(CON, GET, "ps/d", 1, b"\x05", options=((OBSERVE, b""),)))
    r = c.exchange(request(CON, GET, "ps/d", 2, b"\x05", options=((OBSERVE, uint(1)),)))
    assert r.code_str == "2.05" and r.uint(OBSERVE) is None
    pub = client(b.port, "pub")
    pub.connect()
    pub.publish("d", b"x", 1)
    c.assert_silent(0.5)


def test_unacknowledged_con_notification_is_retransmitted_then_observer_removed(coap_broker, raw_coap, client):
    b = coap_broker(env={"TRIBUTARY_COAP__ACK_TIMEOUT": "200ms", "TRIBUTARY_COAP__MAX_RETRANSMIT": "2",
                         "TRIBUTARY_COAP__NOTIFY_TYPE": "con"})
    c = raw_coap(b.coap_port)
    c.exchange(request(CON, GET, "ps/lost", 1, b"\x09", options=((OBSERVE, b""),)))
    pub = client(b.port, "pub")
    pub.connect()
    pub.publish("lost", b"x", 0)
    copies = [c.recv(3.0) for _ in range(3)]  # the CON, then MAX_RETRANSMIT (2) retransmissions
    assert all(m.mtype == CON and m.mid == copies[0].mid and m.payload == b"x" for m in copies)
    # Given up after MAX_RETRANSMIT: later messages are not notified.
    time.sleep(2.0)
    pub.publish("lost", b"y", 0)
    c.assert_silent(0.5)
    assert "observer removed" in b.output()
