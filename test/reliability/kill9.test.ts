// SPEC.md §11 "Reliability", R-1..R-3: the service is SIGKILLed three times while fills flow;
// a new process is started on the same database and vhost each time. At the end every
// position equals the reference model (0 lost, 0 double-applied), the inbox holds one key per
// fill, and every change produced exactly one position_updated event (at-least-once delivery:
// redeliveries of one event_id are allowed, two event ids for one version are not).
//
// Sizes: RELIABILITY_FILLS (default 2000; 10000 for the §11 target), RELIABILITY_ASSETS (20),
// RELIABILITY_KILLS (3), RELIABILITY_SEED to repeat a run.
import type { ConfirmChannel } from 'amqplib';
import t from 'tap';
import { freshBroker } from '../helpers/amqp.js';
import { freshDatabase } from '../helpers/db.js';
import { rolesStarted, startService, type RunningService } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';
import {
  FILLS,
  UPDATED,
  assetNames,
  changesPerAsset,
  checkUpdatedEvents,
  envInt,
  generateFills,
  inboxCount,
  modelOf,
  outboxPending,
  positionMismatches,
  publishAll,
  rng,
  seedFromEnv,
  waitDistinctEvents,
  reliabilityLine,
} from './lib.js';

const N = envInt('RELIABILITY_FILLS', 2000);
const ASSETS = envInt('RELIABILITY_ASSETS', 20);
const KILLS = envInt('RELIABILITY_KILLS', 3);
const seed = seedFromEnv();

t.test(`kill -9 mid-stream ×${KILLS}: nothing lost, nothing applied twice`, async (t) => {
  t.comment(`seed ${seed} (RELIABILITY_SEED), fills ${N}, assets ${ASSETS}, kills ${KILLS}`);
  const r = rng(seed);
  const db = await freshDatabase(t);
  const broker = await freshBroker(t);
  const env = { POSITION_MANAGER_ROLES: 'consumer,relay' };
  const t0 = Date.now();
  const since = () => `${((Date.now() - t0) / 1000).toFixed(1)}s`;
  const start = async (): Promise<RunningService> => {
    const s0 = Date.now();
    const svc = await startService(t, { databaseUrl: db.url, amqpUrl: broker.url, env });
    await rolesStarted(svc, ['consumer', 'relay']);
    t.comment(`service started in ${Date.now() - s0} ms (at ${since()})`);
    return svc;
  };
  let svc = await start();
  const updated = await broker.collect(UPDATED);

  const fills = generateFills(r, N, assetNames('KN', ASSETS), `k9-${seed}`);
  const book = modelOf(fills);

  // The publisher runs concurrently with the kills (one confirm per message keeps per-asset order).
  let published = 0;
  const publishing = publishAll(
    broker.channel as ConfirmChannel,
    FILLS,
    fills.map((f) => ({ body: f, messageId: f.execution_id })),
    {
      window: 20,
      onProgress: (n) => (published = n),
    },
  );

  // Kill points: inbox counts spread over the stream, so each kill lands while messages flow.
  const thresholds = Array.from({ length: KILLS }, (_, i) => Math.floor(N * (0.1 + (0.75 * (i + r())) / KILLS))).sort(
    (a, b) => a - b,
  );
  const kills: { at: number; applied: number; published: number }[] = [];
  for (const threshold of thresholds) {
    await waitFor(async () => (await inboxCount(db)) >= threshold, {
      what: `inbox ≥ ${threshold}`,
      timeoutMs: 60_000 + N * 30,
      intervalMs: 5,
    });
    const before = await inboxCount(db);
    svc.child.kill('SIGKILL');
    const code = await svc.stop(); // resolves on exit
    const applied = await inboxCount(db);
    kills.push({ at: before, applied, published });
    t.equal(svc.child.signalCode, 'SIGKILL', `killed by SIGKILL (exit ${code})`);
    svc = await start();
  }
  await publishing;
  t.comment(
    `kills (inbox count at kill / after exit / published so far): ${kills.map((k) => `${k.at}/${k.applied}/${k.published}`).join(', ')}`,
  );
  t.ok(
    kills.every((k) => k.applied < N),
    'every kill happened before the stream was fully applied',
  );

  await waitFor(async () => (await inboxCount(db)) >= N, {
    what: `all ${N} fills in the inbox`,
    timeoutMs: 90_000 + N * 30,
    intervalMs: 100,
  });
  t.comment(`all fills applied at ${since()}`);
  // Let the queue drain completely (redeliveries after the last kill become duplicates).
  await waitFor(
    async () => {
      const q = await broker.channel.checkQueue(FILLS);
      return q.messageCount === 0;
    },
    { what: 'fill queue drained', timeoutMs: 60_000 + N * 30 },
  );

  t.equal(await inboxCount(db), N, `inbox holds exactly ${N} keys for ${FILLS}`);
  const ledger = (
    await db.query(
      "select count(*)::int as n, count(distinct execution_id)::int as d from position_fills where kind = 'fill'",
    )
  ).rows[0];
  t.same(ledger, { n: N, d: N }, 'one ledger row per execution');
  const mismatches = await positionMismatches(db, book);
  t.same(mismatches, [], 'every position equals the reference model');

  const expected = changesPerAsset(fills);
  const versions = (await db.query("select asset, version from positions where mode = 'one-way'")).rows;
  t.same(
    Object.fromEntries(versions.map((v) => [v.asset, Number(v.version)]).sort()),
    Object.fromEntries([...expected].sort()),
    'each position version equals its number of fills',
  );
  await waitFor(async () => (await outboxPending(db)) === 0, { what: 'outbox drained', timeoutMs: 60_000 + N * 30 });
  await waitDistinctEvents(updated.messages, N);
  const ev = checkUpdatedEvents(updated.messages, expected);
  t.comment(
    `position_updated: ${ev.received} received, ${ev.distinct} distinct, ${ev.duplicates} redelivered duplicates`,
  );
  t.same(ev.problems.slice(0, 20), [], 'each version 1..final has exactly one position_updated event');
  t.equal(ev.distinct, N, 'one distinct event per applied fill');
  await reliabilityLine(t, 'kill9', db, N, `${kills.length} kills`);
  await svc.stop();
});
