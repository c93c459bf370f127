// One pg Pool per process. Bounded connect and statement timeouts so that a dead database
// gives a fast error (HTTP 503), never a hang.
import pg from 'pg';

// NUMERIC (1700) stays a string end to end: money never becomes a JS number.
pg.types.setTypeParser(1700, (value) => value);
// BIGINT (20) too: versions and ids are compared as strings or converted deliberately.
pg.types.setTypeParser(20, (value) => value);

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
