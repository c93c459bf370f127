// The worker role recovering from how its previous process ended (SPEC.md §7: a missed run
// runs once at start): a periodic job left locked by a killed worker, a slot planned under a
// longer interval, and a SIGTERM that lands on a run longer than the shutdown timeout.
import t from 'tap';
import pg from 'pg';
import { freshDatabase } from '../helpers/db.js';
import { startService } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';

const db = await freshDatabase(t);
const one = async (sql: string, params: unknown[] = []) => (await db.query(sql, params)).rows[0];
await db.query('select apply_order_fill($1::jsonb)', [
  JSON.stringify({
    execution_id: 'rec-1',
    asset: 'BTCUSDT',
    side: 'Buy',
    execution_quantity: '1',
    execution_price: '100',
  }),
]);

// As a worker killed with -9 half an hour ago leaves it: locked, its run never finished.
const killed = (
  await one(`select id from graphile_worker.add_job('snapshot_all_positions', '{}'::json,
  job_key => 'snapshot_all_positions', run_at => now() - interval '31 minutes', max_attempts => 5)`)
).id;
await db.query(
  `update graphile_worker._private_jobs set locked_at = now() - interval '30 minutes',
  locked_by = 'worker-killed-with-9', attempts = 1 where id = $1`,
  [killed],
);
const deadRun = (
  await one(`select job_run_start('snapshot_all_positions', $1, 'snapshot_all_positions', '{}', 1, 'dead') as id`, [
    killed,
  ])
).id;
// As a worker configured with an hourly interval left it.
await db.query(`select graphile_worker.add_job('sample_portfolio_metrics', '{}'::json, job_key => 'sample_portfolio_metrics',
  run_at => now() + interval '1 hour', max_attempts => 5)`);

const w = await startService(t, {
  databaseUrl: db.url,
  env: {
    POSITION_MANAGER_ROLES: 'worker',
    POSITION_MANAGER_SNAPSHOT_INTERVAL: '1',
    POSITION_MANAGER_METRICS_HISTORY_INTERVAL: '1',
    POSITION_MANAGER_SHUTDOWN_TIMEOUT_MS: '4000',
  },
});
const successes = async (task: string) =>
  Number((await one("select count(*) as n from job_runs where task = $1 and outcome = 'success'", [task])).n);

t.test('a periodic job left locked by a killed worker runs again at start, not 4 hours later', async (t) => {
  await waitFor(async () => (await successes('snapshot_all_positions')) >= 2, {
    what: 'the chain running again',
    timeoutMs: 20_000,
  });
  t.match(
    await one('select outcome, error from job_runs where id = $1', [deadRun]),
    { outcome: 'failure', error: /worker died: worker-killed-with-9/ },
    "the dead run's row is closed as failed",
  );
  t.ok(
    w.logs.some((l) => l.level === 'warn' && /worker died/.test(l.msg) && l.task === 'snapshot_all_positions'),
    'logged at warn',
  );
});

t.test('a lowered interval applies at restart, not after the slot planned under the old one', async (t) => {
  await waitFor(async () => (await successes('sample_portfolio_metrics')) >= 1, {
    what: 'a metrics sample',
    timeoutMs: 20_000,
  });
  t.pass('sampled within seconds of the start');
});

t.test(
  'SIGTERM during a run longer than the shutdown timeout: the run is cancelled and its job released',
  async (t) => {
    const blocker = new pg.Client({ connectionString: db.url });
    await blocker.connect();
    t.teardown(() => blocker.end());
    await blocker.query('begin');
    await blocker.query('select * from positions for update');
    const stuck = await waitFor(
      async () =>
        await one(`select r.id, r.job_id from job_runs r
      where r.task = 'snapshot_all_positions' and r.outcome is null
        and exists (select 1 from pg_stat_activity a where a.datname = current_database() and a.wait_event_type = 'Lock'
                      and a.query like '%snapshot_all_positions%')`),
      { what: 'a snapshot run waiting for the lock', timeoutMs: 20_000 },
    );
    const started = Date.now();
    t.equal(await w.stop('SIGTERM'), 0, 'the process exits cleanly');
    t.ok(Date.now() - started < 4000, 'within the shutdown timeout');
    t.match(
      await one('select outcome, error from job_runs where id = $1', [stuck.id]),
      { outcome: 'failure', error: /shutting down/ },
      'the run is recorded as failed',
    );
    t.match(
      await one('select locked_at, locked_by, last_error from graphile_worker.jobs where id = $1', [stuck.job_id]),
      { locked_at: null, locked_by: null, last_error: /shutting down/ },
      'its job is released for a retry, not left locked',
    );
    await blocker.query('rollback');
  },
);
