"""STOMP 1.0, 1.1 and 1.2 over TCP with stomp.py (PyPI `stomp-py`) against
the real binary: connect, subscribe with each ack mode, send, receipts,
transactions, heart-beats, and an ERROR for a bad frame."""

from __future__ import annotations

import subprocess
import time

import pytest
import stomp

from conftest import BIN
from stomp_support import (CONNECTIONS, Collector, RawStomp, connect, start_stomp,  # noqa: F401 (fixtures)
                           stomp_broker)

VERSIONS = ["1.0", "1.1", "1.2"]


def subscribe(conn, version: str, dest: str, sub_id: str, ack: str = "auto", **headers):
    if version == "1.0":
        conn.subscribe(destination=dest, id=sub_id, ack=ack, headers=headers)
    else:
        conn.subscribe(destination=dest, id=sub_id, ack=ack, headers=headers)


def ack(conn, version: str, frame, nack: bool = False):
    h = frame.headers
    if version == "1.2":
        (conn.nack if nack else conn.ack)(h["ack"])
    elif version == "1.1":
        (conn.nack if nack else conn.ack)(h["message-id"], h["subscription"])
    else:
        conn.ack(h["message-id"])


@pytest.mark.parametrize("version", VERSIONS)
def test_connect_send_subscribe_receipt(stomp_broker, version):
    conn, l = connect(stomp_broker.stomp_port, version)
    subscribe(conn, version, "/topic/hello", "s1", receipt="sub-1")
    assert l.receipt() == "sub-1"
    conn.send(destination="/topic/hello", body="hi " + version, headers={"receipt": "send-1", "x-custom": "yes"})
    assert l.receipt() == "send-1"
    m = l.message()
    assert m.body == "hi " + version
    assert m.headers["destination"] == "/topic/hello"
    assert m.headers["subscription"] == ("s1")
    assert m.headers["x-custom"] == "yes"
    assert "message-id" in m.headers
    conn.disconnect(receipt="bye")
    assert l.receipt() == "bye"


@pytest.mark.parametrize("accept,want", [("1.0,1.1,1.2", "1.2"), ("1.0,1.1", "1.1"), ("1.1", "1.1")])
def test_version_and_heart_beat_negotiation(stomp_broker, accept, want):
    raw = RawStomp(stomp_broker.stomp_port)
    raw.send(f"CONNECT\naccept-version:{accept}\nhost:h\nheart-beat:2000,30000\n\n\0".encode())
    cmd, headers, _ = raw.frame()
    assert cmd == "CONNECTED"
    assert headers["version"] == want
    assert headers["heart-beat"] == "10000,10000"
    assert headers["server"].startswith("Tributary/")
    raw.close()


def test_wildcards_and_content_type(stomp_broker):
    conn, l = connect(stomp_broker.stomp_port)
    conn.subscribe(destination="sensors/+/temp", id="w", ack="auto")
    conn.subscribe(destination="logs/#", id="h", ack="auto", receipt="r")
    assert l.receipt() == "r"
    conn.send(destination="sensors/k1/temp", body='{"c":21}', content_type="application/json")
    conn.send(destination="sensors/k1/hum", body="no")
    conn.send(destination="logs/a/b/c", body="deep")
    got = sorted((m.headers["subscription"], m.body, m.headers.get("content-type"))
                 for m in [l.message(), l.message()])
    assert got == [("h", "deep", None), ("w", '{"c":21}', "application/json")]
    assert l.no_message()
    conn.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_client_ack_is_cumulative(start_stomp, version):
    b = start_stomp(env={"TRIBUTARY_STOMP__SUBSCRIBE_QOS": "1", "TRIBUTARY_STOMP__MAX_INFLIGHT": "3"})
    conn, l = connect(b.stomp_port, version)
    subscribe(conn, version, "q/client", "c", ack="client", receipt="r")
    assert l.receipt() == "r"
    pub, _ = connect(b.stomp_port)
    for i in range(5):
        pub.send(destination="q/client", body=str(i))
    first = [l.message() for _ in range(3)]
    assert [m.body for m in first] == ["0", "1", "2"]
    assert l.no_message(), "window of 3 until acknowledged"
    ack(conn, version, first[2])  # acknowledges 0, 1 and 2
    rest = [l.message().body for _ in range(2)]
    assert rest == ["3", "4"]
    conn.disconnect()
    pub.disconnect()


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_client_individual_and_nack(start_stomp, version):
    b = start_stomp(env={"TRIBUTARY_STOMP__SUBSCRIBE_QOS": "1", "TRIBUTARY_STOMP__MAX_INFLIGHT": "2"})
    conn, l = connect(b.stomp_port, version)
    subscribe(conn, version, "q/ind", "i", ack="client-individual", receipt="r")
    assert l.receipt() == "r"
    pub, _ = connect(b.stomp_port)
    for i in range(4):
        pub.send(destination="q/ind", body=str(i))
    a, bb = l.message(), l.message()
    assert l.no_message()
    ack(conn, version, bb)  # only the second: one slot frees
    assert l.message().body == "2"
    assert l.no_message()
    ack(conn, version, a, nack=True)
    assert l.message().body == "3"
    conn.disconnect()
    pub.disconnect()


