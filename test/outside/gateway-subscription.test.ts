// the subscription at the WS Gateway, against a local HTTP server that answers like the
// Gateway: success (201, 409), retries with back-off after an error or no answer, never the key
// in a log, 'off' without a key, and a new subscription on every kick (a broker reconnect) —
// in-process with the real back-off, then end to end through the service's /health.
import { execFile } from 'node:child_process';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import { promisify } from 'node:util';
import { pino } from 'pino';
import t from 'tap';
import { startGatewaySubscription, type GatewaySubscriptionOptions } from '../../src/outside/gateway-subscription.js';
import { initialChecks } from '../../src/runtime.js';
import { freePort, rolesStarted } from '../helpers/service.js';
import { freshService } from '../helpers/stack.js';
import { waitFor } from '../helpers/wait.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

const KEY = 'gw-key-4f1c9a7e2b6d';
const PATH = '/api/v1/subscriptions';

interface Seen {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
  at: number;
}
type Answer = { status: number; body?: string } | 'hang';

/** A fake Gateway: records every subscription request and answers with `answer(n)` (n from 1). */
async function fakeGateway(t: Teardown) {
  const fake = {
    url: '',
    seen: [] as Seen[],
    answer: (_n: number): Answer | Promise<Answer> => ({ status: 201, body: '{"status":"subscribed"}' }),
  };
  const server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => (body += chunk));
    req.on('end', () => {
      // The service's dependency probe; not part of the subscription.
      if (req.method === 'GET' && req.url === '/health') return void res.end('{"status":"ok"}');
      fake.seen.push({ method: req.method!, path: req.url!, headers: req.headers, body, at: Date.now() });
      void Promise.resolve(fake.answer(fake.seen.length)).then((a) => {
        if (a !== 'hang') res.writeHead(a.status, { 'content-type': 'application/json' }).end(a.body ?? '');
      });
    });
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  fake.url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  t.teardown(() => {
    server.closeAllConnections();
    return new Promise((ok) => server.close(ok));
  });
  return fake;
}

