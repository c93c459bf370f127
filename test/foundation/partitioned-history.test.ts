// Issue 21: position_snapshots (a partition per UTC day) and position_events (per UTC month) are
// partitioned by time. Migration 17 converts a database filled under the previous schema in
// place, ensure_history_partitions makes the partitions ahead, snapshot retention drops whole
// partitions, and reads bounded in time scan only their partitions.
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import t, { type Test } from 'tap';
import { migrate } from '../../src/db/migrate.js';
import { MIGRATIONS_DIR } from '../../src/paths.js';
import { emptyDatabase, firstRow as one, freshDatabase, type Queryable as Q, tableDigest } from '../helpers/db.js';

const MIGRATION = '1000000000017_partitioned-history';
const TOTALS_MIGRATION = '1000000000019_portfolio-totals.sql';
const DAY = 86_400_000;
const FUNCTIONS = `select p.oid::regprocedure::text as f from pg_proc p
                    where p.pronamespace = 'public'::regnamespace order by 1`;
// snapshots and audit rows every 6 hours for 200 days, for every position
const HISTORY = `
  insert into position_snapshots (position_id, asset, mode, size, snapshot_data, snapshot_timestamp, created_at, trigger)
  select p.id, p.asset, p.mode, p.size, jsonb_build_object('size', p.size), g, g, 'scheduled'
    from positions p, generate_series(now() - interval '200 days', now() - interval '1 hour', interval '6 hours') g;
  insert into position_events (position_id, asset, mode, at, source, kind, after, changed_fields)
  select p.id, p.asset, p.mode, g, 'manual', 'validation_fix', to_jsonb(p) || jsonb_build_object('realized_pnl', extract(epoch from g)::text), '{size}'
    from positions p, generate_series(now() - interval '200 days', now() - interval '1 hour', interval '6 hours') g`;

/** Row count and a checksum over every row's text, in id order. */
const digest = (db: Q, table: string) => tableDigest(db, table, 't.id');
/** The partition a row is in. */
const partitionOf = async (db: Q, table: string, where: string) =>
  (await one(db, `select tableoid::regclass::text as p from ${table} where ${where}`)).p as string;
/** The partitions with their bounds in epoch milliseconds, oldest first, the DEFAULT one last. */
const partitions = async (db: Q, table: string) =>
  (
    await db.query<{ part: string; lower: number | null; upper: number | null }>(
      `select part::text as part, (extract(epoch from lower_at) * 1000)::float8 as lower,
              (extract(epoch from upper_at) * 1000)::float8 as upper
         from _history_partitions($1) order by lower_at nulls last`,
      [table],
    )
  ).rows;
const ymd = (ms: number) => new Date(ms).toISOString().slice(0, 10).replaceAll('-', '');
const utcDay = (ms: number) => Math.floor(ms / DAY) * DAY;
let seq = 0;
const fill = (db: Q, asset: string, side = 'Buy', qty = '1', price = '100') =>
  db.query('select apply_order_fill($1::jsonb)', [
    JSON.stringify({ execution_id: `ph-${++seq}`, asset, side, execution_quantity: qty, execution_price: price }),
  ]);

/** A fresh database with partitions `daysAhead` days ahead and a buy of each asset. */
async function withFills(t: Test, daysAhead: number, assets: string[]) {
  const db = await freshDatabase(t);
  await db.query('select ensure_history_partitions($1)', [daysAhead]);
  for (const asset of assets) await fill(db, asset);
  return db;
}

/** Each partition starts where the one before it ends. */
function contiguous(t: Test, rows: Awaited<ReturnType<typeof partitions>>, what: string) {
  const ranged = rows.filter((r) => r.lower !== null);
  const gaps = ranged.slice(1).filter((r, i) => r.lower !== ranged[i]!.upper);
  t.same(gaps, [], `${what}: no gap between partitions`);
}

