// History depth (SPEC.md §11, issue 21 part 4): what deep history in the tables costs the work
// that should not care about it.
//
//   npm run bench:history -- [--scale 1] [--rounds 5] [--positions 3000] [--batches 20] [--batch 100]
//        [--singles 50] [--timeout 600] [--ledger-rows N] [--deep-rows N] [--event-rows N] [--snapshot-rows N]
//
// Not part of `npm run bench`: at --scale 1 seeding alone takes half an hour and ~45 GB (an audit
// row with its before and after images takes ~2 KB, a snapshot ~1.1 KB); --event-rows and
// --snapshot-rows override the scaled sizes. Two databases copied
// from the migrated template, "empty" and "deep", get the same --positions one-way positions (two
// ledger rows each that sum to the row), the same DEEPUSDT position and the same few real fills
// and one real snapshot run (the templates of the seeded history). Then "deep" gets, set-based:
//   * 10 M × scale ledger rows over the positions (Sell q / Buy q pairs at the average price, so
//     size and average stay as the row says) and 1 M × scale more on DEEPUSDT, then one full
//     validation of DEEPUSDT (timed), which writes its checkpoint;
//   * 10 M × scale audit rows in position_events over the last 12 months, copies of the real
//     events with other positions and times, in monthly partitions;
//   * 20 M × scale snapshots, every 5 minutes for each snapshotted position, copies of the real
//     snapshot rows with moved prices, in daily partitions ending now.
// The seeded months and days get their partitions by _attach_history_partition (the template's
// empty legacy partition is narrowed to end where the seed starts, as on a database migrated long
// ago), never the DEFAULT partition. VACUUM ANALYZE, table sizes, and a materialized view refresh.
// Then --rounds rounds, each on empty and then on deep, every measurement medians over rounds:
//   batched fills through ingest_messages (--batches batches of --batch, as the consumer calls it),
//   single apply_order_fill (--singles of them), validate_position of DEEPUSDT after one new fill
//   (from the checkpoint), snapshot retention as the daily job runs it at 00:05 UTC (its cutoff 5
//   minutes into a day) with a retention that expires exactly one more day each round, position_as_of, and the Grafana history panels' SQL (read from
//   grafana/dashboards, the macros expanded for the last 24 hours, as count(*) over the query so
//   that the transfer of the rows is not timed). Then the fills round by round, EXPLAIN (ANALYZE,
//   BUFFERS, WAL) of three more batches on each database (where the time goes), the drop of one
//   day's partition alone, EXPLAIN ANALYZE of the partitioned history queries (partitions read
//   against the table's total) and the verdicts against the targets. Load is printed throughout.
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { ingestMessages } from '../src/db/ingest.js';
import { lockOrder } from '../src/messaging/consumer.js';
import { writePositionsDirectly } from '../test/helpers/db.js';
import { CpuProbe, processById } from './cpu.js';
import {
  args,
  asDeliveries,
  benchDatabase,
  int,
  loadAverage,
  median,
  ms,
  now,
  ratio,
  rng,
  runBench,
  table,
  type BenchDb,
  type Fill,
} from './lib.js';

const opt = args({
  scale: 1,
  rounds: 5,
  positions: 3000,
  batches: 20,
  batch: 100,
  singles: 50,
  timeout: 600,
  'ledger-rows': '',
  'deep-rows': '',
  'event-rows': '',
  'snapshot-rows': '',
});
const SCALE = Number(opt.scale);
const ROUNDS = Number(opt.rounds);
const POSITIONS = Number(opt.positions);
const BATCHES = Number(opt.batches);
const BATCH = Number(opt.batch);
const SINGLES = Number(opt.singles);
// SPEC §11's sizes times --scale, unless given
const rowsOf = (name: string, spec: number) => (opt[name] ? Number(opt[name]) : Math.round(spec * SCALE));
const LEDGER_ROWS = rowsOf('ledger-rows', 10_000_000);
const DEEP_ROWS = 2 * Math.round(rowsOf('deep-rows', 1_000_000) / 2); // even: the pairs leave DEEPUSDT as it is
const EVENT_ROWS = rowsOf('event-rows', 10_000_000);
const SNAPSHOT_ROWS = rowsOf('snapshot-rows', 20_000_000);
const EVENT_MONTHS = 12;
const FILLS_QUEUE = 'order-manager.order_executed';
const DEEP = 'DEEPUSDT';
const ROOT = fileURLToPath(new URL('..', import.meta.url));

const asset = (i: number) => `H${i}USDT`;

// ---------------------------------------------------------------------------------------------
// the common part: positions, their opening ledger rows, a few real fills and one snapshot run

