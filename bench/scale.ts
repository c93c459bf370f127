// Aggregation cost against the number of positions (SPEC.md §11 "Aggregation cost").
//
//   node --import=./node_modules/@tapjs/typescript/dist/esm/import.mjs bench/scale.ts
//        [--max 100000] [--fills-per-position 10] [--runs 5] [--snapshot-runs 1] [--explain true]
//        [--timeout 300] [--realistic 1500] [--chunk-size 500] [--outbox 0] [--outbox-rounds 3]
//
// For 1k, 10k and 100k positions (up to --max), each in a fresh database copied from the
// migrated template: positions are inserted with one set-based INSERT (one-way, one asset
// each 'P<i>USDT', 90 % open, half long and half short, 10 % closed), plus
// --fills-per-position ledger rows each (fills that sum to the size, so the ledger agrees with
// the row; 10 per position = 1M fills at 100k), and the maintained totals' deltas folded as the
// portfolio job folds them after every change window. Then, median of --runs runs after a warm-up:
//   select portfolio_metrics()
//   select * from portfolio_metrics_view          (reference: the totals without by_asset JSON)
//   select count(*) from positions_view
//   select validate_position('P1USDT', 'one-way', false)
// and, median of --snapshot-runs rounds without a warm-up (each committed, as the scheduled job
// does, so each run writes a snapshot and an event per due position), each round in this order:
//   select snapshot_all_positions()                             (psql: the run in one transaction)
//   call snapshot_all_positions_chunked(chunk_size => --chunk-size)   (the job: a commit per chunk)
//   the baseline of SPEC §11: the same snapshot rows, outbox events (with their pending rows) and
//   last_snapshot_at updates, copied from the round's first run and bulk-written in one
//   transaction (one INSERT ... SELECT per table, one UPDATE)
// and apply_mark_prices with a ticker answer for every open position (median of --runs),
// printing the time per size and the growth factor per 10× positions (linear = 10). Every
// statement runs under statement_timeout = --timeout seconds; a timeout prints "> timeout".
//
// Then the realistic universe (SPEC §11): --realistic assets, each held in both modes (one-way and
// hedge: (asset, mode) is unique, so 1,000 assets hold at most 2,000 positions and the 3,000 of
// the target need 1,500), 90 % open: portfolio_metrics(), snapshot_all_positions(), the chunked
// run and apply_mark_prices for all, median of --runs, against the targets 10 / 300 / 50 ms.
//
// With --outbox N (0: skipped), the outbox's storage on a scratch database: N snapshot events
// (the realistic universe's, repeated) inserted into outbox_events with pglz and with lz4
// compression of payload, and with and without the unique index on event_id, --outbox-rounds
// rounds alternating the variants: insert time, bytes per event, and reading them back.
import { writePositionsDirectly } from '../test/helpers/db.js';
import { CpuProbe, processById } from './cpu.js';
import { args, benchDatabase, int, median, ms, now, ratio, runBench, table, type Teardown } from './lib.js';

const opt = args({
  max: 100_000,
  'fills-per-position': 10,
  runs: 5,
  'snapshot-runs': 1,
  explain: true,
  timeout: 300,
  realistic: 1500,
  'chunk-size': 500,
  outbox: 0,
  'outbox-rounds': 3,
});
const TIMEOUT_MS = Number(opt.timeout) * 1000;
const SIZES = [1_000, 10_000, 100_000, 1_000_000].filter((s) => s <= Number(opt.max));
const FPP = Number(opt['fills-per-position']);
const RUNS = Number(opt.runs);
const SNAP_RUNS = Number(opt['snapshot-runs']);
const CHUNK = Number(opt['chunk-size']);

// one ticker per symbol, as Bybit answers (an asset held in both modes is named once)
const MARK_ALL = `select apply_mark_prices(jsonb_build_object('retCode', 0, 'time', (extract(epoch from clock_timestamp()) * 1000)::bigint,
  'result', jsonb_build_object('list', (select jsonb_agg(jsonb_build_object('symbol', asset,
    'markPrice', round(current_price * (1 + (random()::numeric - 0.5) / 100), 4)::text))
    from (select distinct on (asset) asset, current_price from positions where gross_size > 0 order by asset, mode) t))))`;

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
  // as the portfolio job does after every change window: fold the maintained totals' deltas
  await pool.query('select _portfolio_compact()');
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

