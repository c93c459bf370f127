// Shared pieces of the reliability suite: a seeded generator of fills, the reference model of
// what they must produce, and the end-of-test checks (positions, inbox, position_updated
// events). Helpers here never sleep a fixed time; they poll with deadlines.
import type amqp from 'amqplib';
import { confirmed } from '../helpers/amqp.js';
import { ModelBook, diffState, type Side } from '../model/reference.js';
import type { TestDb } from '../helpers/db.js';
import { waitFor } from '../helpers/wait.js';
import { rng } from '../helpers/random.js';
export { rng };

export const FILLS = 'order-manager.order_executed';
export const REPORTS = 'ws-gateway.position';
export const UPDATED = 'position-manager.position_updated';
export const DLQ = 'position-manager.dead_letter';

export function envInt(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer, got ${v}`);
  return n;
}

export function seedFromEnv(): number {
  const s = process.env.RELIABILITY_SEED;
  return s ? Number(s) : Math.floor(Math.random() * 2 ** 31);
}

export interface Fill {
  execution_id: string;
  asset: string;
  side: Side;
  execution_quantity: string;
  execution_price: string;
  execution_fees: string;
}

/** A random integer in [lo, hi]. */
export const between = (r: () => number, lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));

/** Decimal string with exactly `places` fractional digits, value in [lo, hi] (integers of the unit). */
function decimalString(r: () => number, lo: number, hi: number, places: number): string {
  const scale = 10 ** places;
  const units = between(r, lo * scale, hi * scale);
  const int = Math.floor(units / scale);
  const frac = String(units % scale).padStart(places, '0');
  return places ? `${int}.${frac}` : String(int);
}

export function assetNames(prefix: string, count: number): string[] {
  return Array.from({ length: count }, (_, i) => `${prefix}${String(i).padStart(2, '0')}USDT`);
}

/**
 * `n` fills over `assets`, buys and sells mixed (opens, adds, reductions, closes and flips all
 * occur), quantities with up to 3 and prices with 2 fractional digits, fees with up to 4.
 */
export function generateFills(r: () => number, n: number, assets: string[], idPrefix: string): Fill[] {
  const base = new Map(assets.map((a) => [a, between(r, 10, 50_000)]));
  const out: Fill[] = [];
  for (let i = 0; i < n; i++) {
    const asset = assets[Math.floor(r() * assets.length)]!;
    const b = base.get(asset)!;
    const price = decimalString(r, Math.max(1, Math.floor(b * 0.9)), Math.ceil(b * 1.1), 2);
    const price0 = price === '0.00' ? '1.00' : price;
    out.push({
      execution_id: `${idPrefix}-${i}`,
      asset,
      side: r() < 0.5 ? 'Buy' : 'Sell',
      execution_quantity:
        r() < 0.1 ? decimalString(r, 1, 9, 0) : decimalString(r, 0, 4, 3).replace(/^0\.000$/, '0.001'),
      execution_price: price0,
      execution_fees: r() < 0.2 ? '0' : decimalString(r, 0, 20, 4),
    });
  }
  return out;
}

/** The reference model's book after applying `fills` in order (per asset the order matters). */
export function modelOf(fills: Fill[]): ModelBook {
  const book = new ModelBook();
  for (const f of fills)
    book.fill(f.asset, {
      side: f.side,
      qty: f.execution_quantity,
      price: f.execution_price,
      fee: f.execution_fees,
      mode: 'one-way',
    });
  return book;
}

export async function inboxCount(db: TestDb, source = FILLS): Promise<number> {
  return Number((await db.query('select count(*)::int as n from inbox where source = $1', [source])).rows[0].n);
}

/** Every (asset, one-way) row compared with the model; returns human-readable mismatches. */
export async function positionMismatches(db: TestDb, book: ModelBook, assets?: string[]): Promise<string[]> {
  const rows = (await db.query("select * from positions where mode = 'one-way' order by asset")).rows;
  const byAsset = new Map(rows.map((r) => [r.asset as string, r]));
  const out: string[] = [];
  const names = new Set<string>([
    ...(assets ?? []),
    ...[...book.positions.keys()].map((k) => k.split('|')[0]!),
    ...byAsset.keys(),
  ]);
  for (const asset of names) {
    const row = byAsset.get(asset);
    const m = book.get(asset, 'one-way');
    const diff = diffState(row, m?.state());
    if (diff.length)
      out.push(
        `${asset}: ${diff.join(',')} row=${JSON.stringify(row && Object.fromEntries(diff.map((k) => [k, row[k]])))} model=${JSON.stringify(m && Object.fromEntries(diff.map((k) => [k, (m.state() as any)[k]])))}`,
      );
  }
  return out;
}

/** Fills per asset (each applied fill is one change, one version, one position_updated). */
export function changesPerAsset(fills: { asset: string }[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const f of fills) m.set(f.asset, (m.get(f.asset) ?? 0) + 1);
  return m;
}

export interface EventCheck {
  distinct: number;
  received: number;
  duplicates: number;
  problems: string[];
}

/**
 * The position_updated events received: per (asset, version) exactly one distinct event_id,
 * versions 1..expected[asset] all present, nothing else. Redeliveries of one event_id are allowed.
 */
export function checkUpdatedEvents(messages: amqp.ConsumeMessage[], expected: Map<string, number>): EventCheck {
  const seen = new Map<string, Set<string>>(); // "asset|version" -> event ids
  const eventIds = new Set<string>();
  for (const m of messages) {
    const b = JSON.parse(m.content.toString('utf8'));
    eventIds.add(b.event_id);
    const k = `${b.asset}|${b.version}`;
    let s = seen.get(k);
    if (!s) seen.set(k, (s = new Set()));
    s.add(b.event_id);
  }
  const problems: string[] = [];
  let want = 0;
  for (const [asset, n] of expected) {
    want += n;
    for (let v = 1; v <= n; v++) {
      const ids = seen.get(`${asset}|${v}`);
      if (!ids) problems.push(`${asset} v${v}: no event`);
      else if (ids.size !== 1) problems.push(`${asset} v${v}: ${ids.size} distinct events`);
    }
  }
  for (const k of seen.keys()) {
    const [asset, v] = k.split('|');
    if (!expected.has(asset!) || Number(v) > expected.get(asset!)! || Number(v) < 1)
      problems.push(`unexpected event ${k}`);
  }
  void want;
  return { distinct: eventIds.size, received: messages.length, duplicates: messages.length - eventIds.size, problems };
}

/** Waits until the collector holds `n` distinct event ids (at-least-once: maybe more messages). */
export async function waitDistinctEvents(
  messages: amqp.ConsumeMessage[],
  n: number,
  timeoutMs = 60_000 + n * 30,
): Promise<void> {
  const distinct = () => new Set(messages.map((m) => JSON.parse(m.content.toString('utf8')).event_id)).size;
  try {
    await waitFor(() => distinct() >= n, { what: `${n} distinct position_updated events`, timeoutMs, intervalMs: 100 });
  } catch (err) {
    throw new Error(`${(err as Error).message} (have ${distinct()})`, { cause: err });
  }
}

export async function outboxPending(db: TestDb): Promise<number> {
  return Number((await db.query('select count(*)::int as n from outbox where sent_at is null')).rows[0].n);
}

/** Fisher–Yates, seeded. */
export function shuffle<T>(r: () => number, a: T[]): T[] {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/**
 * Publishes bodies in order on one confirm channel, `window` messages in flight at a time
 * (one channel keeps their order; a window is much faster than one confirm per message).
 * `onProgress` is called with the number confirmed so far.
 */
export async function publishAll(
  channel: amqp.ConfirmChannel,
  queue: string,
  bodies: { body: unknown; messageId?: string }[],
  { window = 100, onProgress }: { window?: number; onProgress?: (n: number) => void } = {},
): Promise<void> {
  for (let i = 0; i < bodies.length; i += window) {
    const chunk = bodies.slice(i, i + window);
    await Promise.all(
      chunk.map(
        ({ body, messageId }) =>
          new Promise<void>((resolve, reject) =>
            channel.sendToQueue(
              queue,
              Buffer.isBuffer(body) ? body : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)),
              { persistent: true, ...(messageId ? { messageId } : {}) },
              confirmed(resolve, reject),
            ),
          ),
      ),
    );
    onProgress?.(Math.min(i + window, bodies.length));
  }
}

/** Waits for the outbox to drain, then checks that every change of every asset has exactly one position_updated. */
export async function assertEventsComplete(
  t: { comment(m: string): void; same(a: unknown, b: unknown, m: string): unknown },
  db: TestDb,
  messages: amqp.ConsumeMessage[],
  fills: { asset: string }[],
): Promise<void> {
  const expected = changesPerAsset(fills);
  await waitFor(async () => (await outboxPending(db)) === 0, {
    what: 'outbox drained',
    timeoutMs: 60_000 + fills.length * 30,
  });
  await waitDistinctEvents(messages, fills.length);
  const ev = checkUpdatedEvents(messages, expected);
  t.comment(`position_updated: ${ev.received} received, ${ev.distinct} distinct`);
  t.same(ev.problems.slice(0, 20), [], 'each version 1..final has exactly one position_updated event');
}

/** The one-line account every scenario ends with: sent, applied, lost, applied twice. */
export async function reliabilityLine(
  t: { comment(m: string): void },
  scenario: string,
  db: TestDb,
  sent: number,
  extra = '',
): Promise<string> {
  const r = (
    await db.query(
      `select (select count(*)::int from inbox where source = $1) as applied,
            (select count(*)::int - count(distinct message_key)::int from position_fills where kind = 'fill') as twice`,
      [FILLS],
    )
  ).rows[0] as { applied: number; twice: number };
  const line = `reliability ${scenario}: ${sent} sent, ${r.applied} applied, ${Math.max(sent - r.applied, 0)} lost, ${r.twice} duplicated${extra ? `, ${extra}` : ''}`;
  t.comment(line);
  return line;
}

/** The fills as deliveries, each with its execution_id as the AMQP message id. */
const withMessageIds = (fills: Fill[]) => fills.map((f) => ({ body: f, messageId: f.execution_id }));

/** Waits, polling fast, until the inbox holds `threshold` fills of a stream of `total`. */
async function waitInboxAtLeast(db: TestDb, threshold: number, total: number): Promise<void> {
  await waitFor(async () => (await inboxCount(db)) >= threshold, {
    what: `inbox ≥ ${threshold}`,
    timeoutMs: 60_000 + total * 30,
    intervalMs: 5,
  });
}

/** Waits until every one of the `total` fills is in the inbox. */
async function waitAllApplied(db: TestDb, total: number, what = `all ${total} fills in the inbox`): Promise<void> {
  await waitFor(async () => (await inboxCount(db)) >= total, { what, timeoutMs: 90_000 + total * 30, intervalMs: 100 });
}

/** Waits until nothing is ready in the fill queue (after a stream of `total` fills). */
async function waitFillQueueDrained(ch: Pick<amqp.Channel, 'checkQueue'>, total: number): Promise<void> {
  await waitFor(async () => (await ch.checkQueue(FILLS)).messageCount === 0, {
    what: 'fill queue drained',
    timeoutMs: 60_000 + total * 30,
  });
}

/** Checks the position_updated events of `total` applied fills: one distinct event per version, per fill. */
async function assertOneEventPerFill(
  t: {
    comment(m: string): void;
    same(a: unknown, b: unknown, m: string): unknown;
    equal(a: unknown, b: unknown, m: string): unknown;
  },
  messages: amqp.ConsumeMessage[],
  expected: Map<string, number>,
  total: number,
): Promise<void> {
  await waitDistinctEvents(messages, total);
  const ev = checkUpdatedEvents(messages, expected);
  t.comment(
    `position_updated: ${ev.received} received, ${ev.distinct} distinct, ${ev.duplicates} redelivered duplicates`,
  );
  t.same(ev.problems.slice(0, 20), [], 'each version 1..final has exactly one position_updated event');
  t.equal(ev.distinct, total, 'one distinct event per applied fill');
}

type Checks = Parameters<typeof assertOneEventPerFill>[0];

/**
 * A seeded stream scenario: its sizes (RELIABILITY_FILLS, RELIABILITY_ASSETS, RELIABILITY_SEED),
 * its fills, and the waits and checks whose deadlines and counts follow from its size `N`.
 */
export interface FillStream {
  N: number;
  ASSETS: number;
  seed: number;
  /** The comment that lets a run be repeated, with `extra` sizes appended. */
  describe(extra?: string): string;
  /** The seeded generator of this run. */
  rng(): () => number;
  /** `N` fills over `ASSETS` assets named `assetPrefix…`, ids `idPrefix-seed-i`, and the model's book after them. */
  generate(r: () => number): { fills: Fill[]; book: ModelBook };
  /** The fills as deliveries, each with its execution_id as the AMQP message id. */
  deliveries(fills: Fill[]): { body: Fill; messageId: string }[];
  /** Waits, polling fast, until the inbox holds `threshold` fills. */
  waitInbox(db: TestDb, threshold: number): Promise<void>;
  /** Waits until all `N` fills are in the inbox. */
  waitAllApplied(db: TestDb, what?: string): Promise<void>;
  /** Waits until nothing is ready in the fill queue. */
  waitQueueDrained(ch: Pick<amqp.Channel, 'checkQueue'>): Promise<void>;
  /** Publishes `fills` (of this stream) on the fill queue in order, each with its execution_id as message id. */
  publish(ch: amqp.ConfirmChannel, fills: Fill[], options?: Parameters<typeof publishAll>[3]): Promise<void>;
  /** The closing account of the run (reliabilityLine) with all `N` fills sent. */
  account(t: { comment(m: string): void }, scenario: string, db: TestDb, extra?: string): Promise<string>;
  /** One distinct position_updated per version of each asset, `N` in all. */
  assertOneEventPerFill(t: Checks, messages: amqp.ConsumeMessage[], expected: Map<string, number>): Promise<void>;
}

export function fillStream(assetPrefix: string, idPrefix: string, defaultFills = 2000): FillStream {
  const N = envInt('RELIABILITY_FILLS', defaultFills);
  const ASSETS = envInt('RELIABILITY_ASSETS', 20);
  const seed = seedFromEnv();
  return {
    N,
    ASSETS,
    seed,
    describe: (extra = '') => `seed ${seed} (RELIABILITY_SEED), fills ${N}, assets ${ASSETS}${extra}`,
    rng: () => rng(seed),
    generate(r) {
      const fills = generateFills(r, N, assetNames(assetPrefix, ASSETS), `${idPrefix}-${seed}`);
      return { fills, book: modelOf(fills) };
    },
    deliveries: withMessageIds,
    publish: (ch, fills, options) => publishAll(ch, FILLS, withMessageIds(fills), options),
    account: (t, scenario, db, extra) => reliabilityLine(t, scenario, db, N, extra),
    waitInbox: (db, threshold) => waitInboxAtLeast(db, threshold, N),
    waitAllApplied: (db, what) => waitAllApplied(db, N, what),
    waitQueueDrained: (ch) => waitFillQueueDrained(ch, N),
    assertOneEventPerFill: (t, messages, expected) => assertOneEventPerFill(t, messages, expected, N),
  };
}
