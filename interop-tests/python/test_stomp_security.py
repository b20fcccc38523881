"""STOMP over TLS (stomp.py with an SSL context, mutual TLS with the
certificate's CN as login), the HTTP authentication backend answering a
STOMP CONNECT live (not from a cache), and backpressure: QoS 1 SENDs that
fill an online MQTT subscriber's mailbox pause the STOMP connection instead
of losing messages."""

from __future__ import annotations

import threading

import pytest
import rawmqtt
import stomp
from clients import V5
from sec import free_port, ssl_options
from stomp_support import Collector, RawStomp, connect, wait_port



def start_stomp_tls(start_broker, pki, extra="", more=""):
    tcp, ssl = free_port(), free_port()
    config = (f'[stomp]\nssl_bind = "127.0.0.1:{ssl}"\n'
              + ssl_options("stomp.ssl_options", *pki.server, extra) + more)
    b = start_broker(env={"TRIBUTARY_STOMP__BIND": f"127.0.0.1:{tcp}"}, config=config)
    wait_port(ssl)
    wait_port(tcp)
    b.stomp_port, b.ssl_port = tcp, ssl
    return b


def _tls(port, pki, cert, key, login=None, passcode=None):
    """A stomp.py 1.2 connection over TLS, trusting the test CA."""
    conn = stomp.Connection12([("127.0.0.1", port)])
    conn.set_ssl(for_hosts=[("127.0.0.1", port)], ca_certs=str(pki.ca_file), cert_file=cert, key_file=key)
    listener = Collector()
    conn.set_listener("collector", listener)
    conn.connect(login, passcode, wait=True)
    return conn, listener


def test_stomp_over_tls_round_trip_with_mqtt(start_broker, pki, client):
    b = start_stomp_tls(start_broker, pki)
    conn, l = _tls(b.ssl_port, pki, None, None)
    conn.subscribe("secure/#", id="s1")
    mqtt = client(b.port, "mqtt-peer", V5)
    mqtt.connect()
    mqtt.subscribe("back/#", 1)
    conn.send(destination="probe/x", body="ready", headers={"receipt": "r0"})
    assert l.receipt() == "r0"
    mqtt.publish("secure/a", b"over tls", 1)
    f = l.message()
    assert (f.headers["destination"], f.body) == ("secure/a", "over tls")
    conn.send(destination="back/b", body="from tls", headers={"receipt": "r1"})
    assert l.receipt() == "r1"
    m = mqtt.expect()
    assert (m.topic, m.payload) == ("back/b", b"from tls")
    conn.disconnect()


def test_stomp_tls_refuses_a_plaintext_client(start_broker, pki):
    b = start_stomp_tls(start_broker, pki)
    raw = RawStomp(b.ssl_port)
    raw.send(b"CONNECT\naccept-version:1.2\nhost:x\n\n\0")
    # Not a TLS ClientHello: the handshake fails and the socket closes,
    # without a STOMP frame.
    assert raw.frame() is None
    # The plain TCP listener still works.
    conn, _ = connect(b.stomp_port)
    conn.disconnect()


def test_stomp_mutual_tls_takes_login_from_the_certificate_cn(start_broker, pki):
    extra = f'cacertfile = "{pki.ca_file}"\nverify = "verify_peer"\npeer_cert_as_username = "cn"\n'
    acl = """
[authorization]
no_match = "deny"

[[authorization.rules]]
permission = "allow"
action = "all"
topics = ["users/%u/#"]
"""
    b = start_stomp_tls(start_broker, pki, extra, acl)
    cert, key = pki.issue("sensor-9", server=False)
    # The client claims another login; the certificate's CN wins.
    conn, l = _tls(b.ssl_port, pki, cert, key, login="mallory", passcode="x")
    conn.subscribe("users/sensor-9/#", id="mine", headers={"receipt": "s"})
    assert l.receipt() == "s"
    conn.send(destination="users/sensor-9/t", body="mine")
    f = l.message()
    assert (f.headers["destination"], f.body) == ("users/sensor-9/t", "mine")
    conn.send(destination="users/mallory/t", body="not mine")
    assert l.error().headers["message"] == "not authorized"


