// The service declares its own queues (the dead-letter queue and the published ones) as version 2
// classic queues. A queue of the same name that already exists without that argument (declared by
// an earlier version) refuses the declaration; the service starts all the same, keeps the queue as
// it is and says once how to convert it.
import t from 'tap';
import { freshBroker } from '../helpers/amqp.js';
import { freshDatabase } from '../helpers/db.js';
import { listQueues, queueArguments } from '../helpers/reliability-queues.js';
import { startService } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';

const OWN = [
  'position-manager.dead_letter',
  'position-manager.position_updated',
  'position-manager.portfolio_updated',
  'position-manager.position_snapshot_created',
  'position-manager.position_closed',
  'position-manager.portfolio_limit_exceeded',
];
const REPORTS = 'ws-gateway.position';

const db = await freshDatabase(t);

t.test('a fresh vhost: own queues are version 2, queues of other services as their owners declare them', async (t) => {
  const broker = await freshBroker(t);
  const svc = await startService(t, { databaseUrl: db.url, amqpUrl: broker.url });
  await waitFor(async () => (await listQueues(broker.vhost)).some((q) => q.name === REPORTS), {
    what: 'the topology declared',
  });
  const queues = await listQueues(broker.vhost);
  for (const q of OWN) t.same(queueArguments(queues, q), { 'x-queue-version': 2 }, `${q}: x-queue-version 2`);
  t.notOk('x-queue-version' in queueArguments(queues, REPORTS), "the Gateway's queue: its own arguments only");
  t.notOk(
    svc.logs.some((l) => /kept as declared/.test(String(l.msg))),
    'nothing to report',
  );
  t.equal(await svc.stop('SIGTERM'), 0, 'stops cleanly');
});

t.test('an own queue that exists as a classic version 1 queue: kept, logged once, the service starts', async (t) => {
  const broker = await freshBroker(t);
  const old = 'position-manager.position_closed';
  const ch = await broker.connection.createChannel();
  await ch.assertQueue(old, { durable: true });
  await ch.assertQueue(OWN[0]!, { durable: true });
  await ch.close();
  await broker.publish(old, { left: 'here' });

  const svc = await startService(t, { databaseUrl: db.url, amqpUrl: broker.url });
  t.match(await svc.request('GET', '/health', { key: null }), { status: 200 }, 'started');
  await waitFor(async () => (await listQueues(broker.vhost)).some((q) => q.name === REPORTS), {
    what: 'the rest of the topology declared',
  });
  const queues = await listQueues(broker.vhost);
  t.same(queueArguments(queues, old), {}, `${old}: untouched`);
  t.same(queueArguments(queues, OWN[0]!), {}, `${OWN[0]}: untouched`);
  for (const q of OWN.filter((q) => q !== old && q !== OWN[0]))
    t.same(queueArguments(queues, q), { 'x-queue-version': 2 }, `${q}: declared as version 2`);
  const check = await broker.connection.createChannel();
  t.equal((await check.checkQueue(old)).messageCount, 1, 'its message is still there');
  await check.close();

  for (const q of [old, OWN[0]!]) {
    const said = svc.logs.filter((l) => l.queue === q && /kept as declared/.test(String(l.msg)));
    t.equal(said.length, 1, `${q}: logged once`);
    t.equal(said[0]?.level, 'warn', 'at warn');
    t.match(said[0]?.msg, /queue-version/, 'saying how to convert it');
  }
  t.equal(svc.logs.filter((l) => l.msg === 'connected to the broker').length, 1, 'one connection: never dropped');
  t.equal(await svc.stop('SIGTERM'), 0, 'stops cleanly');
});
