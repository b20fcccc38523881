"""One authentication chain for every protocol: the HTTP authentication
backend decides MQTT-SN CONNECTs and CoAP requests live (nothing cached
beforehand), and a backend that takes its time holds only the client that
waits for it."""

from __future__ import annotations

import threading
import time

import pytest
from coap_support import CON, POST, RawCoap, coap_broker, request  # noqa: F401 (fixture)
from mqttsn_support import ACCEPTED, NOT_SUPPORTED, SnRaw, sn, start_sn  # noqa: F401 (fixtures)
from sec import GatedAuthServer


def http_backend(server: GatedAuthServer) -> str:
    return f"""
[authentication.http]
enabled = true
url = "http://127.0.0.1:{server.port}/auth"
timeout = "5s"
"""


def wait_for_request(server: GatedAuthServer, **fields) -> None:
    while not any(all(r.get(k) == v for k, v in fields.items()) for r in server.requests):
        time.sleep(0.02)


def test_mqttsn_connect_decided_by_the_http_backend(start_sn, sn, gated_auth):
    b = start_sn(config=http_backend(gated_auth))
    ok = sn(b.sn_port)
    assert ok.connect("sensor-ok") == ACCEPTED
    assert {"clientid": "sensor-ok", "username": "", "password": "",
            "peerhost": "127.0.0.1"}.items() <= gated_auth.requests[0].items()
    bad = sn(b.sn_port)
    assert bad.connect("sensor-bad") == NOT_SUPPORTED
    # A CONNECT whose answer is pending does not hold up other clients.
    held = sn(b.sn_port, timeout=10)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", held.connect("gated")))
    t.start()
    wait_for_request(gated_auth, clientid="gated")
    other = sn(b.sn_port)
    assert other.connect("other-ok") == ACCEPTED
    assert "rc" not in result
    gated_auth.gate.set()
    t.join(10)
    assert result["rc"] == ACCEPTED


def coap_publish(raw: RawCoap, mid: int, *query: str):
    return raw.exchange(request(CON, POST, "/ps/auth/t", mid, token=bytes([mid & 0xFF]), query=query,
                                payload=b"x"))


def test_coap_requests_decided_by_the_http_backend(coap_broker, gated_auth):
    b = coap_broker(config=http_backend(gated_auth))
    raw = RawCoap(b.coap_port)
    r = coap_publish(raw, 1, "clientid=c1", "username=good", "password=pw")
    assert r.code_str == "2.04"
    assert {"clientid": "c1", "username": "good", "password": "pw"}.items() <= gated_auth.requests[0].items()
    r = coap_publish(raw, 2, "clientid=c2", "username=bad", "password=pw")
    assert r.code_str == "4.01"
    # A request waiting for the backend: this peer's later datagrams wait behind
    # it (answered in order), other peers are served meanwhile.
    held = RawCoap(b.coap_port, timeout=10)
    held.send(request(CON, POST, "/ps/auth/t", 10, token=b"\x0a", query=("clientid=c3", "username=gated",
                                                                        "password=pw"), payload=b"1"))
    wait_for_request(gated_auth, username="gated")
    held.send(request(CON, POST, "/ps/auth/t", 11, token=b"\x0b", query=("clientid=c3", "username=good",
                                                                        "password=pw"), payload=b"2"))
    other = RawCoap(b.coap_port)
    assert coap_publish(other, 3, "clientid=c4", "username=good", "password=pw").code_str == "2.04"
    held.assert_silent(0.3)
    gated_auth.gate.set()
    first, second = held.recv(), held.recv()
    assert [(first.mid, first.code_str), (second.mid, second.code_str)] == [(10, "2.04"), (11, "2.04")]
    raw.close()
    held.close()
    other.close()
