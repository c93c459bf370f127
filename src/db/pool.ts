// One pg Pool per process. Bounded connect and statement timeouts so that a dead database
// gives a fast error (HTTP 503), never a hang.
import pg from 'pg';

// NUMERIC (1700) stays a string end to end: money never becomes a JS number.
pg.types.setTypeParser(1700, (value) => value);
// BIGINT (20) too: versions and ids are compared as strings or converted deliberately.
pg.types.setTypeParser(20, (value) => value);

export type Pool = pg.Pool;

export function createPool(connectionString: string, max: number, applicationName = 'position-manager'): pg.Pool {
  const pool = new pg.Pool({
    connectionString,
    max,
    connectionTimeoutMillis: 3000,
    idleTimeoutMillis: 30_000,
    statement_timeout: 30_000,
    application_name: applicationName,
  });
  // An idle client losing its connection must not crash the process; the next query reconnects.
  pool.on('error', () => undefined);
  return pool;
}

/** True for errors that mean "the database cannot be reached right now". */
export function isConnectionError(err: unknown): boolean {
  const e = err as { code?: string; message?: string } | undefined;
  if (!e) return false;
  const code = e.code ?? '';
  if (['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'EHOSTUNREACH', 'EPIPE', '57P01', '57P02', '57P03', '08000', '08001', '08003', '08006'].includes(code))
    return true;
  const msg = e.message ?? '';
  return /Connection terminated|timeout exceeded when trying to connect|connect ECONNREFUSED|Client has encountered a connection error/i.test(msg);
}
