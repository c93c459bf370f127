// The SQL behind the worker's jobs, against the real PostgreSQL: chunked periodic validation,
// a close racing a snapshot run, the materialized-view refresh in a shared schema, and the
// periodic-chain keeper (dead workers, lowered intervals).
import t from 'tap';
import {
  firstRow as one,
  freshDatabase,
  ownClient as connect,
  type TestDb,
  writePositionsDirectly,
} from '../helpers/db.js';
import { waitFor } from '../helpers/wait.js';

let seq = 0;
const fillJson = (asset: string, side: string, qty: string, price: string) =>
  JSON.stringify({ execution_id: `jf-${++seq}`, asset, side, execution_quantity: qty, execution_price: price });
const fill = (db: TestDb, asset: string, side: string, qty: string, price: string) =>
  db.query('select apply_order_fill($1::jsonb)', [fillJson(asset, side, qty, price)]);

t.test('validate_all_positions commits in chunks and validates every due position exactly once', async (t) => {
  const db = await freshDatabase(t);
  const assets = ['AAAUSDT', 'BBBUSDT', 'CCCUSDT', 'DDDUSDT', 'EEEUSDT'];
  for (const a of assets) await fill(db, a, 'Buy', '1', '100');
  await fill(db, 'OLDUSDT', 'Buy', '1', '100');
  await fill(db, 'OLDUSDT', 'Sell', '1', '100');
  const since = (await one(db, 'select clock_timestamp() as at')).at;
  // every open position now disagrees with its ledger; the closed one is not due (unchanged since)
  await writePositionsDirectly(db, "update positions set size = size + 1 where asset <> 'OLDUSDT'");
  const trace = 'job-trace-chunks';
  const r = (await one(db, 'call validate_all_positions($1, $2, 2, null)', [since, trace])).result;
  t.match(r, { validated: 5, invalid: 5, fixed: 5, skipped_busy: 0, chunks: 3 }, 'counts summed over the chunks');
  t.same(
    r.discrepancies.map((d: { asset: string }) => d.asset),
    assets,
    'each position once, in keyset order',
  );
  const fixes = (
    await db.query("select asset, at, trace_id from position_events where kind = 'validation_fix' order by asset")
  ).rows;
  t.same(
    fixes.map((f) => f.asset),
    assets,
    'one fix per position',
  );
  t.ok(
    fixes.every((f) => f.trace_id === trace),
    "the audit rows carry the caller's trace_id",
  );
  // now() is the transaction's start: one value per chunk shows a transaction per chunk
  const perChunk = new Map<number, number>();
  for (const f of fixes) perChunk.set(f.at.getTime(), (perChunk.get(f.at.getTime()) ?? 0) + 1);
  t.same([...perChunk.values()], [2, 2, 1], 'chunks of 2, 2 and 1 positions, each its own transaction');
  t.same(
    (await db.query('select size from positions order by asset')).rows.map((p) => p.size),
    ['1', '1', '1', '1', '1', '0'],
  );
  const again = (await one(db, 'call validate_all_positions(null, null, 2, null)')).result;
  t.match(again, { validated: 5, invalid: 0, fixed: 0, chunks: 3 }, 'a full last chunk ends on the next, empty one');
  const all = (await one(db, 'call validate_all_positions()')).result;
  t.match(all, { validated: 5, invalid: 0, chunks: 1 }, 'psql: defaults');
  await t.rejects(
    db.query('call validate_all_positions(null, null, 0, null)'),
    { code: '22023' },
    'a chunk holds at least one position',
  );
});

