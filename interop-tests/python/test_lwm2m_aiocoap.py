"""LwM2M gateway with a scripted aiocoap device and a paho MQTT application:
what lwm2m-node-lib (see interop-tests/node/lwm2m.test.mjs) cannot exercise —
LwM2M 1.1 and 1.2 registration, TLV / SenML JSON / SenML CBOR / LwM2M JSON
payloads, the empty-ACK-then-separate-response case, multiple writes,
create/delete, write-attr, queue mode, auto-observe, takeover.
"""

from __future__ import annotations

import asyncio
import json

import aiocoap
import pytest
from aiocoap import Code

from coap_support import run
from lwm2m_support import (LWM2M_JSON, SENML_CBOR, SENML_JSON, TEXT, TLV, App, Device, app,  # noqa: F401
                           in_thread, lwm2m_broker, senml_decode, tlv_decode, wait_udp)


def started(lwm2m_broker, app, **kw):
    b = lwm2m_broker(**kw)
    wait_udp(b.lwm2m_port)
    return b, app(b.port)


@pytest.mark.parametrize("version,binding", [("1.0", "U"), ("1.1", "U"), ("1.2", None)])
def test_register_versions(lwm2m_broker, app, version, binding):
    b, a = started(lwm2m_broker, app)

    async def scenario():
        d = Device(f"dev-{version}", version=version)
        await d.start()
        try:
            r = await d.register(b.lwm2m_port, lt=120, binding=binding)
            assert r.code == Code.CREATED
            assert d.location == f"rd/dev-{version}"
            ev = await in_thread(a.event, d.ep, "register")
            assert ev["data"]["lwm2m"] == version
            assert ev["data"]["lt"] == 120
            assert ev["data"]["objectList"] == ["/1/0", "/3/0", "/3303/0"]
            resp = await in_thread(a.command, d.ep, "read", {"path": "/3/0/9"})
            assert resp["data"]["content"] == [{"path": "/3/0/9", "value": 87}]
        finally:
            await d.close()

    run(scenario())


def test_unsupported_version_and_bad_registrations(lwm2m_broker, app):
    b, a = started(lwm2m_broker, app)

    async def scenario():
        d = Device("dev-bad", version="2.0")
        await d.start()
        try:
            r = await d.register(b.lwm2m_port)
            assert r.code == Code.PRECONDITION_FAILED
            d.version = "1.1"
            r = await d.register(b.lwm2m_port, objects="</3/0")
            assert r.code == Code.BAD_REQUEST
            r = await d.register(b.lwm2m_port, lt=0)
            assert r.code == Code.BAD_REQUEST
            req = aiocoap.Message(code=Code.POST, uri=f"coap://127.0.0.1:{b.lwm2m_port}/rd?lt=60")
            r = await d.ctx.request(req).response
            assert r.code == Code.BAD_REQUEST
            upd = aiocoap.Message(code=Code.POST, uri=f"coap://127.0.0.1:{b.lwm2m_port}/rd/nobody")
            assert (await d.ctx.request(upd).response).code == Code.NOT_FOUND
        finally:
            await d.close()
        await in_thread(a.nothing, lambda t, body: body.get("msgType") == "register", 0.5)

    run(scenario())


EXPECTED_3_0 = [
    {"path": "/3/0/0", "value": "Open Mobile Alliance"},
    {"path": "/3/0/1", "value": "Lightweight M2M Client"},
    {"path": "/3/0/9", "value": 87},
    {"path": "/3/0/13", "value": 1367491215},
    {"path": "/3/0/16", "value": "U"},
]


@pytest.mark.parametrize("fmt", [TLV, SENML_JSON, SENML_CBOR, LWM2M_JSON], ids=["tlv", "senml-json", "senml-cbor", "lwm2m-json"])
def test_read_object_instance_in_each_format(lwm2m_broker, app, fmt):
    b, a = started(lwm2m_broker, app)

    async def scenario():
        d = Device(f"fmt-{fmt}", fmt=fmt, version="1.0" if fmt in (TLV, LWM2M_JSON) else "1.1")
        await d.start()
        try:
            assert (await d.register(b.lwm2m_port)).code == Code.CREATED
            r = await in_thread(a.command, d.ep, "read", {"path": "/3/0"})
            assert r["msgType"] == "read"
            assert r["data"]["code"] == "2.05"
            assert r["data"]["codeMsg"] == "content"
            assert r["data"]["reqPath"] == "/3/0"
            assert sorted(r["data"]["content"], key=lambda e: int(e["path"].split("/")[-1])) == EXPECTED_3_0
            # 1.1+ devices that announced formats are asked for theirs; 1.0 ones get no Accept.
            get = await d.wait_request(lambda m: m.code == Code.GET)
            assert get.opt.accept == (None if d.version == "1.0" else fmt)
            t = await in_thread(a.command, d.ep, "read", {"path": "/3303/0"})
            assert {"path": "/3303/0/5700", "value": 21.5} in t["data"]["content"]
        finally:
            await d.close()

    run(scenario())


