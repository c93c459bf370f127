// Portfolio figures, limits, portfolio events, snapshots, retention and the Grafana role,
// through the SQL functions and views against the real PostgreSQL (SPEC.md R-20..R-27, §9).
import t from 'tap';
import { markSent } from '../../src/db/outbox.js';
import { firstRow as one, freshDatabase, type TestDb } from '../helpers/db.js';
import { GRAFANA_VIEWS, PORTFOLIO_TOTALS } from '../helpers/ledger-names.js';

let seq = 0;
async function fill(
  db: TestDb,
  asset: string,
  side: string,
  qty: string,
  price: string,
  extra: Record<string, unknown> = {},
) {
  await db.query('select apply_order_fill($1::jsonb)', [
    JSON.stringify({
      execution_id: `pf-${++seq}`,
      asset,
      side,
      execution_quantity: qty,
      execution_price: price,
      ...extra,
    }),
  ]);
}
async function mark(db: TestDb, asset: string, side: string, size: string, extra: Record<string, unknown>) {
  await db.query('select apply_position_report($1::jsonb)', [
    JSON.stringify({
      event_type: 'position',
      event_id: `rp-${++seq}`,
      payload: { symbol: asset, side, size, ...extra },
    }),
  ]);
}
const metrics = async (db: TestDb, asset: string | null = null) =>
  (await db.query('select portfolio_metrics($1) as m', [asset])).rows[0].m;

