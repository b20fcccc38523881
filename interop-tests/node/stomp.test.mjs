// @stomp/stompjs against the real tributary binary: over a plain WebSocket
// (/stomp/websocket, via `ws`) and over SockJS (/stomp, via sockjs-client
// with each transport Node supports), plus MQTT.js for cross-protocol
// checks. Run with `npm test` here after `cargo build -p tributary`;
// GATEWAY_BIN overrides the binary.

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';
import SockJS from 'sockjs-client';
import mqtt from 'mqtt';

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.GATEWAY_BIN ?? path.join(here, '..', '..', 'target', 'debug', 'tributary');

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function waitPort(port, ms = 10000) {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const sock = net.connect(port, '127.0.0.1');
      sock.once('connect', () => { sock.destroy(); resolve(); });
      sock.once('error', () => {
        sock.destroy();
        if (Date.now() > deadline) reject(new Error(`nothing on ${port}`));
        else setTimeout(attempt, 20);
      });
    };
    attempt();
  });
}

/** Start the gateway with STOMP on free loopback ports. */
async function startBroker(env = {}) {
  const [mqttPort, stompPort, httpPort] = [await freePort(), await freePort(), await freePort()];
  const proc = spawn(BIN, [], {
    env: {
      ...process.env,
      RUST_LOG: '',
      NO_COLOR: '1',
      TRIBUTARY_LOG__LEVEL: 'warn',
      // No test shares a store.
      TRIBUTARY_STORAGE__BACKEND: 'memory',
      TRIBUTARY_LISTENERS__TCP__DEFAULT__BIND: `127.0.0.1:${mqttPort}`,
      TRIBUTARY_MQTTSN__BIND: '127.0.0.1:0',
      TRIBUTARY_COAP__BIND: '127.0.0.1:0',
      TRIBUTARY_LWM2M__BIND: '127.0.0.1:0',
      TRIBUTARY_API__BIND: '127.0.0.1:0',
      TRIBUTARY_LISTENERS__WS__DEFAULT__BIND: '127.0.0.1:0',
      TRIBUTARY_STOMP__BIND: `127.0.0.1:${stompPort}`,
      TRIBUTARY_STOMP__WS_BIND: `127.0.0.1:${httpPort}`,
      ...env,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  proc.stderr.on('data', (d) => { log += d; });
  try {
    await Promise.all([waitPort(mqttPort), waitPort(stompPort), waitPort(httpPort)]);
  } catch (e) {
    proc.kill('SIGKILL');
    throw new Error(`${e.message}\n${log}`);
  }
  return {
    mqttPort, stompPort, httpPort, proc,
    stop: () => new Promise((resolve) => {
      if (proc.exitCode !== null) return resolve();
      proc.once('exit', resolve);
      proc.kill('SIGTERM');
    }),
  };
}

/** A STOMP client, connected; `factory` makes the WebSocket-like transport. */
function stompClient(factory, opts = {}) {
  return new Promise((resolve, reject) => {
    const client = new Client({
      webSocketFactory: factory,
      reconnectDelay: 0,
      heartbeatIncoming: 0,
      heartbeatOutgoing: 0,
      debug: () => {},
      ...opts,
    });
    const timer = setTimeout(() => reject(new Error('no CONNECTED')), 5000);
    client.onConnect = (frame) => { clearTimeout(timer); resolve({ client, connected: frame }); };
    client.onStompError = (frame) => { clearTimeout(timer); reject(new Error(frame.headers.message)); };
    client.activate();
  });
}

const wsFactory = (port, protocols = ['v12.stomp', 'v11.stomp', 'v10.stomp']) =>
  () => new WebSocket(`ws://127.0.0.1:${port}/stomp/websocket`, protocols);
const sockjsFactory = (port, transport) =>
  () => new SockJS(`http://127.0.0.1:${port}/stomp`, null, { transports: [transport] });

/** Messages of a subscription, as a queue with a timeout. */
function inbox() {
  const items = [];
  const waiters = [];
  return {
    push(m) { const w = waiters.shift(); if (w) w(m); else items.push(m); },
    next(ms = 5000) {
      if (items.length) return Promise.resolve(items.shift());
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('no message')), ms);
        waiters.push((m) => { clearTimeout(t); resolve(m); });
      });
    },
    async none(ms = 300) {
      await new Promise((r) => setTimeout(r, ms));
      return items.length === 0;
    },
  };
}

