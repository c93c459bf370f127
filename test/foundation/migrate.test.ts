import t from 'tap';
import pg from 'pg';
import { migrate } from '../../src/db/migrate.js';
import { emptyDatabase } from '../helpers/db.js';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { appendFileSync, cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { MIGRATIONS_DIR, ROOT, SQL_DIR } from '../../src/paths.js';

/** An empty database of this test's own and a connection to it. */
async function emptyWithClient(t: Parameters<typeof emptyDatabase>[0]) {
  const db = await emptyDatabase(t);
  const c = new pg.Client({ connectionString: db.url });
  // the database is dropped with force at teardown, which may reach this client before its end()
  c.on('error', () => undefined);
  await c.connect();
  t.teardown(() => c.end());
  return { db, c };
}

async function schemaFingerprint(url: string): Promise<string> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const r = await c.query<{ f: string }>(`
      select string_agg(table_name || '.' || column_name || ':' || data_type, ',' order by table_name, column_name) as f
        from information_schema.columns where table_schema in ('public', 'graphile_worker')`);
    return r.rows[0]!.f;
  } finally {
    await c.end();
  }
}

t.test('an empty database is migrated, and migrating again changes nothing', async (t) => {
  const db = await emptyDatabase(t);
  const first = await migrate(db.url);
  t.ok(first.migrationsApplied.length >= 5, 'every migration applied');
  t.equal(first.definitionsApplied, true, 'sql/ definitions applied');
  const before = await schemaFingerprint(db.url);
  const second = await migrate(db.url);
  t.same(second.migrationsApplied, [], 'no migration runs twice');
  t.equal(second.definitionsApplied, false, 'unchanged definitions are not reapplied');
  t.equal(await schemaFingerprint(db.url), before);
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  t.teardown(() => c.end());
  const jobs = await c.query("select to_regproc('graphile_worker.add_job') is not null as ok");
  t.equal(jobs.rows[0].ok, true, "graphile-worker's schema is installed by the same step");
});

t.test('two processes migrating one database at once do not race', async (t) => {
  const db = await emptyDatabase(t);
  const results = await Promise.all([migrate(db.url), migrate(db.url), migrate(db.url)]);
  const applied = results.map((r) => r.migrationsApplied.length);
  t.equal(applied.filter((n) => n > 0).length, 1, 'exactly one of them applied the migrations');
  t.equal(results.filter((r) => r.definitionsApplied).length, 1, 'exactly one applied the definitions');
});

t.test('pre-existing positions of another writer are extended in place', async (t) => {
  const { db, c } = await emptyWithClient(t);
  await c.query(`create table positions (
      id uuid primary key default gen_random_uuid(), asset varchar(20) not null, size numeric not null,
      average_entry_price numeric, current_price numeric, unrealized_pnl numeric, realized_pnl numeric,
      mode varchar(20) default 'one-way', long_size numeric, short_size numeric,
      created_at timestamp default now(), last_updated timestamp default now(), closed_at timestamp,
      unique (asset, mode))`);
  await c.query(`insert into positions (asset, size, average_entry_price, current_price, unrealized_pnl, last_updated, created_at)
                 values ('BTCUSDT', 1.5, 50000, 50100, null, '2025-01-15 10:00:00', '2025-01-15 09:00:00'),
                        ('ETHUSDT', 0, 3000, 0, 5, '2025-01-15 11:00:00', '2025-01-15 09:00:00'),
                        ('SOLUSDT', 0, 0, 0, 0, '2025-01-15 11:00:00', '2025-01-15 09:00:00')`);
  await migrate(db.url);
  const rows = (
    await c.query(`select asset, size, unrealized_pnl, realized_pnl, version, closed_at, opened_at, last_updated
                                 from positions order by asset`)
  ).rows;
  t.equal(rows[0].asset, 'BTCUSDT');
  t.equal(rows[0].size, '1.5');
  t.equal(rows[0].unrealized_pnl, '0', 'null PnL is read as 0');
  t.equal(rows[0].closed_at, null);
  t.equal((rows[0].last_updated as Date).toISOString(), '2025-01-15T10:00:00.000Z', 'old timestamps read as UTC');
  t.equal(
    (rows[1].closed_at as Date).toISOString(),
    '2025-01-15T11:00:00.000Z',
    'flat rows get closed_at = last_updated',
  );
  t.equal(rows[1].unrealized_pnl, '0');
  const prices = (await c.query('select asset, average_entry_price, current_price from positions order by asset')).rows;
  t.same(
    prices.map((r) => [r.asset, r.average_entry_price, r.current_price]),
    [
      ['BTCUSDT', '50000', '50100'],
      ['ETHUSDT', '3000', null],
      ['SOLUSDT', null, null],
    ],
    "Bybit's 0 for no price becomes null",
  );
  const uniques = (
    await c.query(`select count(*)::int as n from pg_index where indrelid = 'positions'::regclass and indisunique
                                    and not indisprimary`)
  ).rows[0].n;
  t.equal(uniques, 1, 'the existing unique (asset, mode) is reused, not duplicated');
  const resets = (
    await c.query(`select asset, kind, leg, reset_size, reset_avg_price from position_fills order by asset`)
  ).rows;
  t.same(
    resets.map((r) => [r.asset, r.kind, r.leg, r.reset_size]),
    [
      ['BTCUSDT', 'reset', 'net', '1.5'],
      ['ETHUSDT', 'reset', 'net', '0'],
      ['SOLUSDT', 'reset', 'net', '0'],
    ],
    'a reset ledger row for every pre-existing position',
  );
});

