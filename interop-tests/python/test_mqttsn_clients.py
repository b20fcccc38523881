"""MQTT-SN with a client nobody here wrote: `mqtt_sn_pub` / `mqtt_sn_sub`
from the PyPI package `mqtt-sn-12`, against the real binary."""

from __future__ import annotations

import time

import pytest

from clients import Client
from mqttsn_support import sn_broker, start_sn, sn_pub, sn_sub  # noqa: F401 (fixtures)


def publish_until_received(port: int, sub, pub_args: list[str], timeout: float = 15.0) -> str:
    """Publish repeatedly (the subscriber subscribes asynchronously) until
    the `-1` subscriber exits with the message; returns its stdout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sub.poll() is None:
        r = sn_pub(port, *pub_args)
        assert r.returncode == 0, r.stderr
        try:
            sub.wait(0.5)
        except Exception:
            pass
    if sub.poll() is None:
        sub.kill()
    out, err = sub.communicate(timeout=5)
    assert sub.returncode == 0, f"subscriber did not get the message: {err}"
    return out


@pytest.mark.parametrize("qos", ["0", "1"])
def test_pub_to_sub_on_a_registered_topic(sn_broker, qos):
    port = sn_broker.sn_port
    sub = sn_sub(port, "-t", "sensors/room1/temp", "-q", qos, "-1")
    out = publish_until_received(port, sub, ["-t", "sensors/room1/temp", "-m", "21.5", "-q", qos])
    assert out.strip().splitlines()[0] == "21.5"


def test_wildcard_subscription_gets_gateway_register(sn_broker):
    port = sn_broker.sn_port
    sub = sn_sub(port, "-t", "sensors/#", "-q", "1", "-1")
    out = publish_until_received(port, sub, ["-t", "sensors/kitchen/hum", "-m", "55", "-q", "1"])
    assert out.strip().splitlines()[0] == "55"


def test_qos2_publish_reaches_mqtt(sn_broker, client):
    m = client(sn_broker.port, "mqtt-sub")
    m.connect()
    m.subscribe("up/#", 2)
    r = sn_pub(sn_broker.sn_port, "-t", "up/q2", "-m", "exactly", "-q", "2")
    assert r.returncode == 0, r.stderr
    msg = m.expect()
    assert (msg.topic, msg.payload, msg.qos) == ("up/q2", b"exactly", 2)
    m.assert_nothing()


def test_short_topic_publish(sn_broker, client):
    m = client(sn_broker.port, "mqtt-sub")
    m.connect()
    m.subscribe("ab", 1)
    r = sn_pub(sn_broker.sn_port, "-t", "ab", "-m", "short", "-q", "1")
    assert r.returncode == 0, r.stderr
    msg = m.expect()
    assert (msg.topic, msg.payload) == ("ab", b"short")


def test_qos_minus_one_with_predefined_topic(start_sn, client):
    b = start_sn(config='[[mqttsn.predefined]]\nid = 7\ntopic = "pre/seven"\n')
    m = client(b.port, "mqtt-sub")
    m.connect()
    m.subscribe("pre/#", 1)
    r = sn_pub(b.sn_port, "-T", "7", "-m", "no connection", "-q", "-1")
    assert r.returncode == 0, r.stderr
    msg = m.expect()
    assert (msg.topic, msg.payload, msg.qos) == ("pre/seven", b"no connection", 0)


def test_will_is_published_when_the_client_vanishes(start_sn, client):
    b = start_sn(env={"TRIBUTARY_MQTTSN__IDLE_TIMEOUT": "1s"})
    m = client(b.port, "mqtt-sub")
    m.connect()
    m.subscribe("wills/#", 0)
    # Keep alive 1 s; the subscriber process is killed without DISCONNECT.
    sub = sn_sub(b.sn_port, "-t", "x/y", "-k", "1", "--will-topic", "wills/dev", "--will-payload", "bye",
                 "-i", "dev-will")
    deadline = time.monotonic() + 10
    while "client_id=dev-will" not in b.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "client_id=dev-will" in b.output(), "the subscriber never connected"
    sub.kill()
    sub.communicate()
    msg = m.expect(timeout=6)
    assert (msg.topic, msg.payload) == ("wills/dev", b"bye")
