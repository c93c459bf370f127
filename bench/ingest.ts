// Ingest throughput (SPEC.md §11 "Ingest throughput", seed TC-031).
//
//   node --import=./node_modules/@tapjs/typescript/dist/esm/import.mjs bench/ingest.ts [--n 50000]
//        [--assets 200] [--concurrency 10] [--window 2000] [--seed 42] [--direct-n 10000] [--skip-direct] [--skip-tc031]
//        [--single] [--timeout 900] [--paced-seconds 15] [--paced-rate <fills/s>]
//
// End to end: N fills (opens, adds, reduces, closes, flips and ~1 % re-sent duplicates) over
// 200 assets are published as fast as possible on a confirm channel to the real RabbitMQ
// (queue order-manager.order_executed, own vhost); the built service (roles consumer,relay)
// applies them and its relay publishes one position_updated per applied fill. The clock runs
// from the first publish until every expected event (N − duplicates distinct event_ids) has
// arrived on position-manager.position_updated. Latency is per fill: receive time of the
// event carrying the fill's trace_id − publish time of the fill.
//
// Baseline, same run, separate fresh database: `select apply_order_fill($1::jsonb)` per fill from
// --concurrency pg clients (--single: also from one client), over the first --direct-n fills of
// the same stream (a rate needs no more, and it keeps `npm run bench` under 10 minutes). For reference also
// the service's own batched path (`select ingest_messages(kind, metas, bodies)`, 200 messages per call,
// one client, as the consumer calls it) without the broker.
//
// Then latency below saturation: fills at a steady rate (--paced-rate, default half the
// measured end-to-end throughput) for --paced-seconds, p50/p99 publish → event.
// TC-031 afterwards, on the same service: 100 fills published concurrently, all applied and
// their events received within 5 s, none lost.
//
// At the end the net size of every position is compared exactly (decimal.js) with the sum of
// the fills: "exact: yes/no".
import { readFileSync } from 'node:fs';
import type amqp from 'amqplib';
import { Decimal } from 'decimal.js';
import { freshBroker } from '../test/helpers/amqp.js';
import { startService } from '../test/helpers/service.js';
import {
  args,
  benchDatabase,
  checkSizes,
  fillStream,
  int,
  ms,
  now,
  ratio,
  runBench,
  sleep,
  summary,
  table,
  type Fill,
  type FillStream,
  type Teardown,
  type LogLine,
  problemLines,
} from './lib.js';

const FILLS_QUEUE = 'order-manager.order_executed';
const EVENTS_QUEUE = 'position-manager.position_updated';

const opt = args({
  n: 50_000,
  assets: 200,
  concurrency: 10,
  window: 2000,
  seed: 42,
  'direct-n': 10_000,
  'skip-direct': false,
  'skip-tc031': false,
  single: false,
  timeout: 900,
  'paced-seconds': 15,
  'paced-rate': 0,
});
const N = Number(opt.n);
const ASSETS = Number(opt.assets);
const CONCURRENCY = Number(opt.concurrency);
const WINDOW = Number(opt.window);

interface Rate {
  label: string;
  applied: number;
  seconds: number;
  rate: number;
  exact: boolean;
  note?: string;
}

/** Baseline 1: apply_order_fill per fill from `concurrency` clients, in autocommit. */
async function directPerFill(t: Teardown, stream: FillStream, concurrency: number): Promise<Rate> {
  const db = await benchDatabase(t, 'pm_bench_direct', concurrency);
  const bodies = stream.fills.map((f) => JSON.stringify(f));
  // open the connections before the clock starts
  const clients = await Promise.all(Array.from({ length: concurrency }, () => db.pool.connect()));
  let next = 0;
  const started = now();
  await Promise.all(
    clients.map(async (c) => {
      for (let i = next++; i < bodies.length; i = next++)
        await c.query('select apply_order_fill($1::jsonb)', [bodies[i]]);
    }),
  );
  const seconds = (now() - started) / 1000;
  clients.forEach((c) => c.release());
  const bad = await checkSizes(db.pool, stream.expected);
  const events = Number(
    (
      await db.pool.query<{ n: string }>(
        "select count(*) as n from outbox where routing_key = 'position-manager.position_updated'",
      )
    ).rows[0]!.n,
  );
  if (bad.length) console.log(`  direct SQL c=${concurrency}: ${bad.length} size mismatches, first: ${bad[0]}`);
  return {
    label: `direct SQL apply_order_fill, ${concurrency} client(s)`,
    applied: stream.unique,
    seconds,
    rate: stream.unique / seconds,
    exact: bad.length === 0 && events === stream.unique,
    note: `${events} outbox events`,
  };
}