t.test('SPEC.md §5.1 example: two positions, every metric', async (t) => {
  const db = await freshDatabase(t);
  await fill(db, 'BTCUSDT', 'Buy', '1.5', '50000');
  await mark(db, 'BTCUSDT', 'Buy', '1.5', { markPrice: '50100', unrealisedPnl: '150', realisedPnl: '50' });
  await fill(db, 'ETHUSDT', 'Sell', '10', '3000');
  await mark(db, 'ETHUSDT', 'Sell', '10', { markPrice: '2990', unrealisedPnl: '100' });
  const m = await metrics(db);
  t.match(m, {
    total_exposure_usdt: '105050',
    long_exposure_usdt: '75150',
    short_exposure_usdt: '29900',
    net_exposure_usdt: '45250',
    portfolio_value_usdt: '45250',
    total_unrealized_pnl_usdt: '250',
    total_realized_pnl_usdt: '50',
    total_pnl_usdt: '300',
    total_fees_usdt: '0',
    open_positions_count: 2,
    long_positions_count: 1,
    short_positions_count: 1,
    limits: { max_exposure_usdt: null, exposure_limit_exceeded: false },
  });
  t.same(m.by_asset, {
    BTCUSDT: {
      exposure_usdt: '75150',
      net_exposure_usdt: '75150',
      unrealized_pnl_usdt: '150',
      realized_pnl_usdt: '50',
      total_pnl_usdt: '200',
      size: '1.5',
      open_positions_count: 1,
    },
    ETHUSDT: {
      exposure_usdt: '29900',
      net_exposure_usdt: '-29900',
      unrealized_pnl_usdt: '100',
      realized_pnl_usdt: '0',
      total_pnl_usdt: '100',
      size: '-10',
      open_positions_count: 1,
    },
  });
  t.match(m.calculated_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  const p = (await one(db, "select get_position('BTCUSDT') as p")).p;
  t.equal(p.unrealized_pnl_pct, '0.2');
  t.equal(p.position_size_norm, '0.71537363');
  t.equal((await one(db, "select get_position('ethusdt') as p")).p.unrealized_pnl_pct, '0.33333333');
  const v = await one(db, 'select * from portfolio_metrics_view');
  t.equal(Number(v.total_exposure_usdt), 105050, 'the view shows the same figures');
  t.equal(v.open_positions_count, 2);
  const byAsset = (await db.query('select asset, share_of_exposure from portfolio_by_asset_view order by asset')).rows;
  t.same(
    byAsset.map((r) => r.share_of_exposure),
    ['0.7153736316', '0.2846263684'],
  );
  const only = await metrics(db, 'ethusdt');
  t.equal(only.total_exposure_usdt, '29900', 'asset filter');
  t.same(Object.keys(only.by_asset), ['ETHUSDT']);
  const none = await metrics(db, 'SOLUSDT');
  t.match(none, { total_exposure_usdt: '0', open_positions_count: 0, by_asset: {} });
  await t.rejects(db.query("select portfolio_metrics('bad asset!')"), { code: '22023', column: 'asset' });
});

// Sums decimal strings exactly, in SQL (canonical text, as the JSON writes it).
const sum = async (db: TestDb, xs: string[]) =>
  (await one(db, 'select dec_out(sum(x::numeric)) as s from unnest($1::text[]) x', [xs])).s;

t.test('R-20: every total is exactly the sum of its by_asset entries, also beyond 8 places', async (t) => {
  const db = await freshDatabase(t);
  await fill(db, 'AAAUSDT', 'Buy', '0.5', '0.00000003');
  await fill(db, 'BBBUSDT', 'Buy', '0.5', '0.00000003');
  await fill(db, 'CCCUSDT', 'Sell', '0.333', '1.23456789', { execution_fees: '0.000000015' });
  await fill(db, 'DDDUSDT', 'Buy', '0.777', '9.87654321');
  await mark(db, 'DDDUSDT', 'Buy', '0.777', { markPrice: '9.99999999', unrealisedPnl: '0.0961111122' });
  const m = await metrics(db);
  const entries = Object.values<Record<string, string>>(m.by_asset);
  t.equal(m.by_asset.AAAUSDT.exposure_usdt, '0.00000002', '0.000000015 rounds half away from zero');
  for (const [total, field] of [
    ['total_exposure_usdt', 'exposure_usdt'],
    ['net_exposure_usdt', 'net_exposure_usdt'],
    ['total_unrealized_pnl_usdt', 'unrealized_pnl_usdt'],
    ['total_realized_pnl_usdt', 'realized_pnl_usdt'],
    ['total_pnl_usdt', 'total_pnl_usdt'],
  ] as const)
    t.equal(
      m[total],
      await sum(
        db,
        entries.map((e) => e[field]!),
      ),
      `${total} = Σ by_asset.${field}`,
    );
  t.equal(
    m.net_exposure_usdt,
    await sum(db, [m.long_exposure_usdt, `-${m.short_exposure_usdt}`]),
    'net = long − short',
  );
  t.equal(
    m.total_exposure_usdt,
    await sum(db, [m.long_exposure_usdt, m.short_exposure_usdt]),
    'exposure = long + short',
  );
  const v = await one(
    db,
    'select dec_out(total_exposure_usdt) as e, dec_out(net_exposure_usdt) as n from portfolio_metrics_view',
  );
  t.equal(v.e, m.total_exposure_usdt, 'portfolio_metrics_view has the same total');
  t.equal(v.n, m.net_exposure_usdt);
});

t.test('TC-009, TC-010, TC-017..TC-019 and the empty portfolio', async (t) => {
  const db = await freshDatabase(t);
  t.match(
    await metrics(db),
    { total_exposure_usdt: '0', total_pnl_usdt: '0', open_positions_count: 0, by_asset: {} },
    'empty: zeros',
  );
  await fill(db, 'BTCUSDT', 'Buy', '1.0', '50000');
  await fill(db, 'ETHUSDT', 'Buy', '10.0', '3000');
  let m = await metrics(db);
  t.equal(m.total_exposure_usdt, '80000', 'TC-009');
  t.same([m.by_asset.BTCUSDT.exposure_usdt, m.by_asset.ETHUSDT.exposure_usdt], ['50000', '30000']);
  const norms = (await db.query('select asset, position_size_norm from positions_view order by asset')).rows;
  t.same(
    norms.map((r) => r.position_size_norm),
    ['0.6250000000', '0.3750000000'],
    'TC-009 norms (stored at 10 places)',
  );
  await mark(db, 'BTCUSDT', 'Buy', '1.0', { unrealisedPnl: '150.00' });
  await mark(db, 'ETHUSDT', 'Buy', '10.0', { unrealisedPnl: '-50.00' });
  m = await metrics(db);
  t.equal(m.total_unrealized_pnl_usdt, '100', 'TC-010');
  await mark(db, 'BTCUSDT', 'Buy', '1.0', { markPrice: '51500', unrealisedPnl: '1500' });
  t.equal((await one(db, "select get_position('BTCUSDT') as p")).p.unrealized_pnl_pct, '3', 'TC-017');

  const db2 = await freshDatabase(t);
  await fill(db2, 'BTCUSDT', 'Buy', '1.0', '50000');
  await fill(db2, 'ETHUSDT', 'Buy', '20', '2500');
  t.equal((await one(db2, "select get_position('BTCUSDT') as p")).p.position_size_norm, '0.5', 'TC-018');
  await fill(db2, 'ETHUSDT', 'Sell', '20', '2500');
  await fill(db2, 'BTCUSDT', 'Buy', '1.0', '50000');
  t.equal((await one(db2, "select get_position('BTCUSDT') as p")).p.position_size_norm, '1', 'TC-019');
  t.equal((await one(db2, "select get_position('ETHUSDT') as p")).p.position_size_norm, '0', 'closed: 0');
});

t.test(
  'R-19: position_size_norm in events uses the total as the transaction sees it, kept incrementally',
  async (t) => {
    const db = await freshDatabase(t);
    await fill(db, 'ZZZUSDT', 'Buy', '4', '100');
    const c = await db.pool.connect();
    t.teardown(() => c.release());
    await c.query('begin');
    for (const [id, asset, side, qty] of [
      ['n1', 'AAAUSDT', 'Buy', '1'],
      ['n2', 'BBBUSDT', 'Buy', '3'],
      ['n3', 'AAAUSDT', 'Sell', '1'],
      ['n4', 'ZZZUSDT', 'Sell', '2'],
    ])
      await c.query('select _apply_order_fill(null, $1::jsonb)', [
        JSON.stringify({ execution_id: id, asset, side, execution_quantity: qty, execution_price: '100' }),
      ]);
    await c.query('commit');
    const norms = (
      await db.query(
        "select payload->>'asset' as a, payload->>'position_size_norm' as n from outbox where event_type = 'position_updated' order by id",
      )
    ).rows;
    t.same(
      norms.map((r) => `${r.a}:${r.n}`),
      ['ZZZUSDT:1', 'AAAUSDT:0.2', 'BBBUSDT:0.375', 'AAAUSDT:0', 'ZZZUSDT:0.4'],
      'each equals exposure / the sum over positions right after that change',
    );
  },
);

t.test('closed positions leave exposure and counts but keep realized PnL; hedge is gross and net', async (t) => {
  const db = await freshDatabase(t);
  await fill(db, 'AAAUSDT', 'Buy', '1', '100');
  await fill(db, 'AAAUSDT', 'Sell', '1', '110', { execution_fees: '1' });
  await fill(db, 'HHHUSDT', 'Buy', '2', '100', { mode: 'hedge' });
  await fill(db, 'HHHUSDT', 'Sell', '3', '100', { mode: 'hedge' });
  const m = await metrics(db);
  t.match(m, {
    total_exposure_usdt: '500',
    long_exposure_usdt: '200',
    short_exposure_usdt: '300',
    net_exposure_usdt: '-100',
    portfolio_value_usdt: '-100',
    total_realized_pnl_usdt: '9',
    total_fees_usdt: '1',
    open_positions_count: 1,
    long_positions_count: 0,
    short_positions_count: 1,
  });
  t.match(m.by_asset.AAAUSDT, { exposure_usdt: '0', realized_pnl_usdt: '9', open_positions_count: 0 });
  await fill(db, 'HHHUSDT', 'Buy', '1', '100', { mode: 'hedge' });
  const h = await metrics(db, 'HHHUSDT');
  t.match(
    h,
    {
      total_exposure_usdt: '600',
      net_exposure_usdt: '0',
      open_positions_count: 1,
      long_positions_count: 0,
      short_positions_count: 0,
    },
    'equal legs: hedged, in neither count',
  );
});

t.test('R-23 limit: one event per crossing; R-22 publication', async (t) => {
  const db = await freshDatabase(t);
  const limitEvents = async () =>
    Number((await one(db, "select count(*) as n from outbox where event_type = 'portfolio_limit_exceeded'")).n);
  await db.query('update position_manager_settings set max_exposure_usdt = 1000');
  // each call as if the last publication's window had passed (the window has its own test)
  const run = async (sql: string) => {
    await db.query('update portfolio_publish_state set last_published_at = null');
    return (await one(db, `${sql} as r`)).r;
  };
  await fill(db, 'AAAUSDT', 'Buy', '5', '100');
  await run('select publish_portfolio_update()');
  t.equal(await limitEvents(), 0, 'below: none');
  await fill(db, 'AAAUSDT', 'Buy', '6', '100');
  const r = await run('select publish_portfolio_update()');
  t.match(r.limit, { exceeded: true, transition: 'exceeded', current_value: '1100', limit_value: '1000' });
  t.equal(await limitEvents(), 1, 'below → above: one');
  t.equal((await metrics(db)).limits.exposure_limit_exceeded, true);
  await fill(db, 'AAAUSDT', 'Buy', '1', '100');
  await run('select publish_portfolio_update()');
  await run('select sample_portfolio_metrics()');
  t.equal(await limitEvents(), 1, 'staying above: none');
  await fill(db, 'AAAUSDT', 'Sell', '2', '100');
  t.match((await run('select publish_portfolio_update()')).limit, { exceeded: false, transition: 'cleared' });
  t.equal(
    (await one(db, "select exceeded from portfolio_limit_state where limit_name = 'max_exposure_usdt'")).exceeded,
    false,
  );
  await fill(db, 'AAAUSDT', 'Buy', '1', '100');
  await run('select publish_portfolio_update()');
  t.equal(await limitEvents(), 2, 'back below and above again: another');
  const ev = await one(
    db,
    "select payload from outbox where event_type = 'portfolio_limit_exceeded' order by id limit 1",
  );
  t.match(ev.payload, {
    limit_name: 'max_exposure_usdt',
    limit_value: '1000',
    current_value: '1100',
    exceeded_at: String,
  });

  const before = Number((await one(db, "select count(*) as n from outbox where event_type = 'portfolio_updated'")).n);
  const s = await run('select sample_portfolio_metrics()');
  t.equal(s.published, false, 'the sampler publishes only when the figures changed');
  await fill(db, 'AAAUSDT', 'Buy', '1', '100');
  t.equal((await run('select sample_portfolio_metrics()')).published, true, 'a lost trailing event is covered');
  const last = await one(
    db,
    "select payload from outbox where event_type = 'portfolio_updated' order by id desc limit 1",
  );
  t.equal(
    Number((await one(db, "select count(*) as n from outbox where event_type = 'portfolio_updated'")).n),
    before + 1,
  );
  const m = await metrics(db);
  for (const k of PORTFOLIO_TOTALS) t.equal(last.payload[k], m[k], `portfolio_updated.${k} equals portfolio_metrics()`);
  t.ok(Number((await one(db, 'select count(*) as n from portfolio_metrics_history')).n) >= 2, 'history rows');

  await db.query('select schedule_portfolio_update()');
  await db.query('select schedule_portfolio_update()');
  t.equal(
    Number(
      (
        await one(
          db,
          "select count(*) as n from graphile_worker.jobs where task_identifier = 'publish_portfolio_update'",
        )
      ).n,
    ),
    1,
    'a burst schedules one publication',
  );
});

t.test('R-22: at most one portfolio_updated per window, whoever asks; the limit is evaluated every time', async (t) => {
  const db = await freshDatabase(t);
  await db.query('update position_manager_settings set portfolio_event_interval_ms = 60000, max_exposure_usdt = 1000');
  const updates = async () =>
    Number((await one(db, "select count(*) as n from outbox where event_type = 'portfolio_updated'")).n);
  await fill(db, 'WINUSDT', 'Buy', '5', '100');
  t.match((await one(db, 'select publish_portfolio_update(true) as r')).r, { outcome: 'published' });
  await fill(db, 'WINUSDT', 'Buy', '6', '100');
  const second = (await one(db, 'select publish_portfolio_update(true) as r')).r;
  t.match(
    second,
    { outcome: 'deferred', published: false, limit: { transition: 'exceeded' } },
    'a second run in the window publishes nothing, the limit still counts',
  );
  t.match(
    (await one(db, 'select sample_portfolio_metrics() as r')).r,
    { outcome: 'deferred' },
    'nor does the history sampler',
  );
  t.equal(await updates(), 1);
  const job = await one(
    db,
    `select run_at, (select last_published_at from portfolio_publish_state) + interval '60 seconds' as due
                               from graphile_worker.jobs where task_identifier = 'publish_portfolio_update'`,
  );
  t.same(job.run_at, job.due, 'the trailing run is due at the end of the window');
  await db.query("update portfolio_publish_state set last_published_at = last_published_at - interval '61 seconds'");
  t.match(
    (await one(db, 'select publish_portfolio_update(true) as r')).r,
    { outcome: 'published' },
    'the trailing event',
  );
  t.match(
    (await one(db, "select payload from outbox where event_type = 'portfolio_updated' order by id desc limit 1"))
      .payload,
    { total_exposure_usdt: '1100' },
    'it reflects the last change',
  );
  await db.query("update portfolio_publish_state set last_published_at = last_published_at - interval '61 seconds'");
  t.match(
    (await one(db, 'select publish_portfolio_update(true) as r')).r,
    { outcome: 'unchanged' },
    'nothing new: nothing published',
  );
  t.equal(await updates(), 2);
});

t.test(
  'R-22: a change that leaves every figure as it was is still announced; a snapshot is not a change',
  async (t) => {
    const db = await freshDatabase(t);
    const publish = async () => {
      await db.query("update portfolio_publish_state set last_published_at = last_published_at - interval '2 seconds'"); // window over
      return (await one(db, 'select publish_portfolio_update(true) as r')).r;
    };
    await fill(db, 'SAMEUSDT', 'Buy', '1', '500');
    t.match(await publish(), { outcome: 'published' });
    await db.query("select create_position_snapshot('SAMEUSDT')");
    t.match(await publish(), { outcome: 'unchanged' }, 'a snapshot changes no position');
    // TC-008's case: the exchange's average replaces ours; exposure and PnL stay the same
    await mark(db, 'SAMEUSDT', 'Buy', '1', { avgPrice: '510' });
    t.equal(
      (await one(db, "select average_entry_price from positions where asset = 'SAMEUSDT'")).average_entry_price,
      '510',
    );
    t.match(await publish(), { outcome: 'published' }, 'the change is announced');
    t.match(await publish(), { outcome: 'unchanged' }, 'once');
  },
);

t.test('R-22: the window is measured between the stamps the events carry (now(), not the clock)', async (t) => {
  const db = await freshDatabase(t);
  await fill(db, 'STMPUSDT', 'Buy', '1', '500');
  t.match((await one(db, 'select publish_portfolio_update() as r')).r, { outcome: 'published' });
  await fill(db, 'STMPUSDT', 'Buy', '1', '500');
  const c = await db.pool.connect();
  t.teardown(() => c.release());
  await c.query('begin');
  // the window ends 5 ms after this transaction's now(); the clock is past it when it checks
  await c.query(
    "update portfolio_publish_state set last_published_at = now() - make_interval(secs => (select portfolio_event_interval_ms from position_manager_settings) / 1000.0) + interval '5 ms'",
  );
  await c.query('select pg_sleep(0.05)');
  const r = (await c.query('select publish_portfolio_update(true) as r')).rows[0].r;
  await c.query('commit');
  t.match(r, { outcome: 'deferred' }, 'an event stamped now() would be inside the window');
});

t.test('snapshots (R-26; R-27 in partitioned-history.test.ts)', async (t) => {
  const db = await freshDatabase(t);
  await fill(db, 'BTCUSDT', 'Buy', '1.0', '50000');
  await mark(db, 'BTCUSDT', 'Buy', '1.0', { unrealisedPnl: '150.00' });
  await fill(db, 'ETHUSDT', 'Buy', '1', '3000');
  await fill(db, 'ETHUSDT', 'Sell', '1', '3000');
  const version = (await one(db, "select version from positions where asset = 'BTCUSDT'")).version;
  const s = (
    await one(
      db,
      "select snapshot_json(s) as s from create_position_snapshot('btcusdt', 'one-way', 'manual', 'tr-1') s",
    )
  ).s;
  t.match(s, {
    asset: 'BTCUSDT',
    mode: 'one-way',
    size: '1',
    unrealized_pnl: '150',
    trigger: 'manual',
    trace_id: 'tr-1',
    snapshot_data: { asset: 'BTCUSDT', size: '1', unrealized_pnl_pct: '0.3', position_size_norm: '1' },
  });
  for (const k of [
    'id',
    'position_id',
    'long_size',
    'short_size',
    'average_entry_price',
    'current_price',
    'realized_pnl',
    'total_fees',
    'unrealized_pnl_pct',
    'time_held_minutes',
    'position_size_norm',
    'snapshot_timestamp',
    'created_at',
  ])
    t.ok(k in s, `snapshot has ${k}`);
  const p = await one(db, "select version, last_snapshot_at from positions where asset = 'BTCUSDT'");
  t.equal(p.version, version, 'last_snapshot_at is not a change');
  t.not(p.last_snapshot_at, null);
  const ev = await one(db, "select payload from outbox where event_type = 'position_snapshot_created'");
  t.match(ev.payload, {
    snapshot_id: s.id,
    position_id: s.position_id,
    asset: 'BTCUSDT',
    snapshot: { id: s.id, created_at: String, snapshot_data: Object },
  });
  await t.rejects(db.query("select create_position_snapshot('SOLUSDT')"), { code: 'P0002' });

  t.equal((await one(db, 'select snapshot_all_positions() as n')).n, 2, 'open BTCUSDT and the closed-since ETHUSDT');
  t.equal((await one(db, 'select snapshot_all_positions() as n')).n, 1, 'then only the open one');
  const norms = (
    await db.query(
      "select trigger, position_size_norm from position_snapshots where trigger = 'scheduled' and asset = 'BTCUSDT'",
    )
  ).rows;
  t.same(
    norms.map((r) => r.position_size_norm),
    ['1.0000000000', '1.0000000000'],
    'one total for all',
  );
  const page = (await one(db, "select list_position_snapshots('BTCUSDT', 'one-way', 2, 0) as l")).l;
  t.match(page, { count: 2, total: 3, limit: 2, offset: 0 });
  t.ok(page.snapshots[0].snapshot_timestamp >= page.snapshots[1].snapshot_timestamp, 'newest first');
  await t.rejects(db.query("select list_position_snapshots('SOLUSDT')"), { code: 'P0002' });
  await t.rejects(db.query("select list_position_snapshots('BTCUSDT', 'one-way', 0)"), {
    code: '22023',
    column: 'limit',
  });
});

t.test('create_position_snapshot returns the position_snapshots row (DESIGN.md)', async (t) => {
  const db = await freshDatabase(t);
  await fill(db, 'BTCUSDT', 'Buy', '1.0', '50000');
  const row = await one(db, "select * from create_position_snapshot('BTCUSDT')");
  t.match(row, { asset: 'BTCUSDT', mode: 'one-way', size: '1.0', average_entry_price: '50000', trigger: 'manual' });
  t.equal(Number((await one(db, 'select count(*) as n from position_snapshots')).n), 1, 'one call, one snapshot');
});

t.test('retention of inbox and outbox, job history', async (t) => {
  const db = await freshDatabase(t);
  await fill(db, 'BTCUSDT', 'Buy', '1', '100');
  await fill(db, 'BTCUSDT', 'Buy', '1', '100');
  await fill(db, 'BTCUSDT', 'Buy', '1', '100');
  await db.query(
    "update inbox set applied_at = now() - interval '8 days' where message_key = (select min(message_key) from inbox)",
  );
  // the oldest event was sent 25 hours ago, the newest just now, the one between is pending
  const ids = (await db.query<{ id: string }>('select id from outbox order by id')).rows.map((r) => r.id);
  t.equal(ids.length, 3);
  await markSent(db.pool, [ids[0]!, ids[2]!]);
  await db.query("update outbox_sent set sent_at = now() - interval '25 hours' where id = $1", [ids[0]]);
  await db.query("update outbox_events set created_at = now() - interval '26 hours' where id = $1", [ids[0]]);
  const r = (await one(db, 'select prune_inbox_outbox(7, 24, 1) as r')).r;
  // the old event's day went whole, or it was deleted from the partition of older rows (migration 21)
  t.equal(r.inbox_deleted, 1);
  t.same(
    (await db.query('select id, sent_at is null as pending from outbox order by id')).rows,
    [
      { id: ids[1], pending: true },
      { id: ids[2], pending: false },
    ],
    'recently sent and pending rows stay',
  );
  t.equal(Number((await one(db, 'select count(*) as n from outbox_events')).n), 2, 'the event row went too');
  const id = (await one(db, "select job_run_start('x', null, null, '{}', 1, 't') as id")).id;
  await db.query("select job_run_finish($1, 'failure', 'boom', null)", [id]);
  t.match(await one(db, 'select * from job_history_view'), { task: 'x', outcome: 'failure', error: 'boom' });
  await db.query("update job_runs set started_at = now() - interval '31 days'");
  t.equal((await one(db, 'select prune_job_history(30) as n')).n, 1);
});

t.test('grafana_reader reads the views and nothing else', async (t) => {
  const db = await freshDatabase(t);
  await fill(db, 'BTCUSDT', 'Buy', '1', '100');
  await db.query('select create_position_snapshot($1)', ['BTCUSDT']);
  await db.query('select sample_portfolio_metrics()');
  await db.query('select refresh_materialized_views()');
  const c = await db.pool.connect();
  t.teardown(() => c.release());
  await c.query('set role grafana_reader');
  for (const v of GRAFANA_VIEWS) {
    const r = await c.query(`select * from ${v}`);
    t.ok(r.rowCount! >= (v.startsWith('job') ? 0 : 1), `${v} is readable`);
  }
  for (const table of [
    'positions',
    'position_fills',
    'position_events',
    'position_snapshots',
    'inbox',
    'outbox',
    'outbox_events',
    'outbox_pending',
    'outbox_sent',
    'job_runs',
    'portfolio_metrics_history',
    'position_manager_settings',
  ]) {
    await t.rejects(c.query(`select 1 from ${table} limit 1`), { code: '42501' }, `cannot read ${table}`);
    // outbox is a view that takes no writes from anyone (55000); its tables are in the list
    const code = table === 'outbox' ? '55000' : '42501';
    await t.rejects(c.query(`delete from ${table}`), { code }, `cannot delete from ${table}`);
  }
  await t.rejects(
    c.query(
      `select apply_order_fill('{"asset":"BTCUSDT","side":"Buy","execution_quantity":"1","execution_price":"1"}')`,
    ),
    { code: '42501' },
    'a writing function fails for lack of rights',
  );
  await c.query('reset role');
});
