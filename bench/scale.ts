// Aggregation cost against the number of positions (SPEC.md §11 "Aggregation cost").
//
//   node --import=./node_modules/@tapjs/typescript/dist/esm/import.mjs bench/scale.ts
//        [--max 100000] [--fills-per-position 10] [--runs 5] [--snapshot-runs 1] [--explain true]
//        [--timeout 300]
//
// For 1k, 10k and 100k positions (up to --max), each in a fresh database copied from the
// migrated template: positions are inserted with one set-based INSERT (one-way, one asset
// each 'P<i>USDT', 90 % open, half long and half short, 10 % closed), plus
// --fills-per-position ledger rows each (fills that sum to the size, so the ledger agrees with
// the row; 10 per position = 1M fills at 100k). Then, median of --runs runs after a warm-up:
//   select portfolio_metrics()
//   select * from portfolio_metrics_view          (reference: the totals without by_asset JSON)
//   select count(*) from positions_view
//   select validate_position('P1USDT', 'one-way', false)
// and, median of --snapshot-runs runs without a warm-up (each committed, as the scheduled job
// does, so each run writes a snapshot and an event per position):
//   select snapshot_all_positions()
// and apply_mark_prices with a ticker answer for every open position (median of --runs),
// printing the time per size and the growth factor per 10× positions (linear = 10). Every
// statement runs under statement_timeout = --timeout seconds; a timeout prints "> timeout".
import { writePositionsDirectly } from '../test/helpers/db.js';
import { args, benchDatabase, int, median, ms, now, ratio, runBench, table, type Teardown } from './lib.js';

const opt = args({ max: 100_000, 'fills-per-position': 10, runs: 5, 'snapshot-runs': 1, explain: true, timeout: 300 });
const TIMEOUT_MS = Number(opt.timeout) * 1000;
const SIZES = [1_000, 10_000, 100_000, 1_000_000].filter((s) => s <= Number(opt.max));
const FPP = Number(opt['fills-per-position']);
const RUNS = Number(opt.runs);
const SNAP_RUNS = Number(opt['snapshot-runs']);

const MARK_ALL = `select apply_mark_prices(jsonb_build_object('retCode', 0, 'time', (extract(epoch from clock_timestamp()) * 1000)::bigint,
  'result', jsonb_build_object('list', (select jsonb_agg(jsonb_build_object('symbol', asset,
    'markPrice', round(current_price * (1 + (random()::numeric - 0.5) / 100), 4)::text)) from positions where gross_size > 0))))`;

const QUERIES: { name: string; sql: string; runs: () => number; warmUp?: false }[] = [
  { name: 'portfolio_metrics()', sql: 'select portfolio_metrics()', runs: () => RUNS },
  // the same totals without the per-asset JSON (how much of portfolio_metrics() is aggregation)
  { name: '(ref) select * from portfolio_metrics_view', sql: 'select * from portfolio_metrics_view', runs: () => RUNS },
  { name: 'count(*) from positions_view', sql: 'select count(*) from positions_view', runs: () => RUNS },
  {
    name: "validate_position(asset, 'one-way', false)",
    sql: "select validate_position('P1USDT', 'one-way', false)",
    runs: () => RUNS,
  },
  { name: 'snapshot_all_positions()', sql: 'select snapshot_all_positions()', runs: () => SNAP_RUNS, warmUp: false },
  // R-31: one ticker answer naming every open position's symbol with a moved price (each run a
  // newer time and other prices, so every open position gets a version and an event)
  { name: 'apply_mark_prices(answer for all)', sql: MARK_ALL, runs: () => RUNS },
];

