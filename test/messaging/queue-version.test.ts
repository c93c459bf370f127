// The dead-letter queue, which only this service declares, is a version 2 classic queue. The
// published queues stay plain durable queues, because their consumers declare them too: Model
// Service declares position-manager.position_updated with durable=True and nothing else, which
// any extra argument would make RabbitMQ refuse (406). A dead-letter queue that already exists
// without the argument (an earlier version's) is kept as it is, and the service says once how to
// convert it.
import t from 'tap';
import { freshBroker } from '../helpers/amqp.js';
import { freshDatabase } from '../helpers/db.js';
import { listQueues, queueArguments } from '../helpers/reliability-queues.js';
import { startService } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';

const DLQ = 'position-manager.dead_letter';
const PUBLISHED = [
  'position-manager.position_updated',
  'position-manager.portfolio_updated',
  'position-manager.position_snapshot_created',
  'position-manager.position_closed',
  'position-manager.portfolio_limit_exceeded',
];
const REPORTS = 'ws-gateway.position';

const db = await freshDatabase(t);

t.test(
  'a fresh vhost: the dead-letter queue is version 2, the published queues take what consumers declare',
  async (t) => {
    const broker = await freshBroker(t);
    const svc = await startService(t, { databaseUrl: db.url, amqpUrl: broker.url });
    await waitFor(async () => (await listQueues(broker.vhost)).some((q) => q.name === REPORTS), {
      what: 'the topology declared',
    });
    const queues = await listQueues(broker.vhost);
    t.same(queueArguments(queues, DLQ), { 'x-queue-version': 2 }, `${DLQ}: x-queue-version 2`);
    for (const q of PUBLISHED) t.same(queueArguments(queues, q), {}, `${q}: no arguments`);
    t.notOk('x-queue-version' in queueArguments(queues, REPORTS), "the Gateway's queue: its own arguments only");
    // What Model Service does at its start (aio-pika declare_queue(name, durable=True)).
    const consumer = await broker.connection.createChannel();
    for (const q of PUBLISHED)
      t.ok(await consumer.assertQueue(q, { durable: true }), `${q}: a consumer may declare it`);
    await consumer.close();
    t.notOk(
      svc.logs.some((l) => /kept as declared/.test(String(l.msg))),
      'nothing to report',
    );
    t.equal(await svc.stop('SIGTERM'), 0, 'stops cleanly');
  },
);

t.test(
  'a dead-letter queue that exists as a classic version 1 queue: kept, logged once, the service starts',
  async (t) => {
    const broker = await freshBroker(t);
    const ch = await broker.connection.createChannel();
    await ch.assertQueue(DLQ, { durable: true });
    await ch.close();
    await broker.publish(DLQ, { left: 'here' });

    const svc = await startService(t, { databaseUrl: db.url, amqpUrl: broker.url });
    t.match(await svc.request('GET', '/health', { key: null }), { status: 200 }, 'started');
    await waitFor(async () => (await listQueues(broker.vhost)).some((q) => q.name === REPORTS), {
      what: 'the rest of the topology declared',
    });
    const queues = await listQueues(broker.vhost);
    t.same(queueArguments(queues, DLQ), {}, `${DLQ}: untouched`);
    for (const q of PUBLISHED)
      t.ok(
        queues.some((x) => x.name === q),
        `${q}: declared all the same`,
      );
    const check = await broker.connection.createChannel();
    t.equal((await check.checkQueue(DLQ)).messageCount, 1, 'its message is still there');
    await check.close();

    const said = svc.logs.filter((l) => l.queue === DLQ && /kept as declared/.test(String(l.msg)));
    t.equal(said.length, 1, 'logged once');
    t.equal(said[0]?.level, 'warn', 'at warn');
    t.match(said[0]?.msg, /queue-version/, 'saying how to convert it');
    t.equal(svc.logs.filter((l) => l.msg === 'connected to the broker').length, 1, 'one connection: never dropped');
    t.equal(await svc.stop('SIGTERM'), 0, 'stops cleanly');
  },
);
