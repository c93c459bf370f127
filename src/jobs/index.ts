// The worker role: graphile-worker in-process on the service's database (schema migrated at
// start), the periodic chains kept alive, and position changes turned into throttled
// publish_portfolio_update jobs outside the apply transactions.
import { Logger as WorkerLogger, run, type LogFunctionFactory } from 'graphile-worker';
import { schedulePortfolioUpdate } from '../db/jobs.js';
import { listen } from '../db/listen.js';
import type { Component, Runtime } from '../runtime.js';
import { FOREIGN_WRITE_CHANNEL, watchForeignWrites } from './foreign-writes.js';
import { keepPeriodicJobs } from './keeper.js';
import { periodicTasks, taskList } from './tasks.js';

const KEEPER_MS = 60_000;
const PORTFOLIO_TICK_MS = 100;

export async function startWorker(rt: Runtime): Promise<Component[]> {
  const { config, log, pool } = rt;
  const logFactory: LogFunctionFactory = (scope) => (level, message, meta) => {
    const fields = { worker_scope: scope.label ?? scope.taskIdentifier, job_id: scope.jobId, ...(meta ?? {}) };
    const severity: string = level; // graphile-worker's LogLevel is a const enum of these strings
    if (severity === 'error') log.error(fields, message);
    else if (severity === 'warning') log.warn(fields, message);
    else log.debug(fields, message);
  };
  const runner = await run({
    connectionString: rt.databaseUrl,
    concurrency: config.workerConcurrency,
    maxPoolSize: config.workerConcurrency + 2,
    noHandleSignals: true,
    // A job due later (the trailing portfolio_updated at the end of its window) is found by
    // polling, not by graphile-worker's NOTIFY: the poll bounds how late that event can be.
    pollInterval: 250,
    // Half the shutdown budget for runs to finish; then their statements are cancelled
    // (db/run-connection.ts) so that their jobs are released, not left locked, within the other half.
    gracefulShutdownAbortTimeout: Math.floor(config.shutdownTimeoutMs / 2),
    // Batched (even with no delay), completing or failing a job is awaited by the shutdown;
    // unbatched it is fire-and-forget, and an exit right after a run leaves its job locked.
    preset: { worker: { completeJobBatchDelay: 0, failJobBatchDelay: 0 } },
    taskList: taskList(pool, config, log, rt.checks),
    logger: new WorkerLogger(logFactory),
  });

  const keep = () => keepPeriodicJobs(pool, log, periodicTasks(config));
  await keep();
  const keeper = setInterval(() => void keep(), KEEPER_MS);

  // Changes arrive as NOTIFY; at most one schedule call per tick, after the change committed,
  // so the job that runs next sees it (the trailing event of a burst). The same connection
  // hears of the writes of other services that were not applied, for the log.
  let dirty = false;
  const changes = listen(rt.databaseUrl, ['position_manager_changes', FOREIGN_WRITE_CHANNEL], log);
  changes.on((channel) => channel === 'position_manager_changes' && (dirty = true));
  const foreignWrites = watchForeignWrites(changes, log);
  changes.onStateChange((up) => up && (dirty = true));
  const ticker = setInterval(() => {
    if (!dirty) return;
    dirty = false;
    schedulePortfolioUpdate(pool).catch((err: Error) => {
      dirty = true;
      log.warn({ err: err.message }, 'cannot schedule the portfolio update yet');
    });
  }, PORTFOLIO_TICK_MS);

  log.info({ concurrency: config.workerConcurrency }, 'worker started');
  return [
    {
      name: 'worker',
      async stop() {
        clearInterval(keeper);
        clearInterval(ticker);
        foreignWrites.stop();
        await changes.close();
        await runner.stop();
      },
    },
  ];
}
