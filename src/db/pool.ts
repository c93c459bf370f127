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

// SQLSTATEs (PostgreSQL errcodes, appendix A) that mean "this server cannot serve us now", not
// "this request is wrong": class 08 connection exception, class 28 invalid authorization (a
// rotated password), class 53 insufficient resources (53300 too many connections, out of memory
// or disk), 3D000 the database does not exist (dropped, or not created yet), and 57P01-57P05
// admin/crash shutdown, cannot connect now (starting or recovering), database dropped, idle
// session timeout. 57014 (statement timeout) is mapped by the API on its own.
const UNAVAILABLE = /^((08|28|53)[0-9A-Z]{3}|3D000|57P0[1-5])$/;

/** True for errors that mean "the database cannot be reached right now". */
export function isConnectionError(err: unknown): boolean {
  const e = err as { code?: string; message?: string; severity?: string } | undefined;
  if (!e) return false;
  const code = e.code ?? '';
  if (
    UNAVAILABLE.test(code) ||
    ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'EHOSTUNREACH', 'EPIPE'].includes(code)
  )
    return true;
  // 55000 is FATAL at connection time when the database does not accept connections
  // (ALTER DATABASE ... ALLOW_CONNECTIONS false); as a query ERROR it is a bug, not an outage.
  if (code === '55000' && e.severity === 'FATAL') return true;
  const msg = e.message ?? '';
  return /Connection terminated|timeout exceeded when trying to connect|connect ECONNREFUSED|Client has encountered a connection error/i.test(
    msg,
  );
}

/**
 * True for a deadlock or serialization failure: another transaction held rows this one needed.
 * Nothing of the failed transaction was written, so running it again is right.
 */
export function isConflict(err: unknown): boolean {
  const code = (err as { code?: string } | undefined)?.code;
  return code === '40P01' || code === '40001';
}