async function populate(db: BenchDb): Promise<void> {
  // i = 0..n-1; every tenth closed; long when i is even; as bench/scale.ts, with two opening fills
  // (a Buy and a Sell of 0.01 for a closed one) executed 400 days ago, before any seeded history
  await writePositionsDirectly(
    db.pool,
    `insert into positions (asset, mode, size, average_entry_price, average_entry_price_source, current_price, current_price_at,
                            unrealized_pnl, realized_pnl, total_fees, opened_at, closed_at, created_at, last_updated, version)
     select 'H' || i || 'USDT', 'one-way', s.size, s.avg, 'fills', s.cur, now(),
            case when s.size = 0 then 0 else (s.cur - s.avg) * s.size end, 0, 0,
            case when s.size = 0 then null else now() - interval '400 days' end,
            case when s.size = 0 then now() - interval '400 days' end,
            now() - interval '400 days', now() - interval '400 days', 1
       from generate_series(0, $1::int - 1) i
      cross join lateral (
        select (1 + i % 300) * 0.02 * case when i % 2 = 0 then 1 else -1 end as qty,
               round(1 + (i * 7919) % 50000 / 10.0, 1) as avg,
               round((1 + (i * 7919) % 50000 / 10.0) * (1 + ((i % 21) - 10) / 1000.0), 4) as cur) q
      cross join lateral (select case when i % 10 = 9 then 0 else q.qty end as size, q.avg, q.cur) s`,
    [POSITIONS],
  );
  await db.pool.query(
    `insert into position_fills (position_id, asset, mode, kind, leg, side, quantity, price, fee, execution_id, executed_at, applied_at)
     select p.id, p.asset, p.mode, 'fill', 'net',
            case when p.size > 0 or (p.size = 0 and k = 1) then 'Buy' else 'Sell' end,
            case when p.size <> 0 then abs(p.size) / 2 else 0.01 end,
            p.average_entry_price, 0, p.asset || '-open-' || k, p.created_at + make_interval(mins => k), p.created_at
       from positions p cross join generate_series(1, 2) k`,
  );
  await db.pool.query('select apply_order_fill($1::jsonb)', [
    JSON.stringify({
      execution_id: 'deep-0',
      asset: DEEP,
      side: 'Buy',
      execution_quantity: '1',
      execution_price: '100',
    }),
  ]);
  // real audit rows to copy: fills on a few positions (created, fill, closed, reopened kinds)
  for (let i = 0; i < 8; i++) {
    const a = asset(i);
    const q = i % 10 === 9 ? '0.01' : '0.02';
    await db.pool.query('select apply_order_fill($1::jsonb)', [
      JSON.stringify({
        execution_id: `tpl-${i}`,
        asset: a,
        side: i % 2 === 0 ? 'Buy' : 'Sell',
        execution_quantity: q,
        execution_price: String(1 + ((i * 7919) % 50000) / 10),
      }),
    ]);
  }
  await db.pool.query('select snapshot_all_positions($1)', ['history-bench-template']);
  await db.pool.query('vacuum analyze positions, position_fills, position_events, position_snapshots');
}

// ---------------------------------------------------------------------------------------------
// seeding the deep database

/**
 * Narrows the empty legacy partition of `parent` to end at `from_at` and attaches a partition per
 * `unit` from there to the first partition ensure_history_partitions made.
 */
async function partitionsFrom(
  c: pg.PoolClient,
  parent: string,
  unit: 'day' | 'month',
  fromAt: string,
): Promise<number> {
  const parts = (
    await c.query<{ part: string; lower_at: string | null; upper_at: string | null }>(
      `select part::text, lower_at::text, upper_at::text from _history_partitions($1) order by lower_at nulls first`,
      [parent],
    )
  ).rows;
  const legacy = parts.find((p) => p.lower_at === '-infinity');
  const first = parts.find((p) => p.lower_at !== null && p.lower_at !== '-infinity');
  if (!legacy || !first) throw new Error(`${parent}: no legacy partition or no partition after it`);
  const rows = (await c.query<{ n: number }>(`select count(*)::int as n from ${legacy.part}`)).rows[0]!.n;
  if (rows > 0) throw new Error(`${legacy.part} holds ${rows} rows: cannot narrow it`);
  await c.query(`alter table ${parent} detach partition ${legacy.part}`);
  await c.query(`alter table ${parent} attach partition ${legacy.part} for values from (minvalue) to ('${fromAt}')`);
  const made = await c.query(
    `select _attach_history_partition($1, d, d + $3::interval)
       from generate_series($2::timestamptz, $4::timestamptz - $3::interval, $3::interval) d`,
    [parent, fromAt, `1 ${unit}`, first.lower_at],
  );
  return made.rowCount ?? 0;
}

async function timedStep(label: string, fn: () => Promise<unknown>): Promise<number> {
  const t0 = now();
  await fn();
  const s = (now() - t0) / 1000;
  console.log(`  ${label}: ${s.toFixed(1)} s`);
  return s;
}

