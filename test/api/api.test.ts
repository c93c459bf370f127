// The REST API as a client sees it (SPEC.md §5): the real service process, every endpoint with
// its parameters and errors, auth, the metrics cache across two instances, and 503 when the
// database is cut off. Every response is also checked against openapi.yaml by the service
// itself (NODE_ENV=test makes a non-conforming response a 500, which these tests would see).
import t from 'tap';
import { ledgerFill } from '../helpers/api-ledger.js';
import { API_V1_ROUTES } from '../helpers/api-routes.js';
import { freshDatabase, writePositionsDirectly } from '../helpers/db.js';
import { tcpProxy } from '../helpers/proxy.js';
import { startService, TEST_API_KEY } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';

const db = await freshDatabase(t);
let seq = 0;
const fill = ledgerFill(db, () => `api-${++seq}`);
const report = (asset: string, size: string, extra: object) =>
  db.query('select apply_position_report($1::jsonb)', [
    JSON.stringify({
      event_type: 'position',
      event_id: `apir-${++seq}`,
      data: { symbol: asset, side: 'Buy', size, ...extra },
    }),
  ]);

// rate limits are off here: TC-016 below fails authentication more often than 30 times a minute
// (test/api/access.test.ts tests the limits)
const svc = await startService(t, {
  databaseUrl: db.url,
  env: {
    POSITION_MANAGER_ROLES: 'api',
    POSITION_MANAGER_METRICS_CACHE_TTL: '2',
    POSITION_MANAGER_RATE_LIMIT_ENABLED: 'false',
  },
});
const get = (path: string, key?: string | null) => svc.request('GET', path, { key });
const post = (path: string) => svc.request('POST', path);

await fill('BTCUSDT', 'Buy', '1.0', '50000');
await fill('ETHUSDT', 'Buy', '10.0', '3000');
await fill('SOLUSDT', 'Buy', '100.0', '100');

t.test('TC-016 and auth on every /api/v1 route', async (t) => {
  const routes: [string, string][] = [...API_V1_ROUTES, ['GET', '/api/v1/positions?limit=bogus']];
  for (const [method, path] of routes) {
    for (const key of [null, 'wrong-key', `${TEST_API_KEY}x`, TEST_API_KEY.slice(0, -1)]) {
      const r = await svc.request(method, path, { key });
      t.equal(r.status, 401, `${method} ${path} with ${key === null ? 'no' : 'a wrong'} key`);
      t.match(r.body, {
        status: 401,
        code: 'unauthorized',
        title: 'Unauthorized',
        type: 'about:blank',
        trace_id: String,
      });
      t.match(r.headers.get('content-type'), /application\/problem\+json/);
    }
  }
  t.equal((await get('/api/v1/positions')).status, 200, 'the right key');
  const failures = await waitFor(
    () => {
      const f = svc.logs.filter((l) => l.msg === 'authentication failed');
      return f.length >= routes.length * 4 && f;
    },
    { what: 'every failure logged' },
  );
  t.ok(
    failures.every((l) => l.level === 'warn' && l.client),
    'failures logged at warn with the client',
  );
  t.notOk(JSON.stringify(svc.logs).includes('wrong-key'), 'never the key');
  for (const open of ['/health', '/metrics', '/openapi.yaml', '/docs'])
    t.equal((await get(open, null)).status, 200, `${open} is open`);
});

