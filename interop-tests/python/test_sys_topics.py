"""`$SYS` belongs to the broker (issue #16).

Attacks performed: a client publishes a forged statistic under `$SYS`
(MQTT 5 and 3.1.1, retained too), and a client connects with its will on a
`$SYS` topic, both on a broker whose ACL allows everything by default
(`no_match = "allow"`). Before the fix both reached `$SYS` subscribers. Now
the publish is refused (MQTT 5 PUBACK 0x87) and the will's CONNECT is
refused (0x87 / return code 5); only a rule that names `$SYS` for a client
lets it publish there.
"""

from __future__ import annotations

import rawmqtt
from clients import V5, V311

ALLOW_MONITOR = """
[[authorization.rules]]
permission = "allow"
action = "publish"
clientid = "monitor"
topics = ["$SYS/external/#"]
"""


def sys_watcher(client, port):
    w = client(port, "sys-watcher", V5)
    w.connect()
    w.subscribe("$SYS/#", 1)
    return w


def forged(watcher) -> list:
    """Messages on `$SYS/forged...` among the broker's own `$SYS` traffic."""
    return [m for m in watcher.until("$SYS/external/marker") if m.topic.startswith("$SYS/forged")]


def test_a_client_cannot_publish_under_sys(start_broker, client, raw):
    b = start_broker(config=ALLOW_MONITOR)
    watcher = sys_watcher(client, b.port)
    c5 = raw(b.port, rawmqtt.V5)
    c5.connect(client_id="forger5")
    c5.send(rawmqtt.publish("$SYS/forged/clients/connected", b"9999", qos=1, packet_id=3,
                            retain=True, version=rawmqtt.V5))
    ack = c5.expect(rawmqtt.PUBACK)
    assert ack.body[:3] == b"\x00\x03\x87"
    c3 = raw(b.port, rawmqtt.V311)
    c3.connect(client_id="forger3")
    c3.send(rawmqtt.publish("$SYS/forged/uptime", b"0", qos=1, packet_id=4, retain=True))
    c3.expect(rawmqtt.PUBACK)
    # A rule that names $SYS lets that one client publish there.
    monitor = client(b.port, "monitor", V5)
    monitor.connect()
    monitor.publish("$SYS/external/marker", b"m", 1)
    assert forged(watcher) == []
    late = client(b.port, "late", V5)
    late.connect()
    late.subscribe("$SYS/forged/#", 1)
    late.assert_nothing(0.5)  # nothing was retained


def test_a_will_on_sys_is_refused_at_connect(start_broker, client, raw):
    b = start_broker(config=ALLOW_MONITOR)
    watcher = sys_watcher(client, b.port)
    for version, code in ((rawmqtt.V5, 0x87), (rawmqtt.V311, 5)):
        c = raw(b.port, version)
        c.send(rawmqtt.connect(version, client_id=f"will-{version}",
                               will=rawmqtt.Will("$SYS/forged/will", b"gone", qos=0)))
        ack = rawmqtt.parse_connack(c.read(), version)
        assert ack.rc == code, f"CONNACK {ack.rc:#x} for a $SYS will (version {version})"
        c.abort()
    monitor = client(b.port, "monitor", V311)
    monitor.connect()
    monitor.publish("$SYS/external/marker", b"m", 1)
    assert forged(watcher) == []
