// The set-based batch path (sql/135_apply_batch.sql) against message-by-message application:
// random streams of fills (executions and cumulative order statements, one-way and hedge, flips,
// duplicates, no-ops, orders counted in the other shape, hedge reductions beyond the leg) and
// reports (adoptions, stale ones, marks, discrepancies) are applied to one database in batches of
// random size, as the consumers send them, and to another one message per call. Every row they
// leave (positions, ledger, audit, inbox, outbox, marks, scheduled validations) must be the same,
// ids and clock times aside. Then: a batch writes without a subtransaction per message, and a bad
// message in a batch fails alone.
import t from 'tap';
import { freshDatabase, type TestDb } from '../helpers/db.js';
import { rng } from '../helpers/random.js';

const SEED = Number(process.env.BATCH_APPLY_SEED ?? Math.floor(Math.random() * 2 ** 31));
const STREAMS = 12;
const MESSAGES = 160;

interface Message {
  kind: 'fill' | 'report';
  meta: Record<string, string>;
  body: Record<string, unknown>;
}

const ASSETS = [
  { asset: 'AAAUSDT', mode: 'one-way' },
  { asset: 'BBBUSDT', mode: 'one-way' },
  { asset: 'CCCUSDT', mode: 'hedge' },
  { asset: 'DDDUSDT', mode: 'hedge' },
];

/** A random stream: runs of fills and runs of reports, as two queues interleave them. */
function stream(seed: number): Message[] {
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const price = () => (90 + Math.floor(r() * 2000) / 100).toFixed(2);
  const qty = () => (1 + Math.floor(r() * 40) / 10).toFixed(1);
  const base = Date.now() - 600_000;
  const out: Message[] = [];
  const orders: { order_id: string; asset: string; mode: string; side: string; filled: number; idx?: number }[] = [];
  let n = 0;
  while (out.length < MESSAGES) {
    const kind = r() < 0.7 ? 'fill' : 'report';
    const run = 1 + Math.floor(r() * 25);
    for (let j = 0; j < run && out.length < MESSAGES; j++) {
      n++;
      const at = new Date(base + n * 1000).toISOString();
      const meta = {
        source: kind === 'fill' ? 'order-manager.order_executed' : 'ws-gateway.position',
        received_at: at,
      };
      const { asset, mode } = pick(ASSETS);
      const side = pick(['Buy', 'Sell']);
      const roll = r();
      if (roll < 0.06 && out.some((m) => m.kind === kind)) {
        // a re-sent message
        const again = pick(out.filter((m) => m.kind === kind));
        out.push({ kind, meta: { ...again.meta, received_at: at }, body: again.body });
        continue;
      }
      if (kind === 'report') {
        const idx = mode === 'hedge' ? pick([1, 2]) : 0;
        const size = r() < 0.15 ? '0' : qty();
        const payload: Record<string, unknown> = {
          symbol: asset,
          size,
          side: size === '0' ? '' : idx === 1 ? 'Buy' : idx === 2 ? 'Sell' : side,
          positionIdx: idx,
          avgPrice: r() < 0.7 ? price() : '0',
          markPrice: price(),
          // now and then older than what came before: stale
          updatedTime: String(base + (r() < 0.1 ? n - 30 : n) * 1000),
        };
        if (r() < 0.5) payload.unrealisedPnl = (r() * 20 - 10).toFixed(4);
        out.push({ kind, meta, body: { event_type: 'position', event_id: `r${seed}-${n}`, payload } });
        continue;
      }
      if (roll < 0.1) {
        out.push({ kind, meta, body: { event_type: 'created', order: { order_id: `nop${n}`, asset, side } } });
        continue;
      }
      const hedgeFields =
        mode === 'hedge' ? { mode, ...(r() < 0.5 ? { position_idx: pick([1, 2]) } : { reduce_only: r() < 0.3 }) } : {};
      if (roll < 0.3) {
        // a cumulative statement of an order, new or growing
        let o = orders.length && r() < 0.6 ? pick(orders) : undefined;
        if (!o) {
          o = { order_id: `ord${seed}-${n}`, asset, mode, side, filled: 0 };
          orders.push(o);
        }
        o.filled += r() < 0.2 ? 0 : Number(qty());
        out.push({
          kind,
          meta,
          body: {
            event_type: 'partially_filled',
            order: {
              order_id: o.order_id,
              asset: o.asset,
              mode: o.mode,
              side: o.side,
              filled_quantity: o.filled.toFixed(1),
              average_price: price(),
              fees: (o.filled * 0.01).toFixed(4),
              ...(o.mode === 'hedge' ? { position_idx: o.side === 'Buy' ? 1 : 2 } : {}),
            },
          },
        });
        continue;
      }
      // an execution, now and then of an order already counted as statements
      const counted = orders.length && r() < 0.1 ? pick(orders) : undefined;
      out.push({
        kind,
        meta,
        body: {
          event_type: 'order_executed',
          execution_id: `x${seed}-${n}`,
          order_id: counted?.order_id ?? `eo${seed}-${n}`,
          asset: counted?.asset ?? asset,
          ...(counted ? { mode: counted.mode } : hedgeFields),
          side: counted?.side ?? side,
          execution_quantity: qty(),
          execution_price: price(),
          execution_fees: (r() * 0.1).toFixed(4),
          executed_at: at,
        },
      });
    }
  }
  return out.map((m, i) => ({ ...m, meta: { ...m.meta, trace_id: `trace-${seed}-${i}` } }));
}

