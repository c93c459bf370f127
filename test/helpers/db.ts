// Every test file gets its own database, copied in milliseconds from a migrated template
// (graphile-worker's approach). The template is rebuilt whenever migrations/ or sql/ change.
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { migrate } from '../../src/db/migrate.js';
import { MIGRATIONS_DIR, SQL_DIR } from '../../src/paths.js';
import '../../src/db/pool.js'; // numeric and bigint as strings, as in the service

export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface TestDb {
  url: string;
  name: string;
  pool: pg.Pool;
  query<R extends pg.QueryResultRow = any>(sql: string, params?: unknown[]): Promise<pg.QueryResult<R>>;
}

function urlFor(database: string): string {
  const u = new URL(TEST_DATABASE_URL);
  u.pathname = `/${database}`;
  return u.toString();
}

function schemaHash(): string {
  const h = createHash('sha256');
  for (const dir of [MIGRATIONS_DIR, SQL_DIR])
    for (const f of readdirSync(dir).sort()) h.update(f).update(readFileSync(join(dir, f)));
  return h.digest('hex').slice(0, 16);
}

/** Runs fn on a short-lived connection to the server's maintenance database (or to `url`). */
export async function admin<T>(fn: (c: pg.Client) => Promise<T>, url = TEST_DATABASE_URL): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

let templatePromise: Promise<string> | undefined;

/** The name of a migrated template database for the current schema, built once per schema. */
function templateDatabase(): Promise<string> {
  templatePromise ??= admin(async (c) => {
    const hash = schemaHash();
    const name = `pm_tpl_${hash}`;
    await c.query('select pg_advisory_lock(4800002)');
    try {
      const exists = await c.query('select 1 from pg_database where datname = $1 and datistemplate', [name]);
      if (exists.rowCount) return name;
      const building = `${name}_build`;
      await c.query(`drop database if exists ${building} with (force)`);
      await c.query(`create database ${building}`);
      await migrate(urlFor(building));
      await c.query(`alter database ${building} rename to ${name}`);
      await c.query(`alter database ${name} is_template true`);
      // Templates of older schemas are of no further use, but another checkout running its
      // tests on the same server (worktrees, a CI clone) may still be using a recent one: keep
      // the newest sixteen.
      const old = await c.query<{ datname: string }>(
        `select datname from pg_database
          where datname like 'pm\\_tpl\\_%' and datname <> $1 and datname not like '%\\_build'
          order by oid desc offset 16`,
        [name],
      );
      for (const { datname } of old.rows) {
        await c.query(`alter database ${datname} is_template false`);
        await c.query(`drop database if exists ${datname} with (force)`);
      }
      return name;
    } finally {
      await c.query('select pg_advisory_unlock(4800002)');
    }
  });
  return templatePromise;
}

/** Creates an empty database (no schema) that is dropped when the test ends. */
export async function emptyDatabase(t: Teardown, prefix = 'pm_test'): Promise<{ name: string; url: string }> {
  const name = `${prefix}_${randomBytes(6).toString('hex')}`;
  await admin((c) => c.query(`create database ${name}`));
  t.teardown(() => admin((c) => c.query(`drop database if exists ${name} with (force)`)));
  return { name, url: urlFor(name) };
}

/** A fresh, fully migrated database of its own for one test file (or benchmark), dropped at teardown. */
export async function freshDatabase(
  t: Teardown,
  options: { prefix?: string; poolSize?: number } = {},
): Promise<TestDb> {
  const template = await templateDatabase();
  const name = `${options.prefix ?? 'pm_test'}_${randomBytes(6).toString('hex')}`;
  for (let attempt = 0; ; attempt++) {
    try {
      await admin((c) => c.query(`create database ${name} template ${template}`));
      break;
    } catch (err) {
      // Another file copying the same template at this instant: try again shortly.
      if (attempt >= 30 || !/being accessed by other users/.test((err as Error).message)) throw err;
      await new Promise((r) => setTimeout(r, 100 + Math.random() * 200));
    }
  }
  const url = urlFor(name);
  const pool = new pg.Pool({ connectionString: url, max: options.poolSize ?? 10 });
  pool.on('error', () => undefined);
  t.teardown(async () => {
    await pool.end().catch(() => undefined);
    await admin((c) => c.query(`drop database if exists ${name} with (force)`));
  });
  return { url, name, pool, query: (sql, params) => pool.query(sql, params as unknown[]) };
}

/**
 * Writes `positions` directly, as only this service's own SQL functions may (SPEC.md R-32): the
 * statement runs in a transaction of its own on one client of the pool, after
 * `own_positions_write(true)` opens the window (transaction-local, so it closes at commit).
 * For tests and benchmarks that simulate a corrupted row; any other direct write is ignored
 * and audited as a `foreign_write`.
 */
export async function writePositionsDirectly<R extends pg.QueryResultRow = any>(
  db: { pool: pg.Pool } | pg.Pool,
  sql: string,
  params: unknown[] = [],
): Promise<pg.QueryResult<R>> {
  const pool = db instanceof pg.Pool ? db : db.pool;
  const c = await pool.connect();
  try {
    await c.query('begin');
    await c.query('select own_positions_write(true)');
    const r = await c.query<R>(sql, params);
    await c.query('commit');
    return r;
  } catch (err) {
    await c.query('rollback').catch(() => undefined);
    throw err;
  } finally {
    c.release();
  }
}

/** The stored (asset, mode) row, or undefined. */
export async function positionRow(db: TestDb, asset: string, mode = 'one-way'): Promise<any> {
  return (await db.query('select * from positions where asset = $1 and mode = $2', [asset, mode])).rows[0];
}

/** Canonical decimal text (trailing zeros removed), so values compare exactly, never as floats. */
export const canonical = (s: string | null): string | null =>
  s === null ? null : s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s;

/** How many graphile-worker jobs have this key (e.g. a scheduled validate:<asset>:<mode>). */
export async function jobsWithKey(db: TestDb, key: string): Promise<number> {
  return Number((await db.query('select count(*) from graphile_worker.jobs where key = $1', [key])).rows[0].count);
}

/** Anything that runs SQL: a pool, a client of its own, a TestDb. */
export interface Queryable {
  query<R extends pg.QueryResultRow = any>(sql: string, params?: unknown[]): Promise<pg.QueryResult<R>>;
}

/** The first row of a query (undefined when there is none). */
export const firstRow = async (db: Queryable, sql: string, params: unknown[] = []) =>
  (await db.query(sql, params)).rows[0];

/** A table's row count and a checksum over every row's text, in `order`: equal digests, equal rows. */
export const tableDigest = (db: Queryable, table: string, order: string) =>
  firstRow(db, `select count(*)::int as n, md5(string_agg(t::text, ',' order by ${order})) as md5 from ${table} t`);

/** A connection of its own to `db` (a session to hold a lock or a transaction open), closed when the test ends. */
export async function ownClient(t: Teardown, db: { url: string }, applicationName?: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: db.url, application_name: applicationName });
  await c.connect();
  t.teardown(() => c.end());
  return c;
}
