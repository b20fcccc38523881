"""MQTT-SN QoS -1 cannot bypass authentication (issue #16).

Attack performed: with the built-in user database on (an anonymous MQTT
CONNECT is refused with rc 5), a datagram carrying a QoS -1 PUBLISH with a
short topic and the retain flag, from an address that never sent CONNECT.
Before the fix it reached MQTT subscribers and was retained. Now it is
dropped and counted (`tributary_gateway_qos_neg1_unauthenticated_total`);
an operator who wants connection-less sensors lists their sources in
`mqttsn.qos3_sources`, and their publishes pass the ACL like any other.
"""

from __future__ import annotations

import subprocess

from clients import V311, Client
from conftest import BIN
from mqttsn_support import PREDEFINED, SHORT, short_id, sn, start_sn  # noqa: F401 (fixtures)
from sec import API_CONFIG, api, free_port
from test_auth import NOT_AUTHORIZED, connect, users_file


def authed(port: int, client_id: str) -> Client:
    c = Client(port, client_id, V311)
    c.c.username_pw_set("alice", "wonderland")
    c.connect()
    return c


def gateway_counter(api_port: int, name: str) -> float:
    status, text, _ = api(api_port, "GET", "/api/v5/prometheus/stats")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(f"tributary_gateway_{name}_total") and 'gateway="mqtt-sn"' in line:
            return float(line.split()[-1])
    raise AssertionError(f"no {name} counter for mqtt-sn in the metrics:\n{text[:3000]}")


def auth_config(path: str, extra: str = "") -> str:
    return (f'[authentication.built_in_database]\nenabled = true\nusers_file = "{path}"\n'
            + API_CONFIG + extra)


def test_an_unconnected_qos_minus_one_publish_is_dropped_while_anonymous_access_is_off(start_sn, sn, tmp_path):
    api_port = free_port()
    path = users_file(tmp_path, ("alice", "wonderland"))
    b = start_sn(config=auth_config(path), env={"TRIBUTARY_API__BIND": f"127.0.0.1:{api_port}"})
    assert connect(b.port, "anon", V311) == NOT_AUTHORIZED[V311]
    watcher = authed(b.port, "watcher")
    watcher.subscribe("#", 0)
    attacker = sn(b.sn_port)  # never connects
    for _ in range(3):
        attacker.publish(short_id("xy"), b"forged", qos=-1, kind=SHORT, retain=True)
    watcher.assert_nothing(0.5)
    late = authed(b.port, "late")
    late.subscribe("xy", 0)
    late.assert_nothing(0.5)  # nothing was retained
    assert gateway_counter(api_port, "qos_neg1_unauthenticated") >= 3
    assert "qos_neg1=off (anonymous access is off" in b.output()
    watcher.close()
    late.close()


def test_qos_minus_one_from_a_listed_source_passes_the_acl(start_sn, sn, tmp_path):
    path = users_file(tmp_path, ("alice", "wonderland"))
    extra = '''
[mqttsn]
qos3_sources = ["127.0.0.0/8"]

[[mqttsn.predefined]]
id = 1
topic = "sensors/one"

[[mqttsn.predefined]]
id = 2
topic = "secret/two"

[[authorization.rules]]
permission = "deny"
action = "publish"
topics = ["secret/#"]
'''
    b = start_sn(config=auth_config(path, extra))
    watcher = authed(b.port, "watcher")
    watcher.subscribe("#", 0)
    sensor = sn(b.sn_port)
    sensor.publish(2, b"denied by the ACL", qos=-1, kind=PREDEFINED)
    sensor.publish(1, b"allowed", qos=-1, kind=PREDEFINED)
    got = watcher.expect()
    assert (got.topic, got.payload) == ("sensors/one", b"allowed")
    watcher.assert_nothing(0.5)
    watcher.close()


def test_a_source_that_is_not_an_address_fails_at_start_naming_the_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[mqttsn]\nqos3_sources = ["10.0.0.0/33"]\n')
    r = subprocess.run([str(BIN), "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "mqttsn.qos3_sources[0]" in r.stderr, r.stderr
