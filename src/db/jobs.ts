// The worker's bookkeeping around graphile-worker (SPEC.md §7): a job_runs row for every run,
// the periodic chains (sql/330), and the portfolio update scheduled after position changes.
import { queryValue, type Queryable } from './query.js';

/** Opens the run's job_runs row; its id. */
export function jobRunStart(
  db: Queryable,
  run: { task: string; jobId: string; jobKey: string | null; payload: unknown; attempt: number; traceId: string },
): Promise<string> {
  return queryValue(db, 'select job_run_start($1, $2, $3, $4, $5, $6)', [
    run.task,
    run.jobId,
    run.jobKey,
    JSON.stringify(run.payload),
    run.attempt,
    run.traceId,
  ]);
}

export async function jobRunSucceeded(db: Queryable, runId: string, result: unknown): Promise<void> {
  await db.query("select job_run_finish($1, 'success', null, $2)", [runId, JSON.stringify(result)]);
}

export async function jobRunFailed(db: Queryable, runId: string, error: string): Promise<void> {
  await db.query("select job_run_finish($1, 'failure', $2, null)", [runId, error]);
}

/** When the last successful run of a task started (text, as SQL reads it back); null before any. */
export function lastSuccessStartedAt(db: Queryable, task: string): Promise<string | null> {
  return queryValue(db, "select max(started_at)::text from job_runs where task = $1 and outcome = 'success'", [task]);
}

/** The next link of a periodic chain, one interval from now. */
export async function scheduleNextRun(db: Queryable, task: string, intervalSeconds: number): Promise<void> {
  await db.query('select schedule_next_run($1, $2)', [task, intervalSeconds]);
}

/** Starts, revives or pulls in a periodic chain: what it did ('scheduled', 'revived', 'rescheduled') or null. */
export function ensurePeriodicJob(db: Queryable, task: string, intervalSeconds: number): Promise<string | null> {
  return queryValue(db, 'select ensure_periodic_job($1, $2)', [task, intervalSeconds]);
}

/** Releases the one-off jobs dead workers hold; how many workers that was. */
export function releaseDeadOneOffJobs(db: Queryable): Promise<number> {
  return queryValue(db, 'select release_dead_one_off_jobs()');
}

/** the throttled publish_portfolio_update job, after changes committed. */
export async function schedulePortfolioUpdate(db: Queryable): Promise<void> {
  await db.query('select schedule_portfolio_update()');
}