t.test('migration 17 partitions a database filled under the previous schema, row for row', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pm-migrations-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const f of readdirSync(MIGRATIONS_DIR))
    if (/^\d/.test(f) && f < MIGRATION) cpSync(join(MIGRATIONS_DIR, f), join(dir, f));
  const db = await emptyDatabase(t);
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  t.teardown(() => c.end());
  // Today's sql/ also reads the tables of a later migration (19, the portfolio totals, guarded
  // with `if not exists`): they are made first, as that migration makes them.
  const noDefinitions = mkdtempSync(join(tmpdir(), 'pm-sql-'));
  t.teardown(() => rmSync(noDefinitions, { recursive: true, force: true }));
  await migrate(db.url, { migrationsDir: dir, sqlDir: noDefinitions });
  await c.query(readFileSync(join(MIGRATIONS_DIR, TOTALS_MIGRATION), 'utf8').split('-- Down Migration')[0]!);
  await migrate(db.url, { migrationsDir: dir });
  const kinds = `select relkind::text as k from pg_class where oid in ('position_snapshots'::regclass, 'position_events'::regclass)`;
  t.same((await c.query(kinds)).rows, [{ k: 'r' }, { k: 'r' }], 'the previous schema: plain tables');

  for (const asset of ['BTCUSDT', 'ETHUSDT', 'SOLUSDT']) await fill(c, asset);
  await fill(c, 'SOLUSDT', 'Sell');
  // this version's sql/ on the previous schema: its snapshot writer sets the column migration 20
  // adds (if not there yet)
  await c.query('alter table positions add column last_snapshot_version bigint');
  await c.query("select create_position_snapshot('BTCUSDT')");
  await c.query(HISTORY);
  const before = { snapshots: await digest(c, 'position_snapshots'), events: await digest(c, 'position_events') };
  t.ok(
    before.snapshots.n > 2000 && before.events.n > 2000,
    `${before.snapshots.n} snapshots, ${before.events.n} audit rows`,
  );
  const lastEventId = Number((await one(c, 'select max(id) as id from position_events')).id);
  const past = new Date(Date.now() - 100 * DAY).toISOString();
  const asOf = (await one(c, "select position_as_of('ETHUSDT', 'one-way', $1) as p", [past])).p;
  t.ok(asOf, 'position_as_of 100 days back');

  const result = await migrate(db.url);
  t.ok(result.migrationsApplied.includes(MIGRATION), 'migration 17 applied');
  t.equal(result.definitionsApplied, true, 'the sql/ step ran again, re-creating what the migration dropped');
  t.same((await c.query(kinds)).rows, [{ k: 'p' }, { k: 'p' }], 'both partitioned');
  t.same(await digest(c, 'position_snapshots'), before.snapshots, 'every snapshot kept, unchanged');
  t.same(await digest(c, 'position_events'), before.events, 'every audit row kept, unchanged');

  for (const table of ['position_snapshots', 'position_events']) {
    const rows = await partitions(c, table);
    t.equal(rows[0]!.part, `${table}_legacy`, `${table}: the old table is the first partition`);
    t.equal(rows[0]!.lower, -Infinity, 'from MINVALUE');
    t.equal(rows.at(-1)!.part, `${table}_default`, 'a DEFAULT partition');
    t.ok(rows.at(-2)!.upper! >= Date.now() + 13 * DAY, 'partitions two weeks ahead');
    contiguous(t, rows, table);
    t.equal(
      Number((await one(c, `select count(*) as n from only ${table}_legacy`)).n),
      (table === 'position_snapshots' ? before.snapshots : before.events).n,
      'the old rows stay where they were (nothing copied)',
    );
  }
  t.equal(
    (await one(c, "select pg_get_serial_sequence('position_events', 'id') as s")).s,
    'public.position_events_id_seq',
    'the id sequence belongs to the partitioned table',
  );

  await fill(c, 'BTCUSDT');
  const newest = await one(c, 'select id, tableoid::regclass::text as p from position_events order by id desc limit 1');
  t.ok(Number(newest.id) > lastEventId, 'the sequence goes on');
  t.equal(
    newest.p,
    'position_events_legacy',
    'a new audit row of the month of the upgrade lands in the legacy partition',
  );
  await c.query(`insert into position_snapshots (position_id, asset, mode, size, snapshot_data, snapshot_timestamp, trigger)
                 select id, asset, mode, size, '{}', now() + interval '3 days', 'manual' from positions where asset = 'BTCUSDT'`);
  t.equal(
    await partitionOf(c, 'position_snapshots', "snapshot_timestamp > now() + interval '1 day'"),
    `position_snapshots_p${ymd(utcDay(Date.now() + 3 * DAY))}`,
    "a snapshot lands in its day's partition",
  );
  const snap = (await one(c, "select snapshot_json(create_position_snapshot('ETHUSDT')) as s")).s;
  t.match(snap, { asset: 'ETHUSDT', trigger: 'manual' }, 'create_position_snapshot writes through the parent');
  t.equal(Number((await one(c, 'select count(*) as n from position_snapshots_default')).n), 0, 'nothing defaulted');

  t.same(
    (await one(c, "select position_as_of('ETHUSDT', 'one-way', $1) as p", [past])).p,
    asOf,
    'position_as_of answers as before',
  );
  t.match(
    (await one(c, "select list_position_snapshots('BTCUSDT', 'one-way', 5, 0) as l")).l,
    { count: 5, total: 802 },
    'list_position_snapshots',
  );
  await c.query('select refresh_materialized_views()');
  t.ok(Number((await one(c, 'select count(*) as n from position_pnl_hourly')).n) > 0, 'the hourly view is back');
  t.ok(Number((await one(c, 'select count(*) as n from position_events_view')).n) > before.events.n, 'and the others');

  const fresh = await freshDatabase(t);
  t.same(
    (await c.query(FUNCTIONS)).rows,
    (await fresh.query(FUNCTIONS)).rows,
    "a fresh database's functions, none left on the legacy partitions' row types",
  );
  t.same(await migrate(db.url), { migrationsApplied: [], definitionsApplied: false }, 'a second migrate is a no-op');
  const layout = await partitions(c, 'position_events');
  // as migrate.test.ts does: this migration and every later one (each is safe to run again)
  await c.query('delete from pgmigrations where name >= $1', [MIGRATION]);
  t.same((await migrate(db.url)).migrationsApplied.slice(0, 1), [MIGRATION], 'run again by hand');
  t.same(await partitions(c, 'position_events'), layout, 'it leaves partitioned tables alone');
});

