"""Cross-protocol: MQTT-SN publish -> MQTT (paho) subscriber and MQTT
publish -> MQTT-SN subscriber, at QoS 0, 1 and 2."""

from __future__ import annotations

import pytest

from mqttsn_support import NORMAL, sn, sn_broker, start_sn  # noqa: F401 (fixtures)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mqttsn_publish_to_mqtt_subscriber(sn_broker, sn, client, qos):
    m = client(sn_broker.port, f"mqtt-sub-{qos}")
    m.connect()
    m.subscribe("plant/line1/#", 2)
    c = sn(sn_broker.sn_port)
    c.connect(f"sn-pub-{qos}")
    topic_id = c.register("plant/line1/press")
    if qos == 2:
        c.publish_qos2(topic_id, b"p2")
    else:
        c.publish(topic_id, f"p{qos}".encode(), qos=qos)
        if qos == 1:
            assert c.expect(0x0D)[-1] == 0
    msg = m.expect()
    assert (msg.topic, msg.payload, msg.qos) == ("plant/line1/press", f"p{qos}".encode(), qos)
    m.assert_nothing()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mqtt_publish_to_mqttsn_subscriber(sn_broker, sn, client, qos):
    c = sn(sn_broker.sn_port)
    c.connect(f"sn-sub-{qos}")
    granted, topic_id, rc = c.subscribe("cmd/valve", qos=qos)
    assert (granted, rc) == (qos, 0) and topic_id >= 1025
    m = client(sn_broker.port, f"mqtt-pub-{qos}")
    m.connect()
    m.publish("cmd/valve", b"open", qos=qos)
    p = c.next_publish()
    assert (p["kind"], p["topic_id"], p["payload"], p["qos"]) == (NORMAL, topic_id, b"open", qos)
    c.ack(p)
    c.assert_nothing()
