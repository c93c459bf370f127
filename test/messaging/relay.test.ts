// Publisher confirms never hang the service (src/messaging/confirm.ts): a stalled broker that
// never confirms, and a connection lost while amqplib has dropped confirm callbacks (amqplib#191),
// both settle every outstanding publish with a reason. The relay keeps such events pending with
// that reason and sends them once the broker answers again: nothing lost, the relay never stuck.
// The broker is reached through a TCP proxy, so this test can stall or cut it for this process only.
import amqp from 'amqplib';
import pg from 'pg';
import t from 'tap';
import type { Config } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { connectBroker } from '../../src/messaging/broker.js';
import { publishConfirmed, type Outgoing } from '../../src/messaging/confirm.js';
import { OutboxRelay } from '../../src/messaging/relay.js';
import { declareOwnTopology } from '../../src/messaging/topology.js';
import { freshBroker } from '../helpers/amqp.js';
import { freshDatabase } from '../helpers/db.js';
import { tcpProxy } from '../helpers/proxy.js';
import { waitFor } from '../helpers/wait.js';

const EXCHANGE = 'position-manager.events';
const UPDATED = 'position-manager.position_updated';
const log = createLogger({ level: 'silent', service: 'relay-test' });

async function proxiedBroker(t: { teardown(fn: () => unknown): void }) {
  const broker = await freshBroker(t);
  const target = new URL(broker.url);
  const proxy = await tcpProxy(t, target.hostname, Number(target.port || 5672));
  return { broker, proxy, url: proxy.url(broker.url) };
}

/** A fresh database and a relay in this process publishing its outbox through a proxied broker. */
async function relayStack(
  t: { teardown(fn: () => unknown): void },
  options: { confirmTimeoutMs?: number; pollMs?: number },
) {
  const db = await freshDatabase(t, { poolSize: 3 });
  const { broker, proxy, url } = await proxiedBroker(t);
  const pool = db.pool;
  const state = { enabled: true, connected: false, detachedConsumers: new Set<string>() };
  const bus = connectBroker(url, state, log);
  await bus.onConnected((c) => declareOwnTopology(c, { eventsExchange: EXCHANGE } as Config));
  const relay = new OutboxRelay({ databaseUrl: db.url, pool, broker: bus, exchange: EXCHANGE, log, ...options });
  await relay.start();
  t.teardown(async () => {
    // A test that failed while the broker was held or cut must not leave the close handshake
    // waiting for a peer that never answers.
    proxy.release();
    proxy.restore();
    await relay.stop();
    await bus.close();
  });
  const updated = await broker.collect(UPDATED);
  const pending = async (): Promise<number> =>
    (await db.query('select count(*)::int as n from outbox where sent_at is null')).rows[0].n;
  return { db, proxy, state, updated, pending };
}

t.test(
  'publishConfirmed settles every publish: deadline when the broker stalls, close when callbacks are dropped',
  async (t) => {
    const { broker, proxy, url } = await proxiedBroker(t);
    const conn = await amqp.connect(url);
    conn.on('error', () => undefined);
    t.teardown(() => conn.close().catch(() => undefined));
    const message = (n: number): Outgoing => ({
      exchange: '',
      routingKey: 'confirm-test',
      content: Buffer.from(String(n)),
      options: { persistent: true },
    });
    await broker.channel.assertQueue('confirm-test', { durable: true });

    const ch = await conn.createConfirmChannel();
    ch.on('error', () => undefined);
    t.same(await publishConfirmed(ch, [message(1), message(2)]), [null, null], 'a healthy broker confirms both');

    proxy.hold();
    t.same(
      await publishConfirmed(ch, [message(3), message(4)], 300),
      ['no confirm within 300 ms', 'no confirm within 300 ms'],
      'a stalled broker: each publish gives up at the deadline with the reason',
    );

    // Three publishes outstanding; the second marked settled the way amqplib marks a confirm that
    // arrived out of order. On close amqplib calls the first callback and stops at that slot, so
    // the third callback is never called: only the channel's close can settle it.
    const outcome = publishConfirmed(ch, [message(5), message(6), message(7)], 600_000);
    const unconfirmed = (ch as unknown as { unconfirmed: unknown[] }).unconfirmed;
    unconfirmed[unconfirmed.length - 2] = null;
    proxy.cut();
    t.same(
      await outcome,
      [
        'not confirmed: channel closed',
        'channel closed before the broker confirmed',
        'channel closed before the broker confirmed',
      ],
      'the lost connection settles every outstanding publish, dropped callbacks included',
    );
  },
);

