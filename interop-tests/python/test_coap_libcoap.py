"""CoAP gateway against libcoap's client (`coap-client-notls`, Debian libcoap3-bin):
publish, retained read, observe, deregistration, connection mode, block-wise
publish of 64 KiB and block-wise notifications. MQTT clients (paho) sit on the
other side."""

from __future__ import annotations

import os
import re
import tempfile
import time

from clients import V5
from coap_support import coap_broker, coap_client, coap_client_bg, free_udp_port, requires_libcoap  # noqa: F401

pytestmark = requires_libcoap


def url(b, path: str) -> str:
    return f"coap://127.0.0.1:{b.coap_port}/{path}"


def wait_log(b, needle: str, count: int = 1, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b.output().count(needle) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not logged {count} time(s)")


def test_publish_reaches_mqtt_subscriber(coap_broker, client):
    b = coap_broker()
    sub = client(b.port, "sub", V5)
    sub.connect()
    sub.subscribe("lc/#", 2)
    r = coap_client("-m", "post", "-e", "hello", url(b, "ps/lc/a?qos=1"))
    assert r.returncode == 0, r.stderr
    m = sub.expect()
    assert (m.topic, m.payload, m.qos) == ("lc/a", b"hello", 1)
    r = coap_client("-m", "put", "-N", "-e", "non", url(b, "ps/lc/b"))
    assert r.returncode == 0, r.stderr
    m = sub.expect()
    assert (m.topic, m.payload, m.qos) == ("lc/b", b"non", 0), "NON publish is QoS 0 under publish_qos=coap"


def test_retained_read_and_not_found(coap_broker):
    b = coap_broker()
    r = coap_client("-m", "get", url(b, "ps/none"))
    assert b"4.04" in r.stdout + r.stderr, r
    assert coap_client("-m", "post", "-e", "kept", url(b, "ps/ret/x?retain=true")).returncode == 0
    r = coap_client("-m", "get", url(b, "ps/ret/x"))
    assert r.stdout.strip() == b"kept"


def test_observe_notifies_and_deregisters(coap_broker, client):
    b = coap_broker()
    obs = coap_client_bg("-m", "get", "-s", "4", "-w", url(b, "ps/obs/%23"))
    try:
        wait_log(b, "observing")
        pub = client(b.port, "pub")
        pub.connect()
        for i in range(3):
            pub.publish(f"obs/{i}", f"n{i}".encode(), 1)
        out, err = obs.communicate(timeout=20)
    finally:
        obs.kill()
    assert out.decode().split() == ["n0", "n1", "n2"], (out, err)
    # At the end of -s, libcoap deregisters with GET + Observe=1 (RFC 7641 §3.6).
    wait_log(b, "observation cancelled")


def test_connection_mode(coap_broker, client):
    b = coap_broker(env={"TRIBUTARY_COAP__CONNECTION_REQUIRED": "true"})
    sub = client(b.port, "sub")
    sub.connect()
    sub.subscribe("cm/#", 1)
    r = coap_client("-m", "post", "-e", "x", url(b, "ps/cm/a"))
    assert b"4.01" in r.stdout + r.stderr, "publish without a connection is refused"
    # A connection belongs to the peer (address and port) that made it, as in
    # EMQX: every run binds the same local port (-p).
    local = str(free_udp_port())
    r = coap_client("-p", local, "-m", "post", url(b, "mqtt/connection?clientid=lc1&username=u&password=p"))
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip().decode()
    assert re.fullmatch(r"[0-9a-f]{16}", token), r.stdout
    r = coap_client("-p", local, "-m", "post", "-e", "in", url(b, f"ps/cm/a?c=lc1&t={token}"))
    assert r.returncode == 0 and b"4." not in r.stdout + r.stderr, r
    m = sub.expect()
    assert (m.topic, m.payload) == ("cm/a", b"in")
    r = coap_client("-p", local, "-m", "post", "-e", "x", url(b, "ps/cm/a?c=lc1&t=wrong"))
    assert b"4.01" in r.stdout + r.stderr
    r = coap_client("-p", local, "-m", "put", url(b, f"mqtt/connection?clientid=lc1&token={token}"))
    assert r.returncode == 0 and b"4." not in r.stdout + r.stderr, r
    r = coap_client("-p", local, "-m", "delete", url(b, f"mqtt/connection?clientid=lc1&token={token}"))
    assert r.returncode == 0 and b"4." not in r.stdout + r.stderr, r
    r = coap_client("-p", local, "-m", "post", "-e", "x", url(b, f"ps/cm/a?c=lc1&t={token}"))
    assert b"4.01" in r.stdout + r.stderr, "the connection is closed"
    sub.assert_nothing()


def test_blockwise_publish_of_64k(coap_broker, client):
    b = coap_broker()
    sub = client(b.port, "sub")
    sub.connect()
    sub.subscribe("big", 0)
    payload = bytes((i * 7 + 3) % 256 for i in range(64 * 1024))
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(payload)
    try:
        r = coap_client("-m", "post", "-b", "1024", "-f", f.name, url(b, "ps/big?qos=1"))
    finally:
        os.unlink(f.name)
    assert r.returncode == 0, r.stderr
    m = sub.expect()
    assert len(m.payload) == len(payload) and m.payload == payload


def test_blockwise_notification(coap_broker, client):
    b = coap_broker()
    payload = ("".join(f"{i:05d}," for i in range(1000))).encode()  # 6000 bytes: 6 blocks of 1024
    obs = coap_client_bg("-m", "get", "-s", "4", "-B", "6", url(b, "ps/blk"))
    try:
        wait_log(b, "observing")
        pub = client(b.port, "pub")
        pub.connect()
        pub.publish("blk", payload, 0)
        out, err = obs.communicate(timeout=20)
    finally:
        obs.kill()
    assert payload in out, (len(out), err[-500:])


def test_large_retained_read_blockwise(coap_broker, client):
    b = coap_broker()
    payload = os.urandom(5000).hex().encode()  # 10000 bytes
    pub = client(b.port, "pub")
    pub.connect()
    pub.publish("ret/big", payload, 1, retain=True)
    r = coap_client("-m", "get", "-b", "512", url(b, "ps/ret/big"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == payload
