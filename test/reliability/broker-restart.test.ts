// SPEC.md §11 "Reliability" (broker restart), R-2, §6.2: while fills flow, the broker closes
// every connection of the vhost twice (the service's consumers, dead-letter channel and relay,
// and this test's own publisher and collector). The service reconnects by itself; nothing is
// lost or applied twice (positions equal the reference model, one inbox key per fill), the
// outbox drains, and every change reaches position_updated exactly once per version.
//
// Sizes: RELIABILITY_FILLS (default 2000), RELIABILITY_ASSETS (20), RELIABILITY_SEED.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import amqp from 'amqplib';
import t from 'tap';
import { freshBroker } from '../helpers/amqp.js';
import { freshDatabase } from '../helpers/db.js';
import { startWorker } from '../helpers/reliability-stack.js';
import { waitFor } from '../helpers/wait.js';
import { FILLS, UPDATED, changesPerAsset, fillStream, inboxCount, outboxPending, positionMismatches } from './lib.js';
import { resilientCollector, resilientPublisher } from './resilient.js';

const run = promisify(execFile);
const stream = fillStream('BR', 'br');
const { N } = stream;
const CLOSES = 2;

t.test(`broker closes every connection ×${CLOSES} mid-stream: nothing lost, outbox drains`, async (t) => {
  t.comment(stream.describe());
  const r = stream.rng();
  const db = await freshDatabase(t);
  const broker = await freshBroker(t);
  const svc = await startWorker(t, db, broker);
  const updated = await resilientCollector(t, broker.url, UPDATED);
  const publisher = await resilientPublisher(t, broker.url);

  const { fills, book } = stream.generate(r);
  let published = 0;
  const publishing = publisher.publishAll(FILLS, stream.deliveries(fills), {
    window: 20,
    onProgress: (n) => (published = n),
  });

  const closes: string[] = [];
  for (let i = 0; i < CLOSES; i++) {
    // The first close while the publisher is still sending, the second while the consumer works.
    if (i === 0) {
      const threshold = Math.floor(N * (0.1 + 0.4 * r()));
      await waitFor(() => published >= threshold, {
        what: `published ≥ ${threshold}`,
        timeoutMs: 60_000 + N * 30,
        intervalMs: 2,
      });
    } else {
      const threshold = Math.floor(N * (0.5 + 0.3 * r()));
      await stream.waitInbox(db, threshold);
    }
    const connectedBefore = svc.logs.filter((l) => l.msg === 'connected to the broker').length;
    const applied = await inboxCount(db);
    await run('rabbitmqctl', ['-q', 'close_all_connections', '-p', broker.vhost, `reliability test close ${i + 1}`]);
    closes.push(`${applied}/${published}`);
    await waitFor(() => svc.logs.filter((l) => l.msg === 'connected to the broker').length > connectedBefore, {
      what: `the service reconnected after close ${i + 1}`,
      timeoutMs: 60_000 + N * 30,
    });
  }
  await publishing;
  t.comment(
    `closes at (inbox count / published): ${closes.join(', ')}; publisher re-sent ${publisher.republishedMessages} messages in ${publisher.republishedWindows} windows; collector reconnected ${updated.reconnects}×`,
  );
  t.ok(
    svc.logs.some((l) => l.msg === 'broker connection closed; reconnecting'),
    'the service saw its connection closed',
  );
  t.equal(svc.child.exitCode, null, 'the service process stayed up');

  await stream.waitAllApplied(db);
  const check = await amqp.connect(broker.url);
  t.teardown(() => check.close().catch(() => undefined));
  const cch = await check.createChannel();
  await stream.waitQueueDrained(cch);
  await waitFor(async () => (await outboxPending(db)) === 0, {
    what: 'outbox drained (sent_at set on every row)',
    timeoutMs: 60_000 + N * 30,
  });
  t.equal(await outboxPending(db), 0, 'outbox: no unsent rows');

  t.equal(await inboxCount(db), N, `inbox holds exactly ${N} keys`);
  const span = (await db.query('select extract(epoch from max(applied_at) - min(applied_at))::float as s from inbox'))
    .rows[0].s;
  t.comment(`fills applied over ${Number(span).toFixed(1)} s`);
  const ledger = (await db.query("select count(*)::int as n from position_fills where kind = 'fill'")).rows[0].n;
  t.equal(ledger, N, 'one ledger row per fill');
  t.same(await positionMismatches(db, book), [], 'every position equals the reference model');

  await stream.assertOneEventPerFill(t, updated.messages, changesPerAsset(fills));
  const h = await svc.request('GET', '/health', { key: null });
  t.match(h.body, { status: 'healthy', queue_connected: true }, '/health is healthy again');
  await svc.stop();
  await stream.account(t, 'broker-restart', db);
});
