// lwm2m-node-lib's LwM2M client (a third-party device implementation)
// against the real tributary binary, managed by an MQTT.js application
// through EMQX's JSON commands: register event, read, write + read back,
// execute, discover, observe → notify, cancel-observe, update,
// de-register, and lifetime expiry. Run with `npm test` here after
// `cargo build -p tributary`; GATEWAY_BIN overrides the binary.
//
// lwm2m-node-lib's client is a process-wide singleton (one object
// registry, one listener at a time), so the scenario runs in order on one
// device.

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import lwm2m from 'lwm2m-node-lib';
import mqtt from 'mqtt';

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.join(here, '..', '..');
const BIN = process.env.GATEWAY_BIN ?? path.join(REPO, 'target', 'debug', 'tributary');
const device = lwm2m.client;

function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function freeUdpPort() {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    s.bind(0, '127.0.0.1', () => {
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

/** The gateway with MQTT and LwM2M on free loopback ports. */
async function startBroker(env = {}) {
  const [mqttPort, lwm2mPort] = [await freeTcpPort(), await freeUdpPort()];
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
      TRIBUTARY_LWM2M__BIND: `127.0.0.1:${lwm2mPort}`,
      TRIBUTARY_LWM2M__XML_DIR: path.join(REPO, 'config', 'lwm2m_xml'),
      TRIBUTARY_API__BIND: '127.0.0.1:0',
      TRIBUTARY_LISTENERS__WS__DEFAULT__BIND: '127.0.0.1:0',
      TRIBUTARY_STOMP__BIND: '127.0.0.1:0',
      TRIBUTARY_STOMP__WS_BIND: '127.0.0.1:0',
      ...env,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  proc.stderr.on('data', (d) => { log += d; });
  try {
    await waitPort(mqttPort);
  } catch (e) {
    proc.kill('SIGKILL');
    throw new Error(`${e.message}\n${log}`);
  }
  return {
    mqttPort, lwm2mPort, proc,
    stop: () => new Promise((resolve) => {
      if (proc.exitCode !== null) return resolve();
      proc.once('exit', resolve);
      proc.kill('SIGTERM');
    }),
  };
}

/** An MQTT application subscribed to `lwm2m/{ep}/up/#`, with a message queue. */
async function application(port, ep) {
  const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, { clientId: `app-${ep}`, reconnectPeriod: 0 });
  await new Promise((resolve, reject) => {
    client.once('connect', resolve);
    client.once('error', reject);
  });
  await client.subscribeAsync(`lwm2m/${ep}/up/#`, { qos: 1 });
  const queue = [];
  const waiters = [];
  client.on('message', (topic, payload) => {
    const m = { topic, body: JSON.parse(payload.toString()) };
    const i = waiters.findIndex((w) => w.match(m));
    if (i >= 0) waiters.splice(i, 1)[0].resolve(m);
    else queue.push(m);
  });
  let reqId = 100;
  return {
    client,
    /** The next message matching `match`, within `ms`. */
    next(match, ms = 8000) {
      const i = queue.findIndex(match);
      if (i >= 0) return Promise.resolve(queue.splice(i, 1)[0]);
      return new Promise((resolve, reject) => {
        const w = { match, resolve };
        waiters.push(w);
        setTimeout(() => {
          const j = waiters.indexOf(w);
          if (j >= 0) {
            waiters.splice(j, 1);
            reject(new Error(`no matching message within ${ms} ms; queued: ${JSON.stringify(queue)}`));
          }
        }, ms);
      });
    },
    /** Publish a command and wait for its response on up/resp. */
    async command(msgType, data) {
      const id = ++reqId;
      await client.publishAsync(`lwm2m/${ep}/dn`, JSON.stringify({ reqID: id, msgType, data }));
      return (await this.next((m) => m.topic.endsWith('/up/resp') && m.body.reqID === id
        && m.body.msgType !== 'ack')).body;
    },
  };
}

const cb = (f) => new Promise((resolve, reject) => f((e, v) => (e ? reject(e) : resolve(v))));

const config = {
  logLevel: 'FATAL',
  client: {
    lifetime: '300',
    version: '1.0',
    logLevel: 'FATAL',
    observe: { period: 3000 },
    ipProtocol: 'udp4',
    serverProtocol: 'udp4',
    port: 0,
  },
};

describe('LwM2M gateway with lwm2m-node-lib', () => {
  let broker;
  let app;
  let info;
  const written = [];
  const executed = [];
  const EP = 'node-dev-1';

  before(async () => {
    broker = await startBroker();
    app = await application(broker.mqttPort, EP);
    device.init(config);
    await cb((k) => device.registry.create('/3/0', k));
    await cb((k) => device.registry.setResource('/3/0', '0', 'Open Mobile Alliance', k));
    await cb((k) => device.registry.setResource('/3/0', '9', '87', k));
    await cb((k) => device.registry.create('/3303/0', k));
    await cb((k) => device.registry.setResource('/3303/0', '5700', '21.5', k));
  });

  after(async () => {
    app?.client.end(true);
    await broker?.stop();
    // lwm2m-node-lib keeps sockets and timers of its CoAP agents and of the
    // registration the server ended (lifetime test) alive, so the process
    // would never exit: end it once the results are reported, with the exit
    // code the test runner set.
    setTimeout(() => process.exit(), 2000).unref();
  });

  test('register publishes the register event on up/resp', async () => {
    info = await cb((k) => device.register('127.0.0.1', broker.lwm2mPort, '', EP, k));
    assert.equal(info.location, 'rd/' + EP);
    device.setHandler(info.serverInfo, 'write', (type, id, res, value, k) => { written.push([type, id, res, value]); k(); });
    device.setHandler(info.serverInfo, 'execute', (type, id, res, args, k) => { executed.push([type, id, res, args]); k(); });
    const ev = await app.next((m) => m.topic === `lwm2m/${EP}/up/resp` && m.body.msgType === 'register');
    assert.equal(ev.body.data.ep, EP);
    assert.equal(ev.body.data.lwm2m, '1.0');
    assert.equal(ev.body.data.lt, 300);
    assert.equal(ev.body.data.b, 'U');
    assert.deepEqual(ev.body.data.objectList.sort(), ['/3/0', '/3303/0']);
  });

  test('read /3/0/0 returns the value typed by the object registry', async () => {
    const r = await app.command('read', { path: '/3/0/0' });
    assert.deepEqual(r.data, {
      reqPath: '/3/0/0', code: '2.05', codeMsg: 'content',
      content: [{ path: '/3/0/0', value: 'Open Mobile Alliance' }],
    });
    const t = await app.command('read', { path: '/3303/0/5700' });
    assert.deepEqual(t.data.content, [{ path: '/3303/0/5700', value: 21.5 }]);
    const n = await app.command('read', { path: '/3/0/9' });
    assert.deepEqual(n.data.content, [{ path: '/3/0/9', value: 87 }]);
  });

  test('write then read back', async () => {
    const w = await app.command('write', { path: '/3/0/9', type: 'Integer', value: 42 });
    assert.equal(w.data.code, '2.04');
    assert.equal(w.data.codeMsg, 'changed');
    assert.deepEqual(written.at(-1), ['3', '0', '9', '42']);
    const r = await app.command('read', { path: '/3/0/9' });
    assert.deepEqual(r.data.content, [{ path: '/3/0/9', value: 42 }]);
  });

  test('execute with arguments', async () => {
    const r = await app.command('execute', { path: '/3/0/4', args: '0,1' });
    assert.equal(r.data.code, '2.04');
    assert.deepEqual(executed.at(-1), ['3', '0', '4', '0,1']);
  });

  test('discover returns link-format entries', async () => {
    const r = await app.command('discover', { path: '/3/0' });
    assert.equal(r.data.code, '2.05');
    assert.ok(r.data.content.includes('</3/0/0>'), JSON.stringify(r.data.content));
    assert.ok(r.data.content.includes('</3/0/9>'), JSON.stringify(r.data.content));
  });

  test('observe, notifications on up/notify, cancel-observe', async () => {
    const r = await app.command('observe', { path: '/3/0/9' });
    assert.equal(r.data.code, '2.05');
    assert.deepEqual(r.data.content, [{ path: '/3/0/9', value: 42 }]);
    await cb((k) => device.registry.setResource('/3/0', '9', '55', k));
    const n = await app.next((m) => m.topic === `lwm2m/${EP}/up/notify`);
    assert.equal(n.body.msgType, 'notify');
    assert.equal(n.body.reqID, r.reqID);
    assert.equal(typeof n.body.seqNum, 'number');
    assert.deepEqual(n.body.data.content, [{ path: '/3/0/9', value: 55 }]);
    // lwm2m-node-lib acknowledges the cancelling GET (Observe=1) with an
    // empty ACK and never sends the separate response: the gateway
    // publishes that ACK as msgType "ack" with the command's reqID.
    await app.client.publishAsync(`lwm2m/${EP}/dn`,
      JSON.stringify({ reqID: 7001, msgType: 'cancel-observe', data: { path: '/3/0/9' } }));
    const c = await app.next((m) => m.topic.endsWith('/up/resp') && m.body.reqID === 7001);
    assert.deepEqual(c.body, { reqID: 7001, msgType: 'ack', data: { path: '/3/0/9' } });
    // After the cancellation, changes are no longer published.
    await cb((k) => device.registry.setResource('/3/0', '9', '56', k));
    await assert.rejects(app.next((m) => m.topic === `lwm2m/${EP}/up/notify`, 1500));
  });

  test('malformed and unknown commands get an error response', async () => {
    const r = await app.command('fly', { path: '/3/0' });
    assert.equal(r.data.code, '4.00');
    assert.match(r.data.error, /unknown msgType/);
    await app.client.publishAsync(`lwm2m/${EP}/dn`, '{not json');
    const bad = await app.next((m) => m.topic.endsWith('/up/resp') && m.body.reqID === null);
    assert.equal(bad.body.data.code, '4.00');
  });

  test('update (object list included) publishes up/update', async () => {
    await cb((k) => device.update(info, k));
    const ev = await app.next((m) => m.topic === `lwm2m/${EP}/up/update`);
    assert.equal(ev.body.msgType, 'update');
    assert.equal(ev.body.data.ep, EP);
    assert.deepEqual(ev.body.data.objectList.sort(), ['/3/0', '/3303/0']);
    // Still registered: commands work.
    const r = await app.command('read', { path: '/3/0/0' });
    assert.equal(r.data.code, '2.05');
  });

  test('de-register ends the registration', async () => {
    await cb((k) => device.unregister(info, k));
    const ev = await app.next((m) => m.body.msgType === 'deregister');
    assert.equal(ev.body.data.reason, 'deregistered');
    // A command to a device that is gone: nobody holds lwm2m/{ep}/dn any more.
    await app.client.publishAsync(`lwm2m/${EP}/dn`, JSON.stringify({ reqID: 1, msgType: 'read', data: { path: '/3/0/0' } }));
    await assert.rejects(app.next((m) => m.topic.endsWith('/up/resp') && m.body.reqID === 1, 1000));
  });

  test('a device that does not update within its lifetime is de-registered', async () => {
    const ep = 'node-dev-short';
    const short = await application(broker.mqttPort, ep);
    try {
      config.client.lifetime = '2';
      const i = await cb((k) => device.register('127.0.0.1', broker.lwm2mPort, '', ep, k));
      await short.next((m) => m.body.msgType === 'register');
      const t0 = Date.now();
      const ev = await short.next((m) => m.body.msgType === 'deregister', 6000);
      assert.equal(ev.body.data.reason, 'lifetime expired');
      assert.ok(Date.now() - t0 >= 1500, 'not before the lifetime');
      await new Promise((resolve) => { try { device.unregister(i, () => resolve()); } catch { resolve(); } setTimeout(resolve, 500); });
    } finally {
      config.client.lifetime = '300';
      short.client.end(true);
    }
  });
});