/** A subscription in this process, with its state and every log line it wrote. */
function subscription(t: Teardown, url: string, key: string | undefined, options?: GatewaySubscriptionOptions) {
  const lines: any[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  const checks = initialChecks();
  const sub = startGatewaySubscription(
    { config: { wsGatewayUrl: url, wsGatewayApiKey: key, serviceName: 'pm-test' }, log, checks },
    options,
  );
  t.teardown(() => sub.stop());
  const at = (level: number) => lines.filter((l) => l.level === level);
  return { sub, checks, lines, info: () => at(30), warn: () => at(40) };
}

t.test('201: one POST with the key, JSON and the service name; the state is ok', async (t) => {
  const fake = await fakeGateway(t);
  const s = subscription(t, `${fake.url}/`, KEY); // a trailing slash in WS_GATEWAY_URL is no second one in the path
  t.equal(s.checks.wsGatewaySubscription, 'pending', 'wanted, not yet done, before the first kick');
  t.equal(fake.seen.length, 0, 'no request before the first kick (the broker connection)');
  s.sub.kick();
  await waitFor(() => s.checks.wsGatewaySubscription === 'ok', { what: 'subscribed' });
  t.equal(fake.seen.length, 1);
  const [req] = fake.seen;
  t.equal(req!.method, 'POST');
  t.equal(req!.path, PATH);
  t.equal(req!.headers['x-api-key'], KEY);
  t.equal(req!.headers['content-type'], 'application/json');
  t.same(JSON.parse(req!.body), { channel_type: 'position', requesting_service: 'pm-test' }, 'exactly these fields');
  t.match(s.info(), [{ msg: 'subscribed to position reports at the WS Gateway', status: 201 }], 'one info line');
  t.same(s.warn(), []);
});

t.test('409 (the subscription exists) is success, not retried', async (t) => {
  const fake = await fakeGateway(t);
  fake.answer = () => ({ status: 409, body: '{"detail":"subscription already exists"}' });
  const s = subscription(t, fake.url, KEY);
  s.sub.kick();
  await waitFor(() => s.checks.wsGatewaySubscription === 'ok', { what: 'ok after 409' });
  t.equal(fake.seen.length, 1);
  t.match(s.info(), [{ status: 409 }]);
  t.same(s.warn(), [], 'no warning');
});

t.test(
  '500, 500, then 201: failing in between, retried after 1 s then 2 s, each failure at warn without the key',
  async (t) => {
    const fake = await fakeGateway(t);
    // A Gateway that echoes the key back: it must still not reach the log.
    fake.answer = (n) =>
      n <= 2 ? { status: 500, body: `{"detail":"internal error","key":"${KEY}"}` } : { status: 201 };
    const s = subscription(t, fake.url, KEY);
    s.sub.kick();
    t.equal(s.checks.wsGatewaySubscription, 'pending', 'pending while the first attempt is in flight');
    await waitFor(() => s.warn().length === 1, { what: 'the first failure logged' });
    t.equal(s.checks.wsGatewaySubscription, 'failing');
    t.match(s.warn()[0], { msg: 'subscription at the WS Gateway failed; retrying', status: 500, retry_in_ms: 1000 });
    t.match(s.warn()[0].answer, /^HTTP 500: .*internal error.*\[redacted\]/, "the Gateway's answer, key cut out");
    await waitFor(() => s.warn().length === 2, { what: 'the second failure', timeoutMs: 5000 });
    t.equal(s.checks.wsGatewaySubscription, 'failing', 'still failing');
    t.equal(s.warn()[1].retry_in_ms, 2000, 'back-off doubles');
    await waitFor(() => s.checks.wsGatewaySubscription === 'ok', {
      what: 'subscribed after the retries',
      timeoutMs: 8000,
    });
    t.equal(fake.seen.length, 3);
    const [a, b, c] = fake.seen.map((r) => r.at);
    t.ok(b! - a! >= 950, `first retry after 1 s (${b! - a!} ms)`);
    t.ok(c! - b! >= 1950, `second retry after 2 s (${c! - b!} ms)`);
    t.equal(s.info().length, 1, 'one info line on success');
    t.notMatch(JSON.stringify(s.lines), KEY, 'the key is in no log line');
  },
);

t.test('no answer within the per-try timeout is a failure, retried', async (t) => {
  const fake = await fakeGateway(t);
  fake.answer = (n) => (n === 1 ? 'hang' : { status: 201 });
  const s = subscription(t, fake.url, KEY, { timeoutMs: 300 }); // SPEC: 10 s; shortened to keep the test quick
  s.sub.kick();
  await waitFor(() => s.checks.wsGatewaySubscription === 'failing', { what: 'the timeout' });
  t.match(s.warn(), [{ answer: 'no answer in time', retry_in_ms: 1000 }]);
  t.equal(s.warn()[0].status, undefined, 'no status: there was no answer');
  await waitFor(() => s.checks.wsGatewaySubscription === 'ok', { what: 'subscribed on the retry', timeoutMs: 5000 });
  t.equal(fake.seen.length, 2);
});

t.test('a Gateway that cannot be reached is a failure with its cause', async (t) => {
  const s = subscription(t, `http://127.0.0.1:${await freePort()}`, KEY); // nothing listens there
  s.sub.kick();
  await waitFor(() => s.checks.wsGatewaySubscription === 'failing', { what: 'refused' });
  t.match(s.warn(), [{ cause: 'ECONNREFUSED', retry_in_ms: 1000 }]);
});

t.test('without a key: off, one info line, and a kick sends nothing', async (t) => {
  const fake = await fakeGateway(t);
  const s = subscription(t, fake.url, undefined);
  t.equal(s.checks.wsGatewaySubscription, 'off');
  t.match(
    s.info(),
    [{ msg: /WS_GATEWAY_API_KEY is unset.*reports arrive only if another service subscribed/ }],
    'one info line',
  );
  s.sub.kick();
  s.sub.kick();
  t.equal(s.checks.wsGatewaySubscription, 'off', 'still off after kicks (with a key it would be pending)');
  await fetch(`${fake.url}/health`); // a round trip through the fake: a request sent by the kicks would be there by now
  t.equal(fake.seen.length, 0, 'no request');
  t.equal(s.lines.length, 1, 'no further line');
});

t.test('a kick after success subscribes again (what a broker reconnect does)', async (t) => {
  const fake = await fakeGateway(t);
  const s = subscription(t, fake.url, KEY);
  s.sub.kick();
  await waitFor(() => s.checks.wsGatewaySubscription === 'ok', { what: 'subscribed' });
  s.sub.kick();
  await waitFor(() => fake.seen.length === 2, { what: 'the second POST' });
  await waitFor(() => s.checks.wsGatewaySubscription === 'ok', { what: 'ok again' });
  t.equal(s.info().length, 2);
  t.same(fake.seen[1]!.body, fake.seen[0]!.body, 'the same subscription');
});

t.test('a kick while an attempt is in flight supersedes it: its late answer is ignored', async (t) => {
  const fake = await fakeGateway(t);
  let release!: () => void;
  const released = new Promise<void>((ok) => (release = ok));
  fake.answer = async (n) => (n === 1 ? (await released, { status: 500, body: 'late' }) : { status: 201 });
  const s = subscription(t, fake.url, KEY);
  s.sub.kick();
  await waitFor(() => fake.seen.length === 1, { what: 'the first attempt in flight' });
  t.equal(s.checks.wsGatewaySubscription, 'pending');
  s.sub.kick();
  await waitFor(() => s.checks.wsGatewaySubscription === 'ok', { what: 'the second attempt succeeded' });
  release();
  // Round trips through the fake after its late answer: that answer has reached the client by then.
  for (let i = 0; i < 3; i++) await fetch(`${fake.url}/health`);
  t.equal(s.checks.wsGatewaySubscription, 'ok', 'the superseded 500 changed nothing');
  t.same(s.warn(), [], 'and was not logged');
  t.equal(fake.seen.length, 2);
});

t.test('a kick during the back-off restarts the loop: no second loop, back-off from 1 s again', async (t) => {
  const fake = await fakeGateway(t);
  fake.answer = () => ({ status: 503, body: 'unavailable' });
  const s = subscription(t, fake.url, KEY);
  s.sub.kick();
  await waitFor(() => s.warn().length === 2, { what: 'two failures', timeoutMs: 5000 });
  t.equal(s.warn()[1].retry_in_ms, 2000, 'waiting 2 s');
  s.sub.kick();
  t.equal(s.checks.wsGatewaySubscription, 'failing', 'a kick does not hide a failure');
  // The old loop would have tried again 2 s after the second failure, between the 4th and 5th try.
  await waitFor(() => fake.seen.length === 5, { what: 'three tries after the kick', timeoutMs: 8000 });
  const at = fake.seen.map((r) => r.at);
  t.ok(at[2]! - at[1]! < 900, 'the kick tried at once');
  t.ok(
    at[3]! - at[2]! >= 950 && at[3]! - at[2]! < 1900,
    `then after 1 s (${at[3]! - at[2]!} ms): the back-off was reset`,
  );
  t.ok(at[4]! - at[3]! >= 1950, `then after 2 s (${at[4]! - at[3]!} ms), nothing in between: one loop`);
  t.same(
    s
      .warn()
      .slice(2, 4)
      .map((l) => l.retry_in_ms),
    [1000, 2000],
  );
});

t.test(
  'end to end: the service subscribes at start, /health shows it, and a broker reconnect subscribes again',
  async (t) => {
    const fake = await fakeGateway(t);
    const { broker, svc } = await freshService(t, {
      POSITION_MANAGER_ROLES: 'consumer',
      WS_GATEWAY_URL: fake.url,
      WS_GATEWAY_API_KEY: KEY,
      POSITION_MANAGER_SERVICE_NAME: 'pm-e2e',
    });
    await rolesStarted(svc, ['consumer']);
    const health = async () => (await svc.request('GET', '/health', { key: null })).body;

    await waitFor(() => fake.seen.length === 1, { what: 'the subscription at start' });
    t.equal(fake.seen[0]!.headers['x-api-key'], KEY);
    t.same(JSON.parse(fake.seen[0]!.body), { channel_type: 'position', requesting_service: 'pm-e2e' });
    const ok = await waitFor(
      async () => {
        const h = await health();
        return h.checks?.ws_gateway_subscription === 'ok' && h;
      },
      { what: '/health: subscription ok' },
    );
    t.match(ok, { status: 'healthy', queue_connected: true });

    // The Gateway now fails, and the broker drops the service's connection: the reconnect subscribes again.
    fake.answer = () => ({ status: 500, body: '{"detail":"database down"}' });
    await promisify(execFile)('rabbitmqctl', [
      '-q',
      'close_all_connections',
      '--vhost',
      broker.vhost,
      '--limit',
      '100',
      'test: forced reconnect',
    ]);
    await waitFor(() => fake.seen.length >= 2, { what: 'the subscription after the reconnect', timeoutMs: 15_000 });
    const failing = await waitFor(
      async () => {
        const h = await health();
        return h.checks?.ws_gateway_subscription === 'failing' && h.queue_connected && h;
      },
      { what: '/health: subscription failing', timeoutMs: 15_000 },
    );
    t.match(failing, { status: 'degraded', queue_connected: true }, 'degraded by the subscription alone');
    t.ok(
      svc.logs.some((l) => l.msg === 'broker connection closed; reconnecting'),
      'it was a broker reconnect',
    );
    t.ok(
      svc.logs.some((l) => l.level === 'warn' && l.status === 500 && /database down/.test(l.answer)),
      'logged at warn with status and answer',
    );

    fake.answer = () => ({ status: 201 });
    const back = await waitFor(
      async () => {
        const h = await health();
        return h.checks?.ws_gateway_subscription === 'ok' && h;
      },
      { what: '/health: subscription ok again', timeoutMs: 15_000 },
    );
    t.equal(back.status, 'healthy');
    t.notMatch(JSON.stringify(svc.logs), KEY, 'the key is in no log line');
    t.equal(await svc.stop('SIGTERM'), 0, 'stops cleanly');
  },
);