t.test('validate_position carries the trace_id it is given', async (t) => {
  const db = await freshDatabase(t);
  await fill(db, 'BTCUSDT', 'Buy', '1', '100');
  await writePositionsDirectly(db, "update positions set size = 3 where asset = 'BTCUSDT'");
  await db.query("select validate_position('BTCUSDT', 'one-way', true, 'run-trace-1')");
  t.equal(
    (await one(db, "select trace_id from position_events where kind = 'validation_fix'")).trace_id,
    'run-trace-1',
  );
  t.equal(
    (await one(db, "select trace_id from outbox where event_type = 'position_updated' order by id desc limit 1"))
      .trace_id,
    'run-trace-1',
    'and so does its event',
  );
  await writePositionsDirectly(db, "update positions set size = 4 where asset = 'BTCUSDT'");
  await db.query("select validate_position('BTCUSDT')");
  t.match(
    (await one(db, "select trace_id from position_events where kind = 'validation_fix' order by id desc limit 1"))
      .trace_id,
    /^validation:/,
    'psql without one: a trace of its own',
  );
});

t.test('R-26: a close committing while snapshot_all_positions waits for it is snapshotted by that run', async (t) => {
  const db = await freshDatabase(t);
  await fill(db, 'BTCUSDT', 'Buy', '1', '100');
  t.equal((await one(db, 'select snapshot_all_positions() as n')).n, 1);
  const closer = await connect(t, db);
  const snapper = await connect(t, db);
  await closer.query('begin');
  await closer.query('select apply_order_fill($1::jsonb)', [fillJson('BTCUSDT', 'Sell', '1', '110')]);
  const pid = (await snapper.query('select pg_backend_pid() as pid')).rows[0].pid;
  const running = snapper.query('select snapshot_all_positions() as n');
  await waitFor(
    async () =>
      (await one(db, 'select wait_event_type from pg_stat_activity where pid = $1', [pid]))?.wait_event_type === 'Lock',
    { what: 'the snapshot run waiting for the closing fill' },
  );
  await closer.query('commit');
  // the run locks a row before it reads it, so it snapshots the version it waited for
  t.equal((await running).rows[0].n, 1, 'that run snapshotted the position once, as its lock found it');
  const last = await one(
    db,
    'select size, snapshot_data from position_snapshots order by snapshot_timestamp desc, created_at desc limit 1',
  );
  t.equal(last.size, '0');
  t.equal(last.snapshot_data.is_open, false);
  t.equal((await one(db, 'select snapshot_all_positions() as n')).n, 0, 'then nothing more');
});

t.test('R-26: a close whose transaction began before a snapshot run but wrote after it is captured', async (t) => {
  const db = await freshDatabase(t);
  await fill(db, 'ETHUSDT', 'Buy', '1', '100');
  const closer = await connect(t, db);
  await closer.query('begin');
  await closer.query('select now()'); // its transaction time, hence last_updated, is before the run
  t.equal((await one(db, 'select snapshot_all_positions() as n')).n, 1, 'the run snapshots the open position');
  await closer.query('select apply_order_fill($1::jsonb)', [fillJson('ETHUSDT', 'Sell', '1', '110')]);
  await closer.query('commit');
  const p = await one(db, "select last_updated < last_snapshot_at as older from positions where asset = 'ETHUSDT'");
  t.equal(p.older, true, 'the close carries a last_updated older than last_snapshot_at');
  t.equal((await one(db, 'select snapshot_all_positions() as n')).n, 1, 'the next run still snapshots the close');
  t.equal((await one(db, 'select snapshot_all_positions() as n')).n, 0, 'then nothing more');
  await db.query(
    "update position_snapshots set created_at = now() - interval '100 days', snapshot_timestamp = now() - interval '100 days'",
  );
  t.match((await one(db, 'select prune_snapshot_partitions(90) as r')).r, { deleted: 2 }, 'its snapshots pruned');
  t.equal(
    (await one(db, 'select snapshot_all_positions() as n')).n,
    0,
    'pruned snapshots of an unchanged closed position: none again',
  );
});

