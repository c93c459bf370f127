// Reads right after a committed change (SPEC.md R-21) and the list's default mode (§2 conv. 2),
// through the real service process.
import t from 'tap';
import { ledgerFill } from '../helpers/api-ledger.js';
import { freshDatabase } from '../helpers/db.js';
import { startService } from '../helpers/service.js';

const db = await freshDatabase(t);
let seq = 0;
const fill = ledgerFill(db, () => `fr-${++seq}`);
const svc = await startService(t, {
  databaseUrl: db.url,
  env: { POSITION_MANAGER_ROLES: 'api', POSITION_MANAGER_METRICS_CACHE_TTL: '60' },
});
const get = async (path: string) => {
  const r = await svc.request('GET', path);
  if (r.status !== 200) throw new Error(`${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
};

await fill('BTCUSDT', 'Buy', '1', '100');

t.test('R-21: a cached figure is never served after a change that committed before the read', async (t) => {
  let stale = 0;
  const rounds = 150;
  for (let i = 1; i <= rounds; i++) {
    await get('/api/v1/portfolio/pnl'); // cached
    await db.query('select apply_position_report($1::jsonb)', [
      JSON.stringify({
        event_type: 'position',
        event_id: `fr-r-${i}`,
        data: { symbol: 'BTCUSDT', side: 'Buy', size: '1', unrealisedPnl: String(i) },
      }),
    ]);
    const body = await get('/api/v1/portfolio/pnl'); // the commit has returned: the change must show
    if (body.total_unrealized_pnl_usdt !== String(i)) stale++;
  }
  t.equal(stale, 0, `stale reads out of ${rounds}`);
  const hits = await svc.request('GET', '/metrics');
  t.match(
    String(hits.body),
    /position_manager_metrics_cache_requests_total\{[^}]*result="hit"[^}]*\} [1-9]/,
    'the cache still serves hits',
  );
});

t.test('R-21: a snapshot drops cached responses that embed last_snapshot_at', async (t) => {
  const before = await get('/api/v1/portfolio?include_positions=true');
  t.equal(before.positions[0].last_snapshot_at, null);
  const r = await svc.request('POST', '/api/v1/positions/BTCUSDT/snapshot');
  t.equal(r.status, 201);
  const after = await get('/api/v1/portfolio?include_positions=true');
  t.equal(after.positions[0].last_snapshot_at, r.body.created_at, 'the new snapshot time, not the cached null');
});

t.test('§2 convention 2: GET /positions without mode lists both modes; mode narrows it', async (t) => {
  await fill('ETHUSDT', 'Buy', '2', '10');
  await fill('ETHUSDT', 'Sell', '3', '11', { mode: 'hedge' });
  const pick = (b: any) => b.positions.map((p: any) => `${p.asset}/${p.mode}`);
  t.same(pick(await get('/api/v1/positions?asset=ETHUSDT')), ['ETHUSDT/hedge', 'ETHUSDT/one-way'], 'both modes');
  t.same(pick(await get('/api/v1/positions?asset=ETHUSDT&mode=HEDGE')), ['ETHUSDT/hedge']);
  t.same(pick(await get('/api/v1/positions?asset=ETHUSDT&mode=one-way')), ['ETHUSDT/one-way']);
  t.same(pick(await get('/api/v1/positions')), ['BTCUSDT/one-way', 'ETHUSDT/hedge', 'ETHUSDT/one-way']);
  t.match(
    await get('/api/v1/positions/ETHUSDT'),
    { mode: 'one-way' },
    'a single lookup: the one-way row when both are open',
  );
  t.match(
    await get('/api/v1/portfolio?asset=ETHUSDT'),
    { open_positions_count: 2 },
    'the portfolio still counts both modes (R-20)',
  );
});
