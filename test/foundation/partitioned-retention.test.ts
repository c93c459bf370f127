// Issue 21: the inbox (by UTC week), the outbox's events and deliveries and job_runs (by UTC day)
// are partitioned by time (migration 21). The migration converts a database filled under the previous schema in place;
// retention drops whole days and never a pending event; and with no unique index on an inbox key
// any more, a message delivered to two connections at once is still applied once.
import { cpSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import t from 'tap';
import { migrate } from '../../src/db/migrate.js';
import { markSent, pendingEvents } from '../../src/db/outbox.js';
import { MIGRATIONS_DIR } from '../../src/paths.js';
import { emptyDatabase, firstRow as one, freshDatabase, type Queryable as Q, tableDigest } from '../helpers/db.js';
import { waitFor } from '../helpers/wait.js';

const MIGRATION = '1000000000021_partitioned-retention';
const TABLES = { inbox: 'source, message_key', outbox_events: 'id', outbox_sent: 'id', job_runs: 'id' };
const FUNCTIONS = `select p.oid::regprocedure::text as f from pg_proc p
                    where p.pronamespace = 'public'::regnamespace order by 1`;

const count = async (db: Q, sql: string, params: unknown[] = []) => Number((await one(db, sql, params)).n);
/** Row count and a checksum over every row's text, in key order. */
const digest = tableDigest;
const relkind = async (db: Q, table: string) =>
  (await one(db, 'select relkind::text as k from pg_class where oid = to_regclass($1)', [table]))?.k as string;
const exists = async (db: Q, table: string) => (await one(db, 'select to_regclass($1) is not null as e', [table])).e;
let seq = 0;
const fillBody = (asset: string, id = `pr-${++seq}`) =>
  JSON.stringify({ execution_id: id, asset, side: 'Buy', execution_quantity: '1', execution_price: '100' });
const fill = (db: Q, asset: string, id?: string) =>
  db.query('select _apply_order_fill(null, $1::jsonb) as r', [fillBody(asset, id)]);

t.test('migration 21 partitions a database filled under the previous schema, row for row', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pm-migrations-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // every migration before 21 (today's sql/ is applied on top, and it reads their tables)
  for (const f of readdirSync(MIGRATIONS_DIR))
    if (/^\d/.test(f) && f < '1000000000021') cpSync(join(MIGRATIONS_DIR, f), join(dir, f));
  const db = await emptyDatabase(t);
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  t.teardown(() => c.end());
  await migrate(db.url, { migrationsDir: dir });
  for (const table of Object.keys(TABLES)) t.equal(await relkind(c, table), 'r', `the previous schema: ${table} plain`);

  for (let i = 0; i < 40; i++) await fill(c, i % 2 ? 'BTCUSDT' : 'ETHUSDT');
  await c.query('select _apply_order_fill(null, $1::jsonb)', [
    JSON.stringify({ event_type: 'created', order_id: 'o-1' }),
  ]);
  await c.query("select job_run_start('t' || i, null, null, '{}', 1, 't') from generate_series(1, 30) i");
  // their ages spread over the retention periods
  await c.query("update inbox set applied_at = now() - interval '10 days' * random()");
  await c.query("update job_runs set started_at = now() - interval '40 days' * random()");
  await c.query("update outbox_events set created_at = now() - interval '3 days' * random()");
  const events = (await c.query<{ id: string }>('select id from outbox_pending order by id')).rows.map((r) => r.id);
  t.ok(events.length >= 40, `${events.length} events`);
  await markSent(c, events.slice(1));
  await c.query("update outbox_sent set sent_at = now() - interval '2 days' * random()");
  // the oldest event, never sent: retention keeps it and the relay still delivers it
  const oldPending = events[0]!;
  await c.query("update outbox_events set created_at = now() - interval '5 days' where id = $1", [oldPending]);
  const before: Record<string, unknown> = {};
  for (const [table, order] of Object.entries(TABLES)) before[table] = await digest(c, table, order);
  before.outbox_pending = await digest(c, 'outbox_pending', 'id');
  const legacyKey = (await one(c, 'select message_key from inbox order by applied_at limit 1')).message_key as string;

  const result = await migrate(db.url);
  t.ok(result.migrationsApplied.includes(MIGRATION), 'migration 21 applied');
  t.equal(result.definitionsApplied, true, 'the sql/ step ran again, re-creating what the migration dropped');
  for (const [table, order] of Object.entries(TABLES)) {
    t.equal(await relkind(c, table), 'p', `${table} partitioned`);
    t.same(await digest(c, table, order), before[table], `${table}: every row kept, unchanged`);
    t.equal(
      await count(c, `select count(*) as n from only ${table}_legacy`),
      (before[table] as { n: number }).n,
      `${table}: the old rows stay where they were, in the legacy partition (nothing copied)`,
    );
    t.ok(await exists(c, `${table}_default`), `${table}: a DEFAULT partition`);
    const ahead = await one(
      c,
      `select max(upper_at) > now() + interval '2 days' as ok from _history_partitions($1) where upper_at < 'infinity'`,
      [table],
    );
    t.ok(ahead.ok, `${table}: days made ahead`);
  }
  t.same(await digest(c, 'outbox_pending', 'id'), before.outbox_pending, 'outbox_pending as it was');
  t.equal(
    (await one(c, "select pg_get_serial_sequence('outbox_events', 'id') as s")).s,
    'public.outbox_events_id_seq',
    'the id sequence belongs to the partitioned table',
  );

  // dedupe reads the keys in the legacy partition
  const again = (await one(c, 'select _apply_order_fill(null, $1::jsonb) as r', [fillBody('ETHUSDT', legacyKey)])).r;
  t.equal(again.outcome, 'duplicate', 'a key applied before the conversion is a duplicate');
  await fill(c, 'BTCUSDT');
  t.equal((await one(c, 'select size from positions where asset = $1', ['BTCUSDT'])).size, '21', 'a new fill applies');
  // the relay's reads: the old pending event first, then the new fill's
  const pending = await pendingEvents(c, 10);
  t.equal(pending[0]?.id, oldPending, 'the pending event from before the conversion is next to go');
  t.equal(pending.length, 2, 'and the new one after it');
  await markSent(
    c,
    pending.map((e) => e.id),
  );
  t.equal(await count(c, 'select count(*) as n from outbox where sent_at is null'), 0, 'both sent');

  const r = (await one(c, 'select prune_inbox_outbox(7, 24) as r')).r;
  t.ok(r.inbox_deleted > 0 && r.outbox_deleted > 0, `retention deletes in the legacy partitions: ${JSON.stringify(r)}`);
  t.equal(
    await count(c, "select count(*) as n from inbox where applied_at < now() - interval '7 days'"),
    0,
    'no old inbox key',
  );
  t.equal(
    await count(c, "select count(*) as n from outbox where sent_at < now() - interval '24 hours'"),
    0,
    'no old sent event',
  );
  t.ok((await one(c, 'select prune_job_history(30) as n')).n > 0, 'job history too');

  const fresh = await freshDatabase(t);
  t.same((await c.query(FUNCTIONS)).rows, (await fresh.query(FUNCTIONS)).rows, "a fresh database's functions");
  t.same(await migrate(db.url), { migrationsApplied: [], definitionsApplied: false }, 'a second migrate is a no-op');
  const layout = await c.query('select part::text, lower_at, upper_at from _history_partitions($1) order by 1', [
    'inbox',
  ]);
  // as migrate.test.ts does: this migration and every later one (each is safe to run again)
  await c.query('delete from pgmigrations where name >= $1', [MIGRATION]);
  t.same((await migrate(db.url)).migrationsApplied.slice(0, 1), [MIGRATION], 'run again by hand');
  t.same(
    (await c.query('select part::text, lower_at, upper_at from _history_partitions($1) order by 1', ['inbox'])).rows,
    layout.rows,
    'it leaves partitioned tables alone',
  );
});