t.test('ensure_history_partitions makes the partitions ahead, once, and never waits for writers', async (t) => {
  const db = await freshDatabase(t);
  const made = (await one(db, 'select ensure_history_partitions(60) as r')).r.created as string[];
  t.ok(made.length > 0, `${made.length} partitions made`);
  for (const table of ['position_snapshots', 'position_events']) {
    const rows = await partitions(db, table);
    contiguous(t, rows, table);
    t.ok(rows.at(-2)!.upper! >= Date.now() + 60 * DAY, `${table}: 60 days ahead`);
    for (const r of rows.filter((x) => x.lower !== null && x.lower > -Infinity))
      if (r.part !== `${table}_p${ymd(r.lower!)}`) t.fail(`${r.part} named after its start`);
  }
  const days = (await partitions(db, 'position_snapshots')).filter((r) => /_p\d{8}$/.test(r.part));
  t.ok(
    days.every((r) => r.upper! - r.lower! === DAY && r.lower! % DAY === 0),
    'snapshots: UTC days',
  );
  const months = (await partitions(db, 'position_events')).filter((r) => /_p\d{8}$/.test(r.part));
  t.ok(
    months.every((r) => new Date(r.lower!).getUTCDate() === 1 && r.lower! % DAY === 0),
    'audit rows: UTC months',
  );
  t.same((await one(db, 'select ensure_history_partitions(60) as r')).r, { created: [], busy: [] }, 'idempotent');

  // rows beyond the partitions wait in the DEFAULT partition and move when theirs is made
  await fill(db, 'BTCUSDT');
  await db.query(`insert into position_snapshots (position_id, asset, mode, size, snapshot_data, snapshot_timestamp, trigger)
                  select id, asset, mode, size, '{}', now() + interval '90 days', 'manual' from positions`);
  await db.query(`insert into position_events (position_id, asset, mode, at, source, kind)
                  select id, asset, mode, now() + interval '100 days', 'manual', 'report_stale' from positions`);
  const future = {
    snapshots: "snapshot_timestamp > now() + interval '80 days'",
    events: "at > now() + interval '80 days'",
  };
  t.equal(await partitionOf(db, 'position_snapshots', future.snapshots), 'position_snapshots_default');
  t.equal(await partitionOf(db, 'position_events', future.events), 'position_events_default');

  // A writer in the middle of its transaction does not hold up the snapshots' partitions. The
  // audit rows' foreign key makes ATTACH lock `positions` against writes: it gives up at once and
  // leaves them to the next run rather than queue the fills behind it.
  const writer = await db.pool.connect();
  t.teardown(() => writer.release());
  await writer.query('begin');
  await fill(writer, 'BTCUSDT');
  await writer.query("select create_position_snapshot('BTCUSDT')");
  const during = (await one(db, 'select ensure_history_partitions(110) as r')).r;
  t.same(during.busy, ['position_events'], 'the audit rows wait for the next run');
  t.ok(during.created.length > 0 && during.created.every((p: string) => p.startsWith('position_snapshots_p')));
  await writer.query('commit');
  t.same((await one(db, 'select ensure_history_partitions(110) as r')).r.busy, [], 'which makes them');
  t.equal(
    await partitionOf(db, 'position_snapshots', future.snapshots),
    `position_snapshots_p${ymd(utcDay(Date.now() + 90 * DAY))}`,
    'the snapshot moved to its partition',
  );
  const month = new Date(Date.now() + 100 * DAY).toISOString().slice(0, 7).replace('-', '');
  t.equal(
    await partitionOf(db, 'position_events', future.events),
    `position_events_p${month}01`,
    'so did the audit row',
  );
  for (const table of ['position_snapshots', 'position_events'])
    t.equal(Number((await one(db, `select count(*) as n from ${table}_default`)).n), 0, `${table}_default is empty`);
});

