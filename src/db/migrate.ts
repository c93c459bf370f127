// Brings a database to the current schema: node-pg-migrate's numbered migrations, then
// graphile-worker's schema, then every sql/ definition in file-name order. Runs under one
// advisory lock so that instances starting together never race; the sql/ step is one
// transaction and is skipped when the definitions have not changed.
// Released migrations are immutable: the sha256 of every applied migration file is recorded, and
// one whose file has changed since stops the migration before anything runs.
// The database is shared with other services: only the views and functions that sql/ defined
// are dropped, never another service's.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { basename, extname, join } from 'node:path';
import pg from 'pg';
import { runner } from 'node-pg-migrate';
import { runMigrations } from 'graphile-worker';
import { MIGRATIONS_DIR, SQL_DIR } from '../paths.js';

const MIGRATE_LOCK = 4_800_001;

export interface MigrateResult {
  migrationsApplied: string[];
  definitionsApplied: boolean;
}

export interface MigrateOptions {
  log?: (msg: string) => void;
  /** Where the numbered migrations are (tests); the project's migrations/ by default. */
  migrationsDir?: string;
  /** Where the definitions are (tests); the project's sql/ by default. */
  sqlDir?: string;
}

const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

function sqlDefinitions(dir: string): { name: string; text: string }[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.sql'))
    .sort()
    .map((name) => ({ name, text: readFileSync(join(dir, name), 'utf8') }));
}

function definitionsHash(definitions: { name: string; text: string }[]): string {
  const h = createHash('sha256');
  for (const { name, text } of definitions) h.update(name).update('\0').update(text).update('\0');
  return h.digest('hex');
}

// The files node-pg-migrate runs (all but dot files), by its migration name (the file's name
// without its extension).
function migrationFiles(dir: string): { name: string; file: string; sha256: string }[] {
  return readdirSync(dir)
    .filter((f) => !f.startsWith('.'))
    .sort()
    .map((file) => ({ name: basename(file, extname(file)), file, sha256: sha256(readFileSync(join(dir, file))) }));
}

// Refuses to go on when an applied migration's file differs from the one that was applied.
async function checkMigrations(client: pg.ClientBase, files: ReturnType<typeof migrationFiles>): Promise<void> {
  await client.query(
    `create table if not exists migration_checksums (
       name text primary key, sha256 text not null, applied_at timestamptz not null default now())`,
  );
  const recorded = await client.query<{ name: string; sha256: string }>('select name, sha256 from migration_checksums');
  for (const { name, sha256: was } of recorded.rows) {
    const now = files.find((f) => f.name === name);
    if (now && now.sha256 !== was)
      throw new Error(
        `migrations/${now.file} has changed since it was applied (sha256 ${was.slice(0, 12)}… then, ` +
          `${now.sha256.slice(0, 12)}… now): an applied migration is never edited; restore it and ` +
          'put the change in a new migration',
      );
  }
}

// Every applied migration without a checksum gets its file's: the ones just applied, and on a
// database migrated before checksums were kept, the files as they are now.
async function recordMigrations(client: pg.ClientBase, files: ReturnType<typeof migrationFiles>): Promise<void> {
  await client.query(
    `insert into migration_checksums (name, sha256)
     select f.name, f.sha256 from unnest($1::text[], $2::text[]) f(name, sha256)
      where exists (select 1 from pgmigrations m where m.name = f.name)
     on conflict (name) do nothing`,
    [files.map((f) => f.name), files.map((f) => f.sha256)],
  );
}

// A failed drop's message with PostgreSQL's detail, which names the dependent objects.
function why(err: unknown): string {
  const e = err as Error & { detail?: string };
  return `${e.message}${e.detail ? ` (${e.detail})` : ''}`;
}

// `create [materialized] view NAME` at the start of a line, outside comments: the views this
// service owns, in creation order (a view only depends on views created before it).
function definedViews(texts: string[]): string[] {
  const names: string[] = [];
  const re =
    /^\s*create\s+(?:or\s+replace\s+)?(?:materialized\s+)?view\s+(?:if\s+not\s+exists\s+)?(?:public\.)?([a-z_][a-z0-9_]*)/gim;
  for (const text of texts)
    for (const m of text.replace(/--[^\n]*/g, '').matchAll(re)) {
      const name = m[1]!.toLowerCase();
      if (!names.includes(name)) names.push(name);
    }
  return names;
}

// Dropped so that each file can simply `create view` (columns may change). Newest first and
// without cascade: our views depending on ours go first, and an object of another service built
// on one of ours stops the migration with its name rather than being silently dropped.
async function dropOwnViews(client: pg.ClientBase, names: string[]): Promise<void> {
  for (const name of names) {
    const kind = (
      await client.query<{ k: string }>(
        "select c.relkind::text as k from pg_class c where c.oid = to_regclass('public.' || quote_ident($1))",
        [name],
      )
    ).rows[0]?.k;
    if (kind !== 'v' && kind !== 'm') continue;
    try {
      await client.query(`drop ${kind === 'm' ? 'materialized view' : 'view'} public.${client.escapeIdentifier(name)}`);
    } catch (err) {
      throw new Error(`cannot re-create view ${name}: ${why(err)}`, { cause: err });
    }
  }
}

