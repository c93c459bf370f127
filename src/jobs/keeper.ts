// Keeps every periodic chain alive (sql/330 ensure_periodic_job): at worker start and then
// every minute it starts a missing chain, releases a job a dead worker left locked, and pulls
// in a slot planned under a longer interval than the one configured now. One-off jobs a dead
// worker holds are released too (release_dead_one_off_jobs).
import type pg from 'pg';
import { ensurePeriodicJob, releaseDeadOneOffJobs } from '../db/jobs.js';
import type { Logger } from '../log.js';
import type { Periodic } from './tasks.js';

const MESSAGES: Record<string, { level: 'info' | 'warn'; msg: string }> = {
  scheduled: { level: 'info', msg: 'periodic job scheduled' },
  revived: { level: 'warn', msg: 'periodic job released: its worker died mid-run; it runs again now' },
  rescheduled: { level: 'info', msg: 'periodic job moved to one interval from now (the interval was lowered)' },
};

export async function keepPeriodicJobs(pool: pg.Pool, log: Logger, periodic: Periodic[]): Promise<void> {
  try {
    const released = await releaseDeadOneOffJobs(pool);
    if (released > 0) log.warn({ workers: released }, 'one-off jobs released: the worker holding them died');
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'cannot release the jobs of dead workers yet');
  }
  for (const p of periodic) {
    try {
      const done = await ensurePeriodicJob(pool, p.task, p.intervalSeconds);
      const m = done === null ? undefined : MESSAGES[done];
      if (m) log[m.level]({ task: p.task, interval_seconds: p.intervalSeconds }, m.msg);
    } catch (err) {
      log.warn({ err: (err as Error).message, task: p.task }, 'cannot schedule the periodic job yet');
    }
  }
}
