// Access for several clients (SPEC.md R-33) through HTTP against the real service: named keys
// with scopes, the key's name in logs, audit rows and metrics (never the key), rate limits per
// key and for failed authentications per address, and configuration that stops the process.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import t from 'tap';
import { loadConfig } from '../../src/config.js';
import { ROOT } from '../../src/paths.js';
import { freshDatabase, writePositionsDirectly } from '../helpers/db.js';
import { startService, TEST_API_KEY } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';

const UI_KEY = 'ui-read-only-key-0123456789';
const OM_KEY = 'order-manager-key-0123456789';
const KEYS = `ui:${UI_KEY}:read, om:${OM_KEY}:write`;

const db = await freshDatabase(t);
await db.query(
  `select apply_order_fill('{"execution_id":"acc-1","asset":"BTCUSDT","side":"Buy","execution_quantity":"1","execution_price":"50000"}')`,
);

t.test(
  'scopes: a read key reads and gets 403 on POST; a write key does both; the name goes everywhere, the key nowhere',
  async (t) => {
    const svc = await startService(t, {
      databaseUrl: db.url,
      env: { POSITION_MANAGER_ROLES: 'api', POSITION_MANAGER_API_KEYS: KEYS },
    });
    const as = (key: string, method: string, path: string) =>
      svc.request(method, path, { key, headers: { 'x-trace-id': `acc-${method}-${key.slice(0, 2)}` } });
    t.equal((await as(UI_KEY, 'GET', '/api/v1/positions/BTCUSDT')).status, 200, 'read key: GET');
    t.equal((await as(UI_KEY, 'GET', '/api/v1/portfolio')).status, 200);
    for (const path of ['/api/v1/positions/BTCUSDT/validate', '/api/v1/positions/BTCUSDT/snapshot']) {
      const r = await as(UI_KEY, 'POST', path);
      t.equal(r.status, 403, `read key: POST ${path}`);
      t.match(r.body, {
        status: 403,
        code: 'forbidden',
        title: 'Forbidden',
        detail: /"ui" has scope read/,
        trace_id: String,
      });
      t.match(r.headers.get('content-type'), /application\/problem\+json/);
    }
    t.equal(
      (await db.query('select count(*)::int as n from position_snapshots')).rows[0].n,
      0,
      'nothing happened for the read key',
    );
    t.equal(
      (await as(TEST_API_KEY, 'POST', '/api/v1/positions/BTCUSDT/snapshot')).status,
      201,
      'the single key is "default", scope write',
    );

    // a write key's validation fix names it in the audit row it causes
    await writePositionsDirectly(db, "update positions set size = 3 where asset = 'BTCUSDT'");
    const v = await as(OM_KEY, 'POST', '/api/v1/positions/BTCUSDT/validate');
    t.match(v, { status: 200, body: { is_valid: false, updated_position: { size: '1' } } });
    const audit = (
      await db.query("select trace_id, details->>'client' as client from position_events where kind = 'validation_fix'")
    ).rows;
    t.same(
      audit,
      [{ trace_id: 'acc-POST-or', client: 'om' }],
      "the audit row carries the request's trace_id and the key's name",
    );

    const forbidden = await waitFor(() => svc.logs.find((l) => l.msg === 'forbidden: the key may only read'), {
      what: 'the 403 logged',
    });
    t.match(forbidden, { level: 'warn', client: 'ui' });
    t.ok(
      svc.logs.some((l) => l.client === 'om' && l.trace_id === 'acc-POST-or'),
      "the request's log lines name the key",
    );
    const metrics = (await svc.request('GET', '/metrics', { key: null })).body as string;
    t.match(
      metrics,
      /position_manager_http_requests_total\{[^}]*client="ui"[^}]*status="403"|position_manager_http_requests_total\{[^}]*status="403"[^}]*client="ui"/,
    );
    t.match(metrics, /position_manager_http_requests_total\{[^}]*client="om"/);
    t.notMatch(metrics, new RegExp(`${UI_KEY}|${OM_KEY}|${TEST_API_KEY}`));
    const all = JSON.stringify(svc.logs) + svc.stderr.join('');
    t.notOk(
      [UI_KEY, OM_KEY, TEST_API_KEY].some((k) => all.includes(k)),
      'no key in any log line',
    );
  },
);

