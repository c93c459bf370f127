// The outbox's delivery record (issue 23, migration 14, sql/020_outbox.sql): event rows are
// written once and never again; what is pending and what was sent live in narrow tables of their
// own, and the view `outbox` reads as the table of SPEC.md §3 did. Against the real PostgreSQL and
// RabbitMQ (a vhost of this file's own) with the relay running in this process.
import t from 'tap';
import type { Config } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { connectBroker } from '../../src/messaging/broker.js';
import { OutboxRelay } from '../../src/messaging/relay.js';
import { declareOwnTopology } from '../../src/messaging/topology.js';
import { freshBroker } from '../helpers/amqp.js';
import { freshDatabase, type TestDb } from '../helpers/db.js';
import { waitFor } from '../helpers/wait.js';

const EXCHANGE = 'position-manager.events';
const log = createLogger({ level: 'silent', service: 'outbox-delivery-test' });
const POSITION = '00000000-0000-4000-8000-00000000000a';
const OTHER = '00000000-0000-4000-8000-00000000000b';

/** Enqueues events through the array overload: [event_type, trace_id, payload] each. */
const enqueue = (db: TestDb, events: [string, string | null, object][]) =>
  db.query('select _enqueue_events($1::text[], $2::text[], $3::jsonb[])', [
    events.map((e) => e[0]),
    events.map((e) => e[1]),
    events.map((e) => JSON.stringify(e[2])),
  ]);

/** A relay in this process publishing the database's outbox to a fresh vhost. */
async function relayFor(t: { teardown(fn: () => unknown): void }, db: TestDb) {
  const broker = await freshBroker(t);
  const state = { enabled: true, connected: false, detachedConsumers: new Set<string>() };
  const bus = connectBroker(broker.url, state, log);
  await bus.onConnected((c) => declareOwnTopology(c, { eventsExchange: EXCHANGE } as Config));
  const relay = new OutboxRelay({ databaseUrl: db.url, pool: db.pool, broker: bus, exchange: EXCHANGE, log });
  await relay.start();
  t.teardown(async () => {
    await relay.stop();
    await bus.close();
  });
  return broker;
}

const pendingCount = async (db: TestDb): Promise<number> =>
  Number((await db.query('select count(*) as n from outbox where sent_at is null')).rows[0].n);

t.test('the array overload: ids in array order, each event with its own type, trace id and envelope', async (t) => {
  const db = await freshDatabase(t, { poolSize: 2 });
  await enqueue(db, [
    ['position_updated', 'trace-1', { position_id: POSITION, n: 1 }],
    ['portfolio_updated', 'trace-2', { n: 2 }],
    ['position_closed', null, { position_id: OTHER, n: 3 }],
  ]);
  const rows = (
    await db.query(
      `select o.id, o.event_id::text, o.routing_key, o.event_type, o.trace_id, o.payload, p.order_key
         from outbox o join outbox_pending p using (id) order by o.id`,
    )
  ).rows;
  t.same(
    rows.map((r) => [r.event_type, r.trace_id, r.payload.n, r.routing_key, r.order_key]),
    [
      ['position_updated', 'trace-1', 1, 'position-manager.position_updated', POSITION],
      ['portfolio_updated', 'trace-2', 2, 'position-manager.portfolio_updated', 'position-manager.portfolio_updated'],
      ['position_closed', null, 3, 'position-manager.position_closed', OTHER],
    ],
    'array order, per-event type and trace id; the order key is the position, else the routing key',
  );
  for (const r of rows)
    t.match(
      r.payload,
      { event_id: r.event_id, event_type: r.event_type, trace_id: r.trace_id, timestamp: /^\d{4}-\d\d-\d\dT.*Z$/ },
      'the envelope merged into the payload',
    );

  // the one-type form is a wrapper of it
  await db.query("select _enqueue_events('position_updated', 'trace-4', array[$1::jsonb, $2::jsonb])", [
    JSON.stringify({ n: 4 }),
    JSON.stringify({ n: 5 }),
  ]);
  t.same(
    (await db.query("select trace_id, payload->>'n' as n from outbox where id > $1 order by id", [rows[2].id])).rows,
    [
      { trace_id: 'trace-4', n: '4' },
      { trace_id: 'trace-4', n: '5' },
    ],
  );
  const before = await pendingCount(db);
  await db.query("select _enqueue_events('position_updated', 'trace-6', array[]::jsonb[])");
  await db.query("select _enqueue_events('position_updated', 'trace-6', null)");
  await db.query('select _enqueue_events(array[]::text[], array[]::text[], array[]::jsonb[])');
  t.equal(await pendingCount(db), before, 'no event from an empty array');
  await t.rejects(
    db.query("select _enqueue_events(array['a', 'b'], array['t'], array['{}'::jsonb, '{}'::jsonb])"),
    /1 trace ids for 2 payloads/,
    'arrays of different lengths are refused',
  );
});

