// SPEC.md §8 (POSITION_MANAGER_SHUTDOWN_TIMEOUT_MS), R-2: SIGTERM while a stream of fills is
// being consumed. The process stops consuming, finishes the transaction in flight and its
// acknowledgements, and exits 0 within the timeout. A clean stop leaves no message both
// committed and unacknowledged: applied (inbox) + still queued = published, exactly. A new
// process then applies the rest: every fill exactly once, positions equal the reference model,
// one position_updated per change.
//
// Sizes: RELIABILITY_FILLS (default 2000), RELIABILITY_ASSETS (20), RELIABILITY_SEED.
import type { ConfirmChannel } from 'amqplib';
import t from 'tap';
import { freshBroker } from '../helpers/amqp.js';
import { freshDatabase } from '../helpers/db.js';
import { startWorker } from '../helpers/reliability-stack.js';
import type { RunningService } from '../helpers/service.js';
import { FILLS, UPDATED, assertEventsComplete, fillStream, inboxCount, positionMismatches } from './lib.js';

const stream = fillStream('SD', 'sd');
const { N } = stream;
const STOPS = 2;
const SHUTDOWN_TIMEOUT_MS = 10_000;

t.test(`SIGTERM ×${STOPS} mid-stream: exit 0, nothing lost or applied twice`, async (t) => {
  t.comment(stream.describe());
  const r = stream.rng();
  const db = await freshDatabase(t);
  const broker = await freshBroker(t);
  const start = (): Promise<RunningService> =>
    startWorker(t, db, broker, { env: { POSITION_MANAGER_SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_TIMEOUT_MS) } });
  let svc = await start();
  const updated = await broker.collect(UPDATED);
  const ch = broker.channel as ConfirmChannel;

  const { fills, book } = stream.generate(r);
  let published = 0;
  const publishing = stream.publish(ch, fills, {
    window: 20,
    onProgress: (n) => (published = n),
  });

  const duplicatesSeen = (s: RunningService) => s.logs.filter((l) => l.msg === 'duplicate message ignored').length;
  let duplicates = 0;
  for (let i = 0; i < STOPS; i++) {
    const threshold = Math.floor(N * (0.15 + (0.6 * (i + r())) / STOPS));
    await stream.waitInbox(db, threshold);
    const atSignal = await inboxCount(db);
    const signalled = Date.now();
    const code = await svc.stop('SIGTERM');
    const took = Date.now() - signalled;
    const applied = await inboxCount(db);
    t.equal(
      code,
      0,
      `stop ${i + 1}: exit code 0 after SIGTERM (${took} ms; inbox ${atSignal} at the signal, ${applied} at exit, published ${published})`,
    );
    t.ok(took < SHUTDOWN_TIMEOUT_MS, `stop ${i + 1}: exited within the shutdown timeout`);
    t.ok(
      svc.logs.some((l) => l.msg === 'stopped'),
      `stop ${i + 1}: logged "stopped"`,
    );
    t.notOk(
      svc.logs.some((l) => l.level >= 50),
      `stop ${i + 1}: no error logged while stopping`,
    );
    // With this process gone and publishing done, count what the broker still holds: a clean
    // stop acknowledged every message it committed, so nothing is both applied and queued.
    await publishing;
    const q = await ch.checkQueue(FILLS);
    t.equal(
      applied + q.messageCount,
      N,
      `stop ${i + 1}: applied (${applied}) + still queued (${q.messageCount}) = published (${N}): no committed message left unacknowledged`,
    );
    duplicates += duplicatesSeen(svc);
    svc = await start();
  }
  await publishing;

  await stream.waitAllApplied(db);
  await stream.waitQueueDrained(ch);
  duplicates += duplicatesSeen(svc);
  t.equal(duplicates, 0, 'no process met a redelivered duplicate (every commit before a stop was acknowledged)');
  t.equal(await inboxCount(db), N, `inbox holds exactly ${N} keys`);
  t.equal(
    (await db.query("select count(*)::int as n from position_fills where kind = 'fill'")).rows[0].n,
    N,
    'one ledger row per fill',
  );
  t.same(await positionMismatches(db, book), [], 'every position equals the reference model');
  await assertEventsComplete(t, db, updated.messages, fills);
  t.equal(await svc.stop('SIGTERM'), 0, 'the last process stops cleanly too (idle)');
  await stream.account(t, 'shutdown', db);
});
