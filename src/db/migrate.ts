// Brings a database to the current schema: node-pg-migrate's numbered migrations, then
// graphile-worker's schema, then every sql/ definition in file-name order. Runs under one
// advisory lock so that instances starting together never race; the sql/ step is one
// transaction and is skipped when the definitions have not changed.
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

async function applyDefinitions(client: pg.ClientBase): Promise<boolean> {
  const hash = definitionsHash();
  await client.query(
    'create table if not exists sql_definitions (singleton boolean primary key default true check (singleton), hash text not null, applied_at timestamptz not null default now())',
  );
  const current = await client.query<{ hash: string }>('select hash from sql_definitions');
  if (current.rows[0]?.hash === hash) return false;
  await client.query('begin');
  try {
    // Views are derived objects: dropping them all lets each file simply `create view`.
    const views = await client.query<{ name: string; kind: string }>(`
      select c.oid::regclass::text as name, c.relkind::text as kind
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
       where n.nspname = 'public' and c.relkind in ('v', 'm')
         and not exists (select 1 from pg_depend d where d.objid = c.oid and d.deptype = 'e')`);
    for (const v of views.rows)
      await client.query(`drop ${v.kind === 'm' ? 'materialized view' : 'view'} if exists ${v.name} cascade`);
    for (const { name, text } of sqlDefinitions()) {
      try {
        await client.query(text);
      } catch (err) {
        throw new Error(`sql/${name}: ${(err as Error).message}`, { cause: err });
      }
    }
    await client.query(
      'insert into sql_definitions (hash) values ($1) on conflict (singleton) do update set hash = excluded.hash, applied_at = now()',
      [hash],
    );
    await client.query('commit');
  } catch (err) {
    await client.query('rollback');
    throw err;
  }
  return true;
}

export async function migrate(connectionString: string, log: (msg: string) => void = () => undefined): Promise<MigrateResult> {
  const client = new pg.Client({ connectionString, application_name: 'position-manager-migrate' });
  await client.connect();
  try {
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
