// SPEC.md §11 "Reliability" (database restart), R-4 transient failures, §5.2: the service
// reaches PostgreSQL through a TCP proxy; the proxy cuts every connection mid-stream and refuses
// new ones for a while. During the outage /health answers 503 (unhealthy, database_connected
// false), nothing is applied, nothing is dead-lettered, and fills published meanwhile wait in
// the queue; after the restore /health answers 200, everything is applied exactly once
// (positions equal the reference model) and every change reaches position_updated.
//
// Sizes: RELIABILITY_FILLS (default 2000), RELIABILITY_ASSETS (20), RELIABILITY_SEED.
import t from 'tap';
import { freshBroker } from '../helpers/amqp.js';
import { freshDatabase } from '../helpers/db.js';
import { tcpProxy } from '../helpers/proxy.js';
import { rolesStarted, startService } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';
import type { ConfirmChannel } from 'amqplib';
import {
  DLQ,
  FILLS,
  UPDATED,
  assetNames,
  envInt,
  generateFills,
  inboxCount,
  modelOf,
  positionMismatches,
  publishAll,
  rng,
  seedFromEnv,
  assertEventsComplete,
  reliabilityLine,
} from './lib.js';

const N = envInt('RELIABILITY_FILLS', 2000);
const ASSETS = envInt('RELIABILITY_ASSETS', 20);
const seed = seedFromEnv();

t.test('database cut mid-stream: 503 while down, 200 after, everything applied once', async (t) => {
  t.comment(`seed ${seed} (RELIABILITY_SEED), fills ${N}, assets ${ASSETS}`);
  const r = rng(seed);
  const db = await freshDatabase(t);
  const broker = await freshBroker(t);
  const proxy = await tcpProxy(t);
  const svc = await startService(t, {
    databaseUrl: proxy.url(db.url),
    amqpUrl: broker.url,
    env: { POSITION_MANAGER_ROLES: 'api,consumer,relay' },
  });
  await rolesStarted(svc, ['consumer', 'relay']);
  const updated = await broker.collect(UPDATED);
  const dead = await broker.collect(DLQ);
  const health = () => svc.request('GET', '/health', { key: null });
  t.equal((await health()).status, 200, '/health 200 before the outage');

  const fills = generateFills(r, N, assetNames('DB', ASSETS), `db-${seed}`);
  const book = modelOf(fills);
  const split = Math.floor(N * 0.6);
  const before = fills.slice(0, split).map((f) => ({ body: f, messageId: f.execution_id }));
  const during = fills.slice(split).map((f) => ({ body: f, messageId: f.execution_id }));
  const ch = broker.channel as ConfirmChannel;

  // Part one flows; the database goes away while it is being applied.
  const publishing = publishAll(ch, FILLS, before, { window: 20 });
  const cutAt = Math.floor(split * (0.2 + 0.5 * r()));
  await waitFor(async () => (await inboxCount(db)) >= cutAt, {
    what: `inbox ≥ ${cutAt}`,
    timeoutMs: 60_000 + N * 30,
    intervalMs: 5,
  });
  proxy.cut();
  const appliedAtCut = await inboxCount(db);
  const cutTime = Date.now();

  const down = await waitFor(
    async () => {
      const h = await health();
      return h.status === 503 ? h : undefined;
    },
    { what: '/health 503 while the database is down', timeoutMs: 15_000 },
  );
  t.match(down.body, { status: 'unhealthy', database_connected: false }, 'unhealthy, database_connected false');
  t.match(down.headers.get('content-type'), /json/, 'health body is JSON');
  const api = await svc.request('GET', '/api/v1/positions');
  t.equal(api.status, 503, 'the API answers 503 while the database is down');
  t.match(api.body, { code: 'database_unavailable', status: 503 });
  t.equal(api.headers.get('retry-after'), '5', 'Retry-After: 5');
  t.match(api.headers.get('content-type'), /^application\/problem\+json/, '503 is a problem document');

  // Part two is published during the outage.
  await publishing;
  await publishAll(ch, FILLS, during, { window: 50 });
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
  const up = await waitFor(
    async () => {
      const h = await health();
      return h.status === 200 ? h : undefined;
    },
    { what: '/health 200 after the restore', timeoutMs: 30_000 },
  );
  t.match(up.body, { database_connected: true }, 'database_connected true after the restore');
  await waitFor(async () => (await inboxCount(db)) >= N, {
    what: `all ${N} fills applied after the restore`,
    timeoutMs: 90_000 + N * 30,
    intervalMs: 100,
  });
  t.comment(`all applied ${Date.now() - restoreTime} ms after the restore`);
  await waitFor(async () => (await ch.checkQueue(FILLS)).messageCount === 0, {
    what: 'fill queue drained',
    timeoutMs: 60_000 + N * 30,
  });

  t.equal(await inboxCount(db), N, `inbox holds exactly ${N} keys`);
  t.same(await positionMismatches(db, book), [], 'every position equals the reference model');
  await assertEventsComplete(t, db, updated.messages, fills);
  t.equal(dead.messages.length, 0, 'a database outage dead-letters nothing');
  const p = await svc.request('GET', `/api/v1/positions/${fills[0]!.asset}`);
  t.equal(p.status, 200, 'REST reads work again');
  await svc.stop();
  await reliabilityLine(t, 'db-restart', db, N);
});