t.test(
  'rate limits per key: 429 with Retry-After and RateLimit headers; overrides by name; /health and /metrics never',
  async (t) => {
    const svc = await startService(t, {
      databaseUrl: db.url,
      env: {
        POSITION_MANAGER_ROLES: 'api',
        POSITION_MANAGER_API_KEYS: KEYS,
        POSITION_MANAGER_RATE_LIMIT_DEFAULT: '5',
        POSITION_MANAGER_RATE_LIMIT_OVERRIDES: 'om:8',
      },
    });
    const statuses = async (key: string, n: number) => {
      const out: number[] = [];
      for (let i = 0; i < n; i++) out.push((await svc.request('GET', '/api/v1/portfolio/exposure', { key })).status);
      return out;
    };
    const first = await svc.request('GET', '/api/v1/positions', { key: UI_KEY });
    t.equal(first.headers.get('ratelimit-policy'), '5;w=60', 'the standard RateLimit-Policy header');
    t.match(first.headers.get('ratelimit'), /^limit=5, remaining=4, reset=\d+$/);
    t.same(await statuses(UI_KEY, 5), [200, 200, 200, 200, 429], 'the default limit: 5 a minute');
    const limited = await svc.request('GET', '/api/v1/positions', { key: UI_KEY });
    t.equal(limited.status, 429);
    t.match(limited.body, {
      status: 429,
      code: 'rate_limited',
      title: 'Too Many Requests',
      detail: /5 requests a minute for the key "ui"/,
    });
    t.ok(
      Number(limited.headers.get('retry-after')) > 0 && Number(limited.headers.get('retry-after')) <= 60,
      'Retry-After in seconds',
    );
    t.match(limited.headers.get('ratelimit'), /remaining=0/);
    t.same(await statuses(OM_KEY, 9), [200, 200, 200, 200, 200, 200, 200, 200, 429], "om's override: 8");
    t.equal(
      (await svc.request('GET', '/api/v1/positions', { key: TEST_API_KEY })).status,
      200,
      'each key has its own count',
    );
    for (let i = 0; i < 20; i++) {
      t.equal((await svc.request('GET', '/health', { key: null })).status, 200);
      t.equal((await svc.request('GET', '/metrics', { key: null })).status, 200);
    }
    const warn = await waitFor(
      () => svc.logs.find((l) => typeof l.msg === 'string' && l.msg.startsWith('rate limited:') && l.client === 'ui'),
      { what: 'logged' },
    );
    t.equal(warn.level, 'warn');
  },
);

t.test('failed authentications: 30 a minute per address, then 429; a good key is still served', async (t) => {
  const svc = await startService(t, {
    databaseUrl: db.url,
    env: { POSITION_MANAGER_ROLES: 'api', POSITION_MANAGER_API_KEYS: KEYS },
  });
  const codes: number[] = [];
  for (let i = 0; i < 32; i++)
    codes.push((await svc.request('GET', '/api/v1/positions', { key: i % 2 ? `guess-${i}` : null })).status);
  t.same(codes.slice(0, 30), Array(30).fill(401), '30 failures answered 401');
  t.same(codes.slice(30), [429, 429], 'then 429');
  const r = await svc.request('GET', '/api/v1/positions', { key: 'guess-again' });
  t.match(r.body, { code: 'rate_limited', detail: /failed authentications/ });
  t.ok(Number(r.headers.get('retry-after')) > 0);
  t.equal(
    (await svc.request('GET', '/api/v1/positions', { key: UI_KEY })).status,
    200,
    'the address with a good key is not blocked',
  );
});