// The functions of the public schema that this transaction created or replaced: exactly those the
// sql/ files just applied define (CREATE OR REPLACE rewrites the pg_proc row).
async function definedFunctions(client: pg.ClientBase): Promise<string[]> {
  const r = await client.query<{ sig: string }>(
    `select p.oid::regprocedure::text as sig from pg_proc p
      where p.pronamespace = 'public'::regnamespace and p.xmin = pg_current_xact_id()::xid order by 1`,
  );
  return r.rows.map((row) => row.sig);
}

// Drops the functions an earlier sql/ defined and this one does not (the record of the last apply,
// less what this transaction defined). Without cascade: an object of another service built on one
// of them stops the migration with its name rather than being dropped along.
async function dropOldFunctions(client: pg.ClientBase, previous: string[]): Promise<void> {
  const old = await client.query<{ sig: string; aggregate: boolean }>(
    `select p.oid::regprocedure::text as sig, p.prokind = 'a' as aggregate from pg_proc p
      where p.pronamespace = 'public'::regnamespace and p.oid::regprocedure::text = any($1::text[])
        and p.xmin <> pg_current_xact_id()::xid`,
    [previous],
  );
  for (const { sig, aggregate } of old.rows) {
    try {
      await client.query(`drop ${aggregate ? 'aggregate' : 'routine'} ${sig}`);
    } catch (err) {
      throw new Error(`cannot drop function ${sig}, which sql/ no longer defines: ${why(err)}`, { cause: err });
    }
  }
}

async function applyDefinitions(client: pg.ClientBase, dir: string): Promise<boolean> {
  const definitions = sqlDefinitions(dir);
  const hash = definitionsHash(definitions);
  // sql_definitions (migration 12): the hash, views and functions of the last apply.
  const current = await client.query<{ hash: string; views: string[] | null; functions: string[] | null }>(
    'select hash, views, functions from sql_definitions',
  );
  if (current.rows[0]?.hash === hash) return false;
  const views = definedViews(definitions.map((d) => d.text));
  const previous = current.rows[0]?.views ?? [];
  await client.query('begin');
  try {
    await dropOwnViews(
      client,
      [...previous].reverse().concat([...views].reverse().filter((v) => !previous.includes(v))),
    );
    for (const { name, text } of definitions) {
      try {
        await client.query(text);
      } catch (err) {
        throw new Error(`sql/${name}: ${(err as Error).message}`, { cause: err });
      }
    }
    const functions = await definedFunctions(client);
    await dropOldFunctions(client, current.rows[0]?.functions ?? []);
    await client.query(
      `insert into sql_definitions (hash, views, functions) values ($1, $2, $3)
         on conflict (singleton) do update
         set hash = excluded.hash, views = excluded.views, functions = excluded.functions, applied_at = now()`,
      [hash, views, functions],
    );
    await client.query('commit');
  } catch (err) {
    await client.query('rollback');
    throw err;
  }
  return true;
}

export async function migrate(connectionString: string, options: MigrateOptions = {}): Promise<MigrateResult> {
  const { log = () => undefined, migrationsDir = MIGRATIONS_DIR, sqlDir = SQL_DIR } = options;
  const client = new pg.Client({ connectionString, application_name: 'position-manager-migrate' });
  await client.connect();
  try {
    // Migrations are this service's own writes: the guard of R-32 (sql/105) lets them through.
    await client.query("select set_config('position_manager.writer', 'on', false)");
    await client.query('select pg_advisory_lock($1)', [MIGRATE_LOCK]);
    const files = migrationFiles(migrationsDir);
    await checkMigrations(client, files);
    const applied = await runner({
      dbClient: client,
      dir: migrationsDir,
      direction: 'up',
      migrationsTable: 'pgmigrations',
      noLock: true,
      singleTransaction: true,
      checkOrder: true,
      log: () => undefined,
    });
    await recordMigrations(client, files);
    await runMigrations({ connectionString, logger: undefined });
    const definitionsApplied = await applyDefinitions(client, sqlDir);
    if (applied.length) log(`applied migrations: ${applied.map((m) => m.name).join(', ')}`);
    if (definitionsApplied) log('applied sql/ definitions');
    return { migrationsApplied: applied.map((m) => m.name), definitionsApplied };
  } finally {
    await client.query('select pg_advisory_unlock_all()').catch(() => undefined);
    await client.end().catch(() => undefined);
  }
}
