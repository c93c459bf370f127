// How the modules of src/db run their statements: on anything that runs one (the pool, a task
// run's own connection, the API's retrying pool), each statement returning one value.
import type pg from 'pg';
import { isConflict } from './errors.js';

/** A pool, a client, or a wrapper of either: what runs one statement. */
export interface Queryable {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
}

/** The first column of the statement's first row; null when there is no row. */
export async function queryValue<T>(db: Queryable, text: string, values: unknown[] = []): Promise<T> {
  const row = (await db.query(text, values)).rows[0];
  return (row === undefined ? null : Object.values(row)[0]) as T;
}

/** A JSON object built by SQL and answered as it is: its shape is openapi.yaml's. */
export type JsonObject = Record<string, unknown>;

export const QUERY_ATTEMPTS = 3;

/**
 * The API's statements: each is one statement in its own transaction, so after a deadlock or
 * serialization failure (another instance's transaction held a row) nothing was written, and
 * it is simply run again, twice at most.
 */
export function retryingConflicts(db: Queryable): Queryable {
  return {
    async query<R extends pg.QueryResultRow>(text: string, values?: unknown[]) {
      for (let attempt = 1; ; attempt++) {
        try {
          return await db.query<R>(text, values);
        } catch (err) {
          if (attempt >= QUERY_ATTEMPTS || !isConflict(err)) throw err;
        }
      }
    },
  };
}