/** Baseline 2 (reference): what the consumer does, without the broker: ingest_messages in batches of 200. */
async function directBatched(t: Teardown, stream: FillStream, batch = 200): Promise<Rate> {
  const db = await benchDatabase(t, 'pm_bench_batch', 2);
  const c = await db.pool.connect();
  // per-function time (superuser setting), to show where a fill's cost goes
  await c.query("set track_functions = 'all'");
  const started = now();
  for (let i = 0; i < stream.fills.length; i += batch) {
    const part = stream.fills.slice(i, i + batch);
    const metas = part.map((f) =>
      JSON.stringify({ source: FILLS_QUEUE, received_at: new Date().toISOString(), trace_id: f.trace_id }),
    );
    await c.query('select ingest_messages($1, $2::jsonb[], $3::jsonb[])', [
      'fill',
      metas,
      part.map((f) => JSON.stringify(f)),
    ]);
  }
  const seconds = (now() - started) / 1000;
  c.release();
  await sleep(1500); // function statistics are flushed at most once a second
  const prof = await db.pool.query<{ funcname: string; calls: string; total: string; self: string }>(
    `select funcname, calls, round((total_time / $1)::numeric * 1000, 1)::text as total, round((self_time / $1)::numeric * 1000, 1)::text as self
       from pg_stat_user_functions order by self_time desc limit 12`,
    [stream.fills.length],
  );
  console.log(
    `  where the time of ingest_messages goes, per fill (µs; self = in the function itself, total = with callees):`,
  );
  for (const r of prof.rows)
    console.log(
      `    ${r.funcname.padEnd(30)} self ${r.self.padStart(7)}  total ${r.total.padStart(7)}  calls ${r.calls}`,
    );
  const bad = await checkSizes(db.pool, stream.expected);
  return {
    label: `direct SQL ingest_messages, batches of ${batch}, 1 client`,
    applied: stream.unique,
    seconds,
    rate: stream.unique / seconds,
    exact: bad.length === 0,
  };
}

interface E2E extends Rate {
  publishSeconds: number;
  latency: ReturnType<typeof summary>;
  received: number;
  extraEvents: number;
  missing: number;
}

/** Publishes fills on a confirm channel with at most `window` unconfirmed; resolves when all are confirmed. */
async function publishAll(
  ch: amqp.ConfirmChannel,
  fills: Fill[],
  window: number,
  published: Map<string, number>,
): Promise<void> {
  let inFlight = 0;
  let failed: Error | undefined;
  let wake: (() => void) | undefined;
  const settle = () => {
    inFlight--;
    const w = wake;
    wake = undefined;
    w?.();
  };
  for (const f of fills) {
    while (inFlight >= window) await new Promise<void>((r) => (wake = r));
    if (failed) throw failed;
    if (!published.has(f.trace_id)) published.set(f.trace_id, now());
    inFlight++;
    const ok = ch.sendToQueue(
      FILLS_QUEUE,
      Buffer.from(JSON.stringify(f)),
      { persistent: true, contentType: 'application/json' },
      (err) => {
        if (err) failed = err instanceof Error ? err : new Error(String(err));
        settle();
      },
    );
    if (!ok) await new Promise<void>((r) => ch.once('drain', r));
  }
  while (inFlight > 0) await new Promise<void>((r) => (wake = r));
  if (failed) throw failed;
}

interface Paced {
  rate: number;
  fills: number;
  received: number;
  complete: boolean;
  latency: ReturnType<typeof summary>;
}

interface EventSink {
  events: Set<string>;
  firstSeen: Map<string, number>;
  duplicatesReceived: number;
  waitFor(count: number, timeoutMs: number): Promise<boolean>;
  lastAt: number;
}

