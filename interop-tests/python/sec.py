"""Helpers for the TLS / WebSocket / auth / HTTP API tests.

- `Pki`: a throw-away CA (made with the `cryptography` package) issuing a
  server certificate for 127.0.0.1 / localhost and client certificates
  with a chosen CN, written as PEM files into a temporary directory.
- `mqtt_client(...)`: the tests' `clients.Client` over TLS and/or WebSocket.
- `api(...)`: one HTTP API call with urllib, JSON decoded when it is JSON.
- `free_port()`: a free loopback TCP port.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import socket
import ssl
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion

from clients import V5, V311, Client

API_KEY, API_SECRET = "admin", "s3cret-s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Pki:
    """A CA and the certificates it signs, as PEM files under `dir`."""

    def __init__(self, dir: Path, name: str = "Test CA"):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = self.dir / f"{name.replace(' ', '_')}.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, server: bool, stem: str | None = None) -> tuple[str, str]:
        """Issue a certificate; returns (certfile, keyfile) paths (chain: leaf then CA)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
        )
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        stem = stem or cn
        certfile, keyfile = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                             + self.cert.public_bytes(serialization.Encoding.PEM))
        keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        return str(certfile), str(keyfile)


def rsa_keypair() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pub


def mqtt_client(port: int, client_id: str = "", version: int = V311, transport: str = "tcp",
                path: str = "/mqtt", ca: str | None = None, cert: str | None = None, key: str | None = None,
                username: str | None = None, password: str | None = None) -> Client:
    """A `clients.Client` over TLS (ca given) and/or WebSocket (transport="websockets")."""
    c = Client(port, client_id, version)
    if transport != "tcp":
        old = c.c
        c.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version,
                          clean_session=None if version == V5 else True, reconnect_on_failure=False,
                          transport=transport)
        c.c.ws_set_options(path=path)
        for cb in ("on_connect", "on_disconnect", "on_message", "on_subscribe", "on_unsubscribe"):
            setattr(c.c, cb, getattr(old, cb))
    if ca is not None:
        c.c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
    if username is not None:
        c.c.username_pw_set(username, password)
    return c


def api(port: int, method: str, path: str, body=None, auth: tuple[str, str] | None = (API_KEY, API_SECRET),
        raw: bytes | None = None, timeout: float = 5.0):
    """One API call; returns (status, body as JSON if it parses, else text, headers)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text, headers = resp.status, resp.read().decode(), resp.headers
    except urllib.error.HTTPError as e:
        status, text, headers = e.code, e.read().decode(), e.headers
    try:
        return status, json.loads(text), headers
    except ValueError:
        return status, text, headers


API_CONFIG = f"""
[[api.api_keys]]
key = "{API_KEY}"
secret = "{API_SECRET}"
"""


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:port."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {port}") from None
            time.sleep(0.02)


def ssl_options(table: str, certfile: str, keyfile: str, extra: str = "") -> str:
    """A TOML `ssl_options` table for a test certificate (no periodic reload)."""
    return f"""
[{table}]
certfile = "{certfile}"
keyfile = "{keyfile}"
reload_interval = "0s"
{extra}
"""


class AuthServer:
    """A small HTTP authentication backend (POST /auth): `decide(body)` returns
    the JSON `result` ("allow", "deny", "ignore") or an HTTP status to answer
    with instead. A request whose username or client id is "gated" or "slow"
    first waits for `gate` (at most `gate_wait` seconds). Every request body is
    kept in `requests`, with the path and X-Token header in `meta`."""

    def __init__(self, decide, gate_wait: float = 10.0, tls: tuple[str, str] | None = None):
        self.requests: list[dict] = []
        self.meta: list[dict] = []
        self.gate = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                outer.meta.append({"path": self.path, "token": self.headers.get("X-Token")})
                if {"gated", "slow"} & {body.get("username"), body.get("clientid")}:
                    outer.gate.wait(gate_wait)
                result = decide(body)
                if isinstance(result, int):
                    self.send_response(result)
                    self.end_headers()
                    return
                data = json.dumps({"result": result}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:  # HTTPS with (certfile, keyfile)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def _gated_decision(body: dict) -> str:
    user, pw, cid = body.get("username"), body.get("password"), body.get("clientid") or ""
    ok = (user, pw) in (("good", "pw"), ("gated", "pw")) or cid.endswith("-ok") or cid == "gated"
    return "allow" if ok else "deny"


class GatedAuthServer(AuthServer):
    """'good'/'pw' and 'gated'/'pw' allowed, anything else denied; client ids
    ending in '-ok' (and 'gated') allowed too, as MQTT-SN clients send no
    user name. 'gated' waits for `gate`."""

    def __init__(self):
        super().__init__(_gated_decision)
