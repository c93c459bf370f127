// SPEC.md R-3 (idempotency), R-11 (stale reports), §11 "duplicates handled": every fill is
// delivered 2–3 times (same body and execution_id; copies differ only in AMQP message_id and
// trace_id, which are not part of the key when the body has an id), the copies scattered at random
// later positions so each asset's distinct fills keep their order (one-way accounting depends on
// it). Reports are each delivered twice, all copies shuffled, with increasing updatedTime: older
// ones arriving late are stale. Fills without an execution_id are de-duplicated by AMQP
// message_id, and fills with no id at all by the hash of their canonical JSON (key order and
// whitespace must not matter). State equals the reference model; each change has exactly one
// position_updated event.
//
// Sizes: RELIABILITY_FILLS (distinct fills, default 1000), RELIABILITY_ASSETS (20),
// RELIABILITY_REPORTS (reports per report asset, default 15), RELIABILITY_SEED.
import type { ConfirmChannel } from 'amqplib';
import t from 'tap';
import { freshBroker } from '../helpers/amqp.js';
import { freshDatabase } from '../helpers/db.js';
import { startWorker } from '../helpers/reliability-stack.js';
import { waitFor } from '../helpers/wait.js';
import {
  FILLS,
  REPORTS,
  UPDATED,
  DLQ,
  assetNames,
  between,
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
  shuffle,
  waitDistinctEvents,
  reliabilityLine,
} from './lib.js';

const N = envInt('RELIABILITY_FILLS', 1000);
const ASSETS = envInt('RELIABILITY_ASSETS', 20);
const REPORTS_PER_ASSET = envInt('RELIABILITY_REPORTS', 15);
const REPORT_ASSETS = 8;
const seed = seedFromEnv();