def test_empty_ack_then_separate_response(lwm2m_broker, app):
    b, a = started(lwm2m_broker, app)

    async def scenario():
        d = Device("slow")
        await d.start()
        try:
            assert (await d.register(b.lwm2m_port)).code == Code.CREATED
            d.delay = 1.0  # aiocoap sends an empty ACK, then the response as a CON
            rid = await in_thread(a.send, d.ep, "read", {"path": "/3/0/0"})
            ack = await in_thread(a.expect, lambda t, body: body.get("reqID") == rid and body["msgType"] == "ack")
            assert ack[1] == {"reqID": rid, "msgType": "ack", "data": {"path": "/3/0/0"}}
            resp = await in_thread(a.response, d.ep, rid)
            assert resp["data"]["content"] == [{"path": "/3/0/0", "value": "Open Mobile Alliance"}]
        finally:
            await d.close()

    run(scenario())


@pytest.mark.parametrize("version,fmt", [("1.0", TLV), ("1.1", SENML_JSON), ("1.1", SENML_CBOR)],
                         ids=["1.0-tlv", "1.1-senml-json", "1.1-senml-cbor"])
def test_writes_create_delete_in_the_device_format(lwm2m_broker, app, version, fmt):
    b, a = started(lwm2m_broker, app)

    async def scenario():
        d = Device(f"w-{fmt}", fmt=fmt, version=version)
        await d.start()
        try:
            assert (await d.register(b.lwm2m_port)).code == Code.CREATED
            # Single resource: plain text.
            r = await in_thread(a.command, d.ep, "write", {"path": "/3/0/13", "type": "Time", "value": 1700000000})
            assert (r["data"]["code"], r["data"]["codeMsg"]) == ("2.04", "changed")
            req = await d.wait_request(lambda m: m.code == Code.PUT)
            assert (req.opt.content_format, req.payload) == (TEXT, b"1700000000")
            # Several resources: the device's format, POST (partial update).
            r = await in_thread(a.command, d.ep, "write", {"basePath": "/1/0", "content": [
                {"path": "2", "type": "Integer", "value": 10},
                {"path": "/1/0/3", "value": 300}]})
            assert r["data"]["code"] == "2.04"
            req = await d.wait_request(lambda m: m.code == Code.POST)
            assert req.opt.uri_path == ("1", "0")
            assert req.opt.content_format == fmt
            if fmt == TLV:
                assert tlv_decode(req.payload) == [(3, 2, b"\x0a"), (3, 3, b"\x01\x2c")]
            else:
                assert senml_decode(fmt, req.payload) == {"/1/0/2": 10, "/1/0/3": 300}
            # Create an instance of object 5 and delete it.
            r = await in_thread(a.command, d.ep, "create", {"basePath": "/5", "content": [
                {"path": "/5/0/1", "type": "String", "value": "coap://fw"}]})
            assert (r["data"]["code"], r["data"]["codeMsg"]) == ("2.01", "created")
            req = await d.wait_request(lambda m: m.code == Code.POST and m.opt.uri_path == ("5",))
            if fmt == TLV:
                [(kind, ident, inner)] = tlv_decode(req.payload)
                assert (kind, ident, tlv_decode(inner)) == (0, 0, [(3, 1, b"coap://fw")])
            else:
                assert senml_decode(fmt, req.payload) == {"/5/0/1": "coap://fw"}
            r = await in_thread(a.command, d.ep, "delete", {"path": "/5/0"})
            assert (r["data"]["code"], r["data"]["codeMsg"]) == ("2.02", "deleted")
        finally:
            await d.close()

    run(scenario())


