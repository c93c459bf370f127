// A task run's statements go through one connection of its own, so that a shutdown that cannot
// wait for them can cancel them. graphile-worker aborts the run's signal when its graceful
// shutdown times out; without a cancel the run outlives the process's shutdown timeout and its
// job stays locked until graphile-worker's 4-hour lock expiry. Cancelled, the statement rolls
// back, the run fails, and graphile-worker releases the job for a retry.
import type pg from 'pg';
import type { Queryable } from './query.js';

class RunCancelled extends Error {
  constructor() {
    super('the worker is shutting down: the run was cancelled and will be retried');
  }
}

export async function withRunConnection<T>(
  pool: pg.Pool,
  signal: AbortSignal,
  fn: (db: Queryable) => Promise<T>,
): Promise<T> {
  if (signal.aborted) throw new RunCancelled();
  const client = await pool.connect();
  const pid = (client as pg.PoolClient & { processID: number }).processID;
  const cancel = () => void pool.query('select pg_cancel_backend($1)', [pid]).catch(() => undefined);
  signal.addEventListener('abort', cancel, { once: true });
  try {
    return await fn({
      async query<R extends pg.QueryResultRow>(text: string, values?: unknown[]) {
        if (signal.aborted) throw new RunCancelled();
        try {
          return await client.query<R>(text, values);
        } catch (err) {
          throw signal.aborted ? new RunCancelled() : err;
        }
      },
    });
  } finally {
    signal.removeEventListener('abort', cancel);
    // After an abort the cancel may still be in flight: the connection must not serve anyone else.
    client.release(signal.aborted);
  }
}