async function seedDeep(db: BenchDb): Promise<Record<string, number>> {
  // one session: the templates are temporary tables
  const c = await db.pool.connect();
  const q = (sql: string, params: unknown[] = []) => c.query(sql, params);
  const seconds: Record<string, number> = {};
  try {
    await q("set timezone = 'UTC'");
    await q(`create temporary table pos as select row_number() over (order by asset) - 1 as k, id, asset, mode, size, average_entry_price
               from positions where asset <> '${DEEP}'`);
    await q(
      'create temporary table tpl_events as select row_number() over (order by id) - 1 as k, * from position_events',
    );
    await q('create temporary table tpl_snap as select * from position_snapshots');
    const count = async (tbl: string) =>
      Number((await c.query<{ n: string }>(`select count(*) as n from ${tbl}`)).rows[0]!.n);
    const nPos = await count('pos');
    const nEvents = await count('tpl_events');
    const nSnap = await count('tpl_snap');
    // the snapshots end at the last 5-minute slot before now; the audit rows an hour ago
    const slots = Math.ceil(SNAPSHOT_ROWS / nSnap);
    const span = (
      await q(
        `select date_bin('5 min', now(), timestamptz 'epoch') - $1::int * interval '5 min' as snap_base,
                date_trunc('day', date_bin('5 min', now(), timestamptz 'epoch') - ($1::int - 1) * interval '5 min')::text as snap_start,
                (date_trunc('month', now()) - make_interval(months => $2))::text as event_start,
                extract(epoch from now() - interval '1 hour' - (date_trunc('month', now()) - make_interval(months => $2)))::float8 as event_seconds`,
        [slots, EVENT_MONTHS - 1],
      )
    ).rows[0] as { snap_base: Date; snap_start: string; event_start: string; event_seconds: number };
    const days = await partitionsFrom(c, 'position_snapshots', 'day', span.snap_start);
    const months = await partitionsFrom(c, 'position_events', 'month', span.event_start);
    console.log(`seeding the deep database (scale ${SCALE}):`);
    console.log(
      `  partitions attached for the seed: ${days} daily from ${span.snap_start}, ${months} monthly from ${span.event_start}`,
    );

    // ledger: per position (DEEPUSDT aside) the same number of pairs, executed over the past year
    const pairs = Math.max(1, Math.round(LEDGER_ROWS / 2 / nPos));
    const chunk = Math.max(1, Math.ceil(nPos / 10));
    seconds.ledger = await timedStep(
      `position_fills: ${int(2 * pairs * nPos)} rows (${pairs} pairs per position)`,
      async () => {
        for (let from = 0; from < nPos; from += chunk) {
          await q(
            `insert into position_fills (position_id, asset, mode, kind, leg, side, quantity, price, fee, execution_id, executed_at, applied_at)
           select p.id, p.asset, p.mode, 'fill', 'net',
                  case when (p.size > 0) = (j % 2 = 1) then 'Buy' else 'Sell' end,
                  case when p.size <> 0 then abs(p.size) / 2 else 0.01 end, p.average_entry_price, 0,
                  p.asset || '-h-' || j, t.at, t.at
             from pos p
            cross join generate_series(0, 2 * $1::int - 1) j
            cross join lateral (select now() - interval '365 days' + (j + 1) * (interval '365 days' / (2 * $1::int + 2)) as at) t
            where p.k >= $2 and p.k < $3
            order by p.k, j`,
            [pairs, from, from + chunk],
          );
        }
      },
    );
    seconds.deepLedger = await timedStep(`position_fills: ${int(DEEP_ROWS)} rows on ${DEEP}`, () =>
      q(
        `insert into position_fills (position_id, asset, mode, kind, leg, side, quantity, price, fee, executed_at, applied_at)
         select p.id, p.asset, p.mode, 'fill', 'net', case when g % 2 = 1 then 'Sell' else 'Buy' end, 1, 100, 0,
                now() - interval '300 days' + g * interval '10 s', now() - interval '300 days' + g * interval '10 s'
           from positions p, generate_series(1, $1::int) g where p.asset = '${DEEP}' and p.mode = 'one-way'`,
        [DEEP_ROWS],
      ),
    );

    // audit rows: copies of the real ones, round-robin over the positions, evenly over the months
    // until an hour ago; a month's worth of rows per statement
    seconds.events = await timedStep(
      `position_events: ${int(EVENT_ROWS)} rows over ${EVENT_MONTHS} months`,
      async () => {
        const perStatement = Math.ceil(EVENT_ROWS / EVENT_MONTHS);
        for (let lo = 0; lo < EVENT_ROWS; lo += perStatement) {
          await q(
            `insert into position_events (position_id, asset, mode, at, source, kind, before, after, changed_fields, message_key, trace_id, details)
           select p.id, p.asset, p.mode, t.at, e.source, e.kind,
                  case when e.before is not null then e.before || jsonb_build_object('id', p.id, 'asset', p.asset, 'version', g) end,
                  case when e.after is not null then e.after || jsonb_build_object('id', p.id, 'asset', p.asset,
                       'version', g + 1, 'last_updated', t.at) end,
                  e.changed_fields, 'seed-' || g, 'seed-' || g, e.details
             from generate_series($1::bigint, $2::bigint - 1) g
            cross join lateral (select $3::timestamptz + g * ($4::float8 / $5) * interval '1 s' as at) t
             join pos p on p.k = g % $6
             join tpl_events e on e.k = g % $7
            order by g`,
            [
              lo,
              Math.min(EVENT_ROWS, lo + perStatement),
              span.event_start,
              span.event_seconds,
              EVENT_ROWS,
              nPos,
              nEvents,
            ],
          );
        }
      },
    );

    // snapshots: each snapshotted position every 5 minutes until now, copies of its real snapshot
    // with the price moved; a day of slots per statement
    seconds.snapshots = await timedStep(
      `position_snapshots: ${int(slots * nSnap)} rows, ${nSnap} positions every 5 minutes`,
      async () => {
        for (let s0 = 1; s0 <= slots; s0 += 288) {
          await q(
            `insert into position_snapshots (position_id, asset, mode, size, long_size, short_size, average_entry_price, current_price,
                                           unrealized_pnl, realized_pnl, total_fees, unrealized_pnl_pct, time_held_minutes,
                                           position_size_norm, snapshot_data, snapshot_timestamp, created_at, trigger, trace_id)
           select s.position_id, s.asset, s.mode, s.size, s.long_size, s.short_size, s.average_entry_price, v.price,
                  v.upnl, s.realized_pnl, s.total_fees, s.unrealized_pnl_pct, s.time_held_minutes, s.position_size_norm,
                  s.snapshot_data || jsonb_build_object('current_price', v.price::text, 'unrealized_pnl', v.upnl::text,
                                                        'snapshot_timestamp', v.at),
                  v.at, v.at, 'scheduled', 'seed-' || slot
             from generate_series($2::int, least($3::int, $2::int + 287)) slot
            cross join tpl_snap s
            cross join lateral (
              select $1::timestamptz + slot * interval '5 min' as at,
                     round(s.current_price * (1 + ((slot * 7 + abs(hashtext(s.asset))) % 200 - 100) / 10000.0), 4) as price) p0
            cross join lateral (select p0.at, p0.price, round((p0.price - coalesce(s.average_entry_price, p0.price)) * s.size, 8) as upnl) v
            order by v.at, s.asset`,
            [span.snap_base, s0, slots],
          );
        }
      },
    );
  } finally {
    c.release();
  }
  return seconds;
}