async function ingest(db: TestDb, kind: string, messages: Message[]): Promise<{ outcome?: string }[]> {
  const r = await db.query('select ingest_messages($1, $2::jsonb[], $3::jsonb[]) as o', [
    kind,
    messages.map((m) => JSON.stringify(m.meta)),
    messages.map((m) => JSON.stringify(m.body)),
  ]);
  return r.rows[0].o;
}

/** Runs of one kind, cut into batches of 1 to 40 (batched) or of 1 (one by one). */
async function applyStream(db: TestDb, messages: Message[], batched: boolean, r: () => number): Promise<unknown[]> {
  const outcomes: unknown[] = [];
  for (let i = 0; i < messages.length;) {
    const size = batched ? 1 + Math.floor(r() * 40) : 1;
    const kind = messages[i]!.kind;
    let end = i;
    while (end < messages.length && end - i < size && messages[end]!.kind === kind) end++;
    outcomes.push(...(await ingest(db, kind, messages.slice(i, end))));
    i = end;
  }
  return outcomes;
}

// Everything the messages left, with ids, clock times and row ids replaced by what they stand for.
const DROP = ['id', 'position_id', 'created_at', 'last_updated', 'event_id', 'timestamp', 'time_held_minutes'];
function scrub(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(scrub);
  if (v && typeof v === 'object')
    return Object.fromEntries(
      Object.entries(v)
        .filter(([k]) => !DROP.includes(k))
        .map(([k, x]) => [k, scrub(x)]),
    );
  return v;
}

async function state(db: TestDb): Promise<Record<string, unknown>> {
  const rows = async (sql: string) => scrub((await db.query(sql)).rows);
  return {
    positions: await rows('select p.*, null as last_snapshot_at from positions p order by asset, mode'),
    ledger: await rows(
      'select asset, mode, kind, leg, side, quantity, price, fee, order_id, execution_id, executed_at, message_key, trace_id, reset_size, reset_avg_price, reason from position_fills order by id',
    ),
    audit: await rows(
      'select asset, mode, source, kind, before, after, changed_fields, message_key, trace_id, details from position_events order by id',
    ),
    inbox: await rows(
      'select i.source, i.message_key, i.outcome, p.asset, p.mode from inbox i left join positions p on p.id = i.position_id order by 1, 2',
    ),
    outbox: await rows('select routing_key, event_type, trace_id, payload from outbox order by id'),
    marks: await rows('select symbol, price, at, source from mark_prices order by symbol'),
    validations: await rows('select key from graphile_worker.jobs order by key'),
  };
}