def test_write_attr_execute_discover(lwm2m_broker, app):
    b, a = started(lwm2m_broker, app)

    async def scenario():
        d = Device("attrs")
        await d.start()
        try:
            assert (await d.register(b.lwm2m_port)).code == Code.CREATED
            r = await in_thread(a.command, d.ep, "write-attr",
                                {"path": "/3303/0/5700", "pmin": "1", "pmax": 5, "gt": 30.5, "lt": "10", "st": 0.5})
            assert r["data"]["code"] == "2.04"
            req = await d.wait_request(lambda m: m.code == Code.PUT)
            assert sorted(req.opt.uri_query) == ["gt=30.5", "lt=10", "pmax=5", "pmin=1", "st=0.5"]
            assert req.payload == b""
            r = await in_thread(a.command, d.ep, "execute", {"path": "/3/0/4", "args": "5,'x'"})
            assert r["data"]["code"] == "2.04"
            req = await d.wait_request(lambda m: m.code == Code.POST)
            assert req.payload == b"5,'x'"
            r = await in_thread(a.command, d.ep, "discover", {"path": "/3303/0"})
            assert r["data"]["content"] == ["</3303/0>", "</3303/0/5700>", "</3303/0/5701>"]
            # Malformed commands never reach the device.
            r = await in_thread(a.command, d.ep, "write-attr", {"path": "/3/0/9"})
            assert r["data"]["code"] == "4.00"
            r = await in_thread(a.command, d.ep, "read", {"path": "/x/y"})
            assert (r["data"]["code"], r["data"]["codeMsg"]) == ("4.00", "bad_request")
        finally:
            await d.close()

    run(scenario())


def test_observe_notify_cancel(lwm2m_broker, app):
    b, a = started(lwm2m_broker, app)

    async def scenario():
        d = Device("obs", fmt=SENML_JSON)
        await d.start()
        try:
            assert (await d.register(b.lwm2m_port)).code == Code.CREATED
            rid = await in_thread(a.send, d.ep, "observe", {"path": "/3303/0/5700"})
            r = await in_thread(a.response, d.ep, rid)
            assert r["data"]["content"] == [{"path": "/3303/0/5700", "value": 21.5}]
            seqs = []
            for v in (22.0, 22.5):
                d.values["/3303/0/5700"] = ("Float", v)
                d.notify("/3303/0/5700")
                _, n = await in_thread(a.expect, lambda t, body: t == "lwm2m/obs/up/notify")
                assert n["reqID"] == rid and n["msgType"] == "notify"
                assert n["data"]["content"] == [{"path": "/3303/0/5700", "value": v}]
                seqs.append(n["seqNum"])
            assert seqs[0] < seqs[1]
            r = await in_thread(a.command, d.ep, "cancel-observe", {"path": "/3303/0/5700"})
            assert r["msgType"] == "cancel-observe" and r["data"]["code"] == "2.05"
            req = await d.wait_request(lambda m: m.opt.observe == 1)
            assert req.opt.uri_path == ("3303", "0", "5700")
            d.values["/3303/0/5700"] = ("Float", 30.0)
            d.notify("/3303/0/5700")
            await in_thread(a.nothing, lambda t, body: t == "lwm2m/obs/up/notify", 1.0)
        finally:
            await d.close()

    run(scenario())


def test_queue_mode_buffers_until_the_device_talks(lwm2m_broker, app):
    b, a = started(lwm2m_broker, app, env={"TRIBUTARY_LWM2M__QMODE_TIME_WINDOW": "1s",
                                           "TRIBUTARY_LWM2M__UPDATE_MSG_PUBLISH_CONDITION": "always"})

    async def scenario():
        d = Device("sleepy", version="1.0")
        await d.start()
        try:
            assert (await d.register(b.lwm2m_port, binding="UQ")).code == Code.CREATED
            ev = await in_thread(a.event, d.ep, "register")
            assert ev["data"]["b"] == "UQ"
            await asyncio.sleep(1.3)  # the device is asleep now
            rid = await in_thread(a.send, d.ep, "read", {"path": "/3/0/9"})
            await asyncio.sleep(0.8)
            assert not [r for r in d.requests if r.code == Code.GET], "sent to a sleeping device"
            await in_thread(a.nothing, lambda t, body: body.get("reqID") == rid, 0.1)
            # The device wakes up and updates: the buffered command goes out.
            assert (await d.update(b.lwm2m_port)).code == Code.CHANGED
            upd = await in_thread(a.event, d.ep, "update")
            assert "objectList" not in upd["data"]
            resp = await in_thread(a.response, d.ep, rid)
            assert resp["data"]["content"] == [{"path": "/3/0/9", "value": 87}]
        finally:
            await d.close()

    run(scenario())


