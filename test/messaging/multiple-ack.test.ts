// A batch's settled deliveries are acknowledged with one multiple ack (fewer frames), and a
// delivery still unsettled (here: one whose dead-lettering is held up) is never covered by one.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import amqp from 'amqplib';
import { pino } from 'pino';
import t from 'tap';
import { QueueConsumer } from '../../src/messaging/consumer.js';
import { DEAD_LETTER_QUEUE, DEAD_LETTER_QUEUE_OPTIONS } from '../../src/messaging/topology.js';
import { freshBroker } from '../helpers/amqp.js';
import { freshDatabase } from '../helpers/db.js';
import { waitFor } from '../helpers/wait.js';

const FILLS = 'order-manager.order_executed';

const db = await freshDatabase(t);
const broker = await freshBroker(t);
const setup = await broker.connection.createChannel();
await setup.assertQueue(FILLS, { durable: true });
await setup.assertQueue(DEAD_LETTER_QUEUE, DEAD_LETTER_QUEUE_OPTIONS);
await setup.close();

const size = async (asset: string) =>
  (await db.query<{ size: string }>('select size from positions where asset = $1', [asset])).rows[0]?.size;

/** Messages of FILLS the broker holds: ready, and delivered but unacknowledged. */
async function counts(queue: string): Promise<{ ready: number; unacked: number }> {
  const { stdout } = await promisify(execFile)('rabbitmqctl', [
    '-q',
    'list_queues',
    '-p',
    broker.vhost,
    'name',
    'messages_ready',
    'messages_unacknowledged',
    '--formatter',
    'json',
  ]);
  const q = (JSON.parse(stdout) as { name: string; messages_ready: number; messages_unacknowledged: number }[]).find(
    (x) => x.name === queue,
  )!;
  return { ready: q.messages_ready, unacked: q.messages_unacknowledged };
}

interface Ack {
  tag: number;
  allUpTo: boolean;
}

/** A connection whose channels record every ack (delivery tag, multiple or not). */
async function recordingConnection(t: { teardown(fn: () => unknown): void }, acks: Ack[]): Promise<amqp.ChannelModel> {
  const conn = await amqp.connect(broker.url);
  conn.on('error', () => undefined);
  t.teardown(() => conn.close().catch(() => undefined));
  const create = conn.createChannel.bind(conn);
  conn.createChannel = async () => {
    const ch = await create();
    const ack = ch.ack.bind(ch);
    ch.ack = (m, allUpTo) => {
      acks.push({ tag: m.fields.deliveryTag, allUpTo: allUpTo ?? false });
      ack(m, allUpTo);
    };
    return ch;
  };
  return conn;
}

/** A consumer of FILLS attached on a recording connection; its acks land in `acks`. */
async function attached(
  t: { teardown(fn: () => unknown): void },
  acks: Ack[],
  deadLetterChannel: () => amqp.ConfirmChannel | undefined,
): Promise<QueueConsumer> {
  const conn = await recordingConnection(t, acks);
  const c = new QueueConsumer({
    queue: FILLS,
    kind: 'fill',
    pool: db.pool,
    log: pino({ level: 'silent' }),
    maxBatch: 100,
    maxDeliveryAttempts: 3,
    deadLetterChannel,
    detached: new Set(),
  });
  await c.attach(conn, 100);
  return c;
}

const fill = (asset: string, qty: number) => ({
  asset,
  side: 'Buy',
  execution_quantity: String(qty),
  execution_price: '10',
});

t.test('a batch is acknowledged with fewer ack frames than messages, and every message is acked', async (t) => {
  for (let i = 1; i <= 30; i++) await broker.publish(FILLS, fill('MULTIUSDT', i));
  const acks: Ack[] = [];
  const c = await attached(t, acks, () => undefined);
  await waitFor(async () => (await size('MULTIUSDT')) === '465', { what: 'all 30 fills applied' });
  await waitFor(async () => (await counts(FILLS)).unacked === 0, { what: 'all acknowledged' });
  t.same(await counts(FILLS), { ready: 0, unacked: 0 }, 'the broker holds none of them');
  t.ok(acks.length < 30, `${acks.length} ack frames for 30 messages`);
  t.ok(
    acks.some((a) => a.allUpTo),
    'multiple acks',
  );
  await c.stop();
  t.same(await counts(FILLS), { ready: 0, unacked: 0 }, 'nothing handed back when the channel closed');
});

t.test('a delivery still unsettled is not acknowledged by a later multiple ack', async (t) => {
  for (let i = 1; i <= 5; i++) await broker.publish(FILLS, fill('HELDUSDT', i));
  await broker.publish(FILLS, 'not json');
  for (let i = 6; i <= 10; i++) await broker.publish(FILLS, fill('HELDUSDT', i));

  // The dead-letter channel's confirms are held back until released: the bad message stays unsettled.
  const dlConn = await amqp.connect(broker.url);
  dlConn.on('error', () => undefined);
  t.teardown(() => dlConn.close().catch(() => undefined));
  const dl = await dlConn.createConfirmChannel();
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const publish = dl.publish.bind(dl);
  dl.publish = (exchange, routingKey, content, options, cb) =>
    publish(exchange, routingKey, content, options, (err, ok) => void gate.then(() => cb?.(err, ok)));

  const acks: Ack[] = [];
  const c = await attached(t, acks, () => dl);
  await waitFor(async () => (await size('HELDUSDT')) === '55', { what: 'the 10 good fills applied' });
  await waitFor(async () => (await counts(FILLS)).unacked === 1, { what: 'the good fills acknowledged' });
  const badTag = 6; // the sixth delivery on a fresh channel
  t.notOk(
    acks.some((a) => a.tag === badTag || (a.allUpTo && a.tag > badTag)),
    'no ack reached the unsettled delivery',
  );
  t.ok(
    acks.some((a) => a.allUpTo && a.tag === badTag - 1),
    'the settled ones below it went with one multiple ack',
  );
  t.same(await counts(FILLS), { ready: 0, unacked: 1 }, 'the broker still holds it, unacknowledged');

  release();
  await waitFor(async () => (await counts(FILLS)).unacked === 0, { what: 'acknowledged once dead-lettered' });
  t.equal((await counts(DEAD_LETTER_QUEUE)).ready, 1, 'dead-lettered');
  await c.stop();
  t.same(await counts(FILLS), { ready: 0, unacked: 0 }, 'nothing handed back');
});