// ---------------------------------------------------------------------------------------------
// measurements

type Timer = { client: pg.Client; pid: number };

async function timer(db: BenchDb): Promise<Timer> {
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  await client.query(`set statement_timeout = ${Number(opt.timeout) * 1000}`);
  const pid = (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
  return { client, pid };
}

/** Wall and backend CPU time of fn, in ms. */
async function measure(t: Timer, fn: () => Promise<unknown>): Promise<{ wall: number; cpu: number }> {
  const probe = new CpuProbe([processById('backend', t.pid)], 60_000).start();
  const t0 = now();
  await fn();
  const wall = now() - t0;
  return { wall, cpu: probe.stop().groups[0]!.ms };
}

/** The same fills for both databases: round r, batch b; distinct existing positions per batch. */
function fillBatch(round: number, b: number, size: number, tag: string): Fill[] {
  const rand = rng(1000 * round + b + 1);
  const picked = new Set<number>();
  while (picked.size < Math.min(size, POSITIONS)) picked.add(Math.floor(rand() * POSITIONS));
  return [...picked].map((i, k) => {
    const id = `${tag}-${round}-${b}-${k}`;
    const price = (1 + ((i * 7919) % 50000) / 10) * (0.99 + rand() * 0.02);
    return {
      execution_id: id,
      asset: asset(i),
      side: rand() < 0.5 ? 'Buy' : 'Sell',
      execution_quantity: (0.001 * (1 + Math.floor(rand() * 9))).toFixed(3),
      execution_price: price.toFixed(4),
      execution_fees: '0.001',
      trace_id: id,
    };
  });
}

// The Grafana panels over history: their SQL from the dashboards, macros expanded as Grafana's
// PostgreSQL data source does for the dashboards' default range (the last 24 hours).
interface Panel {
  name: string;
  sql: string;
}

function historyPanels(): Panel[] {
  const dir = `${ROOT}grafana/dashboards`;
  const out = new Map<string, Panel>();
  const walk = (file: string, panels: unknown[] | undefined) => {
    for (const p of (panels ?? []) as { title?: string; panels?: unknown[]; targets?: { rawSql?: string }[] }[]) {
      walk(file, p.panels);
      for (const target of p.targets ?? []) {
        const sql = target.rawSql?.replace(/\s+/g, ' ').trim();
        if (sql && /\b(position_snapshots_view|position_events_view|position_pnl_hourly)\b/.test(sql) && !out.has(sql))
          out.set(sql, { name: `${file.replace('.json', '')}: ${p.title}`, sql });
      }
    }
  };
  for (const f of readdirSync(dir)
    .filter((x) => x.endsWith('.json'))
    .sort())
    walk(f, (JSON.parse(readFileSync(`${dir}/${f}`, 'utf8')) as { panels?: unknown[] }).panels);
  return [...out.values()];
}

const INTERVAL_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

function expandMacros(sql: string, from: Date, to: Date): string {
  const f = `'${from.toISOString()}'`;
  const tt = `'${to.toISOString()}'`;
  return sql
    .replace(/\$__timeFilter\(([^)]+)\)/g, (_, c: string) => `${c.trim()} BETWEEN ${f} AND ${tt}`)
    .replace(/\$__timeGroupAlias\(([^,]+),\s*([^)]+)\)/g, (_, c: string, iv: string) => {
      const m = /^'?(\d+)([smhd])'?$/.exec(iv.trim().replace('$__interval', '1m')) ?? ['', '1', 'm'];
      const s = Number(m[1]) * INTERVAL_SECONDS[m[2]]!;
      return `floor(extract(epoch from ${c.trim()})/${s})*${s} AS "time"`;
    })
    .replace(/\$__timeFrom\(\)/g, f)
    .replace(/\$__timeTo\(\)/g, tt)
    .replace(/\$\{asset:raw\}/g, 'All');
}