/**
 * One statement on a client of its own under --timeout: its wall time (Infinity when it timed
 * out) and the CPU time of its backend (bench/cpu.ts), which other work on the machine inflates
 * far less than the wall time.
 */
async function timeOnce(
  pool: import('pg').Pool,
  sql: string,
  params: unknown[] = [],
): Promise<{ wall: number; cpu: number }> {
  const c = await pool.connect();
  try {
    await c.query(`set statement_timeout = ${TIMEOUT_MS}`);
    const pid = (await c.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
    const probe = new CpuProbe([processById('backend', pid)], 60_000).start();
    const t0 = now();
    try {
      await c.query(sql, params);
    } catch (err) {
      if ((err as { code?: string }).code === '57014') return { wall: Infinity, cpu: Infinity };
      throw err;
    }
    const wall = now() - t0;
    return { wall, cpu: probe.stop().groups[0]!.ms };
  } finally {
    await c.query('reset statement_timeout').catch(() => undefined);
    c.release();
  }
}

const SNAPSHOT_COLUMNS = `position_id, asset, mode, size, long_size, short_size, average_entry_price, current_price,
  unrealized_pnl, realized_pnl, total_fees, unrealized_pnl_pct, time_held_minutes, position_size_norm, snapshot_data`;

// The writes of one snapshot run, kept aside (outside any timing) to be written again in bulk.
// The JSON is kept uncompressed (storage plain), so that writing it compresses it as the run's
// own writes do; a compressed datum would be copied as it is.
async function keepRunWrites(pool: import('pg').Pool, traceId: string): Promise<void> {
  await pool.query(`drop table if exists bench_snap, bench_ev;
    create table bench_snap as select ${SNAPSHOT_COLUMNS}, trigger from position_snapshots where false;
    alter table bench_snap alter column snapshot_data set storage plain;
    create table bench_ev (routing_key text, event_type text, payload jsonb);
    alter table bench_ev alter column payload set storage plain`);
  // (x || '{}' is x decompressed: a stored value read back is passed on compressed)
  await pool.query(
    `insert into bench_snap select ${SNAPSHOT_COLUMNS.replace('snapshot_data', "snapshot_data || '{}'")}, trigger
       from position_snapshots where trace_id = $1 order by asset, mode`,
    [traceId],
  );
  await pool.query(
    `insert into bench_ev select routing_key, event_type, payload || '{}' from outbox_events where trace_id = $1 order by id`,
    [traceId],
  );
  await pool.query('analyze bench_snap, bench_ev');
}

// SPEC §11's baseline: the same snapshot rows, outbox events (with their pending rows, as the
// outbox writer adds them) and last_snapshot_at updates, written in bulk in one transaction.
const BULK_WRITE = `begin;
  select own_positions_write(true);
  insert into position_snapshots (${SNAPSHOT_COLUMNS}, snapshot_timestamp, created_at, trigger, trace_id)
  select ${SNAPSHOT_COLUMNS}, now(), now(), trigger, 'bulk' from bench_snap;
  with e as (insert into outbox_events (routing_key, event_type, payload, trace_id)
             select routing_key, event_type, payload, 'bulk' from bench_ev
             returning id, coalesce(payload ->> 'position_id', routing_key) as order_key)
  insert into outbox_pending (id, order_key) select id, order_key from e;
  update positions p set last_snapshot_at = now() from bench_snap s where p.id = s.position_id;
  commit`;

const SNAP_PSQL = 'snapshot_all_positions()';
const SNAP_JOB = `call snapshot_all_positions_chunked(chunk_size => ${CHUNK}) (the job)`;
const SNAP_BULK = '(baseline) bulk write of the same rows';

/**
 * --snapshot-runs rounds of: the psql run, the job's chunked run, the bulk write of the first's
 * rows; wall and backend CPU times of each.
 */
async function snapshotRounds(
  pool: import('pg').Pool,
  rounds: number,
): Promise<Record<string, { wall: number; cpu: number }[]>> {
  const out: Record<string, { wall: number; cpu: number }[]> = { [SNAP_PSQL]: [], [SNAP_JOB]: [], [SNAP_BULK]: [] };
  // the steady state of the hourly job: closed positions already snapshotted are not due, so
  // every run of a round snapshots the same open positions
  await writePositionsDirectly(pool, 'update positions set last_snapshot_at = now() where gross_size = 0');
  for (let i = 0; i < rounds; i++) {
    const trace = `bench-${i}`;
    out[SNAP_PSQL]!.push(await timeOnce(pool, 'select snapshot_all_positions($1)', [trace]));
    out[SNAP_JOB]!.push(
      await timeOnce(pool, 'call snapshot_all_positions_chunked(trace_id => $1, chunk_size => $2, result => null)', [
        `${trace}-job`,
        CHUNK,
      ]),
    );
    await keepRunWrites(pool, trace);
    out[SNAP_BULK]!.push(await timeOnce(pool, BULK_WRITE));
  }
  return out;
}

// Both modes of every asset (SPEC §11's realistic universe): a one-way row, long for even i and
// short for odd, and a hedge row with both legs open (the short half the long); every tenth
// asset's rows closed.
async function populateRealistic(pool: import('pg').Pool, assets: number): Promise<void> {
  await writePositionsDirectly(
    pool,
    `insert into positions (asset, mode, size, long_size, short_size, long_avg_price, short_avg_price,
                            long_unrealized_pnl, short_unrealized_pnl, long_realized_pnl, short_realized_pnl,
                            average_entry_price, average_entry_price_source, current_price, current_price_at,
                            unrealized_pnl, realized_pnl, total_fees, opened_at, closed_at, created_at, last_updated, version)
     select 'R' || i || 'USDT', m.mode, l.size, l.long_size, l.short_size, l.long_avg, l.short_avg, l.long_upnl, l.short_upnl,
            l.long_rpnl, l.short_rpnl, l.avg, 'fills', q.cur, now(), coalesce(l.long_upnl + l.short_upnl, l.upnl),
            q.rpnl, round(q.qty * q.avg * 0.00055, 8),
            case when q.open then now() - make_interval(mins => i % 10000) end,
            case when not q.open then now() - make_interval(mins => i % 100) end,
            now() - make_interval(days => 1), now() - make_interval(mins => i % 100), 1
       from generate_series(0, $1::int - 1) i
      cross join (values ('one-way'), ('hedge')) m(mode)
      cross join lateral (
        select i % 10 <> 9 as open, (1 + i % 300) * 0.01 as qty, round(1 + (i * 7919) % 50000 / 10.0, 1) as avg,
               round((1 + (i * 7919) % 50000 / 10.0) * (1 + ((i % 21) - 10) / 1000.0), 4) as cur,
               round((i % 17 - 8) * 1.25, 2) as rpnl) q
      cross join lateral (
        select case when m.mode = 'hedge' then (case when q.open then q.qty / 2 else 0 end)
                    when q.open then q.qty * case when i % 2 = 0 then 1 else -1 end else 0 end as size,
               case when m.mode = 'hedge' then case when q.open then q.qty else 0 end end as long_size,
               case when m.mode = 'hedge' then case when q.open then q.qty / 2 else 0 end end as short_size,
               case when m.mode = 'hedge' and q.open then q.avg end as long_avg,
               case when m.mode = 'hedge' and q.open then round(q.avg * 1.01, 4) end as short_avg,
               case when m.mode = 'hedge' then case when q.open then (q.cur - q.avg) * q.qty else 0 end end as long_upnl,
               case when m.mode = 'hedge' then case when q.open then (round(q.avg * 1.01, 4) - q.cur) * q.qty / 2 else 0 end end
                 as short_upnl,
               case when m.mode = 'hedge' then q.rpnl end as long_rpnl,
               case when m.mode = 'hedge' then 0 end as short_rpnl,
               case when m.mode = 'one-way' or q.open then q.avg end as avg,
               case when q.open then (q.cur - q.avg) * q.qty * case when i % 2 = 0 then 1 else -1 end else 0 end as upnl) l`,
    [assets],
  );
  await pool.query('vacuum analyze positions');
  await pool.query('select _portfolio_compact()');
}

async function realisticUniverse(t: Teardown): Promise<Record<string, number>> {
  const assets = Number(opt.realistic);
  const db = await benchDatabase(t, 'pm_bench_realistic', 2);
  await populateRealistic(db.pool, assets);
  const counts = (
    await db.pool.query<{ n: string; open: string }>(
      'select count(*) as n, count(*) filter (where gross_size > 0) as open from positions',
    )
  ).rows[0]!;
  console.log();
  console.log(
    `# realistic universe: ${int(Number(counts.n))} positions (${int(Number(counts.open))} open) over ${int(assets)} assets`,
  );
  await writePositionsDirectly(db.pool, 'update positions set last_snapshot_at = now() where gross_size = 0');
  const cases: [string, string, number][] = [
    ['portfolio_metrics()', 'select portfolio_metrics()', 10],
    [SNAP_PSQL, 'select snapshot_all_positions()', 300],
    [SNAP_JOB, `call snapshot_all_positions_chunked(chunk_size => ${CHUNK})`, 300],
    ['apply_mark_prices(answer for all)', MARK_ALL, 50],
  ];
  const medians: Record<string, number> = {};
  for (const [name, sql, target] of cases) {
    await timeOnce(db.pool, sql); // warm-up
    const all: { wall: number; cpu: number }[] = [];
    for (let i = 0; i < RUNS; i++) all.push(await timeOnce(db.pool, sql));
    const wall = median(all.map((x) => x.wall));
    const cpu = median(all.map((x) => x.cpu));
    medians[name] = wall;
    medians[`${name} backend CPU`] = cpu;
    console.log(
      `  ${name}: median ${fmt(wall)} ms, backend CPU ${fmt(cpu)} ms (runs: ${all.map((x) => fmt(x.wall)).join(', ')}); ` +
        `target ≤ ${target} ms: ${wall <= target ? 'met' : `missed (${ratio(wall / target)} × target`}` +
        (wall <= target ? '' : cpu <= target ? ', met by the CPU time)' : `, CPU ${ratio(cpu / target)} ×)`),
    );
  }
  await t.run();
  return medians;
}

// The outbox's storage (issue 21): N snapshot events written as the outbox writer writes them
// (_enqueue_events, 500 a call), into an emptied outbox each time, for each variant in turn,
// --outbox-rounds rounds. Reading them back is what the relay does with each pending window.
async function outboxStorage(t: Teardown): Promise<Record<string, Record<string, number>>> {
  const n = Number(opt.outbox);
  const db = await benchDatabase(t, 'pm_bench_outbox', 2);
  await populateRealistic(db.pool, 1500);
  await db.pool.query('select snapshot_all_positions()');
  await db.pool.query(`create table bench_payloads (i serial, body jsonb);
    alter table bench_payloads alter column body set storage plain`);
  // the events' own bodies, without the envelope the writer adds again (x || '{}': decompressed)
  await db.pool.query(
    `insert into bench_payloads (body)
     select (e.payload - '{event_id,event_type,trace_id,timestamp}'::text[]) || '{}' from outbox_events e
      cross join generate_series(1, ceil($1::numeric / (select count(*) from outbox_events))::int) k
      order by k, e.id limit $1`,
    [n],
  );
  const sizes = (
    await db.pool.query<{ text: string; jsonb: string }>(
      `select avg(octet_length(payload::text))::int as text, avg(pg_column_size(payload || '{}'))::int as jsonb
         from outbox_events`,
    )
  ).rows[0]!;
  console.log();
  console.log(
    `# outbox storage: ${int(n)} snapshot events, ${opt['outbox-rounds']} rounds (a payload: ${sizes.text} bytes as text, ${sizes.jsonb} as jsonb)`,
  );
  const write = `do $$ declare b int; begin
      for b in 0 .. (select max(i) from bench_payloads) / 500 loop
        perform _enqueue_events('position_snapshot_created', 'bench',
                                array(select body from bench_payloads where i > b * 500 and i <= (b + 1) * 500 order by i));
      end loop; end $$`;
  const variants: [string, string, boolean][] = [
    ['pglz, event_id index', 'pglz', true],
    ['lz4, event_id index', 'lz4', true],
    ['pglz, no event_id index', 'pglz', false],
    ['lz4, no event_id index', 'lz4', false],
  ];
  const runs: Record<string, Record<string, number[]>> = {};
  for (let round = 0; round < Number(opt['outbox-rounds']); round++)
    for (const [name, compression, index] of variants) {
      await db.pool.query(`truncate outbox_events, outbox_pending, outbox_sent;
        alter table outbox_events alter column payload set compression ${compression};
        alter table outbox_events drop constraint if exists outbox_events_event_id_key;
        ${index ? 'alter table outbox_events add constraint outbox_events_event_id_key unique (event_id);' : ''}
        checkpoint`);
      const insert = await timeOnce(db.pool, write);
      await db.pool.query('vacuum analyze outbox_events');
      const read = await timeOnce(db.pool, 'select sum(octet_length(payload::text)) from outbox_events');
      const size = (
        await db.pool.query<{ total: string; heap: string; toast: string; idx: string; compressed: string }>(
          `select pg_total_relation_size('outbox_events') as total, pg_relation_size('outbox_events') as heap,
                  coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) as toast,
                  coalesce(pg_relation_size(to_regclass('outbox_events_event_id_key')), 0) as idx,
                  count(*) filter (where pg_column_compression(e.payload) is not null) as compressed
             from pg_class c, outbox_events e where c.oid = 'outbox_events'::regclass group by c.reltoastrelid`,
        )
      ).rows[0]!;
      const r = (runs[name] ??= {});
      const push = (k: string, v: number) => (r[k] ??= []).push(v);
      push('insert µs/event', (insert.wall * 1000) / n);
      push('insert CPU µs/event', (insert.cpu * 1000) / n);
      push('read CPU µs/event', (read.cpu * 1000) / n);
      push('bytes/event (table, toast, indexes)', Number(size.total) / n);
      push('heap bytes/event', Number(size.heap) / n);
      push('toast bytes/event', Number(size.toast) / n);
      push('event_id index bytes/event', Number(size.idx) / n);
      push('compressed payloads %', (100 * Number(size.compressed)) / n);
    }
  const medians = Object.fromEntries(
    Object.entries(runs).map(([name, r]) => [
      name,
      Object.fromEntries(Object.entries(r).map(([k, v]) => [k, median(v)])),
    ]),
  );
  const keys = Object.keys(Object.values(medians)[0]!);
  table([
    ['variant (medians)', ...keys],
    ...Object.entries(medians).map(([name, m]) => [name, ...keys.map((k) => m[k]!.toFixed(1))]),
  ]);
  console.log(
    `insert µs/event per round: ${JSON.stringify(Object.fromEntries(Object.entries(runs).map(([k, r]) => [k, r['insert µs/event']!.map((x) => +x.toFixed(1))])))}`,
  );
  await t.run();
  return medians;
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
  const cpuTable: Record<string, Record<number, number>> = {};
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
    for (const [name, all] of Object.entries(await snapshotRounds(db.pool, SNAP_RUNS))) {
      const wall = all.map((x) => x.wall);
      const cpu = all.map((x) => x.cpu);
      (table1[name] ??= {})[n] = median(wall);
      (cpuTable[name] ??= {})[n] = median(cpu);
      console.log(
        `  ${name}: median ${fmt(median(wall))} ms, backend CPU ${fmt(median(cpu))} ms ` +
          `(runs: ${wall.map(fmt).join(', ')}; CPU ${cpu.map(fmt).join(', ')})`,
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
  console.log();
  for (const n of SIZES) {
    const of = (t: Record<string, Record<number, number>>, name: string) => ratio(t[name]![n]! / t[SNAP_BULK]![n]!);
    const met = table1[SNAP_PSQL]![n]! <= 1.25 * table1[SNAP_BULK]![n]!;
    console.log(
      `${int(n)} positions, to the bulk write (wall; backend CPU): snapshot_all_positions() ` +
        `${of(table1, SNAP_PSQL)}; ${of(cpuTable, SNAP_PSQL)}, the job's chunked run ${of(table1, SNAP_JOB)}; ` +
        `${of(cpuTable, SNAP_JOB)}` +
        (n >= 100_000 ? ` (target ≤ 1.25: ${met ? 'met' : 'missed'})` : ''),
    );
  }
  if (big >= 100_000) {
    const totals = table1['(ref) select * from portfolio_metrics_view']![100_000]!;
    console.log(
      `target portfolio_metrics_view ≤ 50 ms at 100k: ${totals <= 50 ? 'met' : `missed (${ms(totals)} ms, ${ratio(totals / 50)} × target)`}`,
    );
  }
  const realistic = Number(opt.realistic) > 0 ? await realisticUniverse(t) : undefined;
  const outbox = Number(opt.outbox) > 0 ? await outboxStorage(t) : undefined;
  if (plan) {
    console.log();
    console.log(`EXPLAIN (ANALYZE, BUFFERS) of portfolio_metrics' main query at ${int(big)} positions:`);
    console.log(plan);
  }
  console.log(
    'RESULT ' +
      JSON.stringify({ bench: 'scale', sizes: SIZES, medians: table1, cpu: cpuTable, load, realistic, outbox }),
  );
});