function receipt(client, id) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no receipt ${id}`)), 5000);
    client.watchForReceipt(id, (frame) => { clearTimeout(t); resolve(frame); });
  });
}

async function subscribe(client, destination, headers = {}) {
  const box = inbox();
  const id = `r-${Math.random().toString(36).slice(2)}`;
  const got = receipt(client, id);
  const sub = client.subscribe(destination, (m) => box.push(m), { ...headers, receipt: id });
  await got;
  return { box, sub };
}

let broker;
before(async () => {
  broker = await startBroker({
    TRIBUTARY_STOMP__SUBSCRIBE_QOS: '1',
    TRIBUTARY_STOMP__MAX_INFLIGHT: '2',
  });
});
after(async () => { await broker?.stop(); });

describe('stompjs over a plain WebSocket', () => {
  test('connect negotiates 1.2 and heart-beats', async () => {
    const { client, connected } = await stompClient(wsFactory(broker.httpPort), {
      heartbeatIncoming: 500, heartbeatOutgoing: 500,
    });
    assert.equal(connected.headers.version, '1.2');
    assert.equal(connected.headers['heart-beat'], '10000,10000');
    await client.deactivate();
  });

  test('heart-beats keep an idle connection open', async () => {
    const b = await startBroker({
      TRIBUTARY_STOMP__HEARTBEAT_SEND: '200ms',
      TRIBUTARY_STOMP__HEARTBEAT_RECEIVE: '200ms',
    });
    try {
      let closed = false;
      const { client } = await stompClient(wsFactory(b.httpPort), {
        heartbeatIncoming: 200, heartbeatOutgoing: 200,
        onWebSocketClose: () => { closed = true; },
      });
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(closed, false);
      const { box } = await subscribe(client, 'hb/t');
      client.publish({ destination: 'hb/t', body: 'still here' });
      assert.equal((await box.next()).body, 'still here');
      await client.deactivate();
    } finally {
      await b.stop();
    }
  });

  test('send, subscribe with auto ack, receipts, custom headers', async () => {
    const { client } = await stompClient(wsFactory(broker.httpPort));
    const { box } = await subscribe(client, 'node/a', { ack: 'auto' });
    const r = receipt(client, 'p1');
    client.publish({ destination: 'node/a', body: 'hello', headers: { receipt: 'p1', 'x-k': 'v', 'content-type': 'text/plain' } });
    await r;
    const m = await box.next();
    assert.equal(m.body, 'hello');
    assert.equal(m.headers['x-k'], 'v');
    assert.equal(m.headers['content-type'], 'text/plain');
    assert.equal(m.headers.destination, 'node/a');
    await client.deactivate();
  });

  test('client ack is cumulative within the window', async () => {
    const { client } = await stompClient(wsFactory(broker.httpPort));
    const { box } = await subscribe(client, 'node/client', { ack: 'client' });
    for (const i of [0, 1, 2, 3]) client.publish({ destination: 'node/client', body: String(i) });
    const a = await box.next();
    const b = await box.next();
    assert.deepEqual([a.body, b.body], ['0', '1']);
    assert.ok(await box.none(), 'window of 2');
    b.ack(); // covers 0 and 1
    assert.deepEqual([(await box.next()).body, (await box.next()).body], ['2', '3']);
    await client.deactivate();
  });

  test('client-individual ack and nack', async () => {
    const { client } = await stompClient(wsFactory(broker.httpPort));
    const { box } = await subscribe(client, 'node/ind', { ack: 'client-individual' });
    for (const i of [0, 1, 2, 3]) client.publish({ destination: 'node/ind', body: String(i) });
    const a = await box.next();
    const b = await box.next();
    assert.ok(await box.none());
    b.ack();
    assert.equal((await box.next()).body, '2');
    assert.ok(await box.none());
    a.nack();
    assert.equal((await box.next()).body, '3');
    await client.deactivate();
  });

  test('transactions commit and abort', async () => {
    const { client } = await stompClient(wsFactory(broker.httpPort));
    const { box } = await subscribe(client, 'node/tx');
    const tx = client.begin();
    client.publish({ destination: 'node/tx', body: 'in tx', headers: { transaction: tx.id } });
    assert.ok(await box.none());
    tx.commit();
    assert.equal((await box.next()).body, 'in tx');
    const tx2 = client.begin();
    client.publish({ destination: 'node/tx', body: 'dropped', headers: { transaction: tx2.id } });
    tx2.abort();
    client.publish({ destination: 'node/tx', body: 'after' });
    assert.equal((await box.next()).body, 'after');
    await client.deactivate();
  });

  test('binary body with NULs', async () => {
    const { client } = await stompClient(wsFactory(broker.httpPort));
    const { box } = await subscribe(client, 'node/bin');
    client.publish({ destination: 'node/bin', binaryBody: new Uint8Array([1, 0, 2, 0, 255]) });
    const m = await box.next();
    assert.deepEqual([...m.binaryBody], [1, 0, 2, 0, 255]);
    await client.deactivate();
  });

  test('a bad frame gets an ERROR with a message, then close', async () => {
    const { client } = await stompClient(wsFactory(broker.httpPort));
    const error = new Promise((resolve) => { client.onStompError = resolve; });
    const closed = new Promise((resolve) => { client.onWebSocketClose = resolve; });
    client.publish({ destination: 'wild/#', body: 'no' });
    const e = await error;
    assert.equal(e.headers.message, 'invalid destination');
    await closed;
    await client.deactivate();
  });
});

describe('stompjs over SockJS', () => {
  for (const transport of ['websocket', 'xhr-streaming', 'xhr-polling']) {
    test(`${transport}: publish, subscribe, ack, transaction`, async () => {
      const { client, connected } = await stompClient(sockjsFactory(broker.httpPort, transport));
      assert.equal(connected.headers.version, '1.2');
      const { box } = await subscribe(client, `sockjs/${transport}`, { ack: 'client-individual' });
      client.publish({ destination: `sockjs/${transport}`, body: `via ${transport}`, headers: { 'x-t': transport } });
      const m = await box.next();
      assert.equal(m.body, `via ${transport}`);
      assert.equal(m.headers['x-t'], transport);
      m.ack();
      const tx = client.begin();
      client.publish({ destination: `sockjs/${transport}`, body: 'tx', headers: { transaction: tx.id } });
      tx.commit();
      (await box.next()).ack();
      await client.deactivate();
    });
  }

  test('a bad frame over SockJS gets an ERROR', async () => {
    const { client } = await stompClient(sockjsFactory(broker.httpPort, 'xhr-streaming'));
    const error = new Promise((resolve) => { client.onStompError = resolve; });
    client.publish({ destination: '', body: 'no' });
    const e = await error;
    assert.ok(e.headers.message);
    await client.deactivate();
  });
});

describe('cross-protocol with MQTT.js', () => {
  let m;
  before(async () => { m = await mqtt.connectAsync(`mqtt://127.0.0.1:${broker.mqttPort}`, { protocolVersion: 5 }); });
  after(async () => { await m?.endAsync(); });

  for (const [name, factory] of [
    ['WebSocket', () => wsFactory(broker.httpPort)],
    ['SockJS xhr-streaming', () => sockjsFactory(broker.httpPort, 'xhr-streaming')],
    ['SockJS websocket', () => sockjsFactory(broker.httpPort, 'websocket')],
  ]) {
    test(`MQTT publish → STOMP subscriber over ${name}`, async () => {
      const { client } = await stompClient(factory());
      const { box } = await subscribe(client, 'x/+/in');
      await m.publishAsync('x/7/in', 'from mqtt', { qos: 1, properties: { contentType: 'text/plain', userProperties: { origin: 'mqtt.js' } } });
      const got = await box.next();
      assert.equal(got.body, 'from mqtt');
      assert.equal(got.headers.destination, 'x/7/in');
      assert.equal(got.headers['content-type'], 'text/plain');
      assert.equal(got.headers.origin, 'mqtt.js');
      await client.deactivate();
    });
  }

  test('STOMP SEND over SockJS → MQTT subscriber', async () => {
    const received = new Promise((resolve) => {
      m.on('message', (topic, payload, packet) => { if (topic === 'from/stomp') resolve({ topic, payload, packet }); });
    });
    await m.subscribeAsync('from/stomp', { qos: 1 });
    const { client } = await stompClient(sockjsFactory(broker.httpPort, 'xhr-polling'));
    client.publish({ destination: 'from/stomp', body: '{"v":1}', headers: { 'content-type': 'application/json', 'x-app': 'web' } });
    const got = await received;
    assert.equal(got.payload.toString(), '{"v":1}');
    assert.equal(got.packet.properties.contentType, 'application/json');
    assert.deepEqual({ ...got.packet.properties.userProperties }, { 'x-app': 'web' });
    await client.deactivate();
  });
});