t.test('batches leave exactly what one message at a time leaves', async (t) => {
  t.comment(`seed ${SEED} (reproduce: BATCH_APPLY_SEED=${SEED})`);
  const seenOutcomes = new Set<string>();
  for (let s = 0; s < STREAMS; s++) {
    const messages = stream(SEED + s);
    const [one, many] = await Promise.all([freshDatabase(t, { poolSize: 2 }), freshDatabase(t, { poolSize: 2 })]);
    const singly = await applyStream(one, messages, false, rng(SEED + s));
    const batched = await applyStream(many, messages, true, rng(SEED + s));
    t.same(scrub(batched), scrub(singly), `stream ${s}: the same outcomes`);
    const [a, b] = [await state(one), await state(many)];
    for (const table of Object.keys(a)) t.same(b[table], a[table], `stream ${s}: the same ${table}`);
    t.ok((a.ledger as unknown[]).length > 20, `stream ${s}: the stream applied fills`);
    for (const o of singly as { outcome: string; reports?: { outcome: string; leg_adopted?: string }[] }[])
      for (const x of o.reports ?? [o]) {
        seenOutcomes.add(x.outcome);
        if ('leg_adopted' in x) seenOutcomes.add('leg_adopted');
        if ('size_discrepancy' in x) seenOutcomes.add('size_discrepancy');
      }
  }
  // the streams reach every rule they are meant to compare
  for (const o of ['applied', 'duplicate', 'no_op', 'other_shape', 'stale', 'leg_adopted', 'size_discrepancy'])
    t.ok(seenOutcomes.has(o), `some message came to ${o}`);
});

t.test('a batch writes in one transaction without a subtransaction per message', async (t) => {
  const db = await freshDatabase(t);
  // no cumulative statements: their random average prices can be inconsistent with the fills
  // before them (a bad message), and a bad message sends the whole batch one by one by design
  const messages = stream(SEED).filter((m) => m.kind === 'fill' && m.body.event_type !== 'partially_filled');
  const outcomes = await ingest(db, 'fill', messages);
  t.ok(
    outcomes.some((o) => o.outcome === 'applied'),
    'fills applied',
  );
  // a subtransaction would give its rows its own transaction id
  for (const table of ['positions', 'position_fills', 'position_events', 'inbox', 'outbox_events', 'outbox_pending']) {
    const xids = (await db.query(`select count(distinct xmin::text)::int as n from ${table}`)).rows[0].n;
    t.equal(xids, 1, `${table}: one writing transaction`);
  }
});

t.test('a bad message in a batch fails alone; the others apply', async (t) => {
  const db = await freshDatabase(t);
  const fill = (id: string, extra: Record<string, unknown> = {}) =>
    JSON.stringify({
      execution_id: id,
      asset: 'BADUSDT',
      side: 'Buy',
      execution_quantity: '1',
      execution_price: '100',
      ...extra,
    });
  const statement = (filled: string, avg: string) =>
    JSON.stringify({
      order: { order_id: 'o1', asset: 'BADUSDT', side: 'Buy', filled_quantity: filled, average_price: avg },
    });
  const bodies = [
    fill('b1'),
    statement('1', '100'),
    // inconsistent with what the order already has: raised while applying, not while parsing
    statement('2', '40'),
    fill('b2', { execution_price: 'abc' }),
    fill('b3'),
  ];
  const r = await db.query('select ingest_messages($1, $2::jsonb[], $3::jsonb[]) as o', [
    'fill',
    bodies.map(() => null),
    bodies,
  ]);
  const outcomes = r.rows[0].o as { outcome: string; field?: string }[];
  t.same(
    outcomes.map((o) => o.outcome),
    ['applied', 'applied', 'error', 'error', 'applied'],
  );
  t.equal(outcomes[2]!.field, 'execution_price');
  t.equal(outcomes[3]!.field, 'execution_price');
  const size = (await db.query("select size from positions where asset = 'BADUSDT'")).rows[0].size;
  t.equal(size, '3', 'the three good fills, nothing of the bad ones');
  const keys = (await db.query('select count(*)::int as n from inbox')).rows[0].n;
  t.equal(keys, 3, 'only the applied messages hold inbox keys');
});
