// The worker role against the real PostgreSQL and RabbitMQ: periodic snapshots and validation
// with short intervals, one run per slot with two workers, a discrepancy leading to exactly
// one validation after the grace period, failures recorded and retried, and portfolio events;
// validation fixes carry the job run's trace_id.
import t from 'tap';
import { freshBroker } from '../helpers/amqp.js';
import { freshDatabase, writePositionsDirectly } from '../helpers/db.js';
import { startService } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';
import { PORTFOLIO_METRICS } from '../helpers/ledger-names.js';

const db = await freshDatabase(t);
const broker = await freshBroker(t);
let seq = 0;
const fill = (asset: string, side: string, qty: string, price: string) =>
  db.query('select apply_order_fill($1::jsonb)', [
    JSON.stringify({ execution_id: `job-${++seq}`, asset, side, execution_quantity: qty, execution_price: price }),
  ]);
const count = async (sql: string, params: unknown[] = []) => Number((await db.query(sql, params)).rows[0].n);

await fill('BTCUSDT', 'Buy', '1.0', '50000');
await fill('ETHUSDT', 'Buy', '10', '3000');
const snapshots = await broker.collect('position-manager.position_snapshot_created');
const portfolio = await broker.collect('position-manager.portfolio_updated');

const env = {
  POSITION_MANAGER_ROLES: 'worker,relay',
  POSITION_MANAGER_SNAPSHOT_INTERVAL: '3',
  POSITION_MANAGER_VALIDATION_INTERVAL: '2',
  POSITION_MANAGER_METRICS_HISTORY_INTERVAL: '2',
  POSITION_MANAGER_MATVIEW_REFRESH_INTERVAL: '2',
  POSITION_MANAGER_SIZE_DISCREPANCY_GRACE_SECONDS: '1',
  POSITION_MANAGER_PORTFOLIO_EVENT_INTERVAL_MS: '200',
};
const w1 = await startService(t, { databaseUrl: db.url, amqpUrl: broker.url, env });
const w2 = await startService(t, { databaseUrl: db.url, amqpUrl: broker.url, env });
/** position_manager_position_updates_total{source="validation"} over both workers. */
const validationUpdates = async () => {
  let n = 0;
  for (const w of [w1, w2]) {
    const text = (await w.request('GET', '/metrics', { key: null })).body as string;
    n += Number(/^position_manager_position_updates_total\{source="validation"[^}]*\} (\d+)/m.exec(text)?.[1] ?? 0);
  }
  return n;
};

t.test('TC-020 and TC-024: scheduled snapshots, events, job_runs; two workers, one run per slot', async (t) => {
  await waitFor(
    async () =>
      (await count(
        "select count(*) as n from job_runs where task = 'snapshot_all_positions' and outcome = 'success'",
      )) >= 3,
    { what: 'three snapshot slots', timeoutMs: 30_000 },
  );
  const s = (
    await db.query(
      "select * from position_snapshots where asset = 'BTCUSDT' and trigger = 'scheduled' order by snapshot_timestamp",
    )
  ).rows;
  t.ok(s.length >= 3, 'scheduled snapshots of BTCUSDT');
  t.equal(s[0].position_id, (await db.query("select id from positions where asset = 'BTCUSDT'")).rows[0].id);
  for (const f of [
    'id',
    'asset',
    'mode',
    'side',
    'size',
    'average_entry_price',
    'unrealized_pnl_pct',
    'time_held_minutes',
    'position_size_norm',
    'legs',
    'version',
  ])
    t.ok(f in s[0].snapshot_data, `snapshot_data.${f}`);
  const runs = (
    await db.query(
      "select started_at from job_runs where task = 'snapshot_all_positions' and outcome = 'success' order by started_at",
    )
  ).rows;
  for (let i = 1; i < runs.length; i++)
    t.ok(
      runs[i].started_at - runs[i - 1].started_at >= 2500,
      `slot ${i}: runs ≥ one interval apart (no second worker ran it)`,
    );
  const perRun = await db.query(
    "select trace_id, count(*) as n from position_snapshots where trigger = 'scheduled' group by trace_id",
  );
  t.ok(
    perRun.rows.every((r) => Number(r.n) === 2),
    'one snapshot per position per run',
  );
  const ev = await waitFor(
    () => snapshots.bodies().find((b) => b.asset === 'BTCUSDT' && b.snapshot?.trigger === 'scheduled'),
    { what: 'event' },
  );
  t.match(ev, {
    event_type: 'position_snapshot_created',
    snapshot_id: String,
    position_id: String,
    snapshot: { created_at: String, snapshot_data: { asset: 'BTCUSDT' } },
  });
  t.ok(
    w1.logs.concat(w2.logs).some((l) => l.msg === 'job done' && l.task === 'snapshot_all_positions'),
    'logged',
  );
});

