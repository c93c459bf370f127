// SPEC.md §9 and §10 (least privilege): grafana_reader can read the views and nothing else — no
// INSERT/UPDATE/DELETE/TRUNCATE on any table, no SELECT on base tables, no writing function
// calls, no DDL; and the service runs with a database user that is not a superuser (a LOGIN
// role owning a fresh database of its own, with CREATE on it): migrations, graphile-worker's
// schema, /health 200, and a fill applied through SQL as that user.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import t, { type Test } from 'tap';
import { freshBroker } from '../helpers/amqp.js';
import { TEST_DATABASE_URL, freshDatabase } from '../helpers/db.js';
import { startService } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';
import { GRAFANA_VIEWS } from '../helpers/ledger-names.js';

async function admin<T>(fn: (c: pg.Client) => Promise<T>, database?: string): Promise<T> {
  const u = new URL(TEST_DATABASE_URL);
  if (database) u.pathname = `/${database}`;
  const c = new pg.Client({ connectionString: u.toString() });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** Runs one statement; returns the SQLSTATE of its error, or 'ok'. */
async function attempt(c: pg.PoolClient | pg.Client, sql: string, params: unknown[] = []): Promise<string> {
  try {
    await c.query('savepoint s');
    await c.query(sql, params);
    await c.query('release savepoint s');
    return 'ok';
  } catch (err) {
    await c.query('rollback to savepoint s');
    return (err as { code?: string }).code ?? 'error';
  }
}

t.test('grafana_reader: views only, never a write', async (t) => {
  const db = await freshDatabase(t);
  await db.query(
    `select apply_order_fill('{"execution_id":"g1","asset":"GRAFUSDT","side":"Buy","execution_quantity":"1","execution_price":"10"}')`,
  );
  const tables = (
    await db.query<{ schema: string; name: string; col: string }>(
      `select n.nspname as schema, c.relname as name,
            (select a.attname from pg_attribute a where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped order by a.attnum limit 1) as col
       from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%'
      order by 1, 2`,
    )
  ).rows;
  const views = (
    await db.query<{ name: string }>(
      "select c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public' and c.relkind in ('v', 'm') order by 1",
    )
  ).rows.map((r) => r.name);
  t.ok(
    tables.some((x) => x.name === 'positions'),
    `${tables.length} base tables found (${[...new Set(tables.map((x) => x.schema))].join(', ')})`,
  );

  const client = await db.pool.connect();
  t.teardown(() => client.release(true));
  await client.query('begin');
  await client.query('set local role grafana_reader');
  t.equal((await client.query('select current_user as u')).rows[0].u, 'grafana_reader');
  const allowed: string[] = [];
  for (const { schema, name, col } of tables) {
    const q = `${pg.escapeIdentifier(schema)}.${pg.escapeIdentifier(name)}`;
    const c = pg.escapeIdentifier(col);
    for (const [what, sql] of [
      ['SELECT', `select * from ${q} limit 1`],
      ['INSERT', `insert into ${q} default values`],
      ['UPDATE', `update ${q} set ${c} = ${c}`],
      ['DELETE', `delete from ${q}`],
      ['TRUNCATE', `truncate ${q}`],
    ] as const) {
      const code = await attempt(client, sql);
      if (code !== '42501') allowed.push(`${what} ${schema}.${name}: ${code}`);
    }
  }
  t.same(allowed, [], 'every SELECT/INSERT/UPDATE/DELETE/TRUNCATE on a base table is denied (42501)');

  // The views of §9 are readable; writes through them are not.
  const unreadable: string[] = [];
  for (const v of GRAFANA_VIEWS) {
    const code = await attempt(client, `select * from ${pg.escapeIdentifier(v)} limit 1`);
    if (code !== 'ok') unreadable.push(`${v}: ${code}`);
  }
  t.same(unreadable, [], 'the views of SPEC §9 are readable');
  t.equal(
    (await client.query("select size from positions_view where asset = 'GRAFUSDT'")).rows[0]?.size,
    '1',
    'and show the data',
  );
  const writableViews: string[] = [];
  for (const v of views) {
    for (const sql of [
      `delete from ${pg.escapeIdentifier(v)}`,
      `insert into ${pg.escapeIdentifier(v)} default values`,
    ]) {
      const code = await attempt(client, sql);
      if (code === 'ok') writableViews.push(`${sql}`);
    }
  }
  t.same(writableViews, [], 'no view accepts a write');

  // Writing functions and DDL.
  const fill = JSON.stringify({
    execution_id: 'g2',
    asset: 'GRAFUSDT',
    side: 'Buy',
    execution_quantity: '1',
    execution_price: '10',
  });
  const writes: Record<string, string> = {
    apply_order_fill: await attempt(client, 'select apply_order_fill($1::jsonb)', [fill]),
    apply_position_report: await attempt(
      client,
      `select apply_position_report('{"symbol":"GRAFUSDT","size":"1","side":"Buy"}'::jsonb)`,
    ),
    validate_position: await attempt(client, "select validate_position('GRAFUSDT', 'one-way', true)"),
    'create table': await attempt(client, 'create table public.grafana_was_here (x int)'),
    'create schema': await attempt(client, 'create schema grafana_schema'),
    'refresh materialized view': await attempt(client, 'refresh materialized view portfolio_pnl_hourly'),
  };
  const succeeded = Object.entries(writes)
    .filter(([, code]) => code === 'ok')
    .map(([k]) => k);
  t.same(succeeded, [], `no writing function or DDL succeeds (${JSON.stringify(writes)})`);
  await client.query('rollback');
  const after = (await db.query("select version from positions where asset = 'GRAFUSDT'")).rows[0].version;
  t.equal(after, '1', 'the position is unchanged');
});

async function runAsAppUser(t: Test, options: { createRole: boolean }): Promise<void> {
  const suffix = randomBytes(5).toString('hex');
  const role = `pm_app_${suffix}`;
  const database = `pm_app_db_${suffix}`;
  const password = randomBytes(12).toString('hex');
  await admin(async (c) => {
    await c.query(
      `create role ${role} login password '${password}' nosuperuser ${options.createRole ? 'createrole' : 'nocreaterole'} nocreatedb`,
    );
    await c.query(`create database ${database} owner ${role}`);
    await c.query(`grant create on database ${database} to ${role}`);
  });
  t.teardown(async () => {
    await admin((c) => c.query(`drop database if exists ${database} with (force)`));
    await admin((c) => c.query(`drop role if exists ${role}`)).catch((err) =>
      t.comment(`drop role ${role}: ${(err as Error).message}`),
    );
  });
  const flags = await admin((c) =>
    c.query('select rolsuper, rolcreaterole, rolcreatedb, rolbypassrls from pg_roles where rolname = $1', [role]),
  );
  t.same(
    flags.rows[0],
    { rolsuper: false, rolcreaterole: options.createRole, rolcreatedb: false, rolbypassrls: false },
    'not a superuser',
  );

  const u = new URL(TEST_DATABASE_URL);
  u.username = role;
  u.password = password;
  u.pathname = `/${database}`;
  const appUrl = u.toString();
  const broker = await freshBroker(t);
  const svc = await startService(t, { databaseUrl: appUrl, amqpUrl: broker.url, waitHealthy: false });
  const health = await waitFor(
    async () => {
      if (svc.child.exitCode !== null) return { status: -1, body: svc.stderr.join('').slice(0, 600) };
      const h = await svc.request('GET', '/health', { key: null });
      return h.status === 200 ? h : undefined;
    },
    { what: '/health 200', timeoutMs: 60_000 },
  ).catch((err) => ({
    status: -1,
    body: `${(err as Error).message}; running: ${svc.child.exitCode === null}; stderr: ${svc.stderr.join('').slice(0, 600)}; logs: ${JSON.stringify(svc.logs.slice(-5)).slice(0, 1500)}`,
  }));
  if (health.status === -1) {
    t.fail(`the service did not become healthy as ${role} (exit code ${svc.child.exitCode}): ${health.body}`);
    return;
  }
  t.equal(health.status, 200, '/health 200');
  t.match(health.body, { database_connected: true });
  await waitFor(() => svc.logs.some((l) => l.msg === 'worker started'), {
    what: 'worker started (graphile-worker schema created)',
    timeoutMs: 30_000,
  });

  const app = new pg.Client({ connectionString: appUrl });
  await app.connect();
  t.teardown(() => app.end().catch(() => undefined));
  t.equal(
    (await app.query('select usesuper from pg_user where usename = current_user')).rows[0].usesuper,
    false,
    'connected as the non-superuser',
  );
  await app.query(
    `select apply_order_fill('{"execution_id":"app-1","asset":"APPUSDT","side":"Buy","execution_quantity":"2","execution_price":"10"}')`,
  );
  const row = (await app.query("select size, version from positions where asset = 'APPUSDT'")).rows[0];
  t.same(row, { size: '2', version: '1' }, 'a fill applied through SQL as the app user');
  const api = await svc.request('GET', '/api/v1/positions/APPUSDT');
  t.equal(api.status, 200, 'and read through the API');
  t.equal(api.body.size, '2');
  await broker.publish('order-manager.order_executed', {
    execution_id: 'app-2',
    asset: 'APPUSDT',
    side: 'Sell',
    execution_quantity: '0.5',
    execution_price: '12',
  });
  await waitFor(
    async () => (await app.query("select size from positions where asset = 'APPUSDT'")).rows[0].size === '1.5',
    { what: 'a fill consumed from the broker', timeoutMs: 20_000 },
  );
  const owners = (
    await app.query(
      "select distinct pg_get_userbyid(c.relowner) as owner from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname in ('public', 'graphile_worker') and c.relkind in ('r', 'v', 'm')",
    )
  ).rows.map((r) => r.owner);
  t.same(owners, [role], 'every table and view belongs to the app user');
  t.equal(await svc.stop(), 0, 'clean shutdown');
}

// The brief's setup: LOGIN, owner of its database, CREATE on it — nothing else.
t.test('the service runs as a database user that is not a superuser (LOGIN only)', (t) =>
  runAsAppUser(t, { createRole: false }),
);
// Same with CREATEROLE: shows what works once the role question is out of the way.
t.test('the service runs as a non-superuser with CREATEROLE', (t) => runAsAppUser(t, { createRole: true }));