t.test('the view reads as the table of SPEC.md §3 did', async (t) => {
  const db = await freshDatabase(t, { poolSize: 2 });
  const columns = (
    await db.query(
      `select column_name, data_type from information_schema.columns
        where table_schema = 'public' and table_name = 'outbox' order by ordinal_position`,
    )
  ).rows.map((r) => `${r.column_name} ${r.data_type}`);
  t.same(columns, [
    'id bigint',
    'event_id uuid',
    'routing_key text',
    'event_type text',
    'payload jsonb',
    'trace_id text',
    'created_at timestamp with time zone',
    'sent_at timestamp with time zone',
    'attempts integer',
    'last_error text',
  ]);
  await enqueue(db, [
    ['position_updated', 't', { position_id: POSITION }],
    ['position_updated', 't', { position_id: POSITION }],
  ]);
  const [first, second] = (await db.query('select id from outbox order by id')).rows.map((r) => r.id);
  await db.query(
    `with done as (delete from outbox_pending where id = $1 returning id)
     insert into outbox_sent (id, sent_at, attempts, last_error) select id, now(), 2, 'earlier' from done`,
    [first],
  );
  await db.query("update outbox_pending set attempts = 3, last_error = 'nacked' where id = $1", [second]);
  t.match((await db.query('select * from outbox order by id')).rows, [
    { id: first, sent_at: Date, attempts: 2, last_error: 'earlier' },
    { id: second, sent_at: null, attempts: 3, last_error: 'nacked' },
  ]);
  t.same(
    (
      await db.query(
        'select count(*)::int as n, max(attempts) as a, max(last_error) as e from outbox where sent_at is null',
      )
    ).rows[0],
    { n: 1, a: 3, e: 'nacked' },
    "the README's backlog query",
  );
  t.equal((await db.query('select id from outbox where sent_at is not null')).rows[0].id, first);
});

t.test('the relay records sent without touching the event rows', async (t) => {
  const db = await freshDatabase(t, { poolSize: 3 });
  await enqueue(
    db,
    Array.from({ length: 20 }, (_, i): [string, string, object] => [
      'position_updated',
      `trace-${i}`,
      { position_id: i % 2 ? POSITION : OTHER, i },
    ]),
  );
  const versions = `select id, xmin::text, ctid::text from outbox_events order by id`;
  const before = (await db.query(versions)).rows;
  const broker = await relayFor(t, db);
  const updated = await broker.collect('position-manager.position_updated');
  await waitFor(async () => (await pendingCount(db)) === 0, { what: 'every event sent', timeoutMs: 30_000 });
  t.same((await db.query(versions)).rows, before, 'no event row was written again (xmin and ctid unchanged)');
  t.same(
    (await db.query('select count(*)::int as n, min(attempts) as a from outbox_sent')).rows[0],
    { n: 20, a: 1 },
    'one sent row per event, one attempt each',
  );
  t.equal((await db.query('select count(*)::int as n from outbox_pending')).rows[0].n, 0);
  await waitFor(() => updated.messages.length >= 20, { what: 'every event arrived', timeoutMs: 30_000 });
  t.same(
    updated.bodies().map((b) => b.i),
    Array.from({ length: 20 }, (_, i) => i),
    'in outbox order',
  );
});

t.test('an unconfirmed event stays pending with its error; later events of its position wait', async (t) => {
  const db = await freshDatabase(t, { poolSize: 3 });
  // no queue is bound to position-manager.no_such_event: the broker returns it (mandatory)
  await enqueue(db, [
    ['position_updated', 't', { position_id: POSITION, i: 1 }],
    ['no_such_event', 't', { position_id: POSITION, i: 2 }],
    ['position_updated', 't', { position_id: POSITION, i: 3 }],
    ['position_updated', 't', { position_id: OTHER, i: 4 }],
  ]);
  const ids = (await db.query('select id from outbox order by id')).rows.map((r) => r.id);
  const versions = `select id, xmin::text, ctid::text from outbox_events order by id`;
  const before = (await db.query(versions)).rows;
  await relayFor(t, db);
  const state = async () =>
    (await db.query('select id, sent_at is not null as sent, attempts, last_error from outbox order by id')).rows;
  const rows = await waitFor(
    async () => {
      const s = await state();
      return s[1].attempts >= 2 && s[3].sent ? s : undefined;
    },
    { what: 'the returned event tried twice, the other position sent', timeoutMs: 30_000 },
  );
  t.match(rows[0], { id: ids[0], sent: true, attempts: 1, last_error: null }, 'the earlier event went out');
  t.match(
    rows[1],
    { id: ids[1], sent: false, last_error: 'returned: unroutable' },
    'the returned one stays pending, attempts counted, with why',
  );
  t.match(rows[2], { id: ids[2], sent: false }, 'a later event of the same position is not marked sent ahead of it');
  t.match(rows[3], { id: ids[3], sent: true }, "another position's event flows on");
  t.same((await db.query(versions)).rows, before, 'no event row was written again');
});
