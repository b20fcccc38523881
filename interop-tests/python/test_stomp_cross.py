"""Cross-protocol: STOMP SEND → MQTT subscriber (paho-mqtt), and MQTT
publish → STOMP subscriber over TCP and WebSocket (SockJS is covered by
the Node suite, interop-tests/node). Custom headers travel as MQTT 5 user
properties, content-type as the Content Type property."""

from __future__ import annotations

from clients import V5, V311, props
from stomp.adapter.ws import WSStompConnection

from stomp_support import Collector, connect, start_stomp, stomp_broker  # noqa: F401 (fixtures)


def test_stomp_send_to_mqtt5_subscriber(stomp_broker, client):
    sub = client(stomp_broker.port, "mqtt-sub", V5)
    sub.connect()
    sub.subscribe("plant/#", 1)
    conn, l = connect(stomp_broker.stomp_port)
    conn.send(destination="plant/line1", body='{"rpm":1200}', content_type="application/json",
              headers={"x-shift": "night", "receipt": "r"})
    assert l.receipt() == "r"
    m = sub.expect()
    assert (m.topic, m.payload, m.qos) == ("plant/line1", b'{"rpm":1200}', 0)
    assert m.properties.ContentType == "application/json"
    assert ("x-shift", "night") in m.properties.UserProperty
    conn.disconnect()


def test_stomp_send_qos1_to_mqtt311(start_stomp, client):
    b = start_stomp(env={"TRIBUTARY_STOMP__SEND_QOS": "1"})
    sub = client(b.port, "v3-sub", V311)
    sub.connect()
    sub.subscribe("q1/x", 1)
    conn, _ = connect(b.stomp_port, "1.0")
    conn.send(destination="q1/x", body="one")
    m = sub.expect()
    assert (m.payload, m.qos) == (b"one", 1)
    conn.disconnect()


def test_mqtt_publish_to_stomp_over_tcp(stomp_broker, client):
    conn, l = connect(stomp_broker.stomp_port, "1.1")
    conn.subscribe(destination="cmd/+", id="c", receipt="r")
    assert l.receipt() == "r"
    pub = client(stomp_broker.port, "mqtt-pub", V5)
    pub.connect()
    pub.publish("cmd/start", b"go", 1,
                properties=props(ContentType="text/plain", UserProperty=[("origin", "mqtt")]))
    m = l.message()
    assert m.body == "go"
    assert m.headers["destination"] == "cmd/start"
    assert m.headers["content-type"] == "text/plain"
    assert m.headers["origin"] == "mqtt"
    conn.disconnect()


def test_mqtt_publish_to_stomp_over_websocket(stomp_broker, client):
    conn = WSStompConnection([("127.0.0.1", stomp_broker.http_port)], ws_path="/stomp/websocket")
    l = Collector()
    conn.set_listener("c", l)
    conn.connect(wait=True)
    conn.subscribe(destination="ws/in", id="1", receipt="r")
    assert l.receipt() == "r"
    pub = client(stomp_broker.port, "mqtt-pub", V311)
    pub.connect()
    pub.publish("ws/in", b"hello browser", 0)
    assert l.message().body == "hello browser"
    conn.disconnect()


def test_retained_mqtt_message_on_stomp_subscribe(stomp_broker, client):
    pub = client(stomp_broker.port, "retainer", V311)
    pub.connect()
    pub.publish("state/door", b"open", 1, retain=True)
    conn, l = connect(stomp_broker.stomp_port)
    conn.subscribe(destination="state/#", id="plain", receipt="r1")
    assert l.receipt() == "r1"
    assert l.no_message(0.3), "retained only when asked"
    conn.subscribe(destination="state/door", id="ret", headers={"retain": "true"})
    m = l.message()
    assert (m.body, m.headers["subscription"], m.headers.get("retain")) == ("open", "ret", "true")
    conn.disconnect()


def test_mountpoint_is_hidden_from_stomp_clients(start_stomp, client):
    b = start_stomp(env={"TRIBUTARY_STOMP__MOUNTPOINT": "stomp/"})
    sub = client(b.port, "m", V311)
    sub.connect()
    sub.subscribe("stomp/#", 0)
    conn, l = connect(b.stomp_port)
    conn.subscribe(destination="echo", id="e", receipt="r")
    assert l.receipt() == "r"
    conn.send(destination="echo", body="x")
    assert sub.expect().topic == "stomp/echo"
    m = l.message()
    assert m.headers["destination"] == "echo"
    conn.disconnect()