/** Day partitions from `days` days ago up to the first one made ahead, as a month of service leaves them. */
async function pastDays(db: Q, table: string, days: number) {
  await db.query(`drop table ${table}_legacy`);
  await db.query(
    `select _attach_history_partition($1, d, d + interval '1 day')
       from generate_series(date_trunc('day', now() - make_interval(days => $2::integer), 'UTC'),
                            (select min(lower_at) from _history_partitions($1) where lower_at is not null) - interval '1 day',
                            interval '1 day') d`,
    [table, days],
  );
}
const dayOf = async (db: Q, table: string, at: string) =>
  (
    await one(
      db,
      `select part::text as p from _history_partitions($1) where $2::timestamptz >= lower_at and $2 < upper_at`,
      [table, at],
    )
  ).p as string;

t.test('retention drops whole days of inbox, outbox and job history, and never a pending event', async (t) => {
  const db = await freshDatabase(t);
  for (const table of Object.keys(TABLES)) await pastDays(db, table, 40);
  const ago = (days: number) => new Date(Date.now() - days * 86_400_000).toISOString();
  for (let i = 0; i < 6; i++) await fill(db, 'BTCUSDT');
  // inbox keys 10, 9, 8, 6 and 5 days old; the newest just now
  await db.query(
    `update inbox set applied_at = now() - make_interval(days => ('{10,9,8,6,5}'::int[])[n + 1])
       from (select source s, message_key k, row_number() over (order by message_key) - 1 as n from inbox) x
      where source = x.s and message_key = x.k and x.n < 5`,
  );
  const ids = (await db.query<{ id: string }>('select id from outbox_pending order by id')).rows.map((r) => r.id);
  // events 3 days old: one sent 2 days ago, one pending; events 2 days old, all sent 30 hours ago; the rest new
  const [pendingOld, sentOld, ...rest] = ids;
  await db.query("update outbox_events set created_at = now() - interval '3 days' where id = any($1)", [
    [pendingOld, sentOld],
  ]);
  await db.query("update outbox_events set created_at = now() - interval '2 days' where id = any($1)", [
    rest.slice(0, 3),
  ]);
  await markSent(db.pool, [sentOld!, ...rest]);
  await db.query("update outbox_sent set sent_at = now() - interval '2 days' where id = $1", [sentOld]);
  await db.query("update outbox_sent set sent_at = now() - interval '30 hours' where id = any($1)", [rest.slice(0, 3)]);
  await db.query("select job_run_start('t' || i, null, null, '{}', 1, 't') from generate_series(1, 3) i");
  await db.query("update job_runs set started_at = now() - interval '35 days' where task = 't1'");

  const inboxDays = [10, 9, 8].map((d) => ago(d));
  const doomed = {
    inbox: await Promise.all(inboxDays.map((d) => dayOf(db, 'inbox', d))),
    sentEvents: await dayOf(db, 'outbox_events', ago(2)),
    pendingEvents: await dayOf(db, 'outbox_events', ago(3)),
    sent: await dayOf(db, 'outbox_sent', ago(2)),
    jobs: await dayOf(db, 'job_runs', ago(35)),
  };
  const kept = await dayOf(db, 'inbox', ago(6));

  const r = (await one(db, 'select prune_inbox_outbox(7, 24) as r')).r;
  t.same(r.partitions_busy, undefined, 'nothing busy');
  for (const p of doomed.inbox) t.notOk(await exists(db, p), `${p}: an inbox day past 7 days dropped`);
  t.ok(await exists(db, kept), `${kept}: a younger one kept`);
  t.notOk(await exists(db, doomed.sentEvents), `${doomed.sentEvents}: a day of events all sent 30 hours ago dropped`);
  t.notOk(await exists(db, doomed.sent), `${doomed.sent}: and its day of deliveries`);
  t.ok(await exists(db, doomed.pendingEvents), `${doomed.pendingEvents}: a day holding a pending event kept`);
  t.same(
    (await db.query("select id from outbox_events where created_at < now() - interval '1 day' order by id")).rows,
    [{ id: pendingOld }, { id: sentOld }],
    'with its sent neighbour, which waits for the day to go whole',
  );
  t.same([r.inbox_deleted, r.outbox_deleted], [0, 0], 'nothing deleted row by row: whole days went');
  t.equal(
    await count(db, 'select count(*) as n from inbox'),
    6 - 3,
    'the keys of the last 7 days stay (10, 9 and 8 days old go)',
  );
  t.equal(
    await count(db, 'select count(*) as n from outbox where sent_at is not null'),
    ids.length - 5,
    'recent sends stay',
  );
  const pending = await pendingEvents(db, 10);
  t.same(
    pending.map((e) => e.id),
    [pendingOld],
    'the old pending event is still to be delivered',
  );
  await markSent(db.pool, [pendingOld!]);
  t.equal(await count(db, 'select count(*) as n from outbox where sent_at is null'), 0, 'and is delivered');

  t.equal((await one(db, 'select prune_job_history(30) as n')).n, 0, 'job history: nothing deleted row by row');
  t.notOk(await exists(db, doomed.jobs), `${doomed.jobs}: the day of a 35-day-old run dropped`);
  t.equal(await count(db, 'select count(*) as n from job_runs'), 2, 'the recent runs stay');
  t.same(
    (await one(db, 'select prune_inbox_outbox(7, 24) as r')).r,
    { inbox_deleted: 0, outbox_deleted: 0 },
    'then nothing more',
  );
});