t.test('TC-012 list with filters; pagination; 400 for every malformed parameter', async (t) => {
  let r = await get('/api/v1/positions');
  t.equal(r.status, 200);
  t.same(
    r.body.positions.map((p: any) => p.asset),
    ['BTCUSDT', 'ETHUSDT', 'SOLUSDT'],
  );
  t.match(r.body, { count: 3, total: 3, limit: 1000, offset: 0 });
  for (const p of r.body.positions)
    for (const f of ['unrealized_pnl_pct', 'time_held_minutes', 'position_size_norm'])
      t.ok(f in p, `${p.asset} has ${f}`);
  t.equal(r.headers.get('cache-control'), 'no-store');
  r = await get('/api/v1/positions?asset=btcusdt');
  t.same(
    r.body.positions.map((p: any) => p.asset),
    ['BTCUSDT'],
  );
  r = await get('/api/v1/positions?size_min=5.0');
  t.same(
    r.body.positions.map((p: any) => p.asset),
    ['ETHUSDT', 'SOLUSDT'],
    'gross ≥ 5, inclusive',
  );
  r = await get('/api/v1/positions?size_min=1&size_max=10');
  t.same(
    r.body.positions.map((p: any) => p.asset),
    ['BTCUSDT', 'ETHUSDT'],
    'both bounds inclusive',
  );
  r = await get('/api/v1/positions?limit=1&offset=1');
  t.match(r.body, { count: 1, total: 3, limit: 1, offset: 1 });
  t.equal(r.body.positions[0].asset, 'ETHUSDT');
  const bad: [string, string][] = [
    ['/api/v1/positions?size_min=abc', 'size_min'],
    ['/api/v1/positions?size_max=-1', 'size_max'],
    ['/api/v1/positions?size_min=1.123456789', 'size_min'],
    ['/api/v1/positions?unknown=1', 'unknown'],
    ['/api/v1/positions?limit=0', 'limit'],
    ['/api/v1/positions?limit=10001', 'limit'],
    ['/api/v1/positions?limit=1e3', 'limit'],
    ['/api/v1/positions?offset=-1', 'offset'],
    ['/api/v1/positions?include_closed=yes', 'include_closed'],
    ['/api/v1/positions?mode=both', 'mode'],
    ['/api/v1/positions?asset=BTC-USDT', 'asset'],
    ['/api/v1/positions?size_min=10&size_max=1', 'size_min'],
    ['/api/v1/positions/B', 'asset'],
    ['/api/v1/positions/BTCUSDT?mode=x', 'mode'],
    ['/api/v1/positions/%27%3B%20drop%20table', 'asset'],
    ['/api/v1/positions/BTCUSDT/snapshots?limit=1001', 'limit'],
    ['/api/v1/portfolio?include_positions=1', 'include_positions'],
    ['/api/v1/portfolio/exposure?asset=%00', 'asset'],
  ];
  for (const [path, field] of bad) {
    const b = await get(path);
    t.equal(b.status, 400, `${path} → 400`);
    t.match(b.body, { code: 'invalid_parameter', status: 400, errors: [{ field }] }, `names ${field}`);
  }
  const traced = await svc.request('GET', '/api/v1/positions', { headers: { 'x-trace-id': 'my-trace:1' } });
  t.equal(traced.headers.get('x-trace-id'), 'my-trace:1', 'X-Trace-Id is echoed');
  const generated = await svc.request('GET', '/api/v1/positions', { headers: { 'x-trace-id': 'bad trace!' } });
  t.match(generated.headers.get('x-trace-id'), /^[0-9a-f-]{36}$/, 'an invalid one is replaced');
});

t.test('single position, TC-006 closed rows, 404', async (t) => {
  await fill('CLSUSDT', 'Buy', '1.0', '50000');
  await fill('CLSUSDT', 'Sell', '1.0', '51000', { execution_fees: '51.00' });
  const r = await get('/api/v1/positions/clsusdt');
  t.equal(r.status, 200);
  t.match(r.body, {
    asset: 'CLSUSDT',
    size: '0',
    realized_pnl: '949',
    is_open: false,
    side: 'flat',
    closed_at: String,
  });
  t.notOk(
    (await get('/api/v1/positions')).body.positions.some((p: any) => p.asset === 'CLSUSDT'),
    'not listed by default',
  );
  t.ok(
    (await get('/api/v1/positions?include_closed=true')).body.positions.some((p: any) => p.asset === 'CLSUSDT'),
    'listed with include_closed',
  );
  const nf = await get('/api/v1/positions/NOPEUSDT');
  t.equal(nf.status, 404);
  t.match(nf.body, { code: 'position_not_found' });
  t.equal((await get('/api/v1/positions/BTCUSDT?mode=hedge')).status, 404, 'the mode is part of the key');
  t.equal((await get('/api/v1/nothing-here')).status, 404);
});

t.test('TC-009, TC-010, TC-013: portfolio, exposure, pnl', async (t) => {
  await report('BTCUSDT', '1.0', { unrealisedPnl: '150.00' });
  await report('ETHUSDT', '10.0', { unrealisedPnl: '-50.00' });
  const e = await get('/api/v1/portfolio/exposure');
  t.equal(e.status, 200);
  t.equal(e.body.total_exposure_usdt, '90000', '1 × 50000 + 10 × 3000 + 100 × 100');
  t.match(e.body.by_asset, { BTCUSDT: { exposure_usdt: '50000' }, ETHUSDT: { exposure_usdt: '30000' } });
  t.match(e.body.limits, { max_exposure_usdt: null, exposure_limit_exceeded: false });
  const p = await get('/api/v1/portfolio/pnl');
  t.equal(p.body.total_unrealized_pnl_usdt, '100');
  t.ok(p.body.by_asset.BTCUSDT && p.body.by_asset.ETHUSDT);
  const full = await get('/api/v1/portfolio?include_positions=true');
  t.equal(full.body.positions.length, 3, 'open positions');
  t.equal(full.body.open_positions_count, 3);
  t.notOk('positions' in (await get('/api/v1/portfolio')).body, 'positions only when asked');
  const one = await get('/api/v1/portfolio?asset=ethusdt');
  t.equal(one.body.total_exposure_usdt, '30000');
});