async function populate(pool: import('pg').Pool, n: number): Promise<{ insertSeconds: number; fillsSeconds: number }> {
  const t0 = now();
  // i = 0..n-1; 10 % closed (i % 10 = 9); long when i is even; size k × 0.01 with k = 1..300
  // (a direct write: only inside the window of R-32, else the guard trigger ignores it)
  await writePositionsDirectly(
    pool,
    `insert into positions (asset, mode, size, average_entry_price, average_entry_price_source, current_price, current_price_at,
                            unrealized_pnl, realized_pnl, total_fees, opened_at, closed_at, created_at, last_updated, version)
     select 'P' || i || 'USDT', 'one-way', s.size, s.avg, 'fills', s.cur, now(),
            case when s.size = 0 then 0 else (s.cur - s.avg) * s.size end,
            round((i % 17 - 8) * 1.25, 2), round(abs(s.qty) * s.avg * 0.00055 * $2, 8),
            case when s.size = 0 then null else now() - make_interval(mins => i % 10000) end,
            case when s.size = 0 then now() - make_interval(mins => i % 100) end,
            now() - make_interval(days => 1), now() - make_interval(mins => i % 100), 1
       from generate_series(0, $1::int - 1) i
      cross join lateral (
        select (1 + i % 300) * 0.01 * case when i % 2 = 0 then 1 else -1 end as qty,
               round(1 + (i * 7919) % 50000 / 10.0, 1) as avg,
               round((1 + (i * 7919) % 50000 / 10.0) * (1 + ((i % 21) - 10) / 1000.0), 4) as cur) q
      cross join lateral (select case when i % 10 = 9 then 0 else q.qty end as size, q.avg, q.cur, q.qty) s`,
    [n, Math.max(FPP, 1)],
  );
  const insertSeconds = (now() - t0) / 1000;
  const t1 = now();
  if (FPP > 0) {
    // open: FPP fills of size/FPP in the position's direction; closed: FPP/2 opening, FPP/2 closing
    await pool.query(
      `insert into position_fills (position_id, asset, mode, kind, leg, side, quantity, price, fee, execution_id, executed_at, applied_at, message_key)
       select p.id, p.asset, p.mode, 'fill', 'net',
              case when p.size <> 0 then case when p.size > 0 then 'Buy' else 'Sell' end
                   when k <= $1::int / 2 or $1::int = 1 then 'Buy' else 'Sell' end,
              case when p.size <> 0 then abs(p.size) / $1::int else 0.01 end,
              p.average_entry_price, 0, p.asset || '-' || k, now() - make_interval(mins => $1::int - k), now(), p.asset || '-' || k
         from positions p cross join generate_series(1, $1::int) k`,
      [FPP],
    );
    await pool.query('analyze');
  }
  const fillsSeconds = (now() - t1) / 1000;
  await pool.query('vacuum analyze positions');
  return { insertSeconds, fillsSeconds };
}

/**
 * Median of `runs` runs, after one warm-up run unless warmUp is false. A warm-up slower than
 * 30 s counts as the only run; a run hitting --timeout (statement_timeout) is reported as
 * Infinity ("> timeout").
 */
async function timeQuery(
  pool: import('pg').Pool,
  sql: string,
  runs: number,
  warmUp = true,
): Promise<{ median: number; all: number[]; note?: string }> {
  const c = await pool.connect();
  const timed = async () => {
    const t0 = now();
    try {
      await c.query(sql);
    } catch (err) {
      if ((err as { code?: string }).code === '57014') return Infinity;
      throw err;
    }
    return now() - t0;
  };
  try {
    await c.query(`set statement_timeout = ${TIMEOUT_MS}`);
    if (warmUp) {
      const warm = await timed();
      if (!Number.isFinite(warm) || warm > 30_000) return { median: warm, all: [warm], note: 'single run (slow)' };
    }
    const all: number[] = [];
    for (let i = 0; i < runs; i++) all.push(await timed());
    return { median: median(all), all };
  } finally {
    await c.query('reset statement_timeout').catch(() => undefined);
    c.release();
  }
}