t.test('the days made ahead of the tables read without their partition key are few', async (t) => {
  const db = await freshDatabase(t);
  await db.query('select ensure_history_partitions(60)');
  for (const table of Object.keys(TABLES)) {
    const n = await count(db, `select count(*) as n from _history_partitions($1) where lower_at > now()`, [table]);
    t.ok(n <= 3, `${table}: ${n} days ahead`);
  }
  const weeks = await db.query(
    `select upper_at - lower_at as span from _history_partitions('inbox') where part::text ~ '_p[0-9]{8}$'`,
  );
  t.ok(
    weeks.rows.length > 0 && weeks.rows.every((r) => r.span.days === 7),
    'the inbox by weeks: few partitions for its duplicate probe',
  );
  // a partitioned parent is never analyzed by autovacuum: the daily job does it for these
  await fill(db, 'BTCUSDT');
  await db.query('select ensure_history_partitions()');
  const stats = `select count(*) as n from pg_stats where tablename = $1 and inherited`;
  t.ok((await count(db, stats, ['inbox'])) > 0, "the inbox's statistics as a whole");
  t.ok((await count(db, stats, ['outbox_events'])) > 0, "and the outbox's");
});

/**
 * `sql` run on two connections at once: the first holds its transaction open until the second
 * waits for a lock (or is done), then commits. The outcomes of both.
 */
