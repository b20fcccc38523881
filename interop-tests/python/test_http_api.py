"""The HTTP API on its own port (EMQX v5 paths), exercised with urllib,
plus `tributary ctl`, the Prometheus output (parsed with prometheus_client)
and `GET /status` while serving and while draining."""

from __future__ import annotations

import base64
import signal
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import rawmqtt
from clients import V5, V311, props
from conftest import BIN
from sec import API_CONFIG, API_KEY, API_SECRET, api, free_port, wait_port


@pytest.fixture
def node(start_broker):
    """A broker with the API on a known port: (broker, api port)."""
    port = free_port()
    broker = start_broker(env={"TRIBUTARY_API__BIND": f"127.0.0.1:{port}"}, config=API_CONFIG)
    wait_port(port)
    return broker, port


def test_status_needs_no_auth(node):
    _, port = node
    status, text, _ = api(port, "GET", "/status", auth=None)
    assert status == 200 and "is running" in text


def test_api_paths_need_the_key(node):
    _, port = node
    for auth in (None, (API_KEY, "wrong-secret"), ("nobody", API_SECRET)):
        status, body, headers = api(port, "GET", "/api/v5/stats", auth=auth)
        assert status == 401
        assert body["code"] == "BAD_API_KEY_OR_SECRET" and body["message"]
        assert headers["WWW-Authenticate"].startswith("Basic")


def test_unknown_path_and_bad_json_are_json_errors(node):
    _, port = node
    status, body, _ = api(port, "GET", "/api/v5/nope")
    assert status == 404 and body["code"] == "NOT_FOUND"
    status, body, _ = api(port, "POST", "/api/v5/publish", raw=b"{not json")
    assert status == 400 and body["code"] == "BAD_REQUEST"
    status, body, _ = api(port, "POST", "/api/v5/publish", {"topic": "a/+", "payload": "x"})
    assert status == 400 and "topic" in body["message"]
    status, body, _ = api(port, "POST", "/api/v5/publish", {"topic": "a", "qos": 3})
    assert status == 400


def test_openapi_document(node):
    _, port = node
    status, doc, _ = api(port, "GET", "/api-docs/openapi.json", auth=None)
    assert status == 200 and doc["openapi"].startswith("3.")
    for path in ["/api/v5/publish", "/api/v5/publish/bulk", "/api/v5/clients", "/api/v5/clients/{clientid}",
                 "/api/v5/subscriptions", "/api/v5/stats", "/api/v5/metrics", "/api/v5/prometheus/stats",
                 "/api/v5/status", "/status"]:
        assert path in doc["paths"], path


@pytest.mark.parametrize("version", [V311, V5])
def test_publish_plain_and_base64(node, client, version):
    broker, port = node
    sub = client(broker.port, "api-sub", version)
    sub.connect()
    assert sub.subscribe("api/#", 2) == [2]
    status, body, _ = api(port, "POST", "/api/v5/publish",
                          {"topic": "api/plain", "payload": "hello", "qos": 1})
    assert status == 200 and len(body["id"]) == 32
    m = sub.expect()
    assert (m.topic, m.payload, m.qos) == ("api/plain", b"hello", 1)
    status, _, _ = api(port, "POST", "/api/v5/publish",
                       {"topic": "api/bin", "payload": base64.b64encode(b"\x00\xff").decode(),
                        "payload_encoding": "base64", "qos": 2})
    assert status == 200
    m = sub.expect()
    assert (m.payload, m.qos) == (b"\x00\xff", 2)


def test_publish_properties_and_no_subscribers(node, client):
    broker, port = node
    sub = client(broker.port, "props-sub", V5)
    sub.connect()
    sub.subscribe("p/#", 1)
    status, _, _ = api(port, "POST", "/api/v5/publish", {
        "topic": "p/x", "payload": "{}", "qos": 1,
        "properties": {"content_type": "application/json", "user_properties": {"k": "v"},
                       "response_topic": "p/reply", "message_expiry_interval": 60}})
    assert status == 200
    m = sub.expect()
    assert m.properties.ContentType == "application/json"
    assert m.properties.UserProperty == [("k", "v")]
    assert m.properties.ResponseTopic == "p/reply"
    status, body, _ = api(port, "POST", "/api/v5/publish", {"topic": "nobody/listens", "payload": "x"})
    assert status == 202 and body["reason_code"] == 16


