// An upgrade from the last landed release: a database exactly as release e3f0b92 left it (its
// pg_dump, with one position) is migrated by this version. It must end with the same functions as
// a fresh database (none left behind that the new sql/ no longer defines), keep its data, and
// apply and validate fills.
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import pg from 'pg';
import t from 'tap';
import { migrate } from '../../src/db/migrate.js';
import { admin, emptyDatabase, freshDatabase } from '../helpers/db.js';

const DUMP = new URL('../fixtures/release-e3f0b92.sql.gz', import.meta.url);
const FUNCTIONS = `select p.oid::regprocedure::text as f from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                    where n.nspname = 'public' and not exists (
                          select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e')
                    order by 1`;

/** A short-lived connection of its own to the database at `url`. */
const withClient = <T>(url: string, fn: (c: pg.Client) => Promise<T>) => admin(fn, url);

t.test('a database of release e3f0b92 migrates to this version', async (t) => {
  const old = await emptyDatabase(t, 'pm_upgrade');
  await withClient(old.url, (c) => c.query(gunzipSync(readFileSync(DUMP)).toString('utf8')));
  await withClient(old.url, async (c) => {
    await c.query("select set_config('position_manager.writer', 'on', false)");
    await c.query(`select apply_order_fill('{"execution_id":"u1","asset":"BTCUSDT","side":"Buy",
                   "execution_quantity":"1","execution_price":"100"}'::jsonb)`);
  });

  const result = await migrate(old.url);
  t.ok(result.migrationsApplied.length > 0, `migrations applied: ${result.migrationsApplied.join(', ')}`);
  t.ok(result.definitionsApplied, 'sql/ applied');

  const fresh = await freshDatabase(t);
  const want = (await fresh.query<{ f: string }>(FUNCTIONS)).rows.map((r) => r.f);
  await withClient(old.url, async (c) => {
    t.same(
      (await c.query<{ f: string }>(FUNCTIONS)).rows.map((r) => r.f),
      want,
      "a fresh database's functions, no more",
    );
    await c.query("select set_config('position_manager.writer', 'on', false)");
    const p =
      await c.query(`select size, average_entry_price = 105 as average_is_105, version from apply_order_fill('{"execution_id":"u2",
                             "asset":"BTCUSDT","side":"Buy","execution_quantity":"1","execution_price":"110"}'::jsonb)`);
    t.same(p.rows[0], { size: '2', average_is_105: true, version: '2' }, 'the old position takes a new fill');
    const v = await c.query("select validate_position('BTCUSDT') ->> 'is_valid' as ok");
    t.equal(v.rows[0].ok, 'true', 'and validates against its ledger');
  });
  t.same(await migrate(old.url), { migrationsApplied: [], definitionsApplied: false }, 'a second migrate is a no-op');
});
