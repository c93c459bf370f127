// The task list: each task is a thin call of one SQL function, wrapped so that every run
// (and every retry) leaves a job_runs row, a metric and a log line (SPEC.md §7). The run's
// trace_id goes into the SQL call, so its audit rows and events carry it (§6.2).
import { randomUUID } from 'node:crypto';
import type { JobHelpers, Task, TaskList } from 'graphile-worker';
import type pg from 'pg';
import type { Config } from '../config.js';
import { isNotFound } from '../db/errors.js';
import { jobRunFailed, jobRunStart, jobRunSucceeded, lastSuccessStartedAt, scheduleNextRun } from '../db/jobs.js';
import {
  ensureHistoryPartitions,
  pruneInboxOutbox,
  pruneJobHistory,
  pruneSnapshots,
  refreshMaterializedViews,
} from '../db/maintenance.js';
import { publishPortfolioUpdate, samplePortfolioMetrics, type LimitCheck } from '../db/portfolio.js';
import { snapshotAllPositions, validateAllPositions, validatePosition } from '../db/positions.js';
import type { Queryable } from '../db/query.js';
import { withRunConnection } from '../db/run-connection.js';
import type { Logger } from '../log.js';
import { countValidation, metrics } from '../metrics.js';
import type { Checks } from '../runtime.js';
import { markPriceRefresher } from './mark-prices.js';
import { exchangeReconciler } from './reconcile.js';

type Work = (payload: Record<string, unknown>, traceId: string, db: Queryable, jobId: string) => Promise<unknown>;

function recorded(name: string, pool: pg.Pool, log: Logger, work: Work, next?: () => Promise<void>): Task {
  return async (payload: unknown, helpers: JobHelpers) => {
    const traceId = randomUUID();
    const job = helpers.job;
    const p = (payload ?? {}) as Record<string, unknown>;
    const runId = await jobRunStart(pool, {
      task: name,
      jobId: job.id,
      jobKey: job.key ?? null,
      payload: p,
      attempt: job.attempts,
      traceId,
    });
    const jlog = log.child({ trace_id: traceId, task: name, job_id: job.id, attempt: job.attempts });
    try {
      const result = await withRunConnection(pool, helpers.abortSignal, (db) => work(p, traceId, db, job.id));
      await jobRunSucceeded(pool, runId, result);
      metrics.jobRuns.inc({ task: name, outcome: 'success' });
      jlog.info({ result }, 'job done');
      await next?.();
    } catch (err) {
      const message = (err as Error).message;
      await jobRunFailed(pool, runId, message).catch(() => undefined);
      metrics.jobRuns.inc({ task: name, outcome: 'failure' });
      jlog.error({ err: message }, 'job failed; graphile-worker retries it');
      throw err;
    }
  };
}

export interface Periodic {
  task: string;
  intervalSeconds: number;
}

export function periodicTasks(config: Config): Periodic[] {
  return [
    { task: 'snapshot_all_positions', intervalSeconds: config.snapshotIntervalSeconds },
    { task: 'validate_all_positions', intervalSeconds: config.validationIntervalSeconds },
    { task: 'sample_portfolio_metrics', intervalSeconds: config.metricsHistoryIntervalSeconds },
    { task: 'refresh_materialized_views', intervalSeconds: config.matviewRefreshIntervalSeconds },
    { task: 'ensure_history_partitions', intervalSeconds: 86_400 },
    { task: 'prune_snapshots', intervalSeconds: 86_400 },
    { task: 'prune_inbox_outbox', intervalSeconds: 3_600 },
    { task: 'prune_job_history', intervalSeconds: 86_400 },
    ...(config.priceRefreshIntervalSeconds > 0
      ? [{ task: 'refresh_mark_prices', intervalSeconds: config.priceRefreshIntervalSeconds }]
      : []),
    ...(config.reconcileIntervalSeconds > 0
      ? [{ task: 'reconcile_with_exchange', intervalSeconds: config.reconcileIntervalSeconds }]
      : []),
  ];
}

