// Brings a database to the current schema: node-pg-migrate's numbered migrations, then
// graphile-worker's schema, then every sql/ definition in file-name order. Runs under one
// advisory lock so that instances starting together never race; the sql/ step is one
// transaction and is skipped when the definitions have not changed.
// The database is shared with other services: only the views that sql/ defines are dropped
// and re-created, never another service's.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { runner } from 'node-pg-migrate';
import { runMigrations } from 'graphile-worker';
import { MIGRATIONS_DIR, SQL_DIR } from '../paths.js';

const MIGRATE_LOCK = 4_800_001;

export interface MigrateResult {
  migrationsApplied: string[];
  definitionsApplied: boolean;
}

function sqlDefinitions(): { name: string; text: string }[] {
  return readdirSync(SQL_DIR)
    .filter((f) => f.endsWith('.sql'))
    .sort()
    .map((name) => ({ name, text: readFileSync(join(SQL_DIR, name), 'utf8') }));
}

export function definitionsHash(): string {
  const h = createHash('sha256');
  for (const { name, text } of sqlDefinitions()) h.update(name).update('\0').update(text).update('\0');
  return h.digest('hex');
}

// `create [materialized] view NAME` at the start of a line, outside comments: the views this
// service owns, in creation order (a view only depends on views created before it).
export function definedViews(texts: string[]): string[] {
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
      const e = err as Error & { detail?: string };
      throw new Error(`cannot re-create view ${name}: ${e.message}${e.detail ? ` (${e.detail})` : ''}`, { cause: err });
    }
  }
}

async function applyDefinitions(client: pg.ClientBase): Promise<boolean> {
  const hash = definitionsHash();
  await client.query(
    'create table if not exists sql_definitions (singleton boolean primary key default true check (singleton), hash text not null, applied_at timestamptz not null default now())',
  );
  // The views the last apply created: one that a newer sql/ no longer defines is dropped too.
  await client.query('alter table sql_definitions add column if not exists views text[]');
  const current = await client.query<{ hash: string; views: string[] | null }>(
    'select hash, views from sql_definitions',
  );
  if (current.rows[0]?.hash === hash) return false;
  const definitions = sqlDefinitions();
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
    await client.query(
      `insert into sql_definitions (hash, views) values ($1, $2)
         on conflict (singleton) do update set hash = excluded.hash, views = excluded.views, applied_at = now()`,
      [hash, views],
    );
    await client.query('commit');
  } catch (err) {
    await client.query('rollback');
    throw err;
  }
  return true;
}

export async function migrate(
  connectionString: string,
  log: (msg: string) => void = () => undefined,
): Promise<MigrateResult> {
  const client = new pg.Client({ connectionString, application_name: 'position-manager-migrate' });
  await client.connect();
  try {
    // Migrations are this service's own writes: the guard of R-32 (sql/105) lets them through.
    await client.query("select set_config('position_manager.writer', 'on', false)");
    await client.query('select pg_advisory_lock($1)', [MIGRATE_LOCK]);
    const applied = await runner({
      dbClient: client,
      dir: MIGRATIONS_DIR,
      direction: 'up',
      migrationsTable: 'pgmigrations',
      noLock: true,
      singleTransaction: true,
      checkOrder: true,
      log: () => undefined,
    });
    await runMigrations({ connectionString, logger: undefined });
    const definitionsApplied = await applyDefinitions(client);
    if (applied.length) log(`applied migrations: ${applied.map((m) => m.name).join(', ')}`);
    if (definitionsApplied) log('applied sql/ definitions');
    return { migrationsApplied: applied.map((m) => m.name), definitionsApplied };
  } finally {
    await client.query('select pg_advisory_unlock_all()').catch(() => undefined);
    await client.end().catch(() => undefined);
  }
}
