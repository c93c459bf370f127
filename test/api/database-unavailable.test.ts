// A database that refuses connections is "unavailable" (503 database_unavailable, Retry-After: 5),
// not a bug (500): ALTER DATABASE ... ALLOW_CONNECTIONS false answers a new session with FATAL
// 55000, and a dropped database with 3D000 (SPEC.md §5; src/db/errors.ts lists the SQLSTATEs).
import t from 'tap';
import { API_V1_ROUTES } from '../helpers/api-routes.js';
import { admin, freshDatabase } from '../helpers/db.js';
import { startService } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';

const db = await freshDatabase(t);
const svc = await startService(t, {
  databaseUrl: db.url,
  env: { POSITION_MANAGER_ROLES: 'api', POSITION_MANAGER_METRICS_CACHE_TTL: '0' },
});
const allowConnections = (allow: boolean) =>
  admin(async (c) => {
    await c.query(`alter database ${db.name} allow_connections ${allow}`);
    if (!allow)
      await c.query(
        'select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()',
        [db.name],
      );
  });
t.teardown(() => allowConnections(true).catch(() => undefined)); // also when an assertion fails half-way

t.test(
  'allow_connections false: every endpoint 503 database_unavailable with Retry-After: 5, back after',
  async (t) => {
    t.equal((await svc.request('GET', '/api/v1/positions')).status, 200);
    await allowConnections(false);
    for (const [method, path] of API_V1_ROUTES) {
      const r = await svc.request(method, path);
      t.equal(r.status, 503, `${method} ${path}`);
      t.match(r.body, { code: 'database_unavailable', status: 503 });
      t.equal(r.headers.get('retry-after'), '5');
    }
    t.notOk(
      svc.logs.some((l) => l.msg === 'unhandled error'),
      'nothing logged as a bug',
    );
    await allowConnections(true);
    await waitFor(async () => (await svc.request('GET', '/api/v1/positions')).status === 200, { what: 'served again' });
  },
);