t.test('POSITION_MANAGER_RATE_LIMIT_ENABLED=false: no limits, no headers', async (t) => {
  const svc = await startService(t, {
    databaseUrl: db.url,
    env: {
      POSITION_MANAGER_ROLES: 'api',
      POSITION_MANAGER_RATE_LIMIT_ENABLED: 'false',
      POSITION_MANAGER_RATE_LIMIT_DEFAULT: '1',
    },
  });
  for (let i = 0; i < 3; i++) t.equal((await svc.request('GET', '/api/v1/positions')).status, 200);
  t.equal((await svc.request('GET', '/api/v1/positions')).headers.get('ratelimit'), null);
  for (let i = 0; i < 35; i++) t.equal((await svc.request('GET', '/api/v1/positions', { key: null })).status, 401);
});

t.test('bad key configuration stops the process: exit 1, one line naming the variable, never a key', async (t) => {
  const base = { POSITION_MANAGER_API_KEY: TEST_API_KEY, DATABASE_URL: db.url };
  const bad: [string, Record<string, string>, RegExp][] = [
    ['duplicate names', { POSITION_MANAGER_API_KEYS: `a:${UI_KEY}:read,a:${OM_KEY}:write` }, /names "a" twice/],
    ['default named again', { POSITION_MANAGER_API_KEYS: `default:${UI_KEY}:read` }, /names "default" twice/],
    ['duplicate keys', { POSITION_MANAGER_API_KEYS: `a:${UI_KEY}:read,b:${UI_KEY}:write` }, /the same key as "a"/],
    ['the single key again', { POSITION_MANAGER_API_KEYS: `a:${TEST_API_KEY}:read` }, /the same key as "default"/],
    ['unknown scope', { POSITION_MANAGER_API_KEYS: `a:${UI_KEY}:admin` }, /scope "admin"/],
    ['short key', { POSITION_MANAGER_API_KEYS: 'a:short-key:read' }, /shorter than 16 characters/],
    ['two parts', { POSITION_MANAGER_API_KEYS: `a:${UI_KEY}` }, /three parts/],
    [
      'override of an unknown name',
      { POSITION_MANAGER_API_KEYS: `a:${UI_KEY}:read`, POSITION_MANAGER_RATE_LIMIT_OVERRIDES: 'b:10' },
      /^POSITION_MANAGER_RATE_LIMIT_OVERRIDES names "b"/,
    ],
    [
      'override not a number',
      { POSITION_MANAGER_RATE_LIMIT_OVERRIDES: 'default:lots' },
      /^POSITION_MANAGER_RATE_LIMIT_OVERRIDES entry "default:lots"/,
    ],
  ];
  for (const [what, env, message] of bad) {
    t.throws(() => loadConfig({ ...base, ...env }), { message }, what);
    try {
      loadConfig({ ...base, ...env });
    } catch (err) {
      const text = (err as Error).message;
      t.equal(text.split('\n').length, 1, `${what}: one line`);
      t.notOk(
        [UI_KEY, OM_KEY, TEST_API_KEY].some((k) => text.includes(k)),
        `${what}: no key in the message`,
      );
    }
  }
  t.same(
    loadConfig({
      ...base,
      POSITION_MANAGER_API_KEYS: KEYS,
      POSITION_MANAGER_RATE_LIMIT_OVERRIDES: 'om:8, default:100',
    }).apiKeys.map((k) => [k.name, k.scope]),
    [
      ['default', 'write'],
      ['ui', 'read'],
      ['om', 'write'],
    ],
  );
  // the real process
  const child = spawn(process.execPath, [join(ROOT, 'dist/src/main.js')], {
    env: { PATH: process.env.PATH ?? '', ...base, POSITION_MANAGER_API_KEYS: `a:${UI_KEY}:read,a:${OM_KEY}:read` },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const code = await new Promise<number | null>((ok) => child.once('exit', ok));
  t.equal(code, 1, 'exit code 1');
  t.match(stderr, /^position-manager: invalid configuration\nPOSITION_MANAGER_API_KEYS names "a" twice;[^\n]*\n$/);
  t.notOk(stderr.includes(UI_KEY) || stderr.includes(OM_KEY), 'no key');
});