/** Partitions of the history tables a plan read (scan nodes that ran) and how many each table has. */
async function partitionsRead(
  c: pg.Client,
  sql: string,
): Promise<{ read: Record<string, string[]>; total: Record<string, number>; ms: number }> {
  const plan = (await c.query<{ 'QUERY PLAN': unknown }>(`explain (analyze, format json) ${sql}`)).rows[0]![
    'QUERY PLAN'
  ] as {
    Plan: unknown;
    'Execution Time': number;
  }[];
  const totals = (
    await c.query<{ parent: string; n: number }>(
      `select t.parent::text as parent, (select count(*)::int from _history_partitions(t.parent)) as n from _history_tables() t`,
    )
  ).rows;
  const read: Record<string, string[]> = {};
  const walk = (n: { 'Relation Name'?: string; 'Actual Loops'?: number; Plans?: unknown[] }) => {
    const rel = n['Relation Name'];
    if (rel && (n['Actual Loops'] ?? 0) > 0) {
      const parent = totals.find((x) => rel.startsWith(`${x.parent}_`));
      if (parent) {
        const seen = (read[parent.parent] ??= []);
        if (!seen.includes(rel)) seen.push(rel);
      }
    }
    for (const k of n.Plans ?? []) walk(k as typeof n);
  };
  walk(plan[0]!.Plan as Parameters<typeof walk>[0]);
  return { read, total: Object.fromEntries(totals.map((x) => [x.parent, x.n])), ms: plan[0]!['Execution Time'] };
}

// ---------------------------------------------------------------------------------------------