// Order Manager's own migrations create both tables with DECIMAL(20, 8) and hedge rows without legs.
t.test("Order Manager's DECIMAL(20, 8) tables become unscaled numeric; its hedge rows get legs", async (t) => {
  const { db, c } = await emptyWithClient(t);
  await c.query(`create table positions (id uuid primary key default gen_random_uuid(), asset varchar(20) not null,
      size decimal(20, 8) not null, average_entry_price decimal(20, 8), unrealized_pnl decimal(20, 8),
      realized_pnl decimal(20, 8), mode varchar(20) not null default 'one-way', long_size decimal(20, 8),
      short_size decimal(20, 8), long_avg_price decimal(20, 8), short_avg_price decimal(20, 8),
      last_updated timestamp not null default now(), last_snapshot_at timestamp, unique (asset, mode))`);
  await c.query(`create table position_snapshots (id uuid primary key default gen_random_uuid(), position_id uuid not null,
      asset varchar(20) not null, size decimal(20, 8) not null, average_entry_price decimal(20, 8), unrealized_pnl decimal(20, 8),
      realized_pnl decimal(20, 8), mode varchar(20) not null, long_size decimal(20, 8), short_size decimal(20, 8),
      snapshot_timestamp timestamp not null default now())`);
  await c.query(`insert into positions (asset, mode, size, average_entry_price, unrealized_pnl, realized_pnl)
                 values ('ETHUSDT', 'hedge', -2, 3000, -10, 4), ('SOLUSDT', 'hedge', 0, null, 0, 1)`);
  await c.query(`insert into positions (asset, mode, size, long_size, long_avg_price, unrealized_pnl, realized_pnl)
                 values ('ADAUSDT', 'hedge', 1, 2, 0.5, 3, 0)`);
  await migrate(db.url);
  const scaled = (
    await c.query(`select table_name || '.' || column_name as col from information_schema.columns
                                  where table_name in ('positions', 'position_snapshots') and data_type = 'numeric'
                                    and numeric_scale is not null`)
  ).rows.map((r) => r.col);
  t.same(scaled, [], 'no numeric column keeps a scale');
  const h = (await c.query("select * from positions where asset = 'ETHUSDT'")).rows[0];
  t.same(
    [
      h.long_size,
      h.short_size,
      h.short_avg_price,
      h.average_entry_price,
      h.short_unrealized_pnl,
      h.long_unrealized_pnl,
      h.short_realized_pnl,
    ].map(Number),
    [0, 2, 3000, 3000, -10, 0, 4],
    'the row is its short leg',
  );
  const partial = (
    await c.query(
      "select long_size, short_size, long_unrealized_pnl, short_unrealized_pnl from positions where asset = 'ADAUSDT'",
    )
  ).rows[0];
  t.same(Object.values(partial).map(Number), [2, 1, 3, 0], 'a missing leg is what the other and the size leave');
  /** Applies two fills [side, quantity, price] on `asset`; returns `column` of the row the second one returns. */
  const twoFills = async (asset: string, first: string[], second: string[], column: string) => {
    const fill = ([side, qty, price]: string[]) =>
      JSON.stringify({ asset, side, execution_quantity: qty, execution_price: price });
    await c.query('select apply_order_fill($1::jsonb)', [fill(first)]);
    return (await c.query(`select (apply_order_fill($1::jsonb)).${column}`, [fill(second)])).rows[0][column];
  };
  const average = await twoFills('XRPUSDT', ['Buy', '1.0', '48000'], ['Buy', '0.5', '50000'], 'average_entry_price');
  t.equal(average, '48666.6666666667', 'stored at 10 places (TC-004)');
  const snap = (await c.query("select (create_position_snapshot('XRPUSDT')).average_entry_price")).rows[0];
  t.equal(snap.average_entry_price, '48666.6666666667', 'and so is its snapshot');
  const big = await twoFills('BIGUSDT', ['Buy', '100000', '90000000'], ['Sell', '100000', '100000000'], 'realized_pnl');
  t.equal(big, '1000000000000', 'a realized PnL of 1e12, beyond DECIMAL(20, 8), is stored');
});