t.test('refresh_materialized_views refreshes ours only, whatever else the schema holds', async (t) => {
  const db = await freshDatabase(t);
  await db.query('create table other_service_trades (id int, qty numeric)');
  await db.query('insert into other_service_trades values (1, 2)');
  // no unique index: REFRESH ... CONCURRENTLY of it would fail
  await db.query('create materialized view other_service_totals as select sum(qty) as qty from other_service_trades');
  await db.query('insert into other_service_trades values (2, 3)');
  const r = (await one(db, 'select refresh_materialized_views() as r')).r;
  t.same(r.refreshed.sort(), ['portfolio_pnl_hourly', 'position_pnl_hourly']);
  t.equal(
    (await one(db, 'select qty from other_service_totals')).qty,
    '2',
    "the other service's view is left as it was",
  );
});

t.test('ensure_periodic_job: dead workers, live workers, lowered intervals', async (t) => {
  const db = await freshDatabase(t);
  const ensure = async (task: string, seconds: number) =>
    (await one(db, 'select ensure_periodic_job($1, $2) as r', [task, seconds])).r;
  const job = (task: string) =>
    one(db, 'select id, locked_by, locked_at, run_at, attempts from graphile_worker.jobs where key = $1', [task]);
  const lock = (task: string, ago: string, by: string) =>
    db.query(
      `update graphile_worker._private_jobs set locked_at = now() - $2::interval, locked_by = $3, attempts = attempts + 1
      where key = $1`,
      [task, ago, by],
    );

  t.equal(await ensure('snapshot_all_positions', 60), 'scheduled', 'a fresh chain');
  t.equal(await ensure('snapshot_all_positions', 60), null, 'then nothing to do');

  await lock('snapshot_all_positions', '9 minutes', 'worker-alive');
  t.equal(
    await ensure('snapshot_all_positions', 60),
    null,
    'locked for less than the bound (10 minutes at least): alive',
  );
  t.equal((await job('snapshot_all_positions')).locked_by, 'worker-alive');

  t.equal(await ensure('validate_all_positions', 1800), 'scheduled');
  await lock('validate_all_positions', '59 minutes', 'worker-slow');
  t.equal(await ensure('validate_all_positions', 1800), null, 'twice a 30-minute interval is an hour');

  t.equal(await ensure('sample_portfolio_metrics', 60), 'scheduled');
  const dead = await job('sample_portfolio_metrics');
  await lock('sample_portfolio_metrics', '11 minutes', 'worker-gone');
  const run = (
    await one(
      db,
      "select job_run_start('sample_portfolio_metrics', $1, 'sample_portfolio_metrics', '{}', 1, 'dead-run') as id",
      [dead.id],
    )
  ).id;
  const finished = (
    await one(
      db,
      "select job_run_start('sample_portfolio_metrics', $1, 'sample_portfolio_metrics', '{}', 0, 'old-run') as id",
      [dead.id],
    )
  ).id;
  await db.query("select job_run_finish($1, 'success')", [finished]);
  t.equal(
    await ensure('sample_portfolio_metrics', 60),
    'revived',
    'locked for longer than the bound: its worker is dead',
  );
  const revived = await job('sample_portfolio_metrics');
  t.match(revived, { id: dead.id, locked_by: null, locked_at: null }, 'the same job, released to run again');
  t.ok(revived.run_at <= new Date(), 'at once');
  const runs = (
    await db.query('select id, outcome, error, finished_at from job_runs where job_id = $1 order by id', [dead.id])
  ).rows;
  t.match(
    runs,
    [
      { id: run, outcome: 'failure', error: /worker died: worker-gone/, finished_at: Date },
      { id: finished, outcome: 'success' },
    ],
    'its running job_runs row is closed as failed; finished rows are left alone',
  );

  t.equal(await ensure('prune_job_history', 86_400), 'scheduled');
  await db.query(
    "update graphile_worker._private_jobs set run_at = now() + interval '1 hour' where key = 'prune_job_history'",
  );
  t.equal(await ensure('prune_job_history', 86_400), null, 'a slot within one interval stays');
  t.equal(await ensure('prune_job_history', 60), 'rescheduled', 'the interval lowered: the slot comes closer');
  const moved = await job('prune_job_history');
  t.ok(moved.run_at.getTime() <= Date.now() + 61_000, 'to one (new) interval from now');
});

