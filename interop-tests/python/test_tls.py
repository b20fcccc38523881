"""MQTT over TLS: paho-mqtt and mosquitto clients against the real binary.

Every test makes its own CA with the `cryptography` package, so nothing is
committed. Covered: server-only TLS, mutual TLS (required / refused /
foreign CA), the client certificate's CN as the MQTT user name, certificate
reload on SIGHUP without touching existing connections, and
mosquitto_pub/mosquitto_sub over TCP and TLS.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest

import rawmqtt
from clients import V5, V311
from sec import Pki, free_port, mqtt_client, ssl_options, wait_port


def tls_config(port: int, certfile: str, keyfile: str, extra: str = "") -> str:
    return f"""
[listeners.ssl.default]
bind = "127.0.0.1:{port}"
""" + ssl_options("listeners.ssl.default.ssl_options", certfile, keyfile, extra)


def start_tls(start_broker, pki, extra="", config_extra=""):
    port = free_port()
    broker = start_broker(config=tls_config(port, *pki.server, extra) + config_extra)
    wait_port(port)
    return broker, port


@pytest.mark.parametrize("version", [V311, V5])
def test_paho_over_tls_round_trip(start_broker, pki, client, version):
    broker, tls_port = start_tls(start_broker, pki)
    sub = mqtt_client(tls_port, "tls-sub", version, ca=str(pki.ca_file))
    sub.connect()
    assert sub.subscribe("tls/#", 1) == [1]
    # A plain TCP publisher reaches the TLS subscriber: one broker, two transports.
    pub = client(broker.port, "tcp-pub", version)
    pub.connect()
    pub.publish("tls/a", b"secret", qos=1)
    m = sub.expect()
    assert (m.topic, m.payload, m.qos) == ("tls/a", b"secret", 1)
    sub.close()


def test_tls_handshake_with_untrusted_ca_fails(start_broker, pki, tmp_path):
    _, tls_port = start_tls(start_broker, pki)
    other = Pki(tmp_path / "other", "Other CA")
    ctx = ssl.create_default_context(cafile=str(other.ca_file))
    with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as s:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(s, server_hostname="localhost")


MTLS = 'verify = "verify_peer"\ncacertfile = "{ca}"\n'


def connect_raw_tls(port: int, ctx: ssl.SSLContext) -> bytes:
    """TLS-connect, send CONNECT, return what comes back (b'' = closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                t.sendall(rawmqtt.connect(rawmqtt.V311, "raw-tls"))
                return t.recv(4)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""


def test_mutual_tls_requires_a_client_certificate(start_broker, pki, tmp_path):
    _, tls_port = start_tls(start_broker, pki, MTLS.format(ca=pki.ca_file))
    cert, key = pki.issue("device-1", server=False)
    good = mqtt_client(tls_port, "mtls-ok", V311, ca=str(pki.ca_file), cert=cert, key=key)
    good.connect()
    good.close()
    # No certificate: the server refuses the handshake.
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    assert connect_raw_tls(tls_port, ctx) == b""
    # A certificate from a CA the server does not trust: refused too.
    other = Pki(tmp_path / "rogue", "Rogue CA")
    rcert, rkey = other.issue("device-1", server=False)
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.load_cert_chain(rcert, rkey)
    assert connect_raw_tls(tls_port, ctx) == b""
    # With the right certificate the raw CONNECT gets a CONNACK.
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.load_cert_chain(cert, key)
    assert connect_raw_tls(tls_port, ctx) == b"\x20\x02\x00\x00"


def test_optional_client_certificate(start_broker, pki):
    extra = MTLS.format(ca=pki.ca_file) + "fail_if_no_peer_cert = false\n"
    _, tls_port = start_tls(start_broker, pki, extra)
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    assert connect_raw_tls(tls_port, ctx) == b"\x20\x02\x00\x00"


def test_certificate_cn_becomes_the_username(start_broker, pki):
    extra = MTLS.format(ca=pki.ca_file) + 'peer_cert_as_username = "cn"\n'
    acl = """
[authorization]
no_match = "deny"

[[authorization.rules]]
permission = "allow"
action = "all"
topics = ["users/%u/#"]
"""
    _, tls_port = start_tls(start_broker, pki, extra, acl)
    cert, key = pki.issue("device-7", server=False)
    # The client claims another user name; the certificate's CN wins.
    c = mqtt_client(tls_port, "cn-client", V5, ca=str(pki.ca_file), cert=cert, key=key,
                    username="mallory", password="x")
    c.connect()
    assert c.subscribe("users/device-7/#", 1) == [1]
    assert c.subscribe("users/mallory/#", 1) == [0x87]
    c.publish("users/device-7/t", b"hi", qos=1)
    assert c.expect().payload == b"hi"
    c.close()



def test_cn_mode_refuses_a_client_without_certificate(start_broker, pki):
    extra = (MTLS.format(ca=pki.ca_file) + 'peer_cert_as_username = "cn"\n'
             + "fail_if_no_peer_cert = false\n")
    _, tls_port = start_tls(start_broker, pki, extra)
    # Without a certificate there is no CN: the client must not pick its own user name.
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    assert connect_raw_tls(tls_port, ctx) == b""


def test_sighup_reloads_certificates_and_keeps_connections(start_broker, pki, tmp_path, client):
    broker, tls_port = start_tls(start_broker, pki)
    old = mqtt_client(tls_port, "old-conn", V311, ca=str(pki.ca_file))
    old.connect()
    assert old.subscribe("reload/#", 0) == [0]
    # Replace the certificate files with ones from a new CA, then SIGHUP.
    new_ca = Pki(tmp_path / "new", "New CA")
    cert, key = new_ca.issue("localhost", server=True, stem="server2")
    shutil.copy(cert, pki.server[0])
    shutil.copy(key, pki.server[1])
    broker.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "TLS certificates reloaded" not in broker.output():
        assert time.monotonic() < deadline, broker.output()
        time.sleep(0.05)
    # New connections see the new certificate ...
    fresh = mqtt_client(tls_port, "new-conn", V311, ca=str(new_ca.ca_file))
    fresh.connect()
    fresh.close()
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as s:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(s, server_hostname="localhost")
    # ... and the connection made before the reload still works.
    pub = client(broker.port, "reload-pub")
    pub.connect()
    pub.publish("reload/x", b"still here")
    assert old.expect().payload == b"still here"
    old.close()


def test_file_change_is_picked_up_without_a_signal(start_broker, pki, tmp_path):
    port = free_port()
    config = tls_config(port, *pki.server).replace('reload_interval = "0s"', 'reload_interval = "200ms"')
    broker = start_broker(config=config)
    wait_port(port)
    new_ca = Pki(tmp_path / "new", "Polled CA")
    cert, key = new_ca.issue("localhost", server=True, stem="server3")
    time.sleep(1.1)  # a different modification time on coarse-grained file systems
    shutil.copy(key, pki.server[1])
    shutil.copy(cert, pki.server[0])
    deadline = time.monotonic() + 5
    while "TLS certificates reloaded" not in broker.output():
        assert time.monotonic() < deadline, broker.output()
        time.sleep(0.05)
    c = mqtt_client(port, "polled", V311, ca=str(new_ca.ca_file))
    c.connect()
    c.close()


def test_bad_certificate_file_fails_at_start(tmp_path):
    from conftest import BIN
    cfg = tmp_path / "bad.toml"
    cfg.write_text(tls_config(free_port(), str(tmp_path / "missing.crt"), str(tmp_path / "missing.key")))
    r = subprocess.run([str(BIN), "--config", str(cfg), "check-config"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2
    assert "listeners.ssl.default.ssl_options" in r.stderr and "certfile" in r.stderr


mosquitto = pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients not installed")


def mosquitto_round_trip(port: int, extra: list[str], topic: str) -> None:
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-C", "1",
                            "-q", "1", "-i", f"msub-{port}", "-W", "10", *extra],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Publish until the subscriber has subscribed and got one.
        deadline = time.monotonic() + 10
        while sub.poll() is None and time.monotonic() < deadline:
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-m", "hello",
                            "-q", "1", "-i", f"mpub-{port}", *extra], check=True, timeout=10,
                           capture_output=True)
            time.sleep(0.2)
        out, err = sub.communicate(timeout=10)
    finally:
        if sub.poll() is None:
            sub.kill()
    assert sub.returncode == 0, err
    assert out.strip() == "hello"


@mosquitto
def test_mosquitto_clients_over_tcp(broker):
    mosquitto_round_trip(broker.port, [], "mosq/tcp")


@mosquitto
def test_mosquitto_clients_over_tls_and_mtls(start_broker, pki):
    _, tls_port = start_tls(start_broker, pki, MTLS.format(ca=pki.ca_file))
    cert, key = pki.issue("mosq-client", server=False)
    mosquitto_round_trip(tls_port, ["--cafile", str(pki.ca_file), "--cert", cert, "--key", key], "mosq/tls")