// A database migrated before migration 1 widened the columns: migration 8 does it, views and all.
t.test('migration 8 widens DECIMAL(20, 8) columns left by an earlier migration 1', async (t) => {
  const { db, c } = await emptyWithClient(t);
  await migrate(db.url);
  // the state an earlier migration 1 left on Order Manager's tables
  const views = (await c.query('select views from sql_definitions')).rows[0].views as string[];
  for (const v of [...views].reverse()) {
    const k = (await c.query('select relkind::text as k from pg_class where oid = to_regclass($1)', [v])).rows[0]?.k;
    if (k) await c.query(`drop ${k === 'm' ? 'materialized view' : 'view'} ${v}`);
  }
  await c.query('alter table positions drop column gross_size');
  await c.query(
    'alter table positions alter column average_entry_price type decimal(20, 8), alter column size type decimal(20, 8)',
  );
  await c.query('alter table position_snapshots alter column average_entry_price type decimal(20, 8)');
  await c.query(`alter table positions add column gross_size numeric generated always as (
                   case when mode = 'hedge' then coalesce(long_size, 0) + coalesce(short_size, 0) else abs(size) end) stored`);
  // migrated before migration 8 was written, so before every later one too
  await c.query("delete from pgmigrations where name >= '1000000000008'");
  await c.query("update sql_definitions set hash = 'old'");

  const again = await migrate(db.url);
  t.same(again.migrationsApplied.slice(0, 1), ['1000000000008_unscaled-numeric']);
  t.equal(again.definitionsApplied, true, 'the views are back');
  const scaled = (
    await c.query(`select count(*)::int as n from information_schema.columns where table_name in ('positions', 'position_snapshots')
                                   and data_type = 'numeric' and numeric_scale is not null`)
  ).rows[0].n;
  t.equal(scaled, 0, 'no numeric column keeps a scale');
  t.ok((await c.query("select to_regclass('positions_open_idx') as r")).rows[0].r, 'the open-positions index is back');
  await c.query(
    `select apply_order_fill('{"asset":"XRPUSDT","side":"Buy","execution_quantity":"1.0","execution_price":"48000"}')`,
  );
  await c.query(
    `select apply_order_fill('{"asset":"XRPUSDT","side":"Buy","execution_quantity":"0.5","execution_price":"50000"}')`,
  );
  const p = (await c.query("select average_entry_price, gross_size from positions_view where asset = 'XRPUSDT'"))
    .rows[0];
  t.same([p.average_entry_price, p.gross_size], ['48666.6666666667', '1.5']);
  t.same((await migrate(db.url)).migrationsApplied, [], 'and it stays done');
});