t.test('snapshot retention drops whole partitions and deletes rows only where the cutoff falls', async (t) => {
  const db = await withFills(t, 14, ['BTCUSDT', 'ETHUSDT']);
  // 100 days of daily partitions behind today, as three months of service would leave them: the
  // (empty) legacy partition goes, and the past days are made as the job would have made them
  await db.query('drop table position_snapshots_legacy');
  await db.query(`select _attach_history_partition('position_snapshots', d, d + interval '1 day')
                    from generate_series(date_trunc('day', now() - interval '100 days', 'UTC'),
                                         (select min(lower_at) from _history_partitions('position_snapshots')
                                           where lower_at is not null) - interval '1 day', interval '1 day') d`);
  // a snapshot every 4 hours for 100 days, and one 200 days old, which only the DEFAULT partition takes
  await db.query(`insert into position_snapshots (position_id, asset, mode, size, snapshot_data, snapshot_timestamp, created_at, trigger)
                  select p.id, p.asset, p.mode, p.size, '{}', g, g, 'scheduled'
                    from positions p, generate_series(now() - interval '100 days', now(), interval '4 hours') g
                  union all
                  select p.id, p.asset, p.mode, p.size, '{}'::jsonb, now() - interval '200 days', now() - interval '200 days', 'manual'
                    from positions p where asset = 'BTCUSDT'`);
  // written long after its snapshot_timestamp: its partition is not dropped while it is young
  await db.query(`update position_snapshots set created_at = now() - interval '1 day'
                   where snapshot_timestamp = (select min(snapshot_timestamp) from position_snapshots
                                                where snapshot_timestamp > now() - interval '95 days') and asset = 'ETHUSDT'`);
  const young = await partitionOf(db, 'position_snapshots', "created_at > snapshot_timestamp + interval '1 day'");
  const cutoffCount = `select count(*)::int as n from position_snapshots where created_at >= now() - interval '90 days'`;
  const keep = (await one(db, cutoffCount)).n;
  const total = (await one(db, 'select count(*)::int as n from position_snapshots')).n;
  t.equal(await partitionOf(db, 'position_snapshots', "trigger = 'manual'"), 'position_snapshots_default');
  const oldDays = (await partitions(db, 'position_snapshots')).filter(
    (r) => r.upper !== null && r.upper <= Date.now() - 90 * DAY,
  );
  t.ok(oldDays.length >= 9, `${oldDays.length} partitions entirely past 90 days`);

  t.same(
    (await one(db, 'select prune_snapshot_partitions(0) as r')).r,
    { deleted: 0, partitions_dropped: [] },
    '0 keeps all',
  );
  const busy = await db.pool.connect();
  t.teardown(() => busy.release());
  await busy.query('begin');
  await busy.query('select count(*) from position_snapshots');
  const held = (await one(db, 'select prune_snapshot_partitions(90, 7) as r')).r;
  await busy.query('commit');
  t.same(held.partitions_dropped, [], 'a reader holds the table: no partition dropped...');
  t.equal(held.partitions_busy.length, oldDays.length - 1, '...all left for the next run');
  t.ok(held.deleted > 0, 'the rows before the cutoff in the straddling partitions are deleted all the same');

  const r = (await one(db, 'select prune_snapshot_partitions(90, 7) as r')).r;
  t.same(
    [...r.partitions_dropped].sort(),
    oldDays.map((d) => d.part).filter((p) => p !== young),
    'every partition past the cutoff dropped, but the one holding a young row',
  );
  t.same((await db.query(`select asset from ${young}`)).rows, [{ asset: 'ETHUSDT' }], 'which keeps that row alone');
  t.equal((await one(db, cutoffCount)).n, keep, 'every snapshot younger than 90 days kept');
  t.equal(
    (await one(db, 'select count(*)::int as n from position_snapshots')).n,
    keep,
    `none older (${total - keep} gone)`,
  );
  t.same(
    (await one(db, 'select prune_snapshot_partitions(90) as r')).r,
    { deleted: 0, partitions_dropped: [], partitions_busy: [] },
    'then nothing more',
  );
});