t.test('TC-014, TC-015, TC-021: validate, snapshot, snapshot history', async (t) => {
  const v = await post('/api/v1/positions/BTCUSDT/validate');
  t.equal(v.status, 200);
  t.match(v.body, { is_valid: true, discrepancies: [], error_message: null, checked_at: String });
  t.equal((await post('/api/v1/positions/NOPEUSDT/validate')).status, 404);
  await writePositionsDirectly(db, "update positions set size = 5 where asset = 'SOLUSDT'");
  const fixed = await svc.request('POST', '/api/v1/positions/SOLUSDT/validate?fix_discrepancies=true', {
    headers: { 'x-trace-id': 'fix-trace-1' },
  });
  t.match(fixed.body, {
    is_valid: false,
    discrepancies: [{ field: 'size', stored: '5', expected: '100', authority: 'ledger' }],
    updated_position: { size: '100' },
  });
  const audit = (
    await db.query("select trace_id from position_events where asset = 'SOLUSDT' and kind = 'validation_fix'")
  ).rows;
  t.same(
    audit.map((r) => r.trace_id),
    ['fix-trace-1'],
    "the fix carries the request's trace_id",
  );
  await waitFor(
    () => svc.logs.some((l) => l.level === 'warn' && /^validation: size/.test(l.msg) && l.asset === 'SOLUSDT'),
    { what: 'discrepancies logged at warn' },
  );
  const s1 = await post('/api/v1/positions/BTCUSDT/snapshot');
  t.equal(s1.status, 201);
  t.equal(s1.headers.get('location'), '/api/v1/positions/BTCUSDT/snapshots?mode=one-way');
  t.match(s1.body, {
    asset: 'BTCUSDT',
    size: '1',
    unrealized_pnl: '150',
    trigger: 'manual',
    snapshot_data: { asset: 'BTCUSDT', size: '1' },
  });
  const s2 = await post('/api/v1/positions/BTCUSDT/snapshot');
  const list = await get('/api/v1/positions/BTCUSDT/snapshots');
  t.match(list.body, { count: 2, total: 2, limit: 100, offset: 0 });
  t.same(
    list.body.snapshots.map((s: any) => s.id),
    [s2.body.id, s1.body.id],
    'newest first',
  );
  t.equal((await get('/api/v1/positions/NOPEUSDT/snapshots')).status, 404);
  t.equal((await post('/api/v1/positions/NOPEUSDT/snapshot')).status, 404);
});

t.test(
  'TC-011 cache: hits inside the TTL, dropped by a change made through another instance, recomputed after the TTL',
  async (t) => {
    const other = await startService(t, { databaseUrl: db.url, env: { POSITION_MANAGER_ROLES: 'api' } });
    await waitFor(() => svc.logs.some((l) => l.msg === 'listening for notifications'), { what: 'cache listener' });
    // A notification of earlier work (a snapshot, a job) may still arrive and drop the entry between
    // two reads; with nothing arriving between them, the second must be the first's computation.
    const a = await waitFor(
      async () => {
        const first = await get('/api/v1/portfolio');
        const second = await get('/api/v1/portfolio');
        return second.body.calculated_at === first.body.calculated_at && first;
      },
      { what: 'two reads served by one computation (a cache hit)' },
    );
    t.ok(a, 'served from cache');
    // A change through the other instance: its snapshot does not change metrics, a validation fix does.
    await writePositionsDirectly(db, "update positions set size = 7 where asset = 'SOLUSDT'");
    const fix = await other.request('POST', '/api/v1/positions/SOLUSDT/validate');
    t.equal(fix.body.is_valid, false);
    const c = await waitFor(
      async () => {
        const r = await get('/api/v1/portfolio');
        return r.body.calculated_at !== a.body.calculated_at && r;
      },
      { what: 'cache dropped by NOTIFY', timeoutMs: 2000 },
    );
    t.equal(c.body.by_asset.SOLUSDT.size, '100', 'the new figures');
    const d = await get('/api/v1/portfolio');
    t.equal(d.body.calculated_at, c.body.calculated_at, 'cached again');
    const e = await waitFor(
      async () => {
        const r = await get('/api/v1/portfolio');
        return r.body.calculated_at !== d.body.calculated_at && r;
      },
      { what: 'recomputed after the TTL', timeoutMs: 5000 },
    );
    t.ok(e, 'recomputed after the TTL');
    const m = await get('/metrics', null);
    t.match(m.body, /position_manager_metrics_cache_requests_total\{result="hit"[^}]*\} [1-9]/);
    t.match(
      m.body,
      /position_manager_http_request_duration_seconds_bucket\{.*route="\/api\/v1\/portfolio".*status="200"/,
    );
    t.match(m.body, /position_manager_positions_open\{mode="one-way"[^}]*\} 3/);
  },
);

