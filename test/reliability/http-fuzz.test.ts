// SPEC.md §5 (errors, authentication), §10 (security), §11 "Robustness": a few thousand
// generated requests — random and derived from openapi.yaml (wrong types, huge numbers, unicode,
// SQL meta-characters, path traversal, %00, very long strings, repeated and unknown parameters,
// missing and wrong API keys, wrong methods, bodies) — against every path of a service (role api)
// on a seeded database. Asserted: no 500 at all; every error response is a problem document
// (application/problem+json with type, title, status, code, trace_id); every request to /api/v1
// without a valid key gets 401; nothing but the open paths answers 2xx without a valid key.
// Plus a unit test of matchKey (constant-time key comparison cannot be timed reliably here).
//
// Sizes: RELIABILITY_HTTP_REQUESTS (default 2000), RELIABILITY_SEED.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import t from 'tap';
import { parse } from 'yaml';
import { matchKey } from '../../src/api/auth.js';
import { ROOT } from '../../src/paths.js';
import { freshDatabase } from '../helpers/db.js';
import { TEST_API_KEY, startService } from '../helpers/service.js';
import { between, envInt, rng, seedFromEnv } from './lib.js';

const REQUESTS = envInt('RELIABILITY_HTTP_REQUESTS', 2000);
const READ_KEY = 'fuzz-read-only-key-0123456789';
const CONCURRENCY = 16;
const seed = seedFromEnv();

t.test('matchKey: only the exact key matches, among several', async (t) => {
  const key = TEST_API_KEY;
  const entry = (k: string, name: string, scope: 'read' | 'write') => ({
    digest: createHash('sha256').update(k, 'utf8').digest(),
    key: { name, key: k, scope },
  });
  const known = [entry(key, 'default', 'write'), entry(READ_KEY, 'ui', 'read')];
  const name = (given: string | undefined) => matchKey(known, given)?.name;
  t.equal(name(key), 'default', 'the right key');
  t.equal(name(READ_KEY), 'ui', 'the other key, with its own name');
  const sameLength = key.slice(0, -1) + (key.endsWith('f') ? 'e' : 'f');
  t.equal(sameLength.length, key.length);
  t.equal(name(sameLength), undefined, 'same length, last character wrong');
  t.equal(name('X' + key.slice(1)), undefined, 'same length, first character wrong');
  t.equal(name(key.toUpperCase()), undefined, 'different case');
  t.equal(name(key.slice(0, -1)), undefined, 'a prefix');
  t.equal(name(key.slice(0, 1)), undefined, 'one character');
  t.equal(name(key + 'x'), undefined, 'longer');
  t.equal(name(key + key), undefined, 'twice');
  t.equal(name(` ${key}`), undefined, 'leading space');
  t.equal(name(''), undefined, 'empty');
  t.equal(name(undefined), undefined, 'absent');
  t.equal(
    matchKey([entry('', 'empty', 'write')], undefined),
    undefined,
    'an absent header never matches, not even an empty key',
  );
});

// ---------------------------------------------------------------- the fuzzed service

interface Op {
  method: string;
  path: string;
  params: { name: string; in: string; schema: any }[];
}