// The trading database is shared: only the views sql/ defines are dropped and re-created.
t.test("another service's views survive migrations, on the first run and when the definitions change", async (t) => {
  const { db, c } = await emptyWithClient(t);
  await c.query('create table risk_limits (name text primary key, value numeric)');
  await c.query("insert into risk_limits values ('max_leverage', 5)");
  await c.query('create view risk_limits_view as select name, value from risk_limits');
  await c.query('create materialized view risk_limits_total as select sum(value) as total from risk_limits');
  const foreign = async () =>
    (
      await c.query(`select relname from pg_class where relname in ('risk_limits_view', 'risk_limits_total')
                                                order by relname`)
    ).rows.map((r) => r.relname);
  t.equal((await migrate(db.url)).definitionsApplied, true);
  t.same(await foreign(), ['risk_limits_total', 'risk_limits_view'], 'first run');
  const ours = (await c.query('select views from sql_definitions')).rows[0].views as string[];
  t.ok(ours.includes('positions_view') && ours.includes('portfolio_pnl_hourly'), 'our views are recorded');
  t.notOk(ours.includes('risk_limits_view'), 'theirs are not');

  // A view a previous version defined and this one does not: ours, so it goes.
  await c.query('create view position_legacy_view as select id from positions');
  await c.query("update sql_definitions set hash = 'changed', views = views || '{position_legacy_view}'");
  t.equal((await migrate(db.url)).definitionsApplied, true, 'definitions re-applied');
  t.same(await foreign(), ['risk_limits_total', 'risk_limits_view'], 'after a change of the definitions');
  t.equal((await c.query('select count(*)::int as n from risk_limits_total')).rows[0].n, 1, 'with its data');
  t.equal(
    (await c.query("select to_regclass('position_legacy_view') as r")).rows[0].r,
    null,
    'our obsolete view is dropped',
  );
  t.ok((await c.query("select to_regclass('positions_view') as r")).rows[0].r, 'ours are re-created');

  // Theirs built on one of ours: stop with its name rather than drop it along.
  await c.query('create view risk_positions as select asset from positions_view');
  await c.query("update sql_definitions set hash = 'changed again'");
  await t.rejects(
    migrate(db.url),
    /cannot re-create view positions_view.*risk_positions/,
    'the migration names the dependent view',
  );
  t.ok((await c.query("select to_regclass('risk_positions') as r")).rows[0].r, 'which is still there');
});

const scratchServer = (u: URL) =>
  u.hostname === '127.0.0.1' && (u.port || '5432') === '5432' && u.username === 'postgres';
t.test(
  'scripts/scratch-db.sh creates the database the service would create',
  {
    skip:
      !scratchServer(new URL(process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres')) &&
      'the script uses postgres@127.0.0.1:5432',
  },
  async (t) => {
    const db = await emptyDatabase(t, 'pm_scratch');
    const { execFile } = await import('node:child_process');
    const { promisify } = await import('node:util');
    const { ROOT } = await import('../../src/paths.js');
    await promisify(execFile)('bash', ['scripts/scratch-db.sh', '--no-build', db.name], { cwd: ROOT });
    const again = await migrate(db.url);
    t.same(again.migrationsApplied, [], 'every migration is recorded in pgmigrations');
    t.equal(again.definitionsApplied, false, 'the sql/ definitions are recorded as applied');
  },
);

// Released migrations are immutable (issue 20): the checksum of each applied file is kept.
t.test('an applied migration whose file changed stops migrate, naming the file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pm-migrations-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  cpSync(MIGRATIONS_DIR, dir, { recursive: true });
  const { db, c } = await emptyWithClient(t);
  await migrate(db.url, { migrationsDir: dir });
  const recorded = (await c.query('select name, sha256 from migration_checksums order by name')).rows;
  const ledger = 'migrations/1000000000001_ledger-tables.sql';
  t.equal(
    recorded.length,
    (await c.query('select count(*)::int as n from pgmigrations')).rows[0].n,
    'one per migration',
  );
  t.equal(
    recorded[0].sha256,
    createHash('sha256')
      .update(readFileSync(join(dir, '1000000000001_ledger-tables.sql')))
      .digest('hex'),
    'the sha256 of the file',
  );

  appendFileSync(join(dir, '1000000000001_ledger-tables.sql'), '\n-- edited after it was applied\n');
  await t.rejects(migrate(db.url, { migrationsDir: dir }), new RegExp(`${ledger} has changed since it was applied`));

  // A database migrated before checksums were kept takes the files as they are.
  await c.query('delete from migration_checksums');
  t.same((await migrate(db.url, { migrationsDir: dir })).migrationsApplied, [], 'nothing runs again');
  t.equal((await c.query('select count(*)::int as n from migration_checksums')).rows[0].n, recorded.length);
  t.not(
    (await c.query("select sha256 from migration_checksums where name = '1000000000001_ledger-tables'")).rows[0].sha256,
    recorded[0].sha256,
    'the current file is recorded',
  );
});

t.test('npm run migrate exits 1 naming a changed migration, and needs no API key', async (t) => {
  const db = await emptyDatabase(t);
  const run = () =>
    promisify(execFile)(process.execPath, ['dist/src/db/migrate-cli.js'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, DATABASE_URL: db.url },
    });
  const first = await run();
  t.match(first.stdout, /migrations applied, definitions applied, settings written/, 'migrated without an API key');
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  t.teardown(() => c.end());
  await c.query("update migration_checksums set sha256 = 'changed' where name = '1000000000003_portfolio-tables'");
  const failed = await run().then(
    () => undefined,
    (err: { code: number; stderr: string }) => err,
  );
  t.equal(failed?.code, 1, 'exit code 1');
  t.match(failed?.stderr, /migration failed: migrations\/1000000000003_portfolio-tables\.sql has changed/);
});

