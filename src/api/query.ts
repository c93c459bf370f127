// One SQL call per request, returning its single value `r`. Each call is one statement in its
// own transaction: after a deadlock or serialization failure (another instance's transaction
// held a row) nothing was written, so it is simply run again, twice at most.
import type pg from 'pg';
import { isConflict } from '../db/pool.js';

export const QUERY_ATTEMPTS = 3;

export async function queryOne(pool: pg.Pool, sql: string, params: unknown[]): Promise<unknown> {
  for (let attempt = 1; ; attempt++) {
    try {
      return (await pool.query<{ r: unknown }>(sql, params)).rows[0]!.r;
    } catch (err) {
      if (attempt >= QUERY_ATTEMPTS || !isConflict(err)) throw err;
    }
  }
}