t.test('reads bounded in time scan only their partitions (EXPLAIN)', async (t) => {
  const db = await withFills(t, 70, ['BTCUSDT', 'BTCUSDT']);
  await db.query("select create_position_snapshot('BTCUSDT')");
  const plan = async (sql: string) =>
    (await db.query(`explain (analyze, costs off, timing off, summary off) ${sql}`)).rows
      .map((r) => r['QUERY PLAN'] as string)
      .join('\n');
  const scanned = (text: string, table: string) =>
    [...text.matchAll(new RegExp(`on (${table}_\\w+)(?![^\\n]*never executed)`, 'g'))].map((m) => m[1]);
  const today = `position_snapshots_p${ymd(Date.now())}`;

  // what Grafana sends: $__timeFilter is a literal range
  const from = new Date(utcDay(Date.now())).toISOString();
  const to = new Date(utcDay(Date.now()) + DAY - 1).toISOString();
  const panel = await plan(`select snapshot_timestamp, asset, unrealized_pnl from position_snapshots_view
                             where snapshot_timestamp between '${from}' and '${to}' order by 1`);
  t.same([...new Set(scanned(panel, 'position_snapshots'))], [today], `today: today's partition only\n${panel}`);
  const audit = await plan(`select count(*) from position_events_view where at between '${from}' and '${to}'`);
  const month = `position_events_p${new Date().toISOString().slice(0, 7).replace('-', '')}01`;
  t.same([...new Set(scanned(audit, 'position_events'))], [month], `the audit panel: this month's only\n${audit}`);

  // position_as_of's query with its argument a parameter, as inside the function: the partitions
  // after `at` are pruned when the plan starts, and each one before it gives at most one row
  const c = await db.pool.connect();
  t.teardown(() => c.release());
  await c.query("set plan_cache_mode = 'force_generic_plan'");
  await c.query(`prepare as_of(text, text, timestamptz) as
                   select e.after from positions p
                    cross join lateral (
                      select a.after from position_events a
                       where a.position_id = p.id and a.after is not null and a.at <= $3
                       order by a.at desc, a.id desc limit 1) e
                   where p.asset = $1 and p.mode = $2`);
  const asOf = (
    await c.query("explain (analyze, costs off, timing off, summary off) execute as_of('BTCUSDT', 'one-way', now())")
  ).rows
    .map((r) => r['QUERY PLAN'] as string)
    .join('\n');
  t.match(asOf, /Subplans Removed: [1-9]/, `later partitions pruned at run time\n${asOf}`);
  const reads = [...asOf.matchAll(/Index Scan Backward using \w+ on (position_events_\w+) .*actual rows=(\d+)/g)];
  t.ok(reads.length > 0 && reads.every((m) => Number(m[2]) <= 1), 'each partition read gives at most one row');
  t.ok(
    reads.some((m) => m[1] === month),
    "this month's among them",
  );
  t.ok(Number((await one(db, "select count(*) as n from position_events where asset = 'BTCUSDT'")).n) > 1);
  t.match(
    (await db.query("select position_as_of('BTCUSDT', 'one-way', now()) as p")).rows[0].p,
    { size: '2' },
    'position_as_of itself',
  );
});