export function taskList(pool: pg.Pool, config: Config, log: Logger, checks: Checks): TaskList {
  const work: Record<string, Work> = {
    snapshot_all_positions: (_p, trace, db, jobId) => snapshotAllPositions(db, trace, jobId),
    validate_all_positions: async (_p, trace, db) => {
      const since = await lastSuccessStartedAt(db, 'validate_all_positions');
      const r = await validateAllPositions(db, since, trace);
      for (const d of r.discrepancies) {
        log.warn(
          { trace_id: trace, asset: d.asset, mode: d.mode, discrepancies: d.discrepancies },
          'periodic validation fixed a discrepancy',
        );
        for (const x of d.discrepancies) metrics.validationDiscrepancies.inc({ field: x.field });
      }
      metrics.validationRuns.inc({ trigger: 'periodic', outcome: r.invalid ? 'discrepancy' : 'valid' });
      if (r.fixed > 0) metrics.positionUpdates.inc({ source: 'validation' }, r.fixed);
      return r;
    },
    validate_position: async (p, trace, db) => {
      // queued by SQL (docs/CONTRACTS.md, "Jobs queued from SQL")
      const { asset, mode } = p as { asset: string; mode?: string };
      try {
        const r = await validatePosition(db, { asset, mode: mode ?? 'one-way', fix: true, traceId: trace });
        countValidation('discrepancy', r);
        if (!r.is_valid)
          log.warn(
            { trace_id: trace, asset, mode, discrepancies: r.discrepancies },
            'validation after a size discrepancy',
          );
        else log.info({ trace_id: trace, asset, mode }, 'validation after a size discrepancy: the position is valid');
        return r;
      } catch (err) {
        if (isNotFound(err)) return { is_valid: null, error_message: 'position_not_found' };
        throw err;
      }
    },
    publish_portfolio_update: async (_p, trace, db) => limitLog(await publishPortfolioUpdate(db, trace), trace),
    sample_portfolio_metrics: async (_p, trace, db) => limitLog(await samplePortfolioMetrics(db, trace), trace),
    refresh_materialized_views: (_p, _t, db) => refreshMaterializedViews(db),
    ensure_history_partitions: (_p, _t, db) => ensureHistoryPartitions(db),
    prune_snapshots: (_p, _t, db) => pruneSnapshots(db, config.snapshotRetentionDays),
    prune_inbox_outbox: (_p, _t, db) => pruneInboxOutbox(db, config.inboxRetentionDays, config.outboxRetentionHours),
    prune_job_history: async (_p, _t, db) => ({ deleted: await pruneJobHistory(db, config.jobHistoryRetentionDays) }),
    refresh_mark_prices: markPriceRefresher(config, checks.prices, log),
    reconcile_with_exchange: exchangeReconciler(config, checks.exchangeReconcile, log),
  };
  // a crossing is logged at warn, the way back at info.
  const limitLog = (r: LimitCheck, traceId: string) => {
    const { limit } = r;
    if (limit?.transition === 'exceeded')
      log.warn(
        { trace_id: traceId, limit_value: limit.limit_value, current_value: limit.current_value },
        'portfolio exposure limit exceeded',
      );
    else if (limit?.transition === 'cleared')
      log.info(
        { trace_id: traceId, limit_value: limit.limit_value, current_value: limit.current_value },
        'portfolio exposure back within the limit',
      );
    return r;
  };
  const periodic = new Map(periodicTasks(config).map((p) => [p.task, p.intervalSeconds]));
  const list: TaskList = {};
  for (const [name, fn] of Object.entries(work)) {
    const interval = periodic.get(name);
    list[name] = recorded(
      name,
      pool,
      log,
      fn,
      interval === undefined ? undefined : () => scheduleNextRun(pool, name, interval),
    );
  }
  return list;
}