def test_auto_ack_flows_freely(start_stomp):
    b = start_stomp(env={"TRIBUTARY_STOMP__SUBSCRIBE_QOS": "1", "TRIBUTARY_STOMP__MAX_INFLIGHT": "2"})
    conn, l = connect(b.stomp_port)
    conn.subscribe(destination="q/auto", id="a", ack="auto", receipt="r")
    assert l.receipt() == "r"
    for i in range(20):
        conn.send(destination="q/auto", body=str(i))
    assert [l.message().body for _ in range(20)] == [str(i) for i in range(20)]
    conn.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_transactions(stomp_broker, version):
    conn, l = connect(stomp_broker.stomp_port, version)
    conn.subscribe(destination="tx/t", id="t", ack="auto", receipt="r")
    assert l.receipt() == "r"
    tx = conn.begin()
    conn.send(destination="tx/t", body="in-tx", transaction=tx)
    assert l.no_message(0.5), "nothing before COMMIT"
    conn.commit(tx)
    assert l.message().body == "in-tx"
    tx2 = conn.begin()
    conn.send(destination="tx/t", body="aborted", transaction=tx2)
    conn.abort(tx2)
    conn.send(destination="tx/t", body="after")
    assert l.message().body == "after"
    conn.disconnect()


def test_ack_inside_transaction(start_stomp):
    b = start_stomp(env={"TRIBUTARY_STOMP__SUBSCRIBE_QOS": "1", "TRIBUTARY_STOMP__MAX_INFLIGHT": "1"})
    conn, l = connect(b.stomp_port)
    conn.subscribe(destination="tx/ack", id="x", ack="client-individual", receipt="r")
    assert l.receipt() == "r"
    conn.send(destination="tx/ack", body="1")
    conn.send(destination="tx/ack", body="2")
    m = l.message()
    tx = conn.begin()
    conn.ack(m.headers["ack"], transaction=tx)
    assert l.no_message(0.5), "the ACK is applied at COMMIT"
    conn.commit(tx)
    assert l.message().body == "2"
    conn.disconnect()


def test_server_heart_beats_keep_a_client_alive(start_stomp):
    b = start_stomp(env={"TRIBUTARY_STOMP__HEARTBEAT_SEND": "200ms", "TRIBUTARY_STOMP__HEARTBEAT_RECEIVE": "200ms"})
    conn = stomp.Connection12([("127.0.0.1", b.stomp_port)], heartbeats=(200, 200))
    l = Collector()
    conn.set_listener("c", l)
    conn.connect(wait=True)
    time.sleep(1.5)
    assert conn.is_connected()
    assert l.heartbeat_timeouts == 0
    conn.disconnect()


def test_silent_client_is_closed(start_stomp):
    b = start_stomp(env={"TRIBUTARY_STOMP__HEARTBEAT_RECEIVE": "200ms"})
    raw = RawStomp(b.stomp_port)
    raw.send(b"CONNECT\naccept-version:1.2\nhost:h\nheart-beat:200,0\n\n\0")
    cmd, headers, _ = raw.frame()
    assert cmd == "CONNECTED" and headers["heart-beat"].endswith(",200")
    # Say nothing: after 1.5 x 200 ms the server gives up.
    cmd, headers, _ = raw.frame()
    assert cmd == "ERROR" and headers["message"] == "heart-beat timeout"
    assert raw.closed()


