"""A thin synchronous wrapper over paho-mqtt 2.x for tests.

paho is callback-driven; tests want "connect and tell me the CONNACK",
"subscribe and tell me the granted QoS", "give me the next message within
N seconds". Every wait here is on an event or a queue with a timeout, never
a fixed sleep. Automatic reconnection is off: a test that is kicked must
stay kicked.
"""

from __future__ import annotations

import queue
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

V31, V311, V5 = mqtt.MQTTv31, mqtt.MQTTv311, mqtt.MQTTv5
VERSIONS = {"3.1": V31, "3.1.1": V311, "5": V5}

WAIT = 5.0  # generous upper bound for anything that should happen "now"


def props(packet_type=PacketTypes.PUBLISH, **values) -> Properties:
    """props(MessageExpiryInterval=1, UserProperty=[("a", "b")])"""
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


class Client:
    def __init__(self, port: int, client_id: str = "", version: int = V311, clean_session: bool = True,
                 keepalive: int = 60):
        self.port = port
        self.version = version
        self.keepalive = keepalive
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version,
                             clean_session=None if version == V5 else clean_session,
                             reconnect_on_failure=False)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack = None  # (reason code int, session_present bool, properties)
        self.disconnect_reason = None  # int reason code from on_disconnect
        self._results: dict[int, list[int]] = {}
        self._cond = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = lambda c, u, msg: self.messages.put(msg)
        self.c.on_subscribe = self._on_ack
        self.c.on_unsubscribe = self._on_ack

    # -- callbacks (paho's network thread)
    def _on_connect(self, c, u, flags, rc, properties):
        self.connack = (rc.value, bool(flags.session_present), properties)
        self.connected.set()

    def _on_disconnect(self, c, u, flags, rc, properties):
        self.disconnect_reason = rc.value
        self.disconnected.set()

    def _on_ack(self, c, u, mid, rc_list, properties):
        with self._cond:
            self._results[mid] = [rc.value for rc in rc_list]
            self._cond.notify_all()

    def _wait_result(self, mid: int) -> list[int]:
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._results, WAIT), f"no ack for mid {mid}"
            return self._results.pop(mid)

    # -- operations
    def will_set(self, topic, payload, qos=0, retain=False, properties=None):
        self.c.will_set(topic, payload, qos, retain, properties)
        return self

    def connect(self, clean_start: bool = True, properties: Properties | None = None, check: bool = True):
        """Connect and wait for the CONNACK; returns (reason code, session_present, properties)."""
        self.connected.clear()
        self.disconnected.clear()
        kw = {}
        if self.version == V5:
            kw = {"clean_start": clean_start, "properties": properties}
        self.c.connect("127.0.0.1", self.port, keepalive=self.keepalive, **kw)
        self.c.loop_start()
        assert self.connected.wait(WAIT), "no CONNACK"
        if check:
            assert self.connack[0] == 0, f"connection refused: {self.connack}"
        return self.connack

    def subscribe(self, topic, qos=0, options: SubscribeOptions | None = None, properties=None) -> list[int]:
        """Subscribe (topic may be a list of (filter, qos/options)); returns the SUBACK codes."""
        if options is not None:
            rc, mid = self.c.subscribe(topic, options=options, properties=properties)
        elif isinstance(topic, list):
            rc, mid = self.c.subscribe(topic, properties=properties)
        else:
            rc, mid = self.c.subscribe(topic, qos, properties=properties)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return self._wait_result(mid)

    def unsubscribe(self, topic, properties=None) -> list[int]:
        rc, mid = self.c.unsubscribe(topic, properties=properties)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return self._wait_result(mid)

    def publish(self, topic, payload=b"", qos=0, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos, retain, properties)
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"publish to {topic!r} not acknowledged"
        return info

    def disconnect(self, reasoncode=None, properties=None):
        """Clean DISCONNECT; returns once paho has closed the socket."""
        self.c.disconnect(reasoncode, properties)
        assert self.disconnected.wait(WAIT), "disconnect did not complete"
        self.c.loop_stop()

    def close(self):
        """Teardown: stop the network thread whatever the state."""
        try:
            if self.c.is_connected():
                self.c.disconnect()
                self.disconnected.wait(1)
        finally:
            self.c.loop_stop()

    # -- receiving
    def expect(self, timeout: float = WAIT) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout}s") from None

    def expect_n(self, n: int, timeout: float = WAIT) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            try:
                out.append(self.messages.get(timeout=max(deadline - time.monotonic(), 0.001)))
            except queue.Empty:
                raise AssertionError(f"got {len(out)} of {n} messages: {[(m.topic, m.payload) for m in out]}") \
                    from None
        return out

    def until(self, topic: str, timeout: float = WAIT) -> list[mqtt.MQTTMessage]:
        """Messages received before the first one on `topic` (a marker); the marker itself is dropped."""
        deadline = time.monotonic() + timeout
        out = []
        while True:
            try:
                m = self.messages.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"marker {topic!r} not received; got {[(m.topic, m.payload) for m in out]}") \
                    from None
            if m.topic == topic:
                return out
            out.append(m)

    def assert_nothing(self, timeout: float = 0.3):
        """Nothing arrives within `timeout` (only for 'must not happen' checks, kept short)."""
        try:
            m = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message {m.topic!r} {m.payload!r}")