async function sinkEvents(conn: amqp.ChannelModel): Promise<EventSink> {
  const ch = await conn.createChannel();
  await ch.prefetch(5000);
  let waiter: (() => void) | undefined;
  const sink: EventSink = {
    events: new Set(),
    firstSeen: new Map(),
    duplicatesReceived: 0,
    lastAt: 0,
    async waitFor(count, timeoutMs) {
      const deadline = now() + timeoutMs;
      let lastProgress = now();
      let lastCount = sink.events.size;
      while (sink.events.size < count) {
        if (now() > deadline) return false;
        if (sink.events.size !== lastCount) {
          lastCount = sink.events.size;
          lastProgress = now();
        } else if (now() - lastProgress > 60_000) return false; // stalled for a minute
        await Promise.race([new Promise<void>((r) => (waiter = r)), sleep(500)]);
      }
      return true;
    },
  };
  await ch.consume(
    EVENTS_QUEUE,
    (m) => {
      if (!m) return;
      const at = now();
      ch.ack(m);
      const body = JSON.parse(m.content.toString('utf8')) as { event_id: string; trace_id?: string };
      if (sink.events.has(body.event_id)) sink.duplicatesReceived++;
      else {
        sink.events.add(body.event_id);
        sink.lastAt = at;
        if (body.trace_id && !sink.firstSeen.has(body.trace_id)) sink.firstSeen.set(body.trace_id, at);
      }
      const w = waiter;
      waiter = undefined;
      w?.();
    },
    { noAck: false },
  );
  return sink;
}

