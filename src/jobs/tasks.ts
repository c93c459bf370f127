// The task list: each task is a thin call of one SQL function, wrapped so that every run
// (and every retry) leaves a job_runs row, a metric and a log line (SPEC.md §7). The run's
// trace_id goes into the SQL call, so its audit rows and events carry it (§6.2).
import { randomUUID } from 'node:crypto';
import type { JobHelpers, Task, TaskList } from 'graphile-worker';
import type pg from 'pg';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { countValidation, metrics, type ValidationOutcome } from '../metrics.js';
import type { Checks } from '../runtime.js';
import { withRunConnection, type Query } from './connection.js';
import { markPriceRefresher } from './mark-prices.js';
import { exchangeReconciler } from './reconcile.js';

type Work = (payload: Record<string, unknown>, traceId: string, q: Query) => Promise<unknown>;

async function sql(pool: pg.Pool, text: string, params: unknown[]): Promise<unknown> {
  return (await pool.query<{ r: unknown }>(text, params)).rows[0]?.r ?? null;
}

function recorded(name: string, pool: pg.Pool, log: Logger, work: Work, next?: () => Promise<void>): Task {
  return async (payload: unknown, helpers: JobHelpers) => {
    const traceId = randomUUID();
    const job = helpers.job;
    const p = (payload ?? {}) as Record<string, unknown>;
    const runId = (await sql(pool, 'select job_run_start($1, $2, $3, $4, $5, $6) as r', [
      name,
      job.id,
      job.key ?? null,
      JSON.stringify(p),
      job.attempts,
      traceId,
    ])) as string;
    const jlog = log.child({ trace_id: traceId, task: name, job_id: job.id, attempt: job.attempts });
    try {
      const result = await withRunConnection(pool, helpers.abortSignal, (q) => work(p, traceId, q));
      await pool.query("select job_run_finish($1, 'success', null, $2)", [runId, JSON.stringify(result)]);
      metrics.jobRuns.inc({ task: name, outcome: 'success' });
      jlog.info({ result }, 'job done');
      await next?.();
    } catch (err) {
      const message = (err as Error).message;
      await pool.query("select job_run_finish($1, 'failure', $2, null)", [runId, message]).catch(() => undefined);
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
    snapshot_all_positions: async (_p, trace, q) => ({
      snapshots: await q('select snapshot_all_positions($1) as r', [trace]),
    }),
    validate_all_positions: async (_p, trace, q) => {
      const since = await q(
        "select max(started_at)::text from job_runs where task = 'validate_all_positions' and outcome = 'success'",
      );
      const r = (await q('call validate_all_positions(since => $1, trace_id => $2, result => null)', [
        since,
        trace,
      ])) as {
        invalid: number;
        fixed: number;
        discrepancies: { asset: string; mode: string; discrepancies: { field: string }[] }[];
      };
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
    validate_position: async (p, trace, q) => {
      try {
        const r = (await q('select validate_position($1, $2, true, $3) as r', [
          p.asset,
          p.mode ?? 'one-way',
          trace,
        ])) as ValidationOutcome;
        countValidation('discrepancy', r);
        if (!r.is_valid)
          log.warn(
            { trace_id: trace, asset: p.asset, mode: p.mode, discrepancies: r.discrepancies },
            'validation after a size discrepancy',
          );
        else
          log.info(
            { trace_id: trace, asset: p.asset, mode: p.mode },
            'validation after a size discrepancy: the position is valid',
          );
        return r;
      } catch (err) {
        if ((err as { code?: string }).code === 'P0002') return { is_valid: null, error_message: 'position_not_found' };
        throw err;
      }
    },
    publish_portfolio_update: async (_p, trace, q) =>
      limitLog(await q('select publish_portfolio_update(true, $1) as r', [trace]), trace),
    sample_portfolio_metrics: async (_p, trace, q) =>
      limitLog(await q('select sample_portfolio_metrics($1) as r', [trace]), trace),
    refresh_materialized_views: (_p, _t, q) => q('select refresh_materialized_views() as r'),
    prune_snapshots: async (_p, _t, q) => ({
      deleted: await q('select prune_snapshots($1) as r', [config.snapshotRetentionDays]),
    }),
    prune_inbox_outbox: (_p, _t, q) =>
      q('select prune_inbox_outbox($1, $2) as r', [config.inboxRetentionDays, config.outboxRetentionHours]),
    prune_job_history: async (_p, _t, q) => ({
      deleted: await q('select prune_job_history($1) as r', [config.jobHistoryRetentionDays]),
    }),
    refresh_mark_prices: markPriceRefresher(config, checks.prices, log),
    reconcile_with_exchange: exchangeReconciler(config, checks.exchangeReconcile, log),
  };
  // a crossing is logged at warn, the way back at info.
  const limitLog = (r: unknown, traceId: string) => {
    const limit = (r as { limit?: { transition: string | null; limit_value: string; current_value: string } }).limit;
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
      interval === undefined
        ? undefined
        : async () => void (await pool.query('select schedule_next_run($1, $2)', [name, interval])),
    );
  }
  return list;
}