t.test(
  'the relay keeps unconfirmed events pending with the reason and sends them when the broker is back',
  async (t) => {
    const { db, proxy, state, updated, pending } = await relayStack(t, { confirmTimeoutMs: 500 });

    let n = 0;
    const fill = () =>
      db.query('select apply_order_fill($1::jsonb)', [
        JSON.stringify({
          asset: 'RELAYUSDT',
          side: 'Buy',
          execution_quantity: '0.5',
          execution_price: '100.25',
          execution_id: `relay-${++n}`,
        }),
      ]);
    const reasons = async (): Promise<string[]> =>
      (await db.query('select last_error from outbox where last_error is not null')).rows.map((r) => r.last_error);
    const eventIds = async (): Promise<string[]> =>
      (await db.query('select event_id::text from outbox order by id')).rows.map((r) => r.event_id);

    await fill();
    await waitFor(async () => (await pending()) === 0, { what: 'the first event sent' });

    proxy.hold();
    await fill();
    await waitFor(async () => (await reasons()).includes('no confirm within 500 ms'), {
      what: 'the stalled batch given up',
      timeoutMs: 20_000,
    });
    t.equal(await pending(), 1, 'the unconfirmed event stays pending');
    proxy.release();
    await waitFor(async () => (await pending()) === 0, {
      what: 'the event sent once the broker answers',
      timeoutMs: 20_000,
    });

    proxy.hold();
    await fill();
    await waitFor(
      async () => (await db.query('select 1 from outbox where sent_at is null and attempts > 0')).rowCount === 1,
      {
        what: 'the third event tried while the broker stalls',
        timeoutMs: 20_000,
      },
    );
    proxy.cut();
    await waitFor(() => !state.connected, { what: 'the relay saw the connection drop' });
    proxy.restore();
    await waitFor(async () => (await pending()) === 0, {
      what: 'the event sent after reconnecting',
      timeoutMs: 40_000,
    });
    t.ok(state.connected, 'reconnected');

    const ids = await eventIds();
    await waitFor(() => ids.every((id) => updated.messages.some((m) => m.properties.messageId === id)), {
      what: 'every position_updated event arrived',
    });
    const distinct = new Set(updated.messages.map((m) => m.properties.messageId));
    t.equal(distinct.size, ids.length, 'each event arrived (a retried one may arrive twice under its message id)');
    t.same(
      updated.messages.filter((m) => !ids.includes(m.properties.messageId)),
      [],
      'nothing arrived that is not in the outbox',
    );
  },
);

t.test('an event committed while the relay is busy goes out at once, not at the next poll', async (t) => {
  const { db, proxy, updated, pending } = await relayStack(t, { pollMs: 600_000 });
  const fill = (id: string) =>
    db.query('select apply_order_fill($1::jsonb)', [
      JSON.stringify({
        asset: 'BUSYUSDT',
        side: 'Buy',
        execution_quantity: '1',
        execution_price: '10',
        execution_id: id,
      }),
    ]);

  // Keep the relay inside a pass: it has read the first event and waits for the stalled broker's confirm.
  proxy.hold();
  // Taken before the fill: the relay may read the event before this test's next query runs.
  const committed = (await db.query('select clock_timestamp() as at')).rows[0].at;
  await fill('busy-1');
  // Watched from a connection of its own: a query of this test on the pool the relay uses could
  // land on the relay's connection and replace the query pg_stat_activity shows for it.
  const probe = new pg.Client({ connectionString: db.url });
  await probe.connect();
  t.teardown(() => probe.end());
  await waitFor(
    async () =>
      (
        await probe.query(
          `select 1 from pg_stat_activity where datname = current_database() and state = 'idle'
            and query like 'select id, event_id%' and state_change > $1`,
          [committed],
        )
      ).rowCount! > 0,
    { what: 'the relay read the first event' },
  );
  await fill('busy-2'); // committed, and notified, while that pass runs
  proxy.release();
  await waitFor(async () => (await pending()) === 0, {
    what: 'both events sent long before the 10-minute poll',
    timeoutMs: 20_000,
  });
  await waitFor(() => updated.messages.length >= 2, { what: 'both events received' });
  t.pass('the second event did not wait for the poll');
});

t.test('an event committed before the relay listens goes out once it listens, not at the next poll', async (t) => {
  const db = await freshDatabase(t, { poolSize: 3 });
  const broker = await freshBroker(t);
  const listenPath = await tcpProxy(t); // only the relay's LISTEN connection goes through it
  listenPath.cut();
  const state = { enabled: true, connected: false, detachedConsumers: new Set<string>() };
  const bus = connectBroker(broker.url, state, log);
  await bus.onConnected((c) => declareOwnTopology(c, { eventsExchange: EXCHANGE } as Config));
  const updated = await broker.collect(UPDATED);
  const relay = new OutboxRelay({
    databaseUrl: listenPath.url(db.url),
    pool: db.pool,
    broker: bus,
    exchange: EXCHANGE,
    log,
    pollMs: 600_000,
  });
  await relay.start();
  t.teardown(async () => {
    listenPath.restore();
    await relay.stop();
    await bus.close();
  });
  await waitFor(() => state.connected, { what: 'the broker' });
  await db.query(
    `select apply_order_fill('{"asset":"LATEUSDT","side":"Buy","execution_quantity":"1","execution_price":"10","execution_id":"late-1"}')`,
  );
  listenPath.restore(); // its NOTIFY went to nobody; now the relay gets to listen
  await waitFor(() => updated.messages.length >= 1, {
    what: 'the event, long before the 10-minute poll',
    timeoutMs: 20_000,
  });
  t.equal(JSON.parse(updated.messages[0]!.content.toString()).asset, 'LATEUSDT');
});