async function endToEnd(
  t: Teardown,
  stream: FillStream,
): Promise<{
  e2e: E2E;
  paced?: Paced;
  tc031?: { seconds: number; received: number; exact: boolean };
  peakRssMb?: number;
  logs: LogLine[];
  stderr: string[];
}> {
  const db = await benchDatabase(t, 'pm_bench_e2e', 4);
  const broker = await freshBroker(t);
  const svc = await startService(t, {
    databaseUrl: db.url,
    amqpUrl: broker.url,
    env: { POSITION_MANAGER_ROLES: 'consumer,relay', POSITION_MANAGER_LOG_LEVEL: 'info' },
  });
  t.teardown(() => svc.stop('SIGTERM'));
  // the service declares the queues on connect; /health can be up a moment before that
  for (let i = 0; ; i++) {
    const probe = await broker.connection.createChannel();
    probe.on('error', () => undefined);
    try {
      await probe.checkQueue(EVENTS_QUEUE);
      await probe.checkQueue(FILLS_QUEUE);
      await probe.close();
      break;
    } catch {
      if (i > 100) throw new Error('service did not declare its queues');
      await sleep(100);
    }
  }
  const sink = await sinkEvents(broker.connection);
  const ch = broker.channel as amqp.ConfirmChannel;
  const published = new Map<string, number>();

  const started = now();
  await publishAll(ch, stream.fills, WINDOW, published);
  const publishSeconds = (now() - started) / 1000;
  const complete = await sink.waitFor(stream.unique, Number(opt.timeout) * 1000);
  const seconds = ((complete ? sink.lastAt : now()) - started) / 1000;
  await sleep(1000); // anything extra (there should be nothing) arrives now
  const latencies: number[] = [];
  for (const [trace, at] of sink.firstSeen) {
    const p = published.get(trace);
    if (p !== undefined) latencies.push(at - p);
  }
  const bad = await checkSizes(db.pool, stream.expected);
  if (bad.length) console.log(`  end to end: ${bad.length} size mismatches, first: ${bad.slice(0, 3).join('; ')}`);
  const fillsRows = Number(
    (await db.pool.query<{ n: string }>("select count(*) as n from position_fills where kind = 'fill'")).rows[0]!.n,
  );
  const e2e: E2E = {
    label: 'end to end (AMQP in → commit → AMQP out)',
    applied: sink.events.size,
    seconds,
    rate: sink.events.size / seconds,
    exact: bad.length === 0 && fillsRows === stream.unique && sink.events.size === stream.unique,
    publishSeconds,
    latency: summary(latencies),
    received: sink.events.size,
    extraEvents: sink.duplicatesReceived,
    missing: stream.unique - sink.events.size,
    note: `ledger rows ${fillsRows}`,
  };

  // Every later phase adds to the same positions: keep the expected sizes cumulative.
  const combined = new Map(stream.expected);
  const addExpected = (m: Map<string, Decimal>) => {
    for (const [a, v] of m) combined.set(a, (combined.get(a) ?? new Decimal(0)).plus(v));
  };

  let paced: Paced | undefined;
  const pacedSeconds = Number(opt['paced-seconds']);
  if (pacedSeconds > 0 && complete) {
    // Latency below saturation: a steady rate of half the measured end-to-end throughput.
    const rate = Math.max(10, Math.floor(Number(opt['paced-rate']) || e2e.rate / 2));
    const pStream = fillStream(
      rate * pacedSeconds,
      ASSETS,
      Number(opt.seed) + 1,
      `paced-${Date.now().toString(36)}`,
      0,
    );
    const pPublished = new Map<string, number>();
    const before = sink.events.size;
    const t0 = now();
    let i = 0;
    while (i < pStream.fills.length) {
      const due = Math.min(pStream.fills.length, Math.floor(((now() - t0) / 1000) * rate) + 1);
      for (; i < due; i++) {
        const f = pStream.fills[i]!;
        pPublished.set(f.trace_id, now());
        ch.sendToQueue(FILLS_QUEUE, Buffer.from(JSON.stringify(f)), {
          persistent: true,
          contentType: 'application/json',
        });
      }
      await sleep(5);
    }
    await ch.waitForConfirms();
    const ok = await sink.waitFor(before + pStream.unique, 120_000);
    const lat: number[] = [];
    for (const [trace, p] of pPublished) {
      const at = sink.firstSeen.get(trace);
      if (at !== undefined) lat.push(at - p);
    }
    addExpected(pStream.expected);
    paced = {
      rate,
      fills: pStream.fills.length,
      received: sink.events.size - before,
      complete: ok,
      latency: summary(lat),
    };
  }

  let tc031: { seconds: number; received: number; exact: boolean } | undefined;
  if (opt['skip-tc031'] !== 'true') {
    // TC-031: 100 events published concurrently, all processed within 5 s, none lost.
    const tcStream = fillStream(100, 10, 7, `tc031-${Date.now().toString(36)}`, 0);
    const before = sink.events.size;
    const t0 = now();
    await Promise.all(tcStream.fills.map((f) => broker.publish(FILLS_QUEUE, f)));
    const ok = await sink.waitFor(before + tcStream.unique, 30_000);
    const secs = ((ok ? sink.lastAt : now()) - t0) / 1000;
    addExpected(tcStream.expected);
    const tcBad = await checkSizes(db.pool, combined);
    tc031 = { seconds: secs, received: sink.events.size - before, exact: ok && tcBad.length === 0 };
  }
  const peakRssMb = peakRss(svc.child.pid);
  return { e2e, paced, tc031, peakRssMb, logs: svc.logs as LogLine[], stderr: svc.stderr };
}

/** The process's peak resident set (VmHWM) in MB, from /proc; undefined where there is none. */
function peakRss(pid: number | undefined): number | undefined {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Math.round(Number(m[1]) / 1024) : undefined;
  } catch {
    return undefined;
  }
}

/** Each distinct warning or error once, with how often it came. */
function reportLogs(logs: LogLine[], stderr: string[]): string[] {
  const counts = new Map<string, number>();
  for (const line of problemLines(logs, stderr)) counts.set(line, (counts.get(line) ?? 0) + 1);
  return [...counts].map(([m, n]) => (n > 1 ? `${n} × ${m}` : m));
}