t.test('every fill 2–3 times, every report twice: applied once, events once per change', async (t) => {
  t.comment(
    `seed ${seed} (RELIABILITY_SEED), distinct fills ${N}, assets ${ASSETS}, report assets ${REPORT_ASSETS} × ${REPORTS_PER_ASSET} reports`,
  );
  const r = rng(seed);
  const db = await freshDatabase(t);
  const broker = await freshBroker(t);
  const svc = await startWorker(t, db, broker);
  const updated = await broker.collect(UPDATED);
  const dead = await broker.collect(DLQ);
  const ch = broker.channel as ConfirmChannel;

  // ---- fills: distinct ones in order, copies inserted at random later positions ----
  const fills = generateFills(r, N, assetNames('DU', ASSETS), `du-${seed}`);
  const book = modelOf(fills);
  const slots: { body: unknown; messageId?: string }[][] = fills.map(() => []);
  let copies = 0;
  fills.forEach((f, i) => {
    slots[i]!.unshift({ body: f, messageId: `first-${f.execution_id}` });
    const extra = between(r, 1, 2);
    for (let c = 0; c < extra; c++) {
      const at = between(r, i, fills.length - 1);
      // Same execution_id; a different trace_id and message id, or none: still the same fill.
      const variant = c === 0 ? { ...f, trace_id: `dup-trace-${f.execution_id}-${c}` } : f;
      slots[at]!.push({ body: variant, ...(r() < 0.5 ? { messageId: `copy-${c}-${f.execution_id}` } : {}) });
      copies++;
    }
  });
  const fillDeliveries = slots.flat();

  // ---- fills keyed by message_id (no execution_id) and by body hash (no id at all) ----
  const byMessageId = Array.from({ length: 20 }, (_, i) => ({
    body: {
      asset: 'DUMSGUSDT',
      side: i % 3 === 2 ? 'Sell' : 'Buy',
      execution_quantity: '0.5',
      execution_price: String(100 + i),
    },
    messageId: `mid-${seed}-${i}`,
  }));
  const hashFills = Array.from({ length: 20 }, (_, i) => ({
    asset: 'DUHASHUSDT',
    side: i % 4 === 3 ? 'Sell' : 'Buy',
    execution_quantity: '0.25',
    execution_price: String(200 + i),
    execution_fees: '0.01',
  }));
  const reordered = (o: Record<string, unknown>, spaced: boolean) => {
    const keys = Object.keys(o).reverse();
    return `{${keys.map((k) => `${JSON.stringify(k)}${spaced ? ' : ' : ':'}${JSON.stringify(o[k])}`).join(spaced ? ' ,\n ' : ',')}}`;
  };
  const idless: { body: unknown; messageId?: string }[] = [];
  for (let i = 0; i < 20; i++) {
    idless.push(byMessageId[i]!, {
      body: { ...byMessageId[i]!.body, trace_id: 'other' },
      messageId: byMessageId[i]!.messageId,
    });
    idless.push({ body: hashFills[i]! }, { body: reordered(hashFills[i]!, true) });
  }
  for (const m of byMessageId) {
    const b = m.body;
    book.fill(b.asset, {
      side: b.side as 'Buy' | 'Sell',
      qty: b.execution_quantity,
      price: b.execution_price,
      mode: 'one-way',
    });
  }
  for (const b of hashFills)
    book.fill(b.asset, {
      side: b.side as 'Buy' | 'Sell',
      qty: b.execution_quantity,
      price: b.execution_price,
      fee: b.execution_fees,
      mode: 'one-way',
    });

  // ---- reports: each twice, all shuffled, updatedTime increasing per asset ----
  const reportAssets = assetNames('DR', REPORT_ASSETS);
  const t0 = Date.now() - 3_600_000;
  const reports: { body: any; key: string; asset: string; time: number; input: any }[] = [];
  for (const asset of reportAssets) {
    const size = `${between(r, 1, 50)}.${between(r, 0, 9)}`;
    const side = r() < 0.5 ? 'Buy' : 'Sell';
    let avg = between(r, 100, 5000);
    for (let k = 0; k < REPORTS_PER_ASSET; k++) {
      if (r() < 0.4) avg = Math.round(avg * (1 + (r() - 0.5) / 50) * 100) / 100 || 1; // sometimes beyond the 0.1 % threshold
      const input = {
        size,
        side,
        avgPrice: String(avg),
        markPrice: (avg + k + 1.5).toFixed(2),
        unrealisedPnl: `${between(r, -500, 500)}.25`,
        realisedPnl: `${between(r, -100, 100)}.75`,
      };
      const eventId = `ev-${seed}-${asset}-${k}`;
      const time = t0 + k * 1000;
      const body = {
        event_type: 'position',
        event_id: eventId,
        payload: { symbol: asset, ...input, updatedTime: time },
      };
      reports.push({ body, key: `${eventId}:${asset}`, asset, time, input });
    }
  }
  const reportDeliveries = shuffle(r, [...reports, ...reports]);
  // What the service must do: apply a report the first time its key is seen unless it is older than the last accepted one.
  const seenKeys = new Set<string>();
  const lastTime = new Map<string, number>();
  const reportChanges = new Map<string, number>();
  let stale = 0;
  for (const rep of reportDeliveries) {
    if (seenKeys.has(rep.key)) continue;
    seenKeys.add(rep.key);
    if ((lastTime.get(rep.asset) ?? -Infinity) > rep.time) {
      stale++;
      continue;
    }
    lastTime.set(rep.asset, rep.time);
    book.report(rep.asset, rep.input);
    reportChanges.set(rep.asset, (reportChanges.get(rep.asset) ?? 0) + 1);
  }
  t.comment(
    `fill deliveries ${fillDeliveries.length} (${copies} copies), id-less deliveries ${idless.length}, report deliveries ${reportDeliveries.length} (${stale} stale expected)`,
  );

  await Promise.all([
    publishAll(ch, FILLS, [...fillDeliveries, ...idless], { window: 50 }),
    publishAll(
      ch,
      REPORTS,
      reportDeliveries.map((d) => ({ body: d.body })),
      { window: 50 },
    ),
  ]);

  const distinctFillKeys = N + 40;
  await waitFor(
    async () => (await inboxCount(db, FILLS)) >= distinctFillKeys && (await inboxCount(db, REPORTS)) >= reports.length,
    { what: 'every distinct key in the inbox', timeoutMs: 90_000 + N * 30, intervalMs: 100 },
  );
  await waitFor(
    async () => (await ch.checkQueue(FILLS)).messageCount === 0 && (await ch.checkQueue(REPORTS)).messageCount === 0,
    { what: 'queues drained', timeoutMs: 60_000 + N * 30 },
  );
  await waitFor(
    () => svc.logs.filter((l) => l.msg === 'duplicate message ignored').length >= copies + 40 + reports.length,
    { what: 'every copy acknowledged as a duplicate', timeoutMs: 30_000 },
  ).catch(() => undefined);

  t.equal(await inboxCount(db, FILLS), distinctFillKeys, 'one inbox key per distinct fill');
  t.equal(await inboxCount(db, REPORTS), reports.length, 'one inbox key per distinct report');
  const staleRows = (
    await db.query("select count(*)::int as n from inbox where source = $1 and outcome = 'stale'", [REPORTS])
  ).rows[0].n;
  t.equal(staleRows, stale, 'the late older reports are recorded as stale');
  t.equal(
    (await db.query("select count(*)::int as n from position_fills where kind = 'fill'")).rows[0].n,
    distinctFillKeys,
    'one ledger row per distinct fill',
  );
  t.same(await positionMismatches(db, book), [], 'every position equals the reference model');

  const expected = new Map<string, number>();
  for (const f of fills) expected.set(f.asset, (expected.get(f.asset) ?? 0) + 1);
  expected.set('DUMSGUSDT', 20);
  expected.set('DUHASHUSDT', 20);
  for (const [a, n] of reportChanges) expected.set(a, n);
  const versions = Object.fromEntries(
    (await db.query('select asset, version from positions')).rows.map((v) => [v.asset, Number(v.version)]),
  );
  t.same(versions, Object.fromEntries(expected), 'each position version equals its number of changes');
  const total = [...expected.values()].reduce((a, b) => a + b, 0);
  await waitFor(async () => (await outboxPending(db)) === 0, { what: 'outbox drained', timeoutMs: 60_000 + N * 30 });
  await waitDistinctEvents(updated.messages, total);
  const ev = checkUpdatedEvents(updated.messages, expected);
  t.comment(`position_updated: ${ev.received} received, ${ev.distinct} distinct (${total} changes)`);
  t.same(ev.problems.slice(0, 20), [], 'each change has exactly one position_updated event');
  t.equal(ev.distinct, total, 'no event for a duplicate or a stale report');
  t.equal(dead.messages.length, 0, 'nothing dead-lettered');
  const dupLogs = svc.logs.filter((l) => l.msg === 'duplicate message ignored').length;
  t.equal(dupLogs, copies + 40 + reports.length, 'every copy logged as a duplicate');
  const metrics = await (await fetch(`${svc.url}/metrics`)).text();
  const dupMetric = (queue: string) =>
    Number(
      metrics
        .split('\n')
        .find(
          (l) =>
            l.startsWith('position_manager_messages_total{') &&
            l.includes(`queue="${queue}"`) &&
            l.includes('outcome="duplicate"'),
        )
        ?.split(' ')
        .pop() ?? 0,
    );
  t.equal(dupMetric(FILLS), copies + 40, 'messages_total{outcome="duplicate"} counts the fill copies');
  t.equal(dupMetric(REPORTS), reports.length, 'messages_total{outcome="duplicate"} counts the report copies');
  await svc.stop();
  await reliabilityLine(
    t,
    'duplicates',
    db,
    N + idless.length / 2,
    `${copies + idless.length / 2} redeliveries ignored`,
  );
});
