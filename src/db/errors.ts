// What a failed statement means, by its SQLSTATE (PostgreSQL errcodes, appendix A) or, for a
// connection that failed before any SQLSTATE, by the driver's error. Every caller decides with
// these: the API's status codes, the consumer's retry or dead letter, a task's outcome.

function sqlstate(err: unknown): string {
  const code = (err as { code?: unknown } | null | undefined)?.code;
  return typeof code === 'string' ? code : '';
}

// "This server cannot serve us now", not "this request is wrong": class 08 connection
// exception, class 28 invalid authorization (a rotated password), class 53 insufficient
// resources (53300 too many connections, out of memory or disk), 3D000 the database does not
// exist (dropped, or not created yet), and 57P01-57P05 admin/crash shutdown, cannot connect now
// (starting or recovering), database dropped, idle session timeout.
const UNAVAILABLE = /^((08|28|53)[0-9A-Z]{3}|3D000|57P0[1-5])$/;
const NETWORK = ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'EHOSTUNREACH', 'EPIPE'];

/** True for errors that mean "the database cannot be reached right now". */
export function isConnectionError(err: unknown): boolean {
  const e = err as { message?: string; severity?: string } | undefined;
  if (!e) return false;
  const code = sqlstate(err);
  if (UNAVAILABLE.test(code) || NETWORK.includes(code)) return true;
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
  const code = sqlstate(err);
  return code === '40P01' || code === '40001';
}

/** 57014: the statement ran past statement_timeout (or was cancelled) and was rolled back. */
export const isStatementTimeout = (err: unknown): boolean => sqlstate(err) === '57014';

/** 55P03: a lock held by another transaction (NOWAIT): a validation of the position is running. */
export const isLockNotAvailable = (err: unknown): boolean => sqlstate(err) === '55P03';

/** P0002 (no_data_found): the SQL functions raise it for a position that does not exist. */
export const isNotFound = (err: unknown): boolean => sqlstate(err) === 'P0002';

/** 22023 (invalid_parameter_value): SQL rejected an outside source's answer as a whole. */
export const isInvalidParameterValue = (err: unknown): boolean => sqlstate(err) === '22023';

/** Class 22 (data exception): a value in the input is wrong; its column names the field. */
export const isDataException = (err: unknown): boolean => sqlstate(err).startsWith('22');

/** Class 22 or 23 (integrity constraint): the input is wrong, and running it again cannot help. */
export const isDataError = (err: unknown): boolean => isDataException(err) || sqlstate(err).startsWith('23');

/** The database is unavailable or busy: the same statement may well succeed later. */
export const isTransient = (err: unknown): boolean =>
  isConnectionError(err) || isConflict(err) || isLockNotAvailable(err) || isStatementTimeout(err);