runBench(async (t) => {
  const prefix = `bench-${Date.now().toString(36)}`;
  const stream = fillStream(N, ASSETS, Number(opt.seed), prefix);
  console.log(
    `# ingest: ${int(N)} fills over ${ASSETS} assets (${int(stream.unique)} unique, ${stream.duplicates} duplicates)`,
  );
  console.log(
    `  mix: ${Object.entries(stream.mix)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
  );

  const rows: Rate[] = [];
  let direct: Rate | undefined;
  if (opt['skip-direct'] !== 'true') {
    const base =
      Math.min(N, Number(opt['direct-n'])) === N
        ? stream
        : fillStream(Number(opt['direct-n']), ASSETS, Number(opt.seed), prefix);
    if (base !== stream)
      console.log(`  direct SQL baselines over the first ${int(base.fills.length)} fills of the same stream`);
    direct = await directPerFill(t, base, CONCURRENCY);
    rows.push(direct);
    console.log(`  ${direct.label}: ${int(direct.rate)} fills/s`);
    if (opt.single === 'true') {
      const one = await directPerFill(t, base, 1);
      rows.push(one);
      console.log(`  ${one.label}: ${int(one.rate)} fills/s`);
    }
    const batched = await directBatched(t, base);
    rows.push(batched);
    console.log(`  ${batched.label}: ${int(batched.rate)} fills/s`);
    await t.run(); // drop the baseline databases before the end-to-end run
  }

  const { e2e, paced, tc031, peakRssMb, logs, stderr } = await endToEnd(t, stream);
  rows.unshift(e2e);
  console.log();
  table([
    ['path', 'applied', 'seconds', 'events/s', 'exact'],
    ...rows.map((r) => [r.label, int(r.applied), r.seconds.toFixed(2), int(r.rate), r.exact ? 'yes' : 'no']),
  ]);
  console.log();
  console.log(
    `end to end: publishing took ${e2e.publishSeconds.toFixed(2)} s (${int(N / e2e.publishSeconds)} msg/s confirmed); ` +
      `${int(e2e.received)} of ${int(stream.unique)} events received, ${e2e.missing} missing, ${e2e.extraEvents} redelivered`,
  );
  console.log(
    `end to end latency publish → position_updated received (saturated, queue backlog included): ` +
      `p50 ${ms(e2e.latency.p50)} ms, p99 ${ms(e2e.latency.p99)} ms, max ${ms(e2e.latency.max)} ms`,
  );
  if (direct)
    console.log(
      `ratio end to end / direct SQL (${CONCURRENCY} clients): ${ratio(e2e.rate / direct.rate)}` +
        `; / ingest_messages batched: ${ratio(e2e.rate / rows[rows.length - 1]!.rate)}`,
    );
  console.log(
    `target ≥ 5,000 events/s: ${e2e.rate >= 5000 ? 'met' : `missed (${ratio(e2e.rate / 5000)} × target)`}` +
      (direct ? `; target ≥ 0.8 × direct SQL: ${e2e.rate >= 0.8 * direct.rate ? 'met' : 'missed'}` : ''),
  );
  console.log(`exact: ${e2e.exact ? 'yes' : 'no'}`);
  console.log(
    `service peak RSS through the run: ${peakRssMb ?? '?'} MB (target < 256 MB: ${peakRssMb === undefined ? 'unknown' : peakRssMb < 256 ? 'met' : 'missed'})`,
  );
  if (paced)
    console.log(
      `end to end latency at a steady ${int(paced.rate)} fills/s for ${opt['paced-seconds']} s (below saturation): ` +
        `p50 ${ms(paced.latency.p50)} ms, p99 ${ms(paced.latency.p99)} ms, max ${ms(paced.latency.max)} ms; ` +
        `${int(paced.received)} of ${int(paced.fills)} events${paced.complete ? '' : ' (INCOMPLETE)'}`,
    );
  if (tc031)
    console.log(
      `TC-031: 100 concurrent fills processed in ${tc031.seconds.toFixed(2)} s, ${tc031.received} events, exact ${tc031.exact ? 'yes' : 'no'} → ${tc031.seconds < 5 && tc031.exact ? 'pass' : 'FAIL'}`,
    );
  const problems = reportLogs(logs, stderr);
  console.log(`service warnings/errors: ${problems.length ? '\n  ' + problems.join('\n  ') : 'none'}`);
  console.log(
    'RESULT ' +
      JSON.stringify({ bench: 'ingest', n: N, unique: stream.unique, rows, e2e, paced, tc031, peakRssMb, problems }),
  );
});