def stomp_connect_frame(login: str, passcode: str) -> bytes:
    return f"CONNECT\naccept-version:1.2\nhost:x\nlogin:{login}\npasscode:{passcode}\n\n\0".encode()


def test_http_backend_decides_stomp_connect_live(start_broker, gated_auth):
    tcp = free_port()
    b = start_broker(env={"TRIBUTARY_STOMP__BIND": f"127.0.0.1:{tcp}"}, config=f"""
[authentication.http]
enabled = true
url = "http://127.0.0.1:{gated_auth.port}/auth"
timeout = "5s"
""")
    wait_port(tcp)
    # First time these credentials are seen: nothing cached, the backend is asked.
    ok = RawStomp(tcp)
    ok.send(stomp_connect_frame("good", "pw"))
    cmd, _, _ = ok.frame()
    assert cmd == "CONNECTED"
    assert {"clientid": gated_auth.requests[0]["clientid"], "username": "good", "password": "pw",
            "peerhost": "127.0.0.1"} == gated_auth.requests[0]
    bad = RawStomp(tcp)
    bad.send(stomp_connect_frame("bad", "pw"))
    cmd, headers, _ = bad.frame()
    assert (cmd, headers["message"]) == ("ERROR", "login failed")
    assert bad.frame() is None
    # A CONNECT whose answer is pending holds only that connection; frames
    # sent behind it are processed after the answer, in order.
    held = RawStomp(tcp, timeout=10)
    held.send(stomp_connect_frame("gated", "pw")
              + b"SUBSCRIBE\nid:0\ndestination:gate/t\nreceipt:sub\n\n\0")
    while not any(r.get("username") == "gated" for r in gated_auth.requests):
        threading.Event().wait(0.02)
    other = RawStomp(tcp)
    other.send(stomp_connect_frame("good", "pw"))
    assert other.frame()[0] == "CONNECTED"
    other.send(b"SEND\ndestination:gate/t\nreceipt:before\n\nearly\0")
    assert other.frame() == ("RECEIPT", {"receipt-id": "before"}, b"")
    gated_auth.gate.set()
    assert held.frame()[0] == "CONNECTED"
    assert held.frame() == ("RECEIPT", {"receipt-id": "sub"}, b"")
    other.send(b"SEND\ndestination:gate/t\n\nlate\0")
    cmd, headers, body = held.frame()
    assert (cmd, headers["destination"], body) == ("MESSAGE", "gate/t", b"late")
    # The backend's answer is what counted (not a cache, which was empty).
    assert sum(1 for r in gated_auth.requests if r.get("username") == "gated") == 1


def test_qos1_sends_pause_instead_of_overflowing_an_online_subscriber(start_broker, raw):
    tcp = free_port()
    b = start_broker(env={
        "TRIBUTARY_STOMP__BIND": f"127.0.0.1:{tcp}",
        "TRIBUTARY_STOMP__SEND_QOS": "1",
        "TRIBUTARY_MQTT__MAX_INFLIGHT": "1",
        "TRIBUTARY_MQTT__MAX_MQUEUE_LEN": "3",
    })
    wait_port(tcp)
    sub = raw(b.port, rawmqtt.V311, timeout=10)
    sub.connect(client_id="bp-sub")
    assert sub.subscribe([("bp/t", 1)]) == [1]
    sender = RawStomp(tcp, timeout=10)
    sender.send(b"CONNECT\naccept-version:1.2\nhost:x\n\n\0")
    assert sender.frame()[0] == "CONNECTED"
    n = 20
    sender.send(b"".join(f"SEND\ndestination:bp/t\n\n{i}\0".encode() for i in range(n - 1))
                + f"SEND\ndestination:bp/t\nreceipt:last\n\n{n - 1}\0".encode())
    got = []
    while len(got) < n:
        p = sub.expect_publish()
        got.append(p.payload)
        sub.send(rawmqtt.ack(rawmqtt.PUBACK, p.packet_id))
    # Inflight 1 + queue 3 would have dropped most of them without the pause.
    assert got == [str(i).encode() for i in range(n)]
    assert sender.frame() == ("RECEIPT", {"receipt-id": "last"}, b"")