function operations(): Op[] {
  const spec = parse(readFileSync(join(ROOT, 'openapi.yaml'), 'utf8'));
  const deref = (o: any): any => {
    if (o && typeof o === 'object' && typeof o.$ref === 'string') {
      const target = o.$ref
        .replace(/^#\//, '')
        .split('/')
        .reduce((a: any, k: string) => a[k], spec);
      return deref(target);
    }
    return o;
  };
  const ops: Op[] = [];
  for (const [path, item] of Object.entries<any>(spec.paths))
    for (const method of ['get', 'post', 'put', 'delete', 'patch'])
      if (item[method])
        ops.push({
          method: method.toUpperCase(),
          path,
          params: [...(item.parameters ?? []), ...(item[method].parameters ?? [])]
            .map(deref)
            .map((p: any) => ({ ...p, schema: deref(p.schema) })),
        });
  return ops;
}

const NASTY = [
  '',
  ' ',
  '%00',
  'a%00b',
  "'",
  "';--",
  "' OR '1'='1",
  '1; DROP TABLE positions; --',
  '/*',
  '*/',
  '--',
  '"',
  '\\',
  '%',
  '%zz',
  '%2',
  '%C0%AF',
  '..%2F..%2Fetc%2Fpasswd',
  '..%252F..%252Fetc%252Fpasswd',
  '%2e%2e%2f%2e%2e%2fetc%2fpasswd',
  '..',
  '...',
  '.%2e',
  '%2F',
  '%E2%82%BFTC',
  '%F0%9F%92%A9',
  '%EF%BF%BF',
  '%ED%A0%80',
  '%FF%FE',
  encodeURIComponent('ÄÖÜß'),
  encodeURIComponent('比特币USDT'),
  encodeURIComponent('\u202Eevil'),
  '1e309',
  '-1e309',
  '99999999999999999999',
  '-99999999999999999999',
  '1e-400',
  'NaN',
  'Infinity',
  '-Infinity',
  '-0',
  '0x10',
  '1_000',
  '１２３',
  'true',
  'false',
  'TRUE',
  'null',
  'undefined',
  '[]',
  '{}',
  '%5B%5D',
  '%7B%7D',
  '-1',
  '0',
  '1.5',
  '2147483648',
  '9223372036854775808',
  'BTCUSDT',
  'btcusdt',
  'BTC-USDT',
  'BTC%20USDT',
  'BTC+USDT',
  'a'.repeat(21),
  'A'.repeat(5000),
  '9'.repeat(400),
  '1.' + '1'.repeat(300),
  '%3Cscript%3Ealert(1)%3C%2Fscript%3E',
  '${jndi:ldap://x}',
  '{{7*7}}',
  '%0d%0aSet-Cookie:%20x=1',
  '\u00e9',
];

function pick<T>(r: () => number, a: readonly T[]): T {
  return a[Math.floor(r() * a.length)]!;
}

function validValue(r: () => number, schema: any, name: string): string {
  if (name === 'asset') return pick(r, ['BTCUSDT', 'ethusdt', 'HEDGEUSDT', 'CLOSEDUSDT', 'NOPEUSDT']);
  if (name === 'mode') return pick(r, ['one-way', 'hedge', 'ONE-WAY', 'Hedge']);
  if (schema?.type === 'boolean') return pick(r, ['true', 'false']);
  if (schema?.type === 'integer') return String(between(r, schema.minimum ?? 0, Math.min(schema.maximum ?? 100, 100)));
  if (schema?.pattern?.includes('\\d{1,12}')) return pick(r, ['0', '0.5', '1', '100.12345678', '999999999999']);
  return 'x';
}

function wrongValue(r: () => number, schema: any): string {
  const typed: string[] = [];
  if (schema?.type === 'integer')
    typed.push('1.5', '-1', '0', '10001', '1001', '2147483648', '1e3', ' 1', '1 ', '+1', '01', '0x1');
  if (schema?.type === 'boolean') typed.push('1', '0', 'yes', 'True', 'TRUE', 'on', '');
  if (schema?.pattern) typed.push('1.123456789', '1234567890123', '-0.5', '.5', '5.', '1,5');
  return r() < 0.4 && typed.length ? pick(r, typed) : pick(r, NASTY);
}

interface Req {
  method: string;
  path: string;
  headers: Record<string, string | string[]>;
  body?: string;
  keyState: 'valid' | 'missing' | 'wrong' | 'read';
  kind: string;
}

function generate(r: () => number, ops: Op[]): Req {
  const op = pick(r, ops);
  let kind = 'schema';
  let path = op.path;
  const query: string[] = [];
  for (const p of op.params) {
    const fuzzThis = r() < 0.3;
    if (p.in === 'path') {
      const v = fuzzThis ? wrongValue(r, p.schema) : validValue(r, p.schema, p.name);
      path = path.replace(`{${p.name}}`, v === '' && r() < 0.5 ? '' : v);
      if (fuzzThis) kind = 'bad-path-param';
    } else if (p.in === 'query') {
      if (fuzzThis) {
        kind = 'bad-query';
        query.push(`${p.name}=${wrongValue(r, p.schema)}`);
      } else if (r() < 0.4) query.push(`${p.name}=${validValue(r, p.schema, p.name)}`);
      if (r() < 0.05) {
        query.push(`${p.name}=${validValue(r, p.schema, p.name)}`); // repeated parameter
        kind = 'repeated-param';
      }
    }
  }
  const x = r();
  if (x < 0.05) {
    query.push(
      `${pick(r, ['foo', 'LIMIT', 'asset[]', 'limit[0]', '__proto__', 'constructor', "x'--", '%00'])}=${pick(r, NASTY)}`,
    );
    kind = 'unknown-param';
  } else if (x < 0.08) {
    query.push(pick(r, ['&&&', '=', '==', 'limit', 'limit=', '=1', '%', '&limit=1', 'mode=one-way&mode=hedge']));
    kind = 'odd-query';
  } else if (x < 0.1) {
    query.push(`asset=${'A'.repeat(between(r, 1000, 8_000))}`); // the request line stays under Node's 16 KiB header limit
    kind = 'long-query';
  }
  let method = op.method;
  if (r() < 0.08) {
    method = pick(r, ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD', 'TRACE', 'PROPFIND']);
    if (method !== op.method) kind = 'wrong-method';
  }
  if (r() < 0.06) {
    path = pick(r, [
      '/api/v1',
      '/api/v1/',
      '/api/v1/nope',
      '/api/v2/positions',
      '/api/v1/positions/',
      '/api/v1/positions//snapshot',
      '/api/v1/positions/BTCUSDT/extra',
      '/api/v1/positions/..%2F..%2Fetc%2Fpasswd',
      '/api/v1/positions/%2e%2e/%2e%2e/health',
      '/api/v1/positions/BTCUSDT%00',
      '/api/v1/positions/BTCUSDT/snapshots/../validate',
      '/API/V1/POSITIONS',
      '/api/v1/portfolio/',
      '/api/v1/portfolio/exposure/x',
      '/api/v1/%2e%2e/health',
      '/api/v1/positions/%',
      '/api/v1/positions/%zz',
      '/',
      '/..%2F..%2Fetc%2Fpasswd',
      '/health/..',
      '/metrics/x',
      '/openapi.yaml%00',
      '/docs',
      '/favicon.ico',
      `/${'a'.repeat(8000)}`,
      '//api/v1/positions',
      '/api//v1/positions',
    ]);
    kind = 'odd-path';
  }
  const headers: Record<string, string | string[]> = {};
  let keyState: Req['keyState'] = 'valid';
  const k = r();
  if (k < 0.12) keyState = 'missing';
  else if (k < 0.25) {
    keyState = 'wrong';
    headers['x-api-key'] = pick(r, [
      '',
      ' ',
      TEST_API_KEY.slice(0, -1),
      TEST_API_KEY + 'x',
      TEST_API_KEY.toUpperCase(),
      TEST_API_KEY.slice(0, -1) + 'X',
      `Bearer ${TEST_API_KEY}`,
      'x'.repeat(TEST_API_KEY.length),
      "' OR '1'='1",
      'a'.repeat(4000),
      `${TEST_API_KEY}\t`,
      'null',
    ]);
    // Trailing/leading whitespace is stripped by HTTP itself: such a key is not really wrong.
    if (headers['x-api-key'].trim() === TEST_API_KEY) keyState = 'valid';
  } else if (k < 0.27) {
    headers['x-api-key'] = [TEST_API_KEY, 'other'];
    keyState = 'wrong'; // two values: Node joins them with ", " — not the key
  } else headers['x-api-key'] = TEST_API_KEY;
  if (r() < 0.1)
    headers['x-trace-id'] = pick(r, ['ok-trace.1:2', '', 'bad trace', 'x'.repeat(129), '<script>', "';--", '%00']);
  if (r() < 0.05)
    headers['accept'] = pick(r, ['text/html', 'application/xml', '*/*', 'application/problem+json', 'nonsense']);
  let body: string | undefined;
  if (r() < 0.05 && method !== 'GET' && method !== 'HEAD') {
    body = pick(r, ['{"a":', '{"size": 1e309}', '[]', 'x'.repeat(200_000), '{"__proto__":{"admin":true}}', 'null']);
    headers['content-type'] = pick(r, [
      'application/json',
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
    ]);
    kind = 'body';
  }
  const target = query.length ? `${path}?${query.join('&')}` : path;
  return { method, path: encodeUnsafe(target), headers, ...(body !== undefined ? { body } : {}), keyState, kind };
}

/** Percent-encodes what cannot go raw into an HTTP request target (space, controls, non-ASCII); the rest stays as generated. */
function encodeUnsafe(target: string): string {
  return target.replace(/[^\x21-\x7e]/gu, (c) => encodeURIComponent(c));
}

interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

function send(port: number, req: Req): Promise<Res> {
  return new Promise((resolve, reject) => {
    const h: Record<string, string | string[]> = { ...req.headers };
    if (req.body !== undefined) h['content-length'] = String(Buffer.byteLength(req.body));
    const cr = httpRequest(
      { host: '127.0.0.1', port, method: req.method, path: req.path, headers: h, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }),
        );
        res.on('error', reject);
      },
    );
    cr.on('error', reject);
    cr.setTimeout(30_000, () => cr.destroy(new Error('timeout')));
    if (req.body !== undefined) cr.write(req.body);
    cr.end();
  });
}

