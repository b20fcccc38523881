"""CoAP gateway against Python's aiocoap: publish (CON and NON), observe and
cancel, connection mode, block-wise publish of 64 KiB and block-wise
notifications."""

from __future__ import annotations

import asyncio

import pytest

aiocoap = pytest.importorskip("aiocoap")
from aiocoap import CON, DELETE, GET, NON, POST, PUT, Context, Message  # noqa: E402
from aiocoap.numbers.codes import Code  # noqa: E402

from clients import V5  # noqa: E402
from coap_support import coap_broker, run  # noqa: E402,F401


def uri(b, path: str) -> str:
    return f"coap://127.0.0.1:{b.coap_port}/{path}"


async def request(ctx, code, u, payload=b"", mtype=CON, **opts):
    if mtype == NON:
        opts["transport_tuning"] = aiocoap.Unreliable
    return await ctx.request(Message(code=code, uri=u, payload=payload, **opts)).response


async def first_notification(pr) -> bytes:
    async for n in pr.observation:
        return n.payload
    raise AssertionError("observation ended without a notification")


def test_publish_con_and_non(coap_broker, client):
    b = coap_broker()
    sub = client(b.port, "sub", V5)
    sub.connect()
    sub.subscribe("ai/#", 2)

    async def go():
        ctx = await Context.create_client_context()
        try:
            r = await request(ctx, POST, uri(b, "ps/ai/con"), b"c", content_format=0)
            assert r.code == Code.CHANGED
            r = await request(ctx, PUT, uri(b, "ps/ai/non?qos=2"), b"n", mtype=NON)
            assert r.code == Code.CHANGED
        finally:
            await ctx.shutdown()

    run(go())
    m1, m2 = sub.expect_n(2)
    assert (m1.topic, m1.payload, m1.qos) == ("ai/con", b"c", 1)
    assert m1.properties.ContentType == "text/plain;charset=utf-8"
    assert m1.properties.PayloadFormatIndicator == 1
    assert (m2.topic, m2.payload, m2.qos) == ("ai/non", b"n", 2)


def test_observe_then_cancel(coap_broker, client):
    b = coap_broker()
    pub = client(b.port, "pub")
    pub.connect()

    async def go():
        ctx = await Context.create_client_context()
        try:
            pr = ctx.request(Message(code=GET, uri=uri(b, "ps/ob/+"), observe=0))
            first = await pr.response
            assert first.code == Code.CONTENT
            got = []

            async def consume():
                async for n in pr.observation:
                    got.append(n.payload)
                    if len(got) == 3:
                        return

            # aiocoap hands out notifications arriving once iteration runs.
            consumer = asyncio.create_task(consume())
            await asyncio.sleep(0)
            loop = asyncio.get_running_loop()
            for i in range(3):
                await loop.run_in_executor(None, pub.publish, f"ob/{i}", f"v{i}".encode(), 1)
            await asyncio.wait_for(consumer, 10)
            assert got == [b"v0", b"v1", b"v2"]
            pr.observation.cancel()
            # aiocoap's cancel() only stops listening (it ACKs later
            # notifications); deregister explicitly with Observe=1 (RFC 7641
            # §3.6). Its token is new, so the gateway cancels by topic, as EMQX.
            r = await ctx.request(Message(code=GET, uri=uri(b, "ps/ob/+"), observe=1)).response
            assert r.code == Code.CONTENT
            for _ in range(100):
                out = b.output()
                if "observation cancelled" in out or "observation reset by the client" in out:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("the observation was not cancelled on the server")
        finally:
            await ctx.shutdown()

    run(go())


def test_connection_mode(coap_broker, client):
    b = coap_broker(env={"TRIBUTARY_COAP__CONNECTION_REQUIRED": "true"})
    sub = client(b.port, "sub")
    sub.connect()
    sub.subscribe("acm/#", 1)

    async def go():
        ctx = await Context.create_client_context()
        try:
            r = await request(ctx, POST, uri(b, "ps/acm/a"), b"x")
            assert r.code == Code.UNAUTHORIZED
            r = await request(ctx, POST, uri(b, "mqtt/connection?clientid=ai1&username=u&password=p"))
            assert r.code == Code.CREATED
            token = r.payload.decode()
            r = await request(ctx, POST, uri(b, f"ps/acm/a?clientid=ai1&token={token}"), b"in")
            assert r.code == Code.CHANGED
            r = await request(ctx, PUT, uri(b, f"mqtt/connection?c=ai1&t={token}"))
            assert r.code == Code.CHANGED
            # Observe within the connection.
            pr = ctx.request(Message(code=GET, uri=uri(b, f"ps/acm/back?c=ai1&t={token}"), observe=0))
            assert (await pr.response).code == Code.CONTENT
            consumer = asyncio.create_task(first_notification(pr))
            await asyncio.sleep(0)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, sub.publish, "acm/back", b"down", 1)
            assert (await asyncio.wait_for(consumer, 10)) == b"down"
            r = await request(ctx, DELETE, uri(b, f"mqtt/connection?c=ai1&t={token}"))
            assert r.code == Code.DELETED
            r = await request(ctx, POST, uri(b, f"ps/acm/a?c=ai1&t={token}"), b"x")
            assert r.code == Code.UNAUTHORIZED
        finally:
            await ctx.shutdown()

    run(go())
    assert [(m.topic, m.payload) for m in sub.expect_n(2)] == [("acm/a", b"in"), ("acm/back", b"down")]


def test_blockwise_publish_of_64k(coap_broker, client):
    b = coap_broker()
    sub = client(b.port, "sub")
    sub.connect()
    sub.subscribe("aibig", 1)
    payload = bytes((i * 13 + 1) % 256 for i in range(64 * 1024))

    async def go():
        ctx = await Context.create_client_context()
        try:
            r = await request(ctx, POST, uri(b, "ps/aibig?qos=1"), payload)
            assert r.code == Code.CHANGED, r
        finally:
            await ctx.shutdown()

    run(go())
    m = sub.expect()
    assert m.payload == payload


def test_blockwise_notification(coap_broker, client):
    b = coap_broker()
    pub = client(b.port, "pub")
    pub.connect()
    payload = bytes(range(256)) * 20  # 5120 bytes: 6 blocks of 1024

    async def go():
        ctx = await Context.create_client_context()
        try:
            pr = ctx.request(Message(code=GET, uri=uri(b, "ps/aiblk"), observe=0))
            assert (await pr.response).code == Code.CONTENT
            consumer = asyncio.create_task(first_notification(pr))
            await asyncio.sleep(0)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, pub.publish, "aiblk", payload, 0)
            return await asyncio.wait_for(consumer, 10)
        finally:
            await ctx.shutdown()

    assert run(go()) == payload