def test_retained_publish_list_get_delete(node, client):
    broker, port = node
    api(port, "POST", "/api/v5/publish", {"topic": "r/one", "payload": "kept", "retain": True})
    status, body, _ = api(port, "GET", "/api/v5/mqtt/retainer/messages")
    assert status == 200 and [m["topic"] for m in body["data"]] == ["r/one"]
    status, m, _ = api(port, "GET", "/api/v5/mqtt/retainer/message/r/one")
    assert status == 200 and base64.b64decode(m["payload"]) == b"kept"
    late = client(broker.port, "late")
    late.connect()
    late.subscribe("r/#", 0)
    assert late.expect().payload == b"kept"
    status, _, _ = api(port, "DELETE", "/api/v5/mqtt/retainer/message/r/one")
    assert status == 204
    status, body, _ = api(port, "GET", "/api/v5/mqtt/retainer/message/r/one")
    assert status == 404 and body["code"] == "NOT_FOUND"


def test_bulk_publish(node, client):
    broker, port = node
    sub = client(broker.port, "bulk-sub")
    sub.connect()
    sub.subscribe("bulk/#", 1)
    status, body, _ = api(port, "POST", "/api/v5/publish/bulk",
                          [{"topic": f"bulk/{i}", "payload": str(i), "qos": 1} for i in range(3)])
    assert status == 200 and len(body) == 3
    assert [m.payload for m in sub.expect_n(3)] == [b"0", b"1", b"2"]
    # One bad entry: nothing is published.
    status, body, _ = api(port, "POST", "/api/v5/publish/bulk",
                          [{"topic": "bulk/ok", "payload": "x"}, {"topic": "bad/#", "payload": "y"}])
    assert status == 400 and "[1]" in body["message"]
    sub.assert_nothing()


def test_clients_subscriptions_and_kick(node, client):
    broker, port = node
    c = client(broker.port, "kick-me", V5)
    c.c.username_pw_set("kim", "x")
    c.connect()
    c.subscribe([("k/a", 1), ("k/b", 0)])
    status, body, _ = api(port, "GET", "/api/v5/clients")
    assert status == 200 and body["meta"]["count"] == 1
    entry = body["data"][0]
    assert entry["clientid"] == "kick-me" and entry["username"] == "kim" and entry["connected"]
    assert entry["ip_address"] == "127.0.0.1" and entry["proto_name"] == "mqtt" and entry["subscriptions_cnt"] == 2
    status, one, _ = api(port, "GET", "/api/v5/clients/kick-me")
    assert status == 200 and one["clientid"] == "kick-me"
    status, subs, _ = api(port, "GET", "/api/v5/subscriptions?clientid=kick-me")
    assert sorted((s["topic"], s["qos"]) for s in subs["data"]) == [("k/a", 1), ("k/b", 0)]
    status, _, _ = api(port, "DELETE", "/api/v5/clients/kick-me")
    assert status == 204
    assert c.disconnected.wait(5) and c.disconnect_reason == 0x98
    status, body, _ = api(port, "DELETE", "/api/v5/clients/kick-me")
    assert status == 404 and body["code"] == "CLIENTID_NOT_FOUND"
    status, body, _ = api(port, "GET", "/api/v5/clients/nobody")
    assert status == 404


