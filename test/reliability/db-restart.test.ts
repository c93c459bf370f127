// SPEC.md §11 "Reliability" (database restart), R-4 transient failures, §5.2: the service
// reaches PostgreSQL through a TCP proxy; the proxy cuts every connection mid-stream and refuses
// new ones for a while. During the outage /health answers 503 (unhealthy, database_connected
// false), nothing is applied, nothing is dead-lettered, and fills published meanwhile wait in
// the queue; after the restore /health answers 200, everything is applied exactly once
// (positions equal the reference model) and every change reaches position_updated.
//
// Sizes: RELIABILITY_FILLS (default 2000), RELIABILITY_ASSETS (20), RELIABILITY_SEED.
import t from 'tap';
import { proxiedStack } from '../helpers/reliability-stack.js';
import { waitFor } from '../helpers/wait.js';
import type { ConfirmChannel } from 'amqplib';
import { DLQ, FILLS, UPDATED, assertEventsComplete, fillStream, inboxCount, positionMismatches } from './lib.js';

const stream = fillStream('DB', 'db');
const { N } = stream;

t.test('database cut mid-stream: 503 while down, 200 after, everything applied once', async (t) => {
  t.comment(stream.describe());
  const r = stream.rng();
  const { db, broker, proxy, svc } = await proxiedStack(t);
  const updated = await broker.collect(UPDATED);
  const dead = await broker.collect(DLQ);
  const health = () => svc.request('GET', '/health', { key: null });
  t.equal((await health()).status, 200, '/health 200 before the outage');

  const { fills, book } = stream.generate(r);
  const split = Math.floor(N * 0.6);
  const before = fills.slice(0, split);
  const during = fills.slice(split);
  const ch = broker.channel as ConfirmChannel;

  // Part one flows; the database goes away while it is being applied.
  const publishing = stream.publish(ch, before, { window: 20 });
  const cutAt = Math.floor(split * (0.2 + 0.5 * r()));
  await stream.waitInbox(db, cutAt);
  proxy.cut();
  const appliedAtCut = await inboxCount(db);
  const cutTime = Date.now();

  const healthWith = (status: number, what: string, timeoutMs: number) =>
    waitFor(
      async () => {
        const h = await health();
        return h.status === status ? h : undefined;
      },
      { what, timeoutMs },
    );
  const down = await healthWith(503, '/health 503 while the database is down', 15_000);
  t.match(down.body, { status: 'unhealthy', database_connected: false }, 'unhealthy, database_connected false');
  t.match(down.headers.get('content-type'), /json/, 'health body is JSON');
  const api = await svc.request('GET', '/api/v1/positions');
  t.equal(api.status, 503, 'the API answers 503 while the database is down');
  t.match(api.body, { code: 'database_unavailable', status: 503 });
  t.equal(api.headers.get('retry-after'), '5', 'Retry-After: 5');
  t.match(api.headers.get('content-type'), /^application\/problem\+json/, '503 is a problem document');

  // Part two is published during the outage.
  await publishing;
  await stream.publish(ch, during, { window: 50 });
  // Two failed attempts (1 s back-off between them): the outage lasts across a retry.
  await waitFor(
    () => svc.logs.filter((l) => /database unavailable; messages stay unacknowledged/.test(l.msg ?? '')).length >= 2,
    { what: 'the consumer holds messages while the database is down (two attempts)', timeoutMs: 30_000 },
  );
  const stalled = await inboxCount(db);
  const q = await ch.checkQueue(FILLS);
  t.ok(q.messageCount > 0, `fills wait in the queue during the outage (${q.messageCount} ready)`);
  t.ok((await health()).status === 503, 'still 503');
  t.equal(await inboxCount(db), stalled, 'nothing is applied while the service cannot reach the database');
  t.comment(
    `cut at inbox ${appliedAtCut} (target ${cutAt}); ${stalled} applied when the outage was confirmed; outage ${Date.now() - cutTime} ms before restore`,
  );

  proxy.restore();
  const restoreTime = Date.now();
  const up = await healthWith(200, '/health 200 after the restore', 30_000);
  t.match(up.body, { database_connected: true }, 'database_connected true after the restore');
  await stream.waitAllApplied(db, `all ${N} fills applied after the restore`);
  t.comment(`all applied ${Date.now() - restoreTime} ms after the restore`);
  await stream.waitQueueDrained(ch);

  t.equal(await inboxCount(db), N, `inbox holds exactly ${N} keys`);
  t.same(await positionMismatches(db, book), [], 'every position equals the reference model');
  await assertEventsComplete(t, db, updated.messages, fills);
  t.equal(dead.messages.length, 0, 'a database outage dead-letters nothing');
  const p = await svc.request('GET', `/api/v1/positions/${fills[0]!.asset}`);
  t.equal(p.status, 200, 'REST reads work again');
  await svc.stop();
  await stream.account(t, 'db-restart', db);
});
