"""LwM2M test support: a broker with its LwM2M listener on a known UDP port,
an MQTT application (paho) speaking EMQX's JSON commands, and a scripted
LwM2M device built on aiocoap for what the npm client cannot do (LwM2M
1.1/1.2 registration, TLV / SenML JSON / SenML CBOR / LwM2M JSON payloads,
separate responses, queue mode, auto-observe).

The device's content-format encoders and decoders are written here from
the LwM2M TS (TLV §6.4.3 of 1.0) and RFC 8428 (SenML), on purpose
independent of the gateway's Rust codecs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import socket
import struct
import time

import aiocoap
import aiocoap.resource
import cbor2
import paho.mqtt.client as mqtt
import pytest
from aiocoap import Code

from coap_support import free_udp_port

TEXT, LINK, OPAQUE, SENML_JSON, SENML_CBOR, TLV, LWM2M_JSON = 0, 40, 42, 110, 112, 11542, 11543


# ---------------------------------------------------------------- broker and application

@pytest.fixture
def lwm2m_broker(start_broker):
    """Factory: lwm2m_broker(env=..., config=...) -> conftest.Broker with `.lwm2m_port`."""

    def start(env: dict[str, str] | None = None, config: str | None = None):
        for attempt in range(3):
            port = free_udp_port()
            full = {"TRIBUTARY_LWM2M__BIND": f"127.0.0.1:{port}"}
            full.update(env or {})
            try:
                b = start_broker(full, config)
                # The probed port can be handed to another listener bound to
                # port 0 in the meantime: then LwM2M fails to bind and the
                # gateway exits after the MQTT port is up. Try another.
                wait_udp(port)
            except RuntimeError:
                if attempt == 2:
                    raise
                continue
            b.lwm2m_port = port
            return b
        raise AssertionError("unreachable")

    return start


class App:
    """An MQTT application subscribed to `lwm2m/+/up/#`."""

    def __init__(self, port: int):
        self.q: queue.Queue = queue.Queue()
        self.held: list[tuple[str, dict]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"lwm2m-app-{time.monotonic_ns()}")
        self.c.on_message = lambda c, u, m: self.q.put((m.topic, json.loads(m.payload)))
        subscribed = queue.Queue()
        self.c.on_subscribe = lambda *a: subscribed.put(True)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe("lwm2m/+/up/#", qos=1)
        subscribed.get(timeout=5)
        self.req_id = 0

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()

    def expect(self, pred, timeout: float = 8.0) -> tuple[str, dict]:
        for i, m in enumerate(self.held):
            if pred(*m):
                return self.held.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching message in {timeout}s; held: {self.held}")
            try:
                m = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if pred(*m):
                return m
            self.held.append(m)

    def nothing(self, pred, wait: float) -> None:
        try:
            m = self.expect(pred, wait)
        except AssertionError:
            return
        raise AssertionError(f"unexpected message {m}")

    def publish(self, ep: str, body) -> None:
        payload = body if isinstance(body, (bytes, str)) else json.dumps(body)
        self.c.publish(f"lwm2m/{ep}/dn", payload, qos=1).wait_for_publish(5)

    def send(self, ep: str, msg_type: str, data: dict) -> int:
        self.req_id += 1
        self.publish(ep, {"reqID": self.req_id, "msgType": msg_type, "data": data})
        return self.req_id

    def response(self, ep: str, req_id, timeout: float = 8.0) -> dict:
        return self.expect(lambda t, b: t == f"lwm2m/{ep}/up/resp" and b.get("reqID") == req_id
                           and b.get("msgType") != "ack", timeout)[1]

    def command(self, ep: str, msg_type: str, data: dict, timeout: float = 8.0) -> dict:
        return self.response(ep, self.send(ep, msg_type, data), timeout)

    def event(self, ep: str, msg_type: str, timeout: float = 8.0) -> dict:
        return self.expect(lambda t, b: t.startswith(f"lwm2m/{ep}/") and b.get("msgType") == msg_type, timeout)[1]


@pytest.fixture
def app():
    made: list[App] = []

    def make(port: int) -> App:
        a = App(port)
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


# ---------------------------------------------------------------- content formats, written from the specs

def tlv_value(t: str, v) -> bytes:
    if t in ("Integer", "Time"):
        for fmt, lo, hi in (("b", -2**7, 2**7), ("h", -2**15, 2**15), ("i", -2**31, 2**31)):
            if lo <= v < hi:
                return struct.pack(">" + fmt, v)
        return struct.pack(">q", v)
    if t == "Float":
        return struct.pack(">d", v)
    if t == "Boolean":
        return b"\x01" if v else b"\x00"
    if t == "Opaque":
        return v
    if t == "Objlnk":
        o, i = v.split(":")
        return struct.pack(">HH", int(o), int(i))
    return str(v).encode()


def tlv_item(kind: int, ident: int, body: bytes) -> bytes:
    """kind: 0 object instance, 1 resource instance, 2 multiple resource, 3 resource."""
    t = kind << 6
    idb = bytes([ident]) if ident < 256 else struct.pack(">H", ident)
    if ident >= 256:
        t |= 0x20
    n = len(body)
    if n < 8:
        t |= n
        lb = b""
    elif n < 256:
        t |= 0x08
        lb = bytes([n])
    elif n < 65536:
        t |= 0x10
        lb = struct.pack(">H", n)
    else:
        t |= 0x18
        lb = struct.pack(">I", n)[1:]
    return bytes([t]) + idb + lb + body


def tlv_decode(b: bytes) -> list[tuple[int, int, bytes]]:
    """Top-level TLVs as (kind, id, body)."""
    out = []
    while b:
        t = b[0]
        i = 1
        if t & 0x20:
            ident = struct.unpack(">H", b[i:i + 2])[0]
            i += 2
        else:
            ident = b[i]
            i += 1
        lt = (t >> 3) & 3
        if lt == 0:
            n = t & 7
        else:
            n = int.from_bytes(b[i:i + lt], "big")
            i += lt
        out.append((t >> 6, ident, b[i:i + n]))
        b = b[i + n:]
    return out


def senml_records(base: str, values: dict[str, tuple[str, object]]) -> list[dict]:
    recs = []
    for n, (t, v) in values.items():
        r = {"n": n}
        if t in ("Integer", "Time", "Float"):
            r["v"] = v
        elif t == "Boolean":
            r["vb"] = v
        elif t == "Opaque":
            r["vd"] = base64.urlsafe_b64encode(v).decode().rstrip("=")
        elif t == "Objlnk":
            r["vlo"] = v
        else:
            r["vs"] = v
        recs.append(r)
    if recs:
        recs[0] = {"bn": base, **recs[0]}
    return recs


def senml_cbor(records: list[dict]) -> bytes:
    labels = {"bn": -2, "n": 0, "v": 2, "vs": 3, "vb": 4, "vd": 8}
    out = []
    for r in records:
        m = {}
        for k, v in r.items():
            if k == "vd":
                v = base64.urlsafe_b64decode(v + "=" * (-len(v) % 4))
            m[labels.get(k, k)] = v
        out.append(m)
    return cbor2.dumps(out)


def senml_decode(cf: int, payload: bytes) -> dict[str, object]:
    """Full path -> value of a SenML JSON/CBOR payload."""
    if cf == SENML_JSON:
        recs = json.loads(payload)
    else:
        names = {-2: "bn", 0: "n", 2: "v", 3: "vs", 4: "vb", 8: "vd"}
        recs = [{names.get(k, k): v for k, v in r.items()} for r in cbor2.loads(payload)]
    out, base = {}, ""
    for r in recs:
        base = r.get("bn", base)
        name = base + r.get("n", "")
        for k in ("v", "vs", "vb", "vd", "vlo"):
            if k in r:
                out[name] = r[k]
    return out


# ---------------------------------------------------------------- the scripted device

class Device:
    """An LwM2M client: a tree of typed resource values served over CoAP,
    encoding reads of object instances in `fmt`, recording every request."""

    def __init__(self, ep: str, fmt: int = TLV, version: str = "1.1"):
        self.ep = ep
        self.fmt = fmt
        self.version = version
        # "/3/0/0" -> (type, value)
        self.values: dict[str, tuple[str, object]] = {
            "/3/0/0": ("String", "Open Mobile Alliance"),
            "/3/0/1": ("String", "Lightweight M2M Client"),
            "/3/0/9": ("Integer", 87),
            "/3/0/13": ("Time", 1367491215),
            "/3/0/16": ("String", "U"),
            "/3303/0/5700": ("Float", 21.5),
            "/3303/0/5701": ("String", "Cel"),
        }
        self.requests: list[aiocoap.Message] = []
        self.delay = 0.0
        # When set, answers larger than this go block-wise (RFC 7959 Block2), sliced here.
        self.block_size: int | None = None
        self.observers: dict[str, list] = {}
        self.ctx = None
        self.location = None

    # -- CoAP side

    async def add_observation(self, request, serverobservation):
        path = "/" + "/".join(request.opt.uri_path)
        self.observers.setdefault(path, []).append(serverobservation)

        def cancel(path=path, o=serverobservation):
            if o in self.observers.get(path, []):
                self.observers[path].remove(o)

        serverobservation.accept(cancel)

    def notify(self, path: str) -> None:
        for o in list(self.observers.get(path, [])):
            o.trigger()

    def encode(self, path: str) -> tuple[int, bytes]:
        if path in self.values:
            t, v = self.values[path]
            if t == "Opaque":
                return OPAQUE, v
            return TEXT, (str(int(v)) if t == "Boolean" else str(v)).encode()
        under = {p: tv for p, tv in self.values.items() if p.startswith(path + "/")}
        if not under:
            raise KeyError(path)
        if self.fmt == TLV:
            body = b""
            for p, (t, v) in under.items():
                body += tlv_item(3, int(p.rsplit("/", 1)[1]), tlv_value(t, v))
            return TLV, body
        rel = {p[len(path) + 1:]: tv for p, tv in under.items()}
        recs = senml_records(path + "/", rel)
        if self.fmt == SENML_JSON:
            return SENML_JSON, json.dumps(recs).encode()
        if self.fmt == SENML_CBOR:
            return SENML_CBOR, senml_cbor(recs)
        # LwM2M JSON (1.0): {"bn":…,"e":[…]}, e entries like SenML without bn.
        es = []
        for n, (t, v) in rel.items():
            key = {"Integer": "v", "Time": "v", "Float": "v", "Boolean": "bv", "Objlnk": "ov"}.get(t, "sv")
            es.append({"n": n, key: v})
        return LWM2M_JSON, json.dumps({"bn": path + "/", "e": es}).encode()

    async def render(self, request):
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        path = "/" + "/".join(request.opt.uri_path)
        if request.code == Code.GET:
            if request.opt.accept == LINK:
                links = [f"<{path}>"] + [f"<{p}>" for p in self.values if p.startswith(path + "/")]
                return aiocoap.Message(code=Code.CONTENT, payload=",".join(links).encode(), content_format=LINK)
            try:
                cf, body = self.encode(path)
            except KeyError:
                return aiocoap.Message(code=Code.NOT_FOUND)
            if self.block_size and len(body) > self.block_size:
                from aiocoap.optiontypes import BlockOption
                szx = self.block_size.bit_length() - 5
                num = request.opt.block2.block_number if request.opt.block2 else 0
                part = body[num * self.block_size:(num + 1) * self.block_size]
                more = (num + 1) * self.block_size < len(body)
                m = aiocoap.Message(code=Code.CONTENT, payload=part, content_format=cf)
                m.opt.block2 = BlockOption.BlockwiseTuple(num, more, szx)
                if num == 0:
                    m.opt.size2 = len(body)
                return m
            return aiocoap.Message(code=Code.CONTENT, payload=body, content_format=cf)
        if request.code in (Code.PUT, Code.POST):
            b1 = request.opt.block1
            if b1 is not None and b1.more:
                # Not assembling (block_size set): acknowledge each block (RFC 7959 §2.3).
                m = aiocoap.Message(code=Code.CONTINUE)
                m.opt.block1 = b1
                return m
            return aiocoap.Message(code=Code.CREATED if len(request.opt.uri_path) == 1 else Code.CHANGED)
        if request.code == Code.DELETE:
            return aiocoap.Message(code=Code.DELETED)
        return aiocoap.Message(code=Code.METHOD_NOT_ALLOWED)

    # -- registration interface

    async def start(self):
        self.ctx = await aiocoap.Context.create_server_context(_Root(self), bind=("127.0.0.1", 0))

    async def register(self, port: int, lt: int = 300, binding: str | None = "U", extra: str = "",
                       objects: str | None = None) -> aiocoap.Message:
        q = [f"ep={self.ep}", f"lt={lt}", f"lwm2m={self.version}"]
        if binding is not None:
            q.append(f"b={binding}")
        if extra:
            q.append(extra)
        if objects is None:
            ct = {TLV: "11542", SENML_JSON: "110", SENML_CBOR: "112", LWM2M_JSON: "11543"}[self.fmt]
            objects = f'</>;rt="oma.lwm2m";ct={ct},</1/0>,</3/0>,</3303/0>'
        req = aiocoap.Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}/rd?" + "&".join(q),
                              payload=objects.encode(), content_format=LINK)
        resp = await self.ctx.request(req).response
        if resp.code == Code.CREATED:
            self.location = "/".join(resp.opt.location_path)
        return resp

    async def update(self, port: int, query: str = "", payload: bytes = b"") -> aiocoap.Message:
        uri = f"coap://127.0.0.1:{port}/{self.location}" + (f"?{query}" if query else "")
        return await self.ctx.request(aiocoap.Message(code=Code.POST, uri=uri, payload=payload)).response

    async def deregister(self, port: int) -> aiocoap.Message:
        uri = f"coap://127.0.0.1:{port}/{self.location}"
        return await self.ctx.request(aiocoap.Message(code=Code.DELETE, uri=uri)).response

    async def close(self):
        if self.ctx is not None:
            await self.ctx.shutdown()

    async def wait_request(self, pred, timeout: float = 5.0) -> aiocoap.Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.requests:
                if pred(r):
                    self.requests.remove(r)
                    return r
            await asyncio.sleep(0.02)
        raise AssertionError(f"no matching request in {timeout}s; got {self.requests}")


class _Root(aiocoap.resource.ObservableResource):
    """A site root that hands every path to the device (aiocoap's Site would
    need each path registered in advance)."""

    def __init__(self, device: Device):
        super().__init__()
        self.device = device

    async def needs_blockwise_assembly(self, request):
        # The device slices its own Block2 answers (block_size); aiocoap must not.
        return self.device.block_size is None

    async def render(self, request):
        return await self.device.render(request)

    async def add_observation(self, request, serverobservation):
        await self.device.add_observation(request, serverobservation)


async def in_thread(f, *args, **kw):
    """Run a blocking App call without stalling the device's event loop."""
    return await asyncio.to_thread(f, *args, **kw)


def wait_udp(port: int) -> None:
    """The LwM2M listener answers a CoAP ping with RST once it is bound."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    try:
        for _ in range(50):
            s.sendto(b"\x40\x00\x12\x34", ("127.0.0.1", port))
            try:
                if s.recv(16)[0] >> 4 & 3 == 3:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"LwM2M listener on {port} did not answer a ping")
    finally:
        s.close()
