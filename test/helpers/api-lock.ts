// Makes the service's queries wait: a client of the test's pool holds ACCESS EXCLUSIVE locks.
import type { TestDb } from './db.js';

/** Locks `tables` (e.g. 'positions, outbox') in an open transaction; the client is released at teardown. */
export async function lockTables(t: { teardown(fn: () => unknown): void }, db: TestDb, tables: string) {
  const locker = await db.pool.connect();
  t.teardown(() => locker.release());
  await locker.query('begin');
  await locker.query(`lock table ${tables} in access exclusive mode`);
  return locker;
}