def test_queue_is_bounded(lwm2m_broker, app):
    b, a = started(lwm2m_broker, app, env={"TRIBUTARY_LWM2M__QMODE_TIME_WINDOW": "1s",
                                           "TRIBUTARY_LWM2M__MAX_QUEUED": "2"})

    async def scenario():
        d = Device("sleepy2", version="1.1")
        await d.start()
        try:
            assert (await d.register(b.lwm2m_port, extra="Q")).code == Code.CREATED
            await asyncio.sleep(1.3)
            ids = [await in_thread(a.send, d.ep, "read", {"path": "/3/0/9"}) for _ in range(3)]
            full = await in_thread(a.response, d.ep, ids[2])
            assert (full["data"]["code"], full["data"]["codeMsg"]) == ("5.03", "queue_full")
            assert (await d.update(b.lwm2m_port)).code == Code.CHANGED
            for rid in ids[:2]:
                assert (await in_thread(a.response, d.ep, rid))["data"]["code"] == "2.05"
        finally:
            await d.close()

    run(scenario())


def test_auto_observe_on_registration(lwm2m_broker, app):
    config = '[lwm2m]\nauto_observe = ["/3303/0/5700", "/9/0"]\n'
    b, a = started(lwm2m_broker, app, config=config)

    async def scenario():
        d = Device("auto", fmt=SENML_CBOR)
        await d.start()
        try:
            assert (await d.register(b.lwm2m_port)).code == Code.CREATED
            req = await d.wait_request(lambda m: m.opt.observe == 0)
            assert req.opt.uri_path == ("3303", "0", "5700")
            first = await in_thread(a.response, d.ep, 0)
            assert first["msgType"] == "observe"
            d.values["/3303/0/5700"] = ("Float", 25.25)
            d.notify("/3303/0/5700")
            _, n = await in_thread(a.expect, lambda t, body: t == "lwm2m/auto/up/notify")
            assert n["data"]["content"] == [{"path": "/3303/0/5700", "value": 25.25}]
            # Object 9 is not registered: not observed.
            await asyncio.sleep(0.3)
            assert not [r for r in d.requests if r.opt.uri_path[:1] == ("9",)]
        finally:
            await d.close()

    run(scenario())


def test_registering_again_elsewhere_takes_over(lwm2m_broker, app):
    b, a = started(lwm2m_broker, app)

    async def scenario():
        one, two = Device("same"), Device("same")
        await one.start()
        await two.start()
        try:
            assert (await one.register(b.lwm2m_port)).code == Code.CREATED
            await in_thread(a.event, "same", "register")
            assert (await two.register(b.lwm2m_port)).code == Code.CREATED
            await in_thread(a.event, "same", "register")
            two.values["/3/0/0"] = ("String", "second")
            r = await in_thread(a.command, "same", "read", {"path": "/3/0/0"})
            assert r["data"]["content"] == [{"path": "/3/0/0", "value": "second"}]
            assert not [m for m in one.requests if m.code == Code.GET]
            # The first one's registration is gone; the second can de-register.
            assert (await two.deregister(b.lwm2m_port)).code == Code.DELETED
            ev = await in_thread(a.event, "same", "deregister")
            assert ev["data"]["reason"] == "deregistered"
        finally:
            await one.close()
            await two.close()

    run(scenario())


def test_device_that_never_answers_times_out(lwm2m_broker, app):
    b, a = started(lwm2m_broker, app, env={"TRIBUTARY_LWM2M__ACK_TIMEOUT": "200ms",
                                           "TRIBUTARY_LWM2M__MAX_RETRANSMIT": "1"})

    async def scenario():
        d = Device("gone")
        await d.start()
        assert (await d.register(b.lwm2m_port)).code == Code.CREATED
        await d.close()  # nobody reads the socket any more
        r = await in_thread(a.command, "gone", "read", {"path": "/3/0/0"})
        assert (r["data"]["code"], r["data"]["codeMsg"]) == ("5.04", "timeout")

    run(scenario())