def test_stats_metrics_status_listeners(node, client):
    broker, port = node
    c = client(broker.port, "stats-1")
    c.connect()
    c.subscribe("s/#", 0)
    c.publish("s/x", b"1")
    c.expect()
    status, stats, _ = api(port, "GET", "/api/v5/stats")
    assert status == 200
    assert stats["connections.count"] == 1 and stats["subscriptions.count"] == 1
    status, metrics, _ = api(port, "GET", "/api/v5/metrics")
    assert metrics["messages.received"] >= 1 and metrics["messages.sent"] >= 1
    assert metrics["auth.success"] >= 1 and "bytes.received" in metrics
    status, st, _ = api(port, "GET", "/api/v5/status")
    assert st["status"] == "running" and st["node"] == "tributary@127.0.0.1"
    status, listeners, _ = api(port, "GET", "/api/v5/listeners")
    tcp = next(l for l in listeners if l["id"] == "tcp:default")
    assert tcp["current_connections"] == 1 and tcp["accepted"] >= 1


def test_prometheus_text_parses(node, client):
    broker, port = node
    c = client(broker.port, "prom-1")
    c.connect()
    c.publish("prom/x", b"1", qos=1)
    status, text, headers = api(port, "GET", "/api/v5/prometheus/stats")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["tributary_connections"].type == "gauge"
    assert families["tributary_connections"].samples[0].value == 1
    received = families["tributary_messages_received"]  # the parser strips _total
    assert received.type == "counter" and received.samples[0].value >= 1
    assert families["tributary_messages_qos1_received"].samples[0].value >= 1
    listener = {s.labels["listener"]: s.value for s in families["tributary_listener_connections"].samples}
    assert listener["tcp:default"] == 1
    online = {s.labels["protocol"]: s.value for s in families["tributary_clients_online"].samples}
    assert online == {"mqtt": 1}


def test_log_level_at_runtime(node):
    broker, port = node
    status, body, _ = api(port, "GET", "/api/v5/log/level")
    assert status == 200 and body["level"] == "debug"
    status, body, _ = api(port, "PUT", "/api/v5/log/level", {"level": "warn"})
    assert status == 200
    assert api(port, "GET", "/api/v5/log/level")[1]["level"] == "warn"
    status, body, _ = api(port, "PUT", "/api/v5/log/level", {"level": "not[a filter"})
    assert status == 400 and body["code"] == "BAD_REQUEST"


def test_status_is_503_while_draining(node):
    broker, port = node
    # A raw client that never closes its socket keeps the drain going for a while.
    held = rawmqtt.RawClient(broker.port, rawmqtt.V311)
    held.connect(client_id="holder")
    broker.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 3
    seen = None
    while time.monotonic() < deadline:
        try:
            seen = api(port, "GET", "/status", auth=None, timeout=1)[0]
        except OSError:
            break
        if seen == 503:
            break
        time.sleep(0.02)
    held.close()
    assert seen == 503


def ctl(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), "ctl", "--api", f"127.0.0.1:{port}", "--key", API_KEY,
                           "--secret", API_SECRET, *args], capture_output=True, text=True, timeout=30)


