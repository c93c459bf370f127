import t from 'tap';
import { mkdtempSync, readFileSync, statSync, existsSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lockTables } from '../helpers/api-lock.js';
import { freshDatabase } from '../helpers/db.js';
import { freePort, startService } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';

t.test('a bad configuration stops the process with exit code 1 and names the variable', async (t) => {
  const svc = await startService(t, {
    databaseUrl: 'postgres://postgres@127.0.0.1:5432/postgres',
    env: { POSITION_MANAGER_SIZE_VALIDATION_THRESHOLD: 'lots' },
    waitHealthy: false,
  });
  const code = await new Promise<number | null>((ok) => svc.child.once('exit', ok));
  t.equal(code, 1);
  t.match(svc.stderr.join(''), /POSITION_MANAGER_SIZE_VALIDATION_THRESHOLD must be a non-negative decimal, got "lots"/);
});

t.test('a database that cannot be reached at start: one fatal JSON line without the password, exit 1', async (t) => {
  const port = await freePort(); // nothing listens there
  const svc = await startService(t, { databaseUrl: `postgres://pm:hunter2@127.0.0.1:${port}/pm`, waitHealthy: false });
  const code = await new Promise<number | null>((ok) => svc.child.once('exit', ok));
  t.equal(code, 1);
  const fatal = svc.logs.find((l) => l.level === 'fatal');
  t.match(
    fatal,
    { msg: 'failed to start', service: 'position-manager', err: { type: String, message: String } },
    'logged as JSON at fatal',
  );
  t.match(JSON.stringify(fatal.err), /ECONNREFUSED/, 'with the cause');
  t.same(svc.stderr, [], 'nothing on stderr: no plain-text stack');
  t.notOk(
    svc.logs.some((l) => l.raw !== undefined),
    'every stdout line is JSON',
  );
  t.notMatch(JSON.stringify(svc.logs), /hunter2/, 'no password');
});

t.test('the service starts on a database, answers /health, and stops on SIGTERM with exit 0', async (t) => {
  const db = await freshDatabase(t);
  const svc = await startService(t, { databaseUrl: db.url, env: { POSITION_MANAGER_ROLES: 'api' } });
  const health = await svc.request('GET', '/health', { key: null });
  t.equal(health.status, 200);
  t.equal(health.body.status, 'healthy');
  t.equal(health.body.database_connected, true);
  t.equal(health.body.messaging, 'disabled');
  t.equal(await svc.stop('SIGTERM'), 0);
  t.ok(
    svc.logs.some((l) => l.msg === 'stopped'),
    'logs its clean stop',
  );
});

t.test('SIGTERM lets a request in flight finish with its answer (its write committed) before the exit', async (t) => {
  const db = await freshDatabase(t);
  await db.query(
    `select apply_order_fill('{"asset":"BTCUSDT","side":"Buy","execution_quantity":"1","execution_price":"100"}')`,
  );
  const svc = await startService(t, { databaseUrl: db.url, env: { POSITION_MANAGER_ROLES: 'api' } });
  const locker = await lockTables(t, db, 'positions');
  const req = svc.request('POST', '/api/v1/positions/BTCUSDT/snapshot');
  await waitFor(
    async () =>
      (
        await db.query(`select count(*)::int as n from pg_stat_activity where datname = current_database()
                                              and wait_event_type = 'Lock' and query like '%create_position_snapshot%'`)
      ).rows[0].n === 1,
    { what: 'the request waiting on the lock' },
  );
  const exit = svc.stop('SIGTERM');
  await waitFor(() => svc.logs.some((l) => l.msg === 'shutting down'), { what: 'shutdown under way' });
  await locker.query('commit');
  const r = await req;
  t.equal(r.status, 201, 'the client gets its answer');
  t.equal(await exit, 0);
  t.same(
    svc.logs.filter((l) => l.msg === 'shutting down').map((l) => [l.signal, l.exit_code]),
    [['SIGTERM', 0]],
    'one shutdown line, with the signal and the exit code',
  );
  t.equal((await db.query("select count(*)::int as n from position_snapshots where trigger = 'manual'")).rows[0].n, 1);
});

t.test('embedded: after a kill -9 the PostgreSQL left running is stopped by the next start', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'pm-embedded-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const env = { POSITION_MANAGER_DATA_DIR: dataDir, POSITION_MANAGER_ROLES: 'api' };
  const first = await startService(t, { env, timeoutMs: 120_000 });
  const pid = Number(readFileSync(join(dataDir, 'postgres', 'postmaster.pid'), 'utf8').split('\n')[0]);
  await first.stop('SIGKILL');
  t.doesNotThrow(() => process.kill(pid, 0), 'its PostgreSQL outlived it');
  const second = await startService(t, { env, timeoutMs: 120_000 });
  t.ok(
    second.logs.some(
      (l) => l.msg === 'stopping the embedded PostgreSQL that a killed instance left running' && l.pid === pid,
    ),
  );
  t.equal((await second.request('GET', '/health', { key: null })).body.database_connected, true);
  t.equal(await second.stop('SIGTERM'), 0);
});

t.test('a port already taken: the error logged as fatal, exit non-zero, never "listening"', async (t) => {
  const db = await freshDatabase(t);
  const taken = createServer();
  await new Promise<void>((ok) => taken.listen(0, ok)); // all interfaces, as the service binds
  t.teardown(() => new Promise((ok) => taken.close(ok)));
  const port = String((taken.address() as { port: number }).port);
  const svc = await startService(t, {
    databaseUrl: db.url,
    env: { POSITION_MANAGER_ROLES: 'api,worker', POSITION_MANAGER_PORT: port },
    waitHealthy: false,
  });
  const code = await Promise.race([
    new Promise<number | null>((ok) => svc.child.once('exit', ok)),
    new Promise<string>((ok) => setTimeout(() => ok('still running after 30 s'), 30_000)),
  ]);
  t.not(code, 0, 'a non-zero exit');
  t.type(code, 'number', 'the process exited');
  t.ok(
    svc.logs.some((l) => l.level === 'fatal' && /EADDRINUSE/.test(JSON.stringify(l.err))),
    'the bind error logged as fatal',
  );
  t.notOk(
    svc.logs.some((l) => l.msg === 'listening'),
    'no "listening" line',
  );
  t.ok(
    svc.logs.some((l) => l.msg === 'stopped'),
    'what it started was stopped first',
  );
});

t.test('with no database configured it runs an embedded PostgreSQL in the data folder', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'pm-embedded-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const svc = await startService(t, {
    env: { POSITION_MANAGER_DATA_DIR: dataDir, POSITION_MANAGER_API_KEY: '' },
    timeoutMs: 120_000,
  });
  const health = await svc.request('GET', '/health', { key: null });
  t.equal(health.status, 200);
  t.equal(health.body.database_connected, true);
  t.ok(existsSync(join(dataDir, 'postgres', 'PG_VERSION')), 'the data lives in POSITION_MANAGER_DATA_DIR');
  const keyFile = join(dataDir, 'api-key');
  t.equal(statSync(keyFile).mode & 0o777, 0o600, 'the generated API key is private');
  t.ok(
    svc.logs.some((l) => l.api_key_file === keyFile),
    'its path (not the key) is logged',
  );
  t.equal(await svc.stop('SIGTERM'), 0);
});