def test_large_answer_arrives_block_wise(lwm2m_broker, app):
    b, a = started(lwm2m_broker, app)

    async def scenario():
        d = Device("big", fmt=SENML_JSON)
        big = "".join(chr(ord("a") + i % 26) for i in range(5000))
        d.values["/3/0/1"] = ("String", big)
        d.block_size = 1024
        await d.start()
        try:
            assert (await d.register(b.lwm2m_port)).code == Code.CREATED
            r = await in_thread(a.command, d.ep, "read", {"path": "/3/0/1"})
            assert r["data"]["content"] == [{"path": "/3/0/1", "value": big}]
            gets = [m for m in d.requests if m.code == Code.GET]
            assert len(gets) == 5, "5000 bytes in 1024-byte blocks, each asked for"
            assert [g.opt.block2.block_number if g.opt.block2 else 0 for g in gets] == [0, 1, 2, 3, 4]
            r = await in_thread(a.command, d.ep, "read", {"path": "/3/0"})
            assert {"path": "/3/0/1", "value": big} in r["data"]["content"]
        finally:
            await d.close()

    run(scenario())


def test_mountpoint_authentication_and_acl_through_the_core(lwm2m_broker, app):
    config = '''
[lwm2m]
mountpoint = "iot/${endpoint_name}/"

[[authentication.client_rules]]
permission = "deny"
clientid = "banned-*"

[[authorization.rules]]
permission = "deny"
action = "publish"
clientid = "muted"
topics = ["iot/muted/up/#"]
'''
    b, _ = started(lwm2m_broker, app, config=config)
    a = app(b.port)
    a.c.subscribe("iot/#", qos=1)

    async def scenario():
        ok, banned, muted = Device("ok-1"), Device("banned-1"), Device("muted")
        for d in (ok, banned, muted):
            await d.start()
        try:
            # The endpoint name is the client id: the core's client rules apply.
            assert (await banned.register(b.lwm2m_port)).code == Code.FORBIDDEN
            # The mountpoint template gives the topics.
            assert (await ok.register(b.lwm2m_port)).code == Code.CREATED
            t, ev = await in_thread(a.expect, lambda t, body: body.get("msgType") == "register")
            assert t == "iot/ok-1/up/resp" and ev["data"]["ep"] == "ok-1"
            a.c.publish("iot/ok-1/dn", json.dumps({"reqID": 1, "msgType": "read", "data": {"path": "/3/0/9"}}), qos=1)
            t, r = await in_thread(a.expect, lambda t, body: body.get("reqID") == 1 and "/up/" in t)
            assert t == "iot/ok-1/up/resp" and r["data"]["content"] == [{"path": "/3/0/9", "value": 87}]
            # The ACL denies this device's publishes: its events never reach anyone.
            assert (await muted.register(b.lwm2m_port)).code == Code.CREATED
            a.c.publish("iot/muted/dn", json.dumps({"reqID": 2, "msgType": "read", "data": {"path": "/3/0/9"}}), qos=1)
            await muted.wait_request(lambda m: m.code == Code.GET)
            await in_thread(a.nothing, lambda t, body: t.startswith("iot/muted/up/"), 1.0)
        finally:
            for d in (ok, banned, muted):
                await d.close()

    run(scenario())


def test_large_write_goes_block_wise(lwm2m_broker, app):
    b, a = started(lwm2m_broker, app, env={"TRIBUTARY_LWM2M__BLOCK_SIZE": "64"})

    async def scenario():
        d = Device("bigwrite")
        d.block_size = 1024  # the device sees each block itself
        await d.start()
        try:
            assert (await d.register(b.lwm2m_port)).code == Code.CREATED
            text = "".join(chr(ord("A") + i % 26) for i in range(300))
            r = await in_thread(a.command, d.ep, "write", {"path": "/3/0/14", "type": "String", "value": text})
            assert (r["data"]["code"], r["data"]["codeMsg"]) == ("2.04", "changed")
            puts = [m for m in d.requests if m.code == Code.PUT]
            assert [m.opt.block1.block_number for m in puts] == [0, 1, 2, 3, 4]
            assert all(m.opt.block1.size_exponent == 2 for m in puts)
            assert puts[0].opt.size1 == 300
            assert b"".join(m.payload for m in puts) == text.encode()
        finally:
            await d.close()

    run(scenario())
