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
import { startWorker } from '../helpers/reliability-stack.js';
import type { RunningService } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';
import {
  FILLS,
  UPDATED,
  changesPerAsset,
  envInt,
  fillStream,
  inboxCount,
  outboxPending,
  positionMismatches,
} from './lib.js';

const stream = fillStream('KN', 'k9');
const { N } = stream;
const KILLS = envInt('RELIABILITY_KILLS', 3);

t.test(`kill -9 mid-stream ×${KILLS}: nothing lost, nothing applied twice`, async (t) => {
  t.comment(stream.describe(`, kills ${KILLS}`));
  const r = stream.rng();
  const db = await freshDatabase(t);
  const broker = await freshBroker(t);
  const t0 = Date.now();
  const since = () => `${((Date.now() - t0) / 1000).toFixed(1)}s`;
  const start = async (): Promise<RunningService> => {
    const s0 = Date.now();
    const svc = await startWorker(t, db, broker);
    t.comment(`service started in ${Date.now() - s0} ms (at ${since()})`);
    return svc;
  };
  let svc = await start();
  const updated = await broker.collect(UPDATED);

  const { fills, book } = stream.generate(r);

  // The publisher runs concurrently with the kills (one confirm per message keeps per-asset order).
  let published = 0;
  const publishing = stream.publish(broker.channel as ConfirmChannel, fills, {
    window: 20,
    onProgress: (n) => (published = n),
  });

  // Kill points: inbox counts spread over the stream, so each kill lands while messages flow.
  const thresholds = Array.from({ length: KILLS }, (_, i) => Math.floor(N * (0.1 + (0.75 * (i + r())) / KILLS))).sort(
    (a, b) => a - b,
  );
  const kills: { at: number; applied: number; published: number }[] = [];
  for (const threshold of thresholds) {
    await stream.waitInbox(db, threshold);
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

  await stream.waitAllApplied(db);
  t.comment(`all fills applied at ${since()}`);
  // Let the queue drain completely (redeliveries after the last kill become duplicates).
  await stream.waitQueueDrained(broker.channel);

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
  await stream.assertOneEventPerFill(t, updated.messages, expected);
  await stream.account(t, 'kill9', db, `${kills.length} kills`);
  await svc.stop();
});
