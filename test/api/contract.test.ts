// The edges of the HTTP contract (SPEC.md §5): every bad field named in one 400, integer bounds
// as openapi.yaml states them, no 405 and HEAD wherever GET works, no ETag/304, a malformed
// %-escape in {asset}, and route labels on the request metric that never echo a client's path.
import t from 'tap';
import { freshDatabase } from '../helpers/db.js';
import { startService } from '../helpers/service.js';

const db = await freshDatabase(t);
await db.query('select apply_order_fill($1::jsonb)', [
  JSON.stringify({
    execution_id: 'contract-1',
    asset: 'BTCUSDT',
    side: 'Buy',
    execution_quantity: '1',
    execution_price: '50000',
  }),
]);
const svc = await startService(t, { databaseUrl: db.url, env: { POSITION_MANAGER_ROLES: 'api' } });
const get = (path: string, key?: string | null) => svc.request('GET', path, { key });
const fields = (body: any) => (body.errors as { field: string }[]).map((e) => e.field).sort();
/** The paths without a path parameter besides the positions list: the portfolio reads and the service's own pages. */
const FIXED_PATHS = [
  '/api/v1/portfolio',
  '/api/v1/portfolio/exposure',
  '/api/v1/portfolio/pnl',
  '/health',
  '/metrics',
  '/openapi.yaml',
  '/docs',
];

t.test('errors[] names every bad field at once', async (t) => {
  let r = await get('/api/v1/positions?limit=0&offset=-1&size_min=x');
  t.equal(r.status, 400);
  t.match(r.body, { code: 'invalid_parameter', status: 400 });
  t.same(fields(r.body), ['limit', 'offset', 'size_min']);
  t.ok(
    r.body.errors.every((e: any) => e.location === 'query' && e.message),
    'each with its location and message',
  );
  r = await get('/api/v1/positions?bogus=1&other=2&limit=1e3&offset=0x10&include_closed=yes&mode=both&asset=B');
  t.same(
    fields(r.body),
    ['asset', 'bogus', 'include_closed', 'limit', 'mode', 'offset', 'other'],
    'unknown parameters and our own digit checks too',
  );
  r = await get('/api/v1/positions?size_min=10&size_max=9.99999999&limit=0');
  t.same(fields(r.body), ['limit', 'size_min'], 'size_min > size_max with another bad field');
  r = await get('/api/v1/positions?size_min=10&size_max=9.99999999');
  t.same(fields(r.body), ['size_min'], 'size_min > size_max alone');
  t.equal((await get('/api/v1/positions?size_min=10&size_max=10.0')).status, 200, 'equal bounds compare by value');
  r = await get('/api/v1/positions/BTCUSDT/snapshots?limit=abc&offset=&mode=x');
  t.same(fields(r.body), ['limit', 'mode', 'offset']);
  r = await get('/api/v1/positions/BTCUSDT?limit=1&mode=x');
  t.same(fields(r.body), ['limit', 'mode'], 'a parameter of another operation is unknown here');
});

t.test('integers: decimal digits, within the bounds of openapi.yaml', async (t) => {
  for (const [query, offset] of [
    ['offset=1000000000', 1000000000],
    ['offset=2147483647', 2147483647],
    ['offset=002147483647', 2147483647],
    ['offset=0', 0],
  ] as const) {
    const r = await get(`/api/v1/positions?${query}`);
    t.equal(r.status, 200, query);
    t.equal(r.body.offset, offset, `${query} is offset ${offset}`);
  }
  t.equal((await get('/api/v1/positions?limit=10000')).body.limit, 10000);
  t.equal((await get('/api/v1/positions?limit=0001')).body.limit, 1);
  t.equal((await get('/api/v1/positions/BTCUSDT/snapshots?limit=1000&offset=2147483647')).status, 200);
  const bad = [
    '/api/v1/positions?offset=2147483648',
    '/api/v1/positions?offset=99999999999999999999999',
    `/api/v1/positions?offset=${'9'.repeat(400)}`,
    '/api/v1/positions?offset=1.0',
    '/api/v1/positions?offset=+1',
    '/api/v1/positions?limit=0',
    '/api/v1/positions?limit=10001',
    `/api/v1/positions?limit=${'9'.repeat(30)}`,
    '/api/v1/positions?limit=%201',
    '/api/v1/positions/BTCUSDT/snapshots?limit=1001',
    '/api/v1/positions/BTCUSDT/snapshots?limit=0',
    '/api/v1/positions/BTCUSDT/snapshots?offset=2147483648',
  ];
  for (const path of bad) {
    const r = await get(path);
    t.equal(r.status, 400, `${path.slice(0, 60)} → 400`);
    t.match(r.body, { code: 'invalid_parameter', errors: [{ location: 'query', field: /^(limit|offset)$/ }] });
  }
});

t.test('a method the path does not serve is 404 not_found, like an unknown path', async (t) => {
  const cases: [string, string][] = [
    ['POST', '/health'],
    ['POST', '/openapi.yaml'],
    ['DELETE', '/metrics'],
    ['PUT', '/api/v1/positions'],
    ['DELETE', '/api/v1/positions/BTCUSDT'],
    ['POST', '/api/v1/positions/BTCUSDT'],
    ['GET', '/api/v1/positions/BTCUSDT/validate'],
    ['GET', '/api/v1/positions/BTCUSDT/snapshot'],
    ['POST', '/api/v1/portfolio'],
    ['OPTIONS', '/api/v1/positions'],
    ['PATCH', '/api/v1/nothing-here'],
  ];
  for (const [method, path] of cases) {
    const r = await svc.request(method, path);
    t.equal(r.status, 404, `${method} ${path} → 404`);
    t.match(r.body, { status: 404, code: 'not_found', title: 'Not Found', trace_id: String }, `${method} ${path} body`);
    t.match(r.headers.get('content-type'), /application\/problem\+json/);
  }
  for (const [method, path] of [
    ['DELETE', '/api/v1/positions'],
    ['GET', '/api/v1/positions/BTCUSDT/validate'],
  ]) {
    t.equal(
      (await svc.request(method!, path!, { key: null })).status,
      401,
      `${method} ${path} without a key is 401 first`,
    );
  }
});