async function race(db: Awaited<ReturnType<typeof freshDatabase>>, sql: string, params: unknown[][]) {
  const [a, b] = [await db.pool.connect(), await db.pool.connect()];
  try {
    await a.query('begin');
    const first = (await a.query(sql, params[0])).rows[0].r;
    const pid = (await b.query('select pg_backend_pid() as p')).rows[0].p;
    let done = false;
    const second = b.query(sql, params[1]).finally(() => (done = true));
    // (a second that does not wait has not been ordered after the first: its outcome tells)
    await waitFor(
      async () =>
        done ||
        (await db.query("select wait_event_type = 'Lock' as w from pg_stat_activity where pid = $1", [pid])).rows[0]?.w,
      { what: 'the second connection waiting for the first' },
    );
    await a.query('commit');
    return [first, (await second).rows[0].r];
  } finally {
    a.release();
    b.release();
  }
}

t.test('a message delivered to two connections at once is applied once', async (t) => {
  const db = await freshDatabase(t, { poolSize: 4 });
  await fill(db, 'BTCUSDT');
  const apply = 'select _apply_order_fill(null, $1::jsonb) as r';
  const outcomes = (rs: { outcome: string }[] | { outcome: string }[][]) =>
    rs.map((r) => (Array.isArray(r) ? r.map((x) => x.outcome) : r.outcome));
  const keys = (key: string) => count(db, "select count(*) as n from inbox where message_key like $1 || '%'", [key]);

  const onRow = fillBody('BTCUSDT', 'race-1');
  t.same(outcomes(await race(db, apply, [[onRow], [onRow]])), ['applied', 'duplicate'], 'a fill on a row');
  t.equal(await keys('race-1'), 1, 'one key');
  const newRow = fillBody('SOLUSDT', 'race-2');
  t.same(outcomes(await race(db, apply, [[newRow], [newRow]])), ['applied', 'duplicate'], 'a fill opening a row');
  t.equal((await one(db, "select size from positions where asset = 'SOLUSDT'")).size, '1', 'applied once');
  // no row to lock: the key's own lock orders them
  const noOp = JSON.stringify({ event_type: 'created', order_id: 'o-9', event_id: 'race-3' });
  t.same(outcomes(await race(db, apply, [[noOp], [noOp]])), ['no_op', 'duplicate'], 'a no-op');
  t.equal(await keys('race-3'), 1, 'one key');
  // one key, two rows: as when the key was unique, the second is a duplicate
  t.same(
    outcomes(await race(db, apply, [[fillBody('BTCUSDT', 'race-4')], [fillBody('ETHUSDT', 'race-4')]])),
    ['applied', 'duplicate'],
    'a key reused for another row',
  );
  t.equal(await count(db, "select count(*) as n from positions where asset = 'ETHUSDT'"), 0, 'which is not applied');
  const report = JSON.stringify({ event_id: 'race-5', event_type: 'position', data: { symbol: 'BTCUSDT', size: '5' } });
  t.same(
    outcomes(await race(db, 'select _apply_position_report(null, $1::jsonb) as r', [[report], [report]])),
    [['applied'], ['duplicate']],
    'a report',
  );
  t.equal(await keys('race-5'), 1, 'one key');
});
