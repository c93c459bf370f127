// A consumer that stops while its connection stays up — cancelled by the broker because its queue
// was deleted (or its node failed over), or its channel closed by the broker — consumes again by
// itself, declaring the queue as at start; until it does, /health is degraded.
import amqp from 'amqplib';
import { pino } from 'pino';
import t from 'tap';
import { QueueConsumer } from '../../src/messaging/consumer.js';
import { freshBroker } from '../helpers/amqp.js';
import { freshDatabase } from '../helpers/db.js';
import { listQueues, queueArguments } from '../helpers/reliability-queues.js';
import { rolesStarted, startService } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';

const REPORTS = 'ws-gateway.position';
const FILLS = 'order-manager.order_executed';

const db = await freshDatabase(t);
const broker = await freshBroker(t);
const position = (asset: string, what: string) =>
  waitFor(async () => (await db.query('select size from positions where asset = $1', [asset])).rows[0], {
    what,
    timeoutMs: 15_000,
  });

t.test('the report queue deleted: degraded while it cannot consume, then reports are applied again', async (t) => {
  const svc = await startService(t, {
    databaseUrl: db.url,
    amqpUrl: broker.url,
    env: { POSITION_MANAGER_ROLES: 'consumer' },
  });
  await rolesStarted(svc, ['consumer']);
  const health = async () => (await svc.request('GET', '/health', { key: null })).body;
  t.match(await health(), { status: 'healthy', queue_connected: true, messaging: 'enabled' });

  // Deleted, and for a while held by another connection as an exclusive queue of the same name,
  // so that the consumer cannot come back before /health has been looked at.
  const holder = await amqp.connect(broker.url);
  holder.on('error', () => undefined);
  t.teardown(() => holder.close().catch(() => undefined));
  const ch = await holder.createChannel();
  ch.on('error', () => undefined);
  await ch.deleteQueue(REPORTS);
  await ch.assertQueue(REPORTS, { exclusive: true });
  await waitFor(
    () => svc.logs.some((l) => l.level === 'warn' && l.queue === REPORTS && /cancelled by the broker/.test(l.msg)),
    { what: 'the cancellation logged at warn' },
  );
  const h = await health();
  t.match(h, { status: 'degraded', queue_connected: false, database_connected: true }, 'not consuming: degraded');
  await waitFor(
    () => svc.logs.some((l) => l.level === 'warn' && l.queue === REPORTS && l.msg === 'cannot consume yet; retrying'),
    { what: 'a failed attempt logged with its back-off', timeoutMs: 10_000 },
  );
  t.match(await health(), { status: 'degraded', queue_connected: false }, 'still degraded while it cannot');

  await holder.close();
  await waitFor(async () => (await health()).status === 'healthy', { what: 'consuming again', timeoutMs: 40_000 });
  // /health reads the consumer's state, which is set before the line reaches the log pipe
  t.ok(
    await waitFor(() => svc.logs.some((l) => l.msg === 'consumer attached again' && l.queue === REPORTS), {
      what: 'consumer attached again logged',
      timeoutMs: 10_000,
    }),
    'logged',
  );
  t.equal(
    svc.logs.filter((l) => l.msg === 'connected to the broker').length,
    1,
    'the refusals stayed with that consumer: the connection (other consumers, relay) was never dropped',
  );
  t.match(
    queueArguments(await listQueues(broker.vhost), REPORTS),
    { 'x-message-ttl': 86400000, 'x-max-length': 100000 },
    "declared again with the Gateway's arguments",
  );

  await broker.publish(REPORTS, {
    event_type: 'position',
    data: { symbol: 'AGAINUSDT', side: 'Buy', size: '2', avgPrice: '10' },
  });
  t.equal((await position('AGAINUSDT', 'the report applied after the queue came back')).size, '2');
  t.equal(await svc.stop('SIGTERM'), 0, 'stops cleanly');
});

t.test('the broker closes the consumer channel while the connection stays up: consuming again', async (t) => {
  const lines: any[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  const conn = await amqp.connect(broker.url);
  conn.on('error', () => undefined);
  t.teardown(() => conn.close().catch(() => undefined));
  const setup = await conn.createChannel();
  await setup.assertQueue(FILLS, { durable: true });
  await setup.close();
  const detached = new Set<string>();
  const consumer = new QueueConsumer({
    queue: FILLS,
    kind: 'fill',
    pool: db.pool,
    log,
    maxBatch: 10,
    maxDeliveryAttempts: 3,
    deadLetterChannel: () => undefined,
    detached,
  });
  t.ok(detached.has(FILLS), 'not consuming before it is attached');
  await consumer.attach(conn, 10);
  t.notOk(detached.has(FILLS), 'consuming');

  // A protocol error on that channel (an unknown delivery tag) makes the broker close it, 406.
  const live = (consumer as unknown as { channel: { channel: amqp.Channel } }).channel.channel;
  live.ack({ fields: { deliveryTag: 999_999 } } as amqp.Message);
  await waitFor(() => detached.has(FILLS), { what: 'the loss noticed' });
  t.ok(
    lines.some((l) => l.level === 40 && /consumer channel closed/.test(l.msg)),
    'logged at warn',
  );
  await waitFor(() => !detached.has(FILLS), { what: 'consuming again', timeoutMs: 15_000 });
  await broker.publish(FILLS, { asset: 'CHANUSDT', side: 'Buy', execution_quantity: '1', execution_price: '10' });
  t.equal((await position('CHANUSDT', 'the fill applied on the new channel')).size, '1');

  await conn.close();
  await waitFor(() => detached.has(FILLS), {
    what: 'a closed connection: not consuming (a reconnection attaches it again)',
  });
  await consumer.stop();
});