// sql/ is reorganised between releases: a function it no longer defines is dropped, another
// service's never.
t.test('functions sql/ no longer defines are dropped; those of other services are kept', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pm-sql-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  cpSync(SQL_DIR, dir, { recursive: true });
  const extra = join(dir, '950_extra.sql');
  writeFileSync(
    extra,
    "create or replace function pm_obsolete(n integer) returns integer language sql as 'select n + 1';\n",
  );
  const { db, c } = await emptyWithClient(t);
  const exists = async (sig: string) =>
    (await c.query('select to_regprocedure($1) is not null as e', [sig])).rows[0].e as boolean;
  await c.query("create function risk_score(x numeric) returns numeric language sql as 'select x * 2'");

  await migrate(db.url, { sqlDir: dir });
  const recorded = (await c.query('select functions from sql_definitions')).rows[0].functions as string[];
  t.ok(recorded.includes('pm_obsolete(integer)') && recorded.includes('apply_order_fill(jsonb)'), 'ours recorded');
  t.notOk(recorded.includes('risk_score(numeric)'), "another service's function is not");

  rmSync(extra);
  t.equal((await migrate(db.url, { sqlDir: dir })).definitionsApplied, true);
  t.equal(await exists('pm_obsolete(integer)'), false, 'the function sql/ no longer defines is dropped');
  t.equal(await exists('risk_score(numeric)'), true, "another service's function stays");
  t.equal(await exists('apply_order_fill(jsonb)'), true, 'the others are re-created');
  t.notOk(
    ((await c.query('select functions from sql_definitions')).rows[0].functions as string[]).includes(
      'pm_obsolete(integer)',
    ),
  );

  // Another service's view built on one of ours: stop with its name rather than drop it along.
  writeFileSync(
    extra,
    "create or replace function pm_obsolete(n integer) returns integer language sql as 'select n + 1';\n",
  );
  await migrate(db.url, { sqlDir: dir });
  await c.query('create view risk_obsolete as select pm_obsolete(1) as n');
  rmSync(extra);
  await t.rejects(
    migrate(db.url, { sqlDir: dir }),
    /cannot drop function pm_obsolete\(integer\), which sql\/ no longer defines: .*risk_obsolete/,
  );
  t.equal(await exists('pm_obsolete(integer)'), true, 'nothing was dropped');
});

// Databases whose sql/ was applied before functions were recorded get the record of that release.
t.test('a database migrated before the function record drops the old signatures on upgrade', async (t) => {
  const { db, c } = await emptyWithClient(t);
  await migrate(db.url);
  // the state before migration 12: no record, and a signature an older sql/ dropped by hand
  await c.query('alter table sql_definitions drop column functions');
  await c.query("delete from pgmigrations where name >= '1000000000012'");
  await c.query("create function validate_all_positions(since timestamptz) returns void language sql as ''");
  await c.query("update sql_definitions set hash = 'e444ac0'");
  const again = await migrate(db.url);
  t.same(again.migrationsApplied.slice(0, 1), ['1000000000012_sql-function-record']);
  t.equal(
    (await c.query("select to_regprocedure('validate_all_positions(timestamptz)') is null as gone")).rows[0].gone,
    true,
    'the old signature is dropped',
  );
  t.equal((await c.query("select to_regprocedure('apply_order_fill(jsonb)') is not null as kept")).rows[0].kept, true);
});