t.test('HEAD works wherever GET does, without a body', async (t) => {
  for (const path of [
    '/api/v1/positions',
    '/api/v1/positions/BTCUSDT',
    '/api/v1/positions/BTCUSDT/snapshots',
    ...FIXED_PATHS,
  ]) {
    const g = await get(path);
    const h = await svc.request('HEAD', path);
    t.equal(h.status, 200, `HEAD ${path}`);
    t.equal(h.body, '', 'no body');
    t.equal(h.headers.get('content-type'), g.headers.get('content-type'), 'the content type of GET');
  }
  t.equal((await svc.request('HEAD', '/api/v1/positions')).headers.get('cache-control'), 'no-store');
  t.equal((await svc.request('HEAD', '/api/v1/positions?limit=0')).status, 400, 'parameters are checked as for GET');
  t.equal((await svc.request('HEAD', '/api/v1/positions/NOPEUSDT')).status, 404);
  t.equal((await svc.request('HEAD', '/api/v1/positions', { key: null })).status, 401);
  t.equal(
    (await svc.request('HEAD', '/api/v1/positions/BTCUSDT/validate')).status,
    404,
    'no GET there, no HEAD either',
  );
});

t.test('no ETag, never 304', async (t) => {
  const conditions: Record<string, string>[] = [
    { 'if-none-match': '*' },
    { 'if-none-match': 'W/"x"' },
    { 'if-modified-since': 'Fri, 01 Jan 2100 00:00:00 GMT' },
  ];
  for (const path of ['/api/v1/positions', '/api/v1/portfolio', '/health', '/openapi.yaml']) {
    const first = await get(path);
    t.equal(first.headers.get('etag'), null, `${path} has no ETag`);
    for (const headers of conditions) {
      const r = await svc.request('GET', path, { headers });
      t.equal(r.status, 200, `${path} with ${JSON.stringify(headers)}`);
      t.ok(JSON.stringify(r.body).length > 2, 'with its body');
    }
  }
});

t.test('a malformed %-escape in {asset} is 400 naming the path field asset', async (t) => {
  for (const [method, path] of [
    ['GET', '/api/v1/positions/%ZZ'],
    ['GET', '/api/v1/positions/BTC%E0%A4%A'],
    ['POST', '/api/v1/positions/%ZZ/validate'],
    ['POST', '/api/v1/positions/%ZZ/snapshot'],
    ['GET', '/api/v1/positions/%ZZ/snapshots?limit=5'],
  ] as const) {
    const r = await svc.request(method, path);
    t.equal(r.status, 400, `${method} ${path}`);
    t.match(r.body, { code: 'invalid_parameter', errors: [{ location: 'path', field: 'asset' }] });
    t.equal(r.body.errors.length, 1);
  }
  t.equal((await get('/api/v1/positions/%ZZ', null)).status, 401, 'the key first');
});

const series = async () =>
  new Set(
    ((await get('/metrics', null)).body as string)
      .split('\n')
      .filter((l) => l.startsWith('position_manager_http_request_duration_seconds_count{'))
      .map((l) => l.split('}')[0]!),
  );

t.test('many distinct junk paths add at most one series each way; API routes carry their full template', async (t) => {
  const ways: [string, (i: number) => Promise<unknown>][] = [
    ['anonymous 401', (i) => get(`/api/v1/junk-${i}`, null)],
    ['anonymous 401 on a known template', (i) => get(`/api/v1/positions/JUNK${i}`, null)],
    ['404', (i) => get(`/junk-${i}`)],
    ['404 under /api/v1', (i) => svc.request('POST', `/api/v1/junk-${i}`)],
    ['400 for a malformed path', (i) => get(`/api/v1/positions/%ZZ${i}`)],
  ];
  for (const [what, send] of ways) {
    const before = await series();
    for (let i = 0; i < 25; i++) await send(i);
    const added = [...(await series())].filter((s) => !before.has(s));
    t.ok(added.length <= 1, `${what}: ${added.length} new series, e.g. ${added.slice(0, 2).join(' ')}`);
  }
  await get('/api/v1/positions/NOPEUSDT'); // 404 from the SQL after routing
  await get('/api/v1/positions?limit=1e3'); // 400 from our own check
  await get('/api/v1/positions?limit=0'); // 400 from the validator
  await svc.request('HEAD', '/api/v1/positions/BTCUSDT/snapshots');
  const routes = new Set([...(await series())].map((s) => /route="([^"]*)"/.exec(s)![1]));
  t.ok(
    routes.has('/api/v1/positions/:asset') &&
      routes.has('/api/v1/positions') &&
      routes.has('/api/v1/positions/:asset/snapshots'),
  );
  const templates = [
    '/api/v1/positions',
    '/api/v1/positions/:asset',
    '/api/v1/positions/:asset/snapshots',
    '/api/v1/positions/:asset/validate',
    '/api/v1/positions/:asset/snapshot',
    ...FIXED_PATHS,
    'unmatched',
  ];
  t.same(
    [...routes].filter((r) => !templates.includes(r!)),
    [],
    'only route templates and "unmatched"',
  );
});