async function explainMain(pool: import('pg').Pool): Promise<string> {
  // portfolio_metrics()'s main query with asset = null, as the function runs it
  const r = await pool.query<{ 'QUERY PLAN': string }>(
    `explain (analyze, buffers, costs off)
     select jsonb_build_object(
              'total_exposure_usdt', dec_out(coalesce(sum(t.exposure_usdt), 0)),
              'by_asset', coalesce(jsonb_object_agg(t.asset, jsonb_build_object(
                  'exposure_usdt', dec_out(t.exposure_usdt), 'net_exposure_usdt', dec_out(t.net_exposure_usdt),
                  'unrealized_pnl_usdt', dec_out(t.unrealized_pnl_usdt), 'realized_pnl_usdt', dec_out(t.realized_pnl_usdt),
                  'total_pnl_usdt', dec_out(t.unrealized_pnl_usdt + t.realized_pnl_usdt), 'size', dec_out(t.size),
                  'open_positions_count', t.open_positions_count)) filter (where t.asset is not null), '{}'))
       from portfolio_asset_totals_view t`,
  );
  return r.rows.map((x) => x['QUERY PLAN']).join('\n');
}

const fmt = (x: number) => (x === Infinity ? `> ${int(TIMEOUT_MS)} (timeout)` : ms(x));

runBench(async (t: Teardown) => {
  const table1: Record<string, Record<number, number>> = {};
  const load: Record<number, string> = {};
  let plan = '';
  for (const n of SIZES) {
    const db = await benchDatabase(t, 'pm_bench_scale', 2);
    const { insertSeconds, fillsSeconds } = await populate(db.pool, n);
    const fills = Number((await db.pool.query<{ n: string }>('select count(*) as n from position_fills')).rows[0]!.n);
    load[n] = `insert ${insertSeconds.toFixed(2)} s, ${int(fills)} fills ${fillsSeconds.toFixed(2)} s`;
    console.log(`# ${int(n)} positions (${load[n]})`);
    const check = await db.pool.query<{ r: { is_valid: boolean } }>(
      "select validate_position('P1USDT', 'one-way', false) as r",
    );
    if (FPP > 0 && !check.rows[0]!.r.is_valid)
      console.log(`  note: validate_position reports a discrepancy: ${JSON.stringify(check.rows[0]!.r)}`);
    for (const q of QUERIES) {
      const r = await timeQuery(db.pool, q.sql, q.runs(), q.warmUp ?? true);
      (table1[q.name] ??= {})[n] = r.median;
      console.log(
        `  ${q.name}: median ${fmt(r.median)} ms (runs: ${r.all.map(fmt).join(', ')}${r.note ? `; ${r.note}` : ''})`,
      );
    }
    if (opt.explain === 'true' && n === SIZES[SIZES.length - 1]) plan = await explainMain(db.pool);
    await t.run(); // drop this size's database before the next one
  }

  console.log();
  table([
    ['query', ...SIZES.map((s) => `${int(s)} (ms)`), ...SIZES.slice(1).map((s, i) => `×${int(SIZES[i]!)}→${int(s)}`)],
    ...Object.keys(table1).map((name) => [
      name,
      ...SIZES.map((s) => fmt(table1[name]![s]!)),
      ...SIZES.slice(1).map((s, i) => ratio(table1[name]![s]! / table1[name]![SIZES[i]!]!)),
    ]),
  ]);
  const big = SIZES[SIZES.length - 1]!;
  if (big >= 100_000) {
    const pm = table1['portfolio_metrics()']![100_000]!;
    const snap = table1['snapshot_all_positions()']![100_000]!;
    console.log();
    console.log(
      `target portfolio_metrics() ≤ 50 ms at 100k: ${pm <= 50 ? 'met' : `missed (${ms(pm)} ms, ${ratio(pm / 50)} × target)`}`,
    );
    console.log(
      `target snapshot_all_positions() ≤ 2 s at 100k: ${snap <= 2000 ? 'met' : `missed (${fmt(snap)} ms, ${ratio(snap / 2000)} × target)`}`,
    );
  }
  if (plan) {
    console.log();
    console.log(`EXPLAIN (ANALYZE, BUFFERS) of portfolio_metrics' main query at ${int(big)} positions:`);
    console.log(plan);
  }
  console.log('RESULT ' + JSON.stringify({ bench: 'scale', sizes: SIZES, medians: table1, load }));
});