def test_bad_frame_gets_error_then_close(stomp_broker):
    raw = RawStomp(stomp_broker.stomp_port)
    raw.send(b"CONNECT\naccept-version:1.2\nhost:h\n\n\0")
    assert raw.frame()[0] == "CONNECTED"
    raw.send(b"SEND\ndestination:a\nbad\\q:1\nreceipt:9\n\nx\0")
    cmd, headers, body = raw.frame()
    assert cmd == "ERROR"
    assert headers["message"] == "malformed frame"
    assert b"escape" in body
    assert raw.closed()
    # Nothing else is affected.
    conn, l = connect(stomp_broker.stomp_port)
    conn.disconnect()


def test_error_frame_via_stomp_py(stomp_broker):
    conn, l = connect(stomp_broker.stomp_port)
    conn.send(destination="a/#", body="wildcards are for subscribers", headers={"receipt": "bad"})
    err = l.error()
    assert err.headers["message"] == "invalid destination"
    assert err.headers.get("receipt-id") == "bad"


def test_unsupported_version(stomp_broker):
    raw = RawStomp(stomp_broker.stomp_port)
    raw.send(b"CONNECT\naccept-version:2.0\nhost:h\n\n\0")
    cmd, headers, _ = raw.frame()
    assert cmd == "ERROR" and headers["version"] == "1.0,1.1,1.2"
    assert raw.closed()


def test_nul_bytes_in_body(stomp_broker):
    raw = RawStomp(stomp_broker.stomp_port)
    raw.send(b"CONNECT\naccept-version:1.2\nhost:h\n\n\0")
    raw.frame()
    raw.send(b"SUBSCRIBE\nid:1\ndestination:bin\nreceipt:r\n\n\0")
    assert raw.frame()[0] == "RECEIPT"
    raw.send(b"SEND\ndestination:bin\ncontent-length:5\n\na\0b\0c\0")
    cmd, headers, body = raw.frame()
    assert cmd == "MESSAGE" and body == b"a\0b\0c" and headers["content-length"] == "5"


def test_login_required_when_anonymous_is_off(start_stomp, tmp_path):
    users = tmp_path / "users.txt"
    r = subprocess.run([str(BIN), "users", "add", "--file", str(users), "alice"], input="secret\n",
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    b = start_stomp(env={"TRIBUTARY_AUTHENTICATION__ALLOW_ANONYMOUS": "false",
                         "TRIBUTARY_AUTHENTICATION__BUILT_IN_DATABASE__ENABLED": "true",
                         "TRIBUTARY_AUTHENTICATION__BUILT_IN_DATABASE__USERS_FILE": str(users)})
    raw = RawStomp(b.stomp_port)
    raw.send(b"CONNECT\naccept-version:1.2\nhost:h\n\n\0")
    cmd, headers, _ = raw.frame()
    assert cmd == "ERROR"
    assert raw.closed()
    conn = stomp.Connection12([("127.0.0.1", b.stomp_port)])
    conn.connect("alice", "secret", wait=True)
    assert conn.is_connected()
    conn.disconnect()


def test_unacked_redelivered_to_same_client_id(start_stomp):
    # Redelivery needs QoS 1 end to end: the message (SEND QoS) and the subscription.
    b = start_stomp(env={"TRIBUTARY_STOMP__SUBSCRIBE_QOS": "1", "TRIBUTARY_STOMP__SEND_QOS": "1"})
    conn = stomp.Connection12([("127.0.0.1", b.stomp_port)])
    l = Collector()
    conn.set_listener("c", l)
    conn.connect(wait=True, headers={"client-id": "durable-1"})
    conn.subscribe(destination="jobs/1", id="j", ack="client-individual", receipt="r")
    assert l.receipt() == "r"
    conn.send(destination="jobs/1", body="work")
    assert l.message().body == "work"
    conn.disconnect()  # without ACK
    again = stomp.Connection12([("127.0.0.1", b.stomp_port)])
    l2 = Collector()
    again.set_listener("c", l2)
    again.connect(wait=True, headers={"client-id": "durable-1"})
    again.subscribe(destination="jobs/+", id="k", ack="client-individual")
    m = l2.message()
    assert m.body == "work" and m.headers.get("redelivered") == "true"
    again.ack(m.headers["ack"])
    again.disconnect()