runBench(async (t) => {
  const started = now();
  console.log(
    `history depth at scale ${SCALE}: ${int(LEDGER_ROWS)} ledger rows + ${int(DEEP_ROWS)} on ${DEEP}, ` +
      `${int(EVENT_ROWS)} audit rows, ${int(SNAPSHOT_ROWS)} snapshots; ${POSITIONS} positions; ${ROUNDS} rounds`,
  );
  const empty = await benchDatabase(t, 'pm_bench_hist_empty', 4);
  const deep = await benchDatabase(t, 'pm_bench_hist_deep', 4);
  await populate(empty);
  await populate(deep);
  const t0 = now();
  const seeded = await seedDeep(deep);
  let t1 = now();
  await deep.pool.query('vacuum analyze position_fills, position_events, position_snapshots');
  seeded.vacuum = (now() - t1) / 1000;
  console.log(`  vacuum analyze: ${seeded.vacuum.toFixed(1)} s`);
  seeded.total = (now() - t0) / 1000;
  console.log(`seeding took ${seeded.total.toFixed(1)} s in all`);

  const sizes = (
    await deep.pool.query<{ rel: string; rows: string; size: string }>(
      `select t.rel, sum(c.reltuples) filter (where c.reltuples > 0)::bigint::text as rows,
              pg_size_pretty(sum(pg_total_relation_size(p.relid))) as size
         from unnest(array['positions', 'position_fills', 'position_events', 'position_snapshots']) t(rel)
        cross join lateral (select relid from pg_partition_tree(t.rel::regclass) where isleaf
                            union select t.rel::regclass where not exists (select from pg_inherits where inhparent = t.rel::regclass)) p
         join pg_class c on c.oid = p.relid
        group by t.rel order by t.rel`,
    )
  ).rows;
  const dbSize = (
    await deep.pool.query<{ s: string }>('select pg_size_pretty(pg_database_size(current_database())) as s')
  ).rows[0]!.s;
  table([
    ['table (deep)', 'rows (estimate)', 'size with indexes'],
    ...sizes.map((r) => [r.rel, int(Number(r.rows)), r.size]),
  ]);
  console.log(`deep database: ${dbSize}`);

  // what validation and the materialized views cost once, on each database
  const T = { empty: await timer(empty), deep: await timer(deep) };
  t.teardown(() => T.empty.client.end());
  t.teardown(() => T.deep.client.end());
  const once: Record<string, Record<'empty' | 'deep', number>> = {};
  for (const k of ['empty', 'deep'] as const) {
    const c = T[k].client;
    const full = await measure(T[k], () =>
      c.query(`select validate_position('${DEEP}', 'one-way', false, full => true) as v`),
    );
    (once['validate_position(full => true), writes the checkpoint'] ??= { empty: 0, deep: 0 })[k] = full.wall;
    const mv = await measure(T[k], () => c.query('select refresh_materialized_views()'));
    (once['refresh_materialized_views() (the job, every 300 s by default)'] ??= { empty: 0, deep: 0 })[k] = mv.wall;
  }
  const check = await T.deep.client.query<{ v: { is_valid: boolean; discrepancies: unknown } }>(
    `select validate_position($1, 'one-way', false) as v`,
    [asset(1)],
  );
  if (!check.rows[0]!.v.is_valid)
    console.log(`note: ${asset(1)} does not validate: ${JSON.stringify(check.rows[0]!.v)}`);

  const panels = historyPanels();
  const series: Record<string, Record<'empty' | 'deep', { wall: number; cpu: number }[]>> = {};
  const push = (name: string, k: 'empty' | 'deep', v: { wall: number; cpu: number }) =>
    ((series[name] ??= { empty: [], deep: [] })[k] ??= []).push(v);
  const pruned: Record<string, unknown>[] = [];
  const snapDays = (
    await T.deep.client.query<{ d: number }>(
      `select extract(epoch from now() - min(lower_at)) / 86400 as d
         from _history_partitions('position_snapshots') where lower_at > '-infinity'`,
    )
  ).rows[0]!.d;
  const rows: Record<string, number> = {};

  for (let r = 0; r < ROUNDS; r++) {
    for (const k of ['empty', 'deep'] as const) {
      const tm = T[k];
      const c = tm.client;
      const tag = `r${r}`;
      // batched, as the consumer applies them
      const batches = Array.from({ length: BATCHES }, (_, b) => asDeliveries(fillBatch(r, b, BATCH, 'b'), FILLS_QUEUE));
      const b = await measure(tm, async () => {
        for (const d of batches) await ingestMessages(c, 'fill', lockOrder(d));
      });
      push(`ingest_messages: ${BATCHES} batches of ${BATCH} fills (ms per fill)`, k, {
        wall: b.wall / (BATCHES * BATCH),
        cpu: b.cpu / (BATCHES * BATCH),
      });
      const singles = fillBatch(r, 10_000, SINGLES, 's');
      const s = await measure(tm, async () => {
        for (const f of singles) await c.query('select apply_order_fill($1::jsonb)', [JSON.stringify(f)]);
      });
      push(`apply_order_fill: ${SINGLES} single fills (ms per fill)`, k, {
        wall: s.wall / SINGLES,
        cpu: s.cpu / SINGLES,
      });
      // validation from the checkpoint, with one fill since
      await c.query('select apply_order_fill($1::jsonb)', [
        JSON.stringify({
          execution_id: `deep-${tag}`,
          asset: DEEP,
          side: r % 2 === 0 ? 'Sell' : 'Buy',
          execution_quantity: '0.5',
          execution_price: '100',
        }),
      ]);
      push(
        `validate_position('${DEEP}') from the checkpoint, 1 fill since`,
        k,
        await measure(tm, () => c.query(`select validate_position('${DEEP}', 'one-way', false)`)),
      );
      // retention: the cutoff moves one day a round, so each round expires one more day
      const days = Math.max(1, Math.floor(snapDays - r - 1));
      let result: unknown;
      const ret = await measure(tm, async () => {
        // as the daily job runs it: at 00:05 UTC (_next_run_at, sql/330), so the cutoff is 5 minutes into a day;
        // prune_snapshot_partitions itself cuts at now(), wherever in the day the bench happens to run
        result = (
          await c.query<{ r: unknown }>(
            `select _prune_partitions('position_snapshots',
                      (date_trunc('day', now() at time zone 'UTC') + make_interval(days => -$1::integer, mins => 5))
                        at time zone 'UTC', 't.created_at >= $1', 10000, true) as r`,
            [days],
          )
        ).rows[0]!.r;
      });
      push(`snapshot retention at 00:05 UTC (expiring one more day)`, k, ret);
      if (k === 'deep') pruned.push({ round: r, retention_days: days, result, ms: Math.round(ret.wall) });
      const probe = asset((r * 37) % POSITIONS);
      push(
        'position_as_of(asset, 30 days ago)',
        k,
        await measure(tm, () => c.query(`select position_as_of($1, 'one-way', now() - interval '30 days')`, [probe])),
      );
      push(
        'position_as_of(asset, now)',
        k,
        await measure(tm, () => c.query(`select position_as_of($1, 'one-way', now())`, [probe])),
      );
      const to = new Date();
      const from = new Date(to.getTime() - 24 * 3600_000);
      for (const p of panels) {
        const sql = `select count(*)::int as n from (${expandMacros(p.sql, from, to)}) q`;
        let n = 0;
        push(
          `grafana ${p.name} (24 h)`,
          k,
          await measure(tm, async () => {
            n = (await c.query<{ n: number }>(sql)).rows[0]!.n;
          }),
        );
        if (k === 'deep') rows[`grafana ${p.name} (24 h)`] = n;
      }
    }
    console.log(`round ${r + 1}/${ROUNDS} done (${((now() - started) / 1000).toFixed(0)} s, load ${loadAverage()})`);
  }

  console.log();
  console.log(`medians over ${ROUNDS} rounds (wall ms; backend CPU ms), deep / empty:`);
  const med = (k: 'empty' | 'deep', name: string, f: 'wall' | 'cpu') => median(series[name]![k].map((x) => x[f]));
  table([
    ['measurement', 'empty ms', 'deep ms', 'deep/empty', 'CPU empty', 'CPU deep', 'CPU deep/empty', 'rows (deep)'],
    ...Object.keys(series).map((name) => [
      name,
      ms(med('empty', name, 'wall')),
      ms(med('deep', name, 'wall')),
      ratio(med('deep', name, 'wall') / med('empty', name, 'wall')),
      ms(med('empty', name, 'cpu')),
      ms(med('deep', name, 'cpu')),
      ratio(med('deep', name, 'cpu') / med('empty', name, 'cpu')),
      rows[name] === undefined ? '' : int(rows[name]),
    ]),
  ]);
  console.log();
  console.log('once (wall ms):');
  table([
    ['statement', 'empty ms', 'deep ms'],
    ...Object.entries(once).map(([name, v]) => [name, ms(v.empty), ms(v.deep)]),
  ]);
  console.log();
  console.log('retention rounds on deep:');
  for (const p of pruned) console.log(`  ${JSON.stringify(p)}`);

  // the fills round by round (a trend would be caches warming), then where a batch's time goes:
  // buffers found in shared_buffers or read (with the read time), and the WAL it wrote
  console.log();
  console.log('fills per round (ms per fill, wall / backend CPU):');
  const fillNames = Object.keys(series).filter((n) => /^(ingest_messages|apply_order_fill)/.test(n));
  table([
    ['round', ...fillNames.flatMap((n) => [`empty: ${n.split(':')[0]}`, `deep: ${n.split(':')[0]}`])],
    ...Array.from({ length: ROUNDS }, (_, r) => [
      r + 1,
      ...fillNames.flatMap((n) =>
        (['empty', 'deep'] as const).map((k) => `${ms(series[n]![k][r]!.wall)} / ${ms(series[n]![k][r]!.cpu)}`),
      ),
    ]),
  ]);
  console.log();
  console.log(`EXPLAIN (ANALYZE, BUFFERS, WAL) of 3 more batches of ${BATCH} through ingest_messages, summed:`);
  const io: (string | number)[][] = [
    ['database', 'ms', 'shared hit', 'shared read', 'read ms', 'dirtied', 'WAL records', 'WAL FPI', 'WAL bytes'],
  ];
  for (const k of ['empty', 'deep'] as const) {
    const c = T[k].client;
    await c.query('set track_io_timing = on');
    const sum: Record<string, number> = {};
    for (let b = 0; b < 3; b++) {
      const d = lockOrder(asDeliveries(fillBatch(ROUNDS, b, BATCH, 'x'), FILLS_QUEUE));
      const plan = (
        await c.query<{ 'QUERY PLAN': { Plan: Record<string, number>; 'Execution Time': number }[] }>(
          'explain (analyze, buffers, wal, format json) select ingest_messages($1, $2::jsonb[], $3::jsonb[])',
          ['fill', d.map((x) => JSON.stringify(x.meta)), d.map((x) => x.body)],
        )
      ).rows[0]!['QUERY PLAN'][0]!;
      const n = plan.Plan;
      for (const [key, v] of Object.entries({
        ms: plan['Execution Time'],
        hit: n['Shared Hit Blocks'],
        read: n['Shared Read Blocks'],
        readMs: n['I/O Read Time'],
        dirtied: n['Shared Dirtied Blocks'],
        walRecords: n['WAL Records'],
        fpi: n['WAL FPI'],
        walBytes: n['WAL Bytes'],
      }))
        sum[key] = (sum[key] ?? 0) + (v ?? 0);
    }
    await c.query('reset track_io_timing');
    io.push([
      k,
      ms(sum.ms!),
      int(sum.hit!),
      int(sum.read!),
      ms(sum.readMs!),
      int(sum.dirtied!),
      int(sum.walRecords!),
      int(sum.fpi!),
      int(sum.walBytes!),
    ]);
  }
  table(io);
  // what the drop of an expired day costs alone (the rows of the partition straddling the cutoff
  // are deleted row by row, above)
  const oldest = (
    await T.deep.client.query<{ part: string }>(
      `select part::text from _history_partitions('position_snapshots') where lower_at > '-infinity' order by lower_at limit 1`,
    )
  ).rows[0]!.part;
  const dropOnly = await measure(T.deep, () => T.deep.client.query(`drop table ${oldest}`));
  console.log();
  console.log(`(diagnostic) drop table ${oldest} alone, on deep: ${ms(dropOnly.wall)} ms`);

  // partition pruning of the history queries (deep)
  console.log();
  console.log('EXPLAIN ANALYZE on deep: partitions read / partitions of the table');
  const to = new Date();
  const from = new Date(to.getTime() - 24 * 3600_000);
  const plans: (string | number)[][] = [['query', 'position_snapshots', 'position_events', 'execution ms']];
  const probeAsset = asset(37);
  const asOf = `select a.after from position_events a where a.position_id = (select id from positions where asset = '${probeAsset}' and mode = 'one-way') and a.after is not null and a.at <= now() - interval '30 days' order by a.at desc, a.id desc limit 1`;
  const explained: Panel[] = [
    { name: 'position_as_of body (30 days ago), lateral limit 1', sql: asOf },
    ...panels.filter((p) => !p.sql.includes('position_pnl_hourly')).map((p) => ({ ...p, name: `grafana ${p.name}` })),
  ];
  for (const p of explained) {
    const e = await partitionsRead(T.deep.client, expandMacros(p.sql, from, to));
    const cell = (tb: string) => (e.read[tb] ? `${e.read[tb].length} / ${e.total[tb]}` : `0 / ${e.total[tb]}`);
    plans.push([p.name, cell('position_snapshots'), cell('position_events'), ms(e.ms)]);
  }
  table(plans);

  // verdicts
  const v = (name: string, f: 'wall' | 'cpu') => med('deep', name, f) / med('empty', name, f);
  const batchName = `ingest_messages: ${BATCHES} batches of ${BATCH} fills (ms per fill)`;
  const singleName = `apply_order_fill: ${SINGLES} single fills (ms per fill)`;
  const valName = `validate_position('${DEEP}') from the checkpoint, 1 fill since`;
  const retName = 'snapshot retention at 00:05 UTC (expiring one more day)';
  // wall and CPU each get their verdict: cold index pages show in the wall time only (I/O)
  const within = (name: string, f: 'wall' | 'cpu') =>
    `${ratio(v(name, f))} ${f} (${v(name, f) <= 1.2 ? 'met' : 'missed'})`;
  console.log();
  console.log(
    `target fill cost deep/empty ≤ 1.20: batched ${within(batchName, 'wall')}, ${within(batchName, 'cpu')}; ` +
      `single ${within(singleName, 'wall')}, ${within(singleName, 'cpu')}`,
  );
  const val = med('deep', valName, 'wall');
  console.log(
    `target validate_position with ${int(DEEP_ROWS + 1)} ledger rows ≤ 100 ms: ${ms(val)} ms (${val <= 100 ? 'met' : 'missed'}); ` +
      `full replay ${ms(once['validate_position(full => true), writes the checkpoint']!.deep)} ms`,
  );
  const ret = med('deep', retName, 'wall');
  console.log(`target retention of one day of snapshots ≤ 1 s: ${ms(ret)} ms (${ret <= 1000 ? 'met' : 'missed'})`);
  t1 = (now() - started) / 1000;
  console.log(`total time: ${t1.toFixed(0)} s (seeding ${seeded.total.toFixed(0)} s)`);
  console.log(
    'RESULT ' +
      JSON.stringify({
        bench: 'history',
        scale: SCALE,
        seeded,
        sizes,
        once,
        medians: Object.fromEntries(
          Object.keys(series).map((n) => [
            n,
            {
              empty: med('empty', n, 'wall'),
              deep: med('deep', n, 'wall'),
              cpuEmpty: med('empty', n, 'cpu'),
              cpuDeep: med('deep', n, 'cpu'),
            },
          ]),
        ),
        pruned,
        seconds: t1,
      }),
  );
});