t.test('R-27: a daily job runs next at 00:05 UTC, any other one an interval from now', async (t) => {
  const db = await freshDatabase(t);
  const c = await connect(t, db);
  // read with the now() it used: the rules are checked against it
  const next = async (seconds: number) => {
    await c.query('begin');
    try {
      return (await c.query('select _next_run_at($1) as r, now() as now', [seconds])).rows[0];
    } finally {
      await c.query('rollback');
    }
  };
  for (const zone of ['UTC', 'Asia/Tokyo', 'America/New_York']) {
    await c.query(`set timezone = '${zone}'`);
    const daily = await next(86_400);
    const run = new Date(daily.r);
    t.equal(run.getUTCHours() * 60 + run.getUTCMinutes(), 5, `at 00:05 UTC (session in ${zone})`);
    t.equal(run.getUTCSeconds() + run.getUTCMilliseconds(), 0);
    const ahead = run.getTime() - new Date(daily.now).getTime();
    t.ok(ahead > 0 && ahead <= 86_400_000, 'within the next day');
    const weekly = await next(7 * 86_400);
    const w = new Date(weekly.r);
    t.equal(w.getUTCHours() * 60 + w.getUTCMinutes(), 5);
    t.ok(w.getTime() - run.getTime() === 6 * 86_400_000, 'a week: six days after the next 00:05');
    const minute = await next(60);
    t.equal(new Date(minute.r).getTime() - new Date(minute.now).getTime(), 60_000, 'a minute from now');
  }
  await db.query("select schedule_next_run('prune_snapshots', 86400)");
  const job = (await db.query("select run_at from graphile_worker.jobs where key = 'prune_snapshots'")).rows[0];
  t.equal(new Date(job.run_at).getUTCMinutes(), 5, 'schedule_next_run uses it');
  t.equal((await one(db, "select ensure_periodic_job('prune_snapshots', 86400) as r")).r, null, 'and it stays');
});

t.test(
  'release_dead_one_off_jobs: a validate_position held for 10 minutes is released, a fresh one is not',
  async (t) => {
    const db = await freshDatabase(t);
    await db.query(
      'select graphile_worker.add_job(\'validate_position\', \'{"asset":"AUSDT","mode":"one-way"}\'::json, job_key => \'validate:AUSDT:one-way\')',
    );
    await db.query(
      'select graphile_worker.add_job(\'validate_position\', \'{"asset":"BUSDT","mode":"one-way"}\'::json, job_key => \'validate:BUSDT:one-way\')',
    );
    const lock = (key: string, ago: string, by: string) =>
      db.query(
        'update graphile_worker._private_jobs set locked_at = now() - $2::interval, locked_by = $3, attempts = attempts + 1 where key = $1',
        [key, ago, by],
      );
    await lock('validate:AUSDT:one-way', '11 minutes', 'worker-gone');
    await lock('validate:BUSDT:one-way', '1 minute', 'worker-alive');
    const dead = await one(db, "select id from graphile_worker.jobs where key = 'validate:AUSDT:one-way'");
    const run = (
      await one(
        db,
        "select job_run_start('validate_position', $1, 'validate:AUSDT:one-way', '{}', 1, 'dead-run') as id",
        [dead.id],
      )
    ).id;
    t.equal((await one(db, 'select release_dead_one_off_jobs() as n')).n, 1, 'one dead worker');
    const jobs = (await db.query('select key, locked_by from graphile_worker.jobs order by key')).rows;
    t.same(jobs, [
      { key: 'validate:AUSDT:one-way', locked_by: null },
      { key: 'validate:BUSDT:one-way', locked_by: 'worker-alive' },
    ]);
    t.match(await one(db, 'select outcome, error from job_runs where id = $1', [run]), {
      outcome: 'failure',
      error: /worker died: worker-gone/,
    });
    t.equal((await one(db, 'select release_dead_one_off_jobs() as n')).n, 0, 'then nothing');
  },
);