t.test('TC-027 database unreachable: 503 problem, /health unhealthy, no hang; back after', async (t) => {
  const proxy = await tcpProxy(t);
  const cut = await startService(t, { databaseUrl: proxy.url(db.url), env: { POSITION_MANAGER_ROLES: 'api' } });
  t.equal((await cut.request('GET', '/api/v1/positions')).status, 200);
  proxy.cut();
  const started = Date.now();
  const r = await cut.request('GET', '/api/v1/positions');
  t.equal(r.status, 503);
  t.match(r.body, { code: 'database_unavailable', status: 503 });
  t.equal(r.headers.get('retry-after'), '5');
  t.ok(Date.now() - started < 10_000, 'bounded');
  const h = await cut.request('GET', '/health', { key: null });
  t.equal(h.status, 503);
  t.match(h.body, { status: 'unhealthy', database_connected: false, positions_count: null });
  await waitFor(() => cut.logs.some((l) => l.level === 'error' && l.msg === 'database unavailable'), {
    what: 'the error logged',
  });
  await waitFor(() => cut.logs.some((l) => l.msg === 'notification listener disconnected'), {
    what: 'the LISTEN connection noticed the loss',
  });
  proxy.restore();
  await waitFor(async () => (await cut.request('GET', '/health', { key: null })).status === 200, {
    what: 'healthy again',
  });
  t.equal((await cut.request('GET', '/api/v1/positions')).status, 200);
  // pg-listen reconnects by itself (infinite retry), and the cache is trusted again only then.
  await waitFor(() => cut.logs.filter((l) => l.msg === 'listening for notifications').length >= 2, {
    what: 'the LISTEN connection back',
    timeoutMs: 30_000,
  });
  const before = await cut.request('GET', '/api/v1/portfolio');
  await db.query(
    `select apply_order_fill('{"execution_id":"after-reconnect","asset":"RCNUSDT","side":"Buy","execution_quantity":"1","execution_price":"10"}')`,
  );
  await waitFor(
    async () => (await cut.request('GET', '/api/v1/portfolio')).body.calculated_at !== before.body.calculated_at,
    { what: 'a change after the reconnection drops the cache', timeoutMs: 5_000 },
  );
});

t.test('without response validation a cache hit sends the text serialized once, same JSON', async (t) => {
  const prod = await startService(t, {
    databaseUrl: db.url,
    env: { POSITION_MANAGER_ROLES: 'api', NODE_ENV: 'production' },
  });
  await waitFor(() => prod.logs.some((l) => l.msg === 'listening for notifications'), { what: 'cache listener' });
  const a = await prod.request('GET', '/api/v1/portfolio/exposure');
  const b = await prod.request('GET', '/api/v1/portfolio/exposure');
  t.equal(b.status, 200);
  t.match(b.headers.get('content-type'), /^application\/json/);
  t.same(b.body, a.body, 'the same document, served from the cache');
  const checked = (await get('/api/v1/portfolio/exposure')).body; // from the instance that validates responses
  t.same(
    { ...b.body, calculated_at: null },
    { ...checked, calculated_at: null },
    'the same figures as the validated instance',
  );
});

t.test(
  'convention 2 over REST: without mode, the list covers both modes and a lookup finds a hedge-only asset',
  async (t) => {
    await fill('HDGUSDT', 'Buy', '1', '10', { mode: 'hedge' });
    await fill('HDGUSDT', 'Sell', '2', '11', { mode: 'hedge' });
    const rest = (await get('/api/v1/positions')).body.positions.map((p: any) => `${p.asset}/${p.mode}`);
    t.ok(rest.includes('HDGUSDT/hedge'), 'the hedge row is listed');
    const psql = (await db.query('select list_positions() as l')).rows[0].l.positions.map(
      (p: any) => `${p.asset}/${p.mode}`,
    );
    t.same(rest, psql, 'REST and psql return the same rows');
    const one = await get('/api/v1/positions/HDGUSDT');
    t.equal(one.status, 200, 'not 404 for an asset held in hedge mode');
    t.match(one.body, { asset: 'HDGUSDT', mode: 'hedge', long_size: '1', short_size: '2', size: '-1' });
    t.same(one.body, (await db.query("select get_position('HDGUSDT') as j")).rows[0].j, 'the same object as psql');
    t.equal((await get('/api/v1/positions/HDGUSDT?mode=one-way')).status, 404, 'a mode given is a mode');
    const v = await post('/api/v1/positions/HDGUSDT/validate');
    t.match(v, { status: 200, body: { is_valid: true } });
    const s = await post('/api/v1/positions/HDGUSDT/snapshot');
    t.equal(s.status, 201);
    t.equal(s.headers.get('location'), '/api/v1/positions/HDGUSDT/snapshots?mode=hedge');
    t.equal((await get('/api/v1/positions/HDGUSDT/snapshots')).body.total, 1);
  },
);