const OPEN = /^\/(health|metrics|openapi\.yaml|docs)(\?|$)/;

t.test(`${REQUESTS} fuzzed requests: no 500, problem bodies, 401 without a valid key`, async (t) => {
  t.comment(`seed ${seed} (RELIABILITY_SEED), requests ${REQUESTS}`);
  const r = rng(seed);
  const db = await freshDatabase(t);
  const fills = [
    {
      execution_id: 'f1',
      asset: 'BTCUSDT',
      side: 'Buy',
      execution_quantity: '1.5',
      execution_price: '50000',
      execution_fees: '1',
    },
    { execution_id: 'f2', asset: 'ETHUSDT', side: 'Sell', execution_quantity: '10', execution_price: '3000' },
    { execution_id: 'f3', asset: 'CLOSEDUSDT', side: 'Buy', execution_quantity: '2', execution_price: '10' },
    { execution_id: 'f4', asset: 'CLOSEDUSDT', side: 'Sell', execution_quantity: '2', execution_price: '11' },
    {
      execution_id: 'f5',
      asset: 'HEDGEUSDT',
      side: 'Buy',
      execution_quantity: '3',
      execution_price: '100',
      mode: 'hedge',
      position_idx: 1,
    },
    {
      execution_id: 'f6',
      asset: 'HEDGEUSDT',
      side: 'Sell',
      execution_quantity: '1',
      execution_price: '101',
      mode: 'hedge',
      position_idx: 2,
    },
  ];
  for (const f of fills) await db.query('select apply_order_fill($1::jsonb)', [JSON.stringify(f)]);
  await db.query("select snapshot_all_positions('scheduled')").catch(() => undefined);
  // rate limits on, as in production: past 30 failed authentications a minute an address gets 429
  const svc = await startService(t, {
    databaseUrl: db.url,
    env: { POSITION_MANAGER_ROLES: 'api', POSITION_MANAGER_API_KEYS: `ui:${READ_KEY}:read` },
  });
  t.equal((await svc.request('GET', '/api/v1/positions/BTCUSDT')).status, 200, 'seeded');

  const ops = operations();
  t.ok(ops.length >= 10, `${ops.length} operations in openapi.yaml`);
  const reqs = Array.from({ length: REQUESTS }, () => generate(r, ops));
  // Every operation at least once with each key state.
  for (const op of ops)
    for (const keyState of ['valid', 'missing', 'wrong', 'read'] as const)
      reqs.push({
        method: op.method,
        path: op.path.replace('{asset}', 'BTCUSDT'),
        headers:
          keyState === 'valid'
            ? { 'x-api-key': TEST_API_KEY }
            : keyState === 'wrong'
              ? { 'x-api-key': 'wrong-key-0123456789abcdef00' }
              : keyState === 'read'
                ? { 'x-api-key': READ_KEY }
                : {},
        keyState,
        kind: 'baseline',
      });

  const statuses = new Map<number, number>();
  const kinds = new Map<string, number>();
  const failures: string[] = [];
  let next = 0;
  const worker = async () => {
    while (next < reqs.length) {
      const req = reqs[next++]!;
      kinds.set(req.kind, (kinds.get(req.kind) ?? 0) + 1);
      let res: Res;
      try {
        res = await send(svc.port, req);
      } catch (err) {
        failures.push(`${req.method} ${req.path.slice(0, 200)}: transport error ${(err as Error).message}`);
        continue;
      }
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      const where = `${req.method} ${req.path.slice(0, 200)} [key ${req.keyState}, ${req.kind}] → ${res.status}`;
      if (res.status >= 500) failures.push(`${where}: ${res.text.slice(0, 300)}`);
      const rawPath = req.path.split('?')[0]!;
      const toApi = /^\/api\/v1(\/|$)/.test(rawPath);
      const noKey = req.keyState === 'missing' || req.keyState === 'wrong';
      if (toApi && noKey && res.status !== 401 && res.status !== 429)
        failures.push(`${where}: expected 401 (or 429 past the failure limit) without a valid key`);
      if (noKey && res.status < 300 && !OPEN.test(req.path)) failures.push(`${where}: success without a valid key`);
      if (toApi && req.keyState === 'read' && (req.method === 'POST') !== (res.status === 403))
        failures.push(`${where}: a read key gets 403 exactly for POST`);
      if (res.status >= 400 && req.method !== 'HEAD') {
        const ct = String(res.headers['content-type'] ?? '');
        let body: any;
        try {
          body = JSON.parse(res.text);
        } catch {
          /* checked below */
        }
        if (!ct.startsWith('application/problem+json')) failures.push(`${where}: content-type ${ct}`);
        if (!body || typeof body !== 'object') failures.push(`${where}: body is not JSON: ${res.text.slice(0, 200)}`);
        else {
          for (const f of ['type', 'title', 'code', 'trace_id'])
            if (typeof body[f] !== 'string' || !body[f]) failures.push(`${where}: problem without ${f}`);
          if (body.status !== res.status) failures.push(`${where}: problem status ${body.status}`);
          if (body.trace_id !== res.headers['x-trace-id']) failures.push(`${where}: trace_id differs from X-Trace-Id`);
          if (res.status === 401 && body.code !== 'unauthorized') failures.push(`${where}: 401 with code ${body.code}`);
          if (res.status === 429 && (body.code !== 'rate_limited' || !res.headers['retry-after']))
            failures.push(`${where}: 429 without rate_limited and Retry-After`);
          if (res.status === 403 && body.code !== 'forbidden') failures.push(`${where}: 403 with code ${body.code}`);
          if (/\bat [\w.<>]+ \(|node_modules|\.ts:\d+|\bselect\b.*\bfrom\b|syntax error/i.test(res.text))
            failures.push(`${where}: stack trace or SQL in the error: ${res.text.slice(0, 300)}`);
        }
      }
      if (!res.headers['x-trace-id']) failures.push(`${where}: no X-Trace-Id`);
    }
  };
  const started = Date.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  t.comment(
    `${reqs.length} requests in ${Date.now() - started} ms; statuses ${JSON.stringify(Object.fromEntries([...statuses].sort()))}`,
  );
  t.comment(`kinds ${JSON.stringify(Object.fromEntries(kinds))}`);
  const five = [...statuses].filter(([s]) => s >= 500).reduce((a, [, n]) => a + n, 0);
  t.equal(statuses.get(500) ?? 0, 0, 'no 500 responses');
  t.equal(five, 0, 'no 5xx responses at all (the database is up)');
  t.same([...new Set(failures)].slice(0, 40), [], 'every response follows the error and authentication rules');
  t.ok(
    (statuses.get(200) ?? 0) > 0 && (statuses.get(400) ?? 0) > 0 && (statuses.get(401) ?? 0) > 0,
    'the fuzz reached successes, 400s and 401s',
  );
  const health = await svc.request('GET', '/health', { key: null });
  t.equal(health.status, 200, 'the service is healthy after the fuzz');
  t.equal(svc.child.exitCode, null, 'the service process is still running');
  t.notOk(
    svc.logs.some((l) => JSON.stringify(l).includes(TEST_API_KEY) || JSON.stringify(l).includes(READ_KEY)),
    'no API key ever appears in the logs',
  );
});

// Requests that Node's HTTP parser rejects before the application sees them: a raw non-ASCII
// byte in the request target, and a request line beyond the 16 KiB header limit. They never
// reach the API key check; the answer must still be a problem document with a trace id.
t.test('requests rejected by the HTTP parser', async (t) => {
  const db = await freshDatabase(t);
  const svc = await startService(t, { databaseUrl: db.url, env: { POSITION_MANAGER_ROLES: 'api' } });
  const cases: { name: string; req: Req }[] = [
    {
      name: 'raw byte 0xE9 in the path',
      req: {
        method: 'GET',
        path: '/api/v1/positions/\u00e9',
        headers: { 'x-api-key': TEST_API_KEY },
        keyState: 'valid',
        kind: 'parser',
      },
    },
    {
      name: 'request target of 20 000 characters',
      req: {
        method: 'GET',
        path: `/api/v1/positions?asset=${'A'.repeat(20_000)}`,
        headers: {},
        keyState: 'missing',
        kind: 'parser',
      },
    },
  ];
  for (const { name, req } of cases) {
    const res = await send(svc.port, req);
    t.ok(res.status >= 400 && res.status < 500, `${name}: ${res.status}`);
    t.match(String(res.headers['content-type'] ?? ''), /^application\/problem\+json/, `${name}: problem+json`);
    t.ok(res.headers['x-trace-id'], `${name}: X-Trace-Id`);
    let body: any;
    try {
      body = JSON.parse(res.text);
    } catch {
      /* checked next */
    }
    t.match(
      body,
      { status: res.status, code: String, title: String, type: String, trace_id: String },
      `${name}: problem body`,
    );
  }
  t.equal((await svc.request('GET', '/health', { key: null })).status, 200, 'still healthy');
});
