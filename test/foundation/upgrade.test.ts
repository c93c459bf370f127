// An upgrade from the last landed release: a database exactly as release e3f0b92 left it (its
// pg_dump, with one position) is migrated by this version. It must end with the same functions as
// a fresh database (none left behind that the new sql/ no longer defines), keep its data, and
// apply and validate fills. Its outbox (one table until migration 14) comes through event for
// event: a sent event stays sent and is not published again, a pending one stays pending with
// its attempts and error, and the relay publishes it.
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import pg from 'pg';
import t from 'tap';
import type { Config } from '../../src/config.js';
import { migrate } from '../../src/db/migrate.js';
import { createLogger } from '../../src/log.js';
import { connectBroker } from '../../src/messaging/broker.js';
import { OutboxRelay } from '../../src/messaging/relay.js';
import { declareOwnTopology } from '../../src/messaging/topology.js';
import { freshBroker } from '../helpers/amqp.js';
import { admin, emptyDatabase, freshDatabase } from '../helpers/db.js';
import { waitFor } from '../helpers/wait.js';

const DUMP = new URL('../fixtures/release-e3f0b92.sql.gz', import.meta.url);
const FUNCTIONS = `select p.oid::regprocedure::text as f from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                    where n.nspname = 'public' and not exists (
                          select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e')
                    order by 1`;
const OUTBOX = `select id, event_id, routing_key, event_type, payload::text, trace_id, created_at, sent_at, attempts,
                       last_error from outbox order by id`;
// the partitions (migration 21) are days, which differ with the ages of the rows: the parents compare
const COLUMNS = `select table_name, column_name, data_type, is_nullable, column_default from information_schema.columns
                  where table_schema = 'public' and table_name like 'outbox%'
                    and not exists (select 1 from pg_class c where c.oid = to_regclass(table_name) and c.relispartition)
                  order by table_name, ordinal_position`;

/** A short-lived connection of its own to the database at `url`. */
const withClient = <T>(url: string, fn: (c: pg.Client) => Promise<T>) => admin(fn, url);

t.test('a database of release e3f0b92 migrates to this version', async (t) => {
  const old = await emptyDatabase(t, 'pm_upgrade');
  await withClient(old.url, (c) => c.query(gunzipSync(readFileSync(DUMP)).toString('utf8')));
  await withClient(old.url, async (c) => {
    await c.query("select set_config('position_manager.writer', 'on', false)");
    await c.query(`select apply_order_fill('{"execution_id":"u1","asset":"BTCUSDT","side":"Buy",
                   "execution_quantity":"1","execution_price":"100"}'::jsonb)`);
    for (const [i, asset] of ['ETHUSDT', 'SOLUSDT'].entries())
      await c.query('select apply_order_fill($1::jsonb)', [
        JSON.stringify({ execution_id: `u1-${i}`, asset, side: 'Buy', execution_quantity: '1', execution_price: '10' }),
      ]);
    // the old relay's marks: the first event sent, the second tried twice and returned
    await c.query(`update outbox set sent_at = now() - interval '1 hour', attempts = 1
                    where id = (select min(id) from outbox)`);
    await c.query(`update outbox set attempts = 2, last_error = 'returned: unroutable'
                    where id = (select min(id) from outbox where sent_at is null)`);
  });
  const events = await withClient(old.url, async (c) => (await c.query(OUTBOX)).rows);
  t.same(
    events.map((e) => [e.sent_at !== null, e.attempts]),
    [
      [true, 1],
      [false, 2],
      [false, 0],
    ],
    'the old outbox: one sent event, two pending',
  );

  const result = await migrate(old.url);
  t.ok(result.migrationsApplied.length > 0, `migrations applied: ${result.migrationsApplied.join(', ')}`);
  t.ok(result.definitionsApplied, 'sql/ applied');

  const fresh = await freshDatabase(t);
  const want = (await fresh.query<{ f: string }>(FUNCTIONS)).rows.map((r) => r.f);
  const freshColumns = (await fresh.query(COLUMNS)).rows;
  await withClient(old.url, async (c) => {
    t.same((await c.query(OUTBOX)).rows, events, 'the outbox reads event for event as before');
    t.same((await c.query(COLUMNS)).rows, freshColumns, "the outbox's tables and view as in a fresh database");
    t.same(
      (await c.query('select order_key from outbox_pending order by id')).rows.map((r) => r.order_key),
      events.slice(1).map((e) => JSON.parse(e.payload).position_id),
      "each pending event's order key is its position",
    );
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

  // The relay publishes what was pending, and only that.
  const broker = await freshBroker(t);
  const updated = await broker.collect('position-manager.position_updated');
  const log = createLogger({ level: 'silent', service: 'upgrade-test' });
  const pool = new pg.Pool({ connectionString: old.url, max: 2 });
  const state = { enabled: true, connected: false, detachedConsumers: new Set<string>() };
  const bus = connectBroker(broker.url, state, log);
  await bus.onConnected((c) => declareOwnTopology(c, { eventsExchange: 'position-manager.events' } as Config));
  const relay = new OutboxRelay({ databaseUrl: old.url, pool, broker: bus, exchange: 'position-manager.events', log });
  await relay.start();
  t.teardown(async () => {
    await relay.stop();
    await bus.close();
    await pool.end();
  });
  const published = (
    await pool.query("select event_id from outbox where id > $1 and event_type = 'position_updated' order by id", [
      events[0].id,
    ])
  ).rows.map((r) => r.event_id);
  t.same(published.slice(0, 2), [events[1].event_id, events[2].event_id]);
  await waitFor(
    async () => (await pool.query('select count(*)::int as n from outbox where sent_at is null')).rows[0].n === 0,
    { what: 'the pending events sent', timeoutMs: 30_000 },
  );
  await waitFor(() => updated.messages.length >= published.length, {
    what: 'the pending events arrived',
    timeoutMs: 30_000,
  });
  t.same(
    updated.messages.map((m) => m.properties.messageId),
    published,
    'the events pending before the upgrade and those after it, in order; the sent one not again',
  );
  t.same(
    (await pool.query('select attempts, last_error from outbox where id = $1', [events[1].id])).rows[0],
    { attempts: 3, last_error: 'returned: unroutable' },
    'a pending event keeps its count of attempts when sent',
  );
});