def test_ctl(node, client):
    broker, port = node
    c = client(broker.port, "ctl-client", V5)
    c.connect()
    c.subscribe("ctl/#", 1)
    api(port, "POST", "/api/v5/publish", {"topic": "ctl/ret", "payload": "r", "retain": True})
    r = ctl(port, "clients", "list")
    assert r.returncode == 0 and "ctl-client" in r.stdout
    r = ctl(port, "clients", "show", "ctl-client")
    assert r.returncode == 0 and '"connected": true' in r.stdout
    r = ctl(port, "subscriptions", "--clientid", "ctl-client")
    assert r.returncode == 0 and "ctl/#" in r.stdout
    r = ctl(port, "retained", "list")
    assert r.returncode == 0 and "ctl/ret" in r.stdout
    r = ctl(port, "retained", "delete", "ctl/ret")
    assert r.returncode == 0
    r = ctl(port, "log-level", "info")
    assert r.returncode == 0
    r = ctl(port, "log-level")
    assert '"level": "info"' in r.stdout
    r = ctl(port, "status")
    assert '"status": "running"' in r.stdout
    r = ctl(port, "clients", "kick", "ctl-client")
    assert r.returncode == 0
    assert c.disconnected.wait(5)
    r = ctl(port, "clients", "kick", "ctl-client")
    assert r.returncode == 1 and "404" in r.stderr
    r = subprocess.run([str(BIN), "ctl", "--api", f"127.0.0.1:{port}", "--key", "x", "--secret", "y", "status"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "401" in r.stderr


def test_json_logs(start_broker):
    import json
    broker = start_broker(env={"TRIBUTARY_LOG__FORMAT": "json"})
    first = broker.output().splitlines()[0]
    record = json.loads(first)
    assert record["level"] == "INFO" and "fields" in record


def test_sys_topics_carry_the_new_counters(start_broker, client):
    broker = start_broker(env={"TRIBUTARY_NODE__SYS_INTERVAL": "200ms"})
    c = client(broker.port, "sys-reader")
    c.connect()
    assert c.subscribe("$SYS/brokers/+/metrics/#", 0) == [0]
    seen = {}
    deadline = time.monotonic() + 5
    while not {"auth_success", "bytes_received", "connections_refused"} <= seen.keys():
        assert time.monotonic() < deadline, sorted(seen)
        m = c.expect()
        seen[m.topic.rsplit("/", 1)[1]] = int(m.payload)
    assert seen["auth_success"] >= 1 and seen["bytes_received"] > 0


def test_prometheus_counts_per_protocol_qos_reason_and_queue_depth(start_broker, client):
    from stomp_support import RawStomp

    port, stomp_port = free_port(), free_port()
    broker = start_broker(env={"TRIBUTARY_API__BIND": f"127.0.0.1:{port}",
                               "TRIBUTARY_STOMP__BIND": f"127.0.0.1:{stomp_port}"}, config=API_CONFIG)
    wait_port(port)
    wait_port(stomp_port)
    sub = client(broker.port, "depth-sub", clean_session=False)
    sub.connect()
    sub.subscribe("depth/#", 1)
    sub.disconnect()
    pub = client(broker.port, "depth-pub")
    pub.connect()
    for i in range(3):
        pub.publish("depth/a", str(i).encode(), qos=1)
    s = RawStomp(stomp_port)
    s.send(b"CONNECT\naccept-version:1.2\nhost:x\n\n\0")
    assert s.frame()[0] == "CONNECTED"
    s.send(b"SEND\ndestination:depth/s\nreceipt:r\n\nstomp\0")
    assert s.frame()[0] == "RECEIPT"

    def scrape():
        status, text, _ = api(port, "GET", "/api/v5/prometheus/stats")
        assert status == 200
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        return lambda fam, **labels: sum(
            x.value for x in fams[fam].samples if all(x.labels.get(k) == v for k, v in labels.items()))

    v = scrape()
    assert v("tributary_protocol_messages_received", protocol="mqtt", qos="1") == 3
    assert v("tributary_protocol_messages_received", protocol="stomp", qos="0") == 1
    # mqueue_store_qos0 = true (as EMQX): the STOMP QoS 0 message is queued too.
    assert v("tributary_queued_messages", protocol="mqtt") == 4
    assert v("tributary_messages_dropped", reason="offline_qos0") == 0
    assert v("tributary_messages_dropped", reason="queue_full") == 0
    assert v("tributary_messages_qos1_received") == 3 and v("tributary_messages_qos0_received") == 1
    # The UDP gateways' own counters are exported too.
    assert v("tributary_gateway_datagrams_received", gateway="mqtt-sn") == 0
    assert v("tributary_gateway_peers", gateway="coap") == 0
    back = client(broker.port, "depth-sub", clean_session=False)
    back.connect()
    assert sorted(m.payload for m in back.expect_n(4)) == [b"0", b"1", b"2", b"stomp"]
    v = scrape()
    assert v("tributary_protocol_messages_sent", protocol="mqtt", qos="1") == 3
    assert v("tributary_protocol_messages_sent", protocol="mqtt", qos="0") == 1
    assert v("tributary_messages_qos1_sent") == 3
    assert v("tributary_queued_messages", protocol="mqtt") == 0