t.test('TC-025 periodic validation fixes a position that disagrees with its ledger', async (t) => {
  await writePositionsDirectly(db, "update positions set size = 3 where asset = 'ETHUSDT'");
  await waitFor(
    async () => (await db.query("select size from positions where asset = 'ETHUSDT'")).rows[0].size === '10',
    { what: 'fixed from the ledger', timeoutMs: 15_000 },
  );
  const run = await waitFor(
    async () =>
      (
        await db.query(
          "select result, trace_id from job_runs where task = 'validate_all_positions' and (result->>'fixed')::int > 0",
        )
      ).rows[0],
    { what: 'the run recorded with its counts' },
  );
  t.match(run.result, { fixed: 1, invalid: 1, discrepancies: [{ asset: 'ETHUSDT' }] });
  t.equal(await waitFor(validationUpdates, { what: 'the fix counted' }), 1, 'one position update from validation');
  const audit = (
    await db.query("select trace_id from position_events where asset = 'ETHUSDT' and kind = 'validation_fix'")
  ).rows;
  t.equal(audit.length, 1, 'audited once');
  t.equal(audit[0].trace_id, run.trace_id, "the audit row carries the job run's trace_id (SPEC §6.2)");
  await waitFor(
    () =>
      w1.logs.concat(w2.logs).some((l) => l.msg === 'periodic validation fixed a discrepancy' && l.level === 'warn'),
    { what: 'warn log' },
  );
});

t.test('TC-003: a burst of discrepancy reports leads to exactly one validation after the grace period', async (t) => {
  await fill('SOLUSDT', 'Buy', '1.5', '100');
  for (let i = 0; i < 3; i++)
    await db.query('select apply_position_report($1::jsonb)', [
      JSON.stringify({
        event_type: 'position',
        event_id: `burst-${i}`,
        data: { symbol: 'SOLUSDT', size: '1.8', avgPrice: '100' },
      }),
    ]);
  t.equal(
    await count("select count(*) as n from graphile_worker.jobs where key = 'validate:SOLUSDT:one-way'"),
    1,
    'one job queued',
  );
  await waitFor(
    async () => (await db.query("select size from positions where asset = 'SOLUSDT'")).rows[0].size === '1.8',
    { what: 'the newer report adopted by validation', timeoutMs: 15_000 },
  );
  t.equal(
    await count(
      "select count(*) as n from job_runs where task = 'validate_position' and payload->>'asset' = 'SOLUSDT'",
    ),
    1,
    'one run',
  );
  const traces = (
    await db.query(`select (select trace_id from job_runs where task = 'validate_position' and payload->>'asset' = 'SOLUSDT') as run,
      (select trace_id from position_events where asset = 'SOLUSDT' and kind = 'validation_fix') as audit,
      (select trace_id from outbox where event_type = 'position_updated' and payload->>'asset' = 'SOLUSDT' and payload->>'update_source' = 'validation') as event`)
  ).rows[0];
  t.same(
    [traces.audit, traces.event],
    [traces.run, traces.run],
    "the fix's audit row and event carry the job run's trace_id",
  );
  await waitFor(async () => (await validationUpdates()) === 2, {
    what: 'the discrepancy fix counted as a position update from validation',
  });
});

t.test('a failing task is recorded in job_runs with its error and retried', async (t) => {
  await db.query(
    'select graphile_worker.add_job(\'validate_position\', \'{"asset": "bad asset!"}\'::json, max_attempts => 2)',
  );
  const rows = await waitFor(
    async () => {
      const r = (
        await db.query(
          "select outcome, error, attempt from job_runs where task = 'validate_position' and payload->>'asset' = 'bad asset!' and finished_at is not null order by id",
        )
      ).rows;
      return r.length >= 2 && r;
    },
    { what: 'two attempts', timeoutMs: 20_000 },
  );
  t.same(
    rows.map((r) => r.outcome),
    ['failure', 'failure'],
  );
  t.match(rows[0].error, /asset/);
  t.same(
    rows.map((r) => r.attempt),
    [1, 2],
    'retried by graphile-worker',
  );
  // job_runs is written by the task before graphile-worker unlocks the job, so the view may
  // still say 'running' for a moment after the second attempt's row is finished
  const q = await waitFor(
    async () => {
      const r = (await db.query("select state, last_error from job_queue_view where task = 'validate_position'")).rows;
      return r.length === 1 && r[0].state !== 'running' && r;
    },
    { what: 'the job unlocked after its last attempt', timeoutMs: 20_000 },
  );
  t.match(q, [{ state: 'failed', last_error: /asset/ }], 'job_queue_view shows the failed job');
});

t.test('TC-023: a change is followed by a portfolio_updated equal to portfolio_metrics()', async (t) => {
  await fill('BTCUSDT', 'Buy', '0.5', '52000');
  const m = (await db.query('select portfolio_metrics() as m')).rows[0].m;
  const ev = await waitFor(() => portfolio.bodies().find((b) => b.total_exposure_usdt === m.total_exposure_usdt), {
    what: 'portfolio_updated',
    timeoutMs: 10_000,
  });
  for (const k of PORTFOLIO_METRICS) t.same(ev[k], m[k], k);
  t.ok((await count('select count(*) as n from portfolio_metrics_history')) >= 1, 'history sampled');
  t.ok(
    (await count(
      "select count(*) as n from job_runs where task = 'refresh_materialized_views' and outcome = 'success'",
    )) >= 1,
    'matviews refreshed',
  );
});

t.test('SIGTERM stops the workers cleanly', async (t) => {
  t.equal(await w1.stop('SIGTERM'), 0);
  t.equal(await w2.stop('SIGTERM'), 0);
});
