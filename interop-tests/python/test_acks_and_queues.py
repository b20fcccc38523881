"""Acknowledged means kept, for every protocol (issue #15), and queues a
durable broker can stand behind.

- kill -9 in the middle of MQTT-SN QoS 1 and QoS 2 publishes, confirmable
  CoAP publishes and STOMP SENDs with a receipt: whatever the gateway
  acknowledged (PUBACK, PUBREC, 2.04, RECEIPT) is delivered to a persistent
  MQTT subscriber after the restart.
- 5,000 QoS 1 messages for an offline persistent session under the shipped
  queue bounds survive a restart, all of them, in order, while the
  session's resident queue stays small (the rest is in the store).
- A small configured bound overflows by its policy, and every drop is
  counted: Prometheus, `$SYS`, and the client's HTTP API entry.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from coap_support import ACK, CON, POST, RawCoap, free_udp_port, request
from conftest import free_port
from mqttsn_support import PUBACK, PUBCOMP, PUBREC, PUBREL, SnRaw
from sec import API_CONFIG, api
from test_durability import WAIT, WINDOW, Publisher, Subscriber, durable, go_offline  # noqa: F401

KILL_AFTER = 60  # acknowledged messages before the kill


def protocol_ports() -> dict[str, str]:
    return {
        "TRIBUTARY_MQTTSN__BIND": f"127.0.0.1:{free_udp_port()}",
        "TRIBUTARY_COAP__BIND": f"127.0.0.1:{free_udp_port()}",
        "TRIBUTARY_STOMP__BIND": f"127.0.0.1:{free_port()}",
        # STOMP SENDs are QoS 1, so their RECEIPT waits for the store.
        "TRIBUTARY_STOMP__SEND_QOS": "1",
    }


def port_of(b, key: str) -> int:
    return int(b.extra_env[key].rsplit(":", 1)[1])


class Sender(threading.Thread):
    """Sends seq-numbered payloads one at a time, each after the previous one
    was acknowledged, until the gateway goes away; records what was acknowledged."""

    def __init__(self, send_one):
        super().__init__(daemon=True)
        self.send_one = send_one
        self.acked: list[bytes] = []
        self.lock = threading.Lock()

    def run(self):
        for seq in range(100_000):
            payload = f"seq-{seq:06d}".encode()
            try:
                if not self.send_one(seq, payload):
                    return
            except (OSError, socket.timeout, AssertionError):
                return
            with self.lock:
                self.acked.append(payload)

    def wait_acked(self, n: int) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            with self.lock:
                if len(self.acked) >= n:
                    return
            assert self.is_alive(), f"sender stopped after {len(self.acked)}"
            assert time.monotonic() < deadline, f"only {len(self.acked)} acknowledged"
            time.sleep(0.005)


def kill_and_check(b, topic: str, sender: Sender) -> None:
    sender.start()
    sender.wait_acked(KILL_AFTER)
    b.kill9()  # mid-stream: the sender is still sending
    sender.join(WAIT)
    acked = set(sender.acked)
    assert len(acked) >= KILL_AFTER
    b.start()
    sub = Subscriber(b.port, f"sub-{topic}", topic, 1)
    assert sub.session_present == [True]
    missing = sub.wait_for(acked)
    sub.stop()
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"


@pytest.mark.parametrize("qos", [1, 2])
def test_kill9_keeps_every_acknowledged_mqttsn_publish(durable, qos):
    b = durable(batch_window=WINDOW, env=protocol_ports())
    topic = f"dur/sn/{qos}"
    go_offline(b.port, f"sub-{topic}", topic, 1)
    sn = SnRaw(port_of(b, "TRIBUTARY_MQTTSN__BIND"), timeout=2.0)
    assert sn.connect("sn-pub") == 0
    topic_id = sn.register(topic)

    def send_one(seq, payload):
        msg_id = sn.publish(topic_id, payload, qos=qos)
        if qos == 1:
            body = sn.expect(PUBACK)
            return struct.unpack(">HHB", body)[1:] == (msg_id, 0)
        # QoS 2: the message is the gateway's once it answered PUBREC.
        sn.expect(PUBREC)
        sn.send(PUBREL, struct.pack(">H", msg_id))
        try:
            sn.expect(PUBCOMP)
        except (OSError, socket.timeout):
            pass  # acknowledged (PUBREC) all the same
        return True

    kill_and_check(b, topic, Sender(send_one))
    sn.close()


def test_kill9_keeps_every_acknowledged_confirmable_coap_publish(durable):
    b = durable(batch_window=WINDOW, env=protocol_ports())
    topic = "dur/coap"
    go_offline(b.port, f"sub-{topic}", topic, 1)
    coap = RawCoap(port_of(b, "TRIBUTARY_COAP__BIND"), timeout=2.0)

    def send_one(seq, payload):
        mid = seq % 65536
        r = coap.exchange(request(CON, POST, f"ps/{topic}", mid, struct.pack(">H", mid),
                                  ("qos=1",), payload))
        return r.mtype == ACK and r.code_str == "2.04"

    kill_and_check(b, topic, Sender(send_one))
    coap.close()


def test_kill9_keeps_every_stomp_send_that_got_its_receipt(durable):
    b = durable(batch_window=WINDOW, env=protocol_ports())
    topic = "dur/stomp"
    go_offline(b.port, f"sub-{topic}", topic, 1)
    s = socket.create_connection(("127.0.0.1", port_of(b, "TRIBUTARY_STOMP__BIND")), timeout=2.0)
    s.sendall(b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00")
    assert s.recv(4096).startswith(b"CONNECTED")
    pending = bytearray()

    def send_one(seq, payload):
        s.sendall(f"SEND\ndestination:{topic}\nreceipt:r{seq}\n\n".encode() + payload + b"\x00")
        want = f"receipt-id:r{seq}".encode()
        while want not in pending:
            chunk = s.recv(4096)
            if not chunk:
                return False
            pending.extend(chunk)
        del pending[: pending.index(want) + len(want)]
        return True

    kill_and_check(b, topic, Sender(send_one))
    s.close()


def client_entry(api_port: int, client_id: str) -> dict:
    status, body, _ = api(api_port, "GET", f"/api/v5/clients/{client_id}")
    assert status == 200, body
    return body


def test_5000_offline_messages_survive_a_restart_under_the_shipped_bounds(durable):
    api_port = free_port()
    # The shipped queue bounds (10,000 messages or 64 MiB), not the roomy one.
    b = durable(api_port=api_port, env={"TRIBUTARY_MQTT__MAX_MQUEUE_LEN": None})
    topic = "dur/5000"
    go_offline(b.port, "sub-5000", topic, 1)
    pub = Publisher(b.port, "pub-5000", topic, 1, 5000)
    pub.wait_acked(5000)
    acked = pub.stop()
    assert len(acked) == 5000
    entry = client_entry(api_port, "sub-5000")
    assert entry["mqueue_len"] == 5000 and entry["mqueue_dropped"] == 0, entry
    # Offline and durable: the queue is in the store, not in memory.
    assert entry["mqueue_resident"] <= 1024, entry
    b.restart()  # kill -9, same data directory
    entry = client_entry(api_port, "sub-5000")
    assert entry["mqueue_len"] == 5000 and entry["mqueue_resident"] <= 1024, entry
    sub = Subscriber(b.port, "sub-5000", topic, 1)
    assert sub.session_present == [True]
    missing = sub.wait_for(acked, timeout=60)
    got = list(sub.got)
    sub.stop()
    assert not missing, f"{len(missing)} of 5000 lost, e.g. {sorted(missing)[:5]}"
    assert got[:5000] == sorted(acked), "not in publish order"


def test_a_small_bound_overflows_by_its_policy_and_every_drop_is_counted(start_broker, client):
    api_port = free_port()
    b = start_broker(env={"TRIBUTARY_API__BIND": f"127.0.0.1:{api_port}",
                          "TRIBUTARY_MQTT__MAX_MQUEUE_LEN": "10",
                          "TRIBUTARY_NODE__SYS_INTERVAL": "1s"}, config=API_CONFIG)
    go_offline(b.port, "small", "small/t", 1)
    watcher = client(b.port, "sys-watcher")
    watcher.connect()
    watcher.subscribe("$SYS/brokers/+/metrics/messages_dropped_queue_full", 0)
    pub = client(b.port, "small-pub")
    pub.connect()
    for i in range(25):
        pub.publish("small/t", f"m{i:02d}".encode(), qos=1).wait_for_publish(5)
    entry = client_entry(api_port, "small")
    assert entry["mqueue_len"] == 10 and entry["mqueue_max"] == 10, entry
    assert entry["mqueue_dropped"] == 15, entry
    assert entry["mqueue_dropped_by_reason"]["queue_full"] == 15, entry
    status, text, _ = api(api_port, "GET", "/api/v5/prometheus/stats")
    assert status == 200
    assert 'tributary_messages_dropped_total{reason="queue_full"} 15' in text
    # $SYS carries the same counter.
    deadline = time.monotonic() + WAIT
    while True:
        m = watcher.expect(timeout=WAIT)
        if m.payload == b"15":
            break
        assert time.monotonic() < deadline, f"$SYS still says {m.payload!r}"
    # drop_oldest: the newest ten are what is left.
    back = client(b.port, "small", clean_session=False)
    back.connect()
    assert [m.payload for m in back.expect_n(10)] == [f"m{i:02d}".encode() for i in range(15, 25)]
