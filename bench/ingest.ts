// Ingest throughput (SPEC.md §11 "Ingest throughput", "Fill latency", seed TC-031; issue 23).
//
//   node --import=./node_modules/@tapjs/typescript/dist/esm/import.mjs bench/ingest.ts [--n 50000]
//        [--assets 200] [--concurrency 10] [--window 2000] [--seed 42] [--direct-n 10000] [--batch-n 20000]
//        [--prefetch 200] [--skip-direct] [--skip-echo] [--skip-tc031] [--single] [--timeout 900]
//        [--paced-seconds 15] [--paced-rate 1000 (0: half the measured end-to-end rate)] [--profile-top 15]
//
// End to end: N fills (opens, adds, reduces, closes, flips and ~1 % re-sent duplicates) over
// 200 assets are published as fast as possible on a confirm channel to the real RabbitMQ
// (queue order-manager.order_executed, own vhost); the built service (roles consumer,relay,
// prefetch --prefetch) applies them and its relay publishes one position_updated per applied
// fill. The clock runs from the first publish until every expected event (N − duplicates
// distinct event_ids) has arrived on position-manager.position_updated. Latency is per fill:
// receive time of the event carrying the fill's trace_id − publish time of the fill.
//
// Bare AMQP echo, same run, just before the end-to-end run (SPEC.md §11's baseline): the same N
// message bodies published the same way to a queue of another vhost, consumed by bench/echo.ts
// in its own process (same prefetch as the service) which republishes each persistent on a
// confirm channel and acks after the confirm; no database. The clock runs until every echo has
// arrived. Printed: both rates and end to end / echo (target ≥ 0.8).
//
// SQL baselines, same run, each in a fresh database: the consumer's batched path without the
// broker (`ingest_messages` called as src/messaging/consumer.ts calls it: batches of --prefetch
// messages with the consumer's envelopes, split into its lanes by asset, each lane in lock
// order on its own pooled connection) over the first --batch-n fills of the same stream; the
// same with track_functions = 'all' over the first --direct-n fills, for the per-function profile
// (top --profile-top by self time); and `select apply_order_fill($1::jsonb)` per fill from
// --concurrency clients (--single: also from one client) over the first --direct-n fills.
//
// CPU (bench/cpu.ts, from /proc/<pid>/stat): per applied fill, of the PostgreSQL backends of the
// run's database (target ≤ 0.25 ms per fill in batches), of the server's WAL writer and
// checkpointer, of the service, of the broker (the whole broker: other users' traffic too), of
// the echo process and of this process, and the whole machine's busy time; for the batched SQL
// path, the end-to-end run, the echo and the paced run.
//
// Then latency at a steady rate (--paced-rate, default 1,000 fills/s: SPEC.md §11 wants p99
// ≤ 20 ms there) for --paced-seconds, p50/p99/max publish → position_updated received.
// TC-031 afterwards, on the same service: 100 fills published concurrently, all applied and
// their events received within 5 s, none lost.
//
// At the end the net size of every position is compared exactly (decimal.js) with the sum of
// the fills: "exact: yes/no". The load average is printed at the start and the end and with
// every measurement.
import { readFileSync } from 'node:fs';
import type amqp from 'amqplib';
import type pg from 'pg';
import { Decimal } from 'decimal.js';
import { createPool } from '../src/db/pool.js';
import { ingestMessages } from '../src/db/ingest.js';
import { lanes, lockOrder } from '../src/messaging/consumer.js';
import { freshBroker } from '../test/helpers/amqp.js';
import { startService } from '../test/helpers/service.js';
import {
  CpuProbe,
  perItem,
  postgresAuxiliary,
  postgresBackends,
  postmasterOf,
  processById,
  rabbitmqServer,
  type CpuGroup,
  type CpuReport,
} from './cpu.js';
import {
  args,
  asDeliveries,
  benchChild,
  benchDatabase,
  checkSizes,
  fillStream,
  int,
  loadAverage,
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
const ECHO_IN = 'bench.echo.in';
const ECHO_OUT = 'bench.echo.out';

const opt = args({
  n: 50_000,
  assets: 200,
  concurrency: 10,
  window: 2000,
  seed: 42,
  'direct-n': 10_000,
  'batch-n': 20_000,
  prefetch: 200,
  'skip-direct': false,
  'skip-echo': false,
  'skip-tc031': false,
  single: false,
  timeout: 900,
  'paced-seconds': 15,
  'paced-rate': 1000,
  'profile-top': 15,
});
const N = Number(opt.n);
const ASSETS = Number(opt.assets);
const CONCURRENCY = Number(opt.concurrency);
const WINDOW = Number(opt.window);
const PREFETCH = Number(opt.prefetch);
/** SPEC.md §11: PostgreSQL CPU per fill in batches. */
const PG_CPU_TARGET_MS = 0.25;

interface Rate {
  label: string;
  applied: number;
  seconds: number;
  rate: number;
  exact: boolean;
  note?: string;
  /** CPU per applied fill (ms) of the database's backends, when measured. */
  pgCpuMs?: number;
  cpu?: CpuReport;
  load?: string;
}

/** The postmaster of the PostgreSQL server the benchmark databases are on (for its auxiliary processes). */
let postmaster: number | undefined;

/** The groups whose CPU is probed for a run on this database (and these processes). */
async function cpuGroups(
  db: { name: string; pool: pg.Pool } | undefined,
  pids: [string, number | undefined][] = [],
): Promise<CpuGroup[]> {
  if (db && postmaster === undefined)
    postmaster = postmasterOf(
      Number((await db.pool.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid),
    );
  return [
    ...(db
      ? [postgresBackends(db.name, 'postgres backends of the run’s database'), postgresAuxiliary(postmaster)]
      : []),
    ...pids.map(([label, pid]) => processById(label, pid)),
    rabbitmqServer(),
    processById('this process (publisher, sink)', process.pid),
  ];
}

function printCpu(label: string, cpu: CpuReport, items: number, unit = 'fill'): void {
  console.log(`  CPU per ${unit}, ${label}:`);
  for (const line of perItem(cpu, items, unit)) console.log(`    ${line}`);
}

/** Baseline: apply_order_fill per fill from `concurrency` clients, in autocommit. */
async function directPerFill(t: Teardown, stream: FillStream, concurrency: number): Promise<Rate> {
  const db = await benchDatabase(t, 'pm_bench_direct', concurrency);
  const bodies = stream.fills.map((f) => JSON.stringify(f));
  // open the connections before the clock starts
  const clients = await Promise.all(Array.from({ length: concurrency }, () => db.pool.connect()));
  let next = 0;
  const load = loadAverage();
  const probe = new CpuProbe(await cpuGroups(db)).start();
  const started = now();
  await Promise.all(
    clients.map(async (c) => {
      for (let i = next++; i < bodies.length; i = next++)
        await c.query('select apply_order_fill($1::jsonb)', [bodies[i]]);
    }),
  );
  const seconds = (now() - started) / 1000;
  const cpu = probe.stop();
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
    pgCpuMs: cpu.groups[0]!.ms / stream.unique,
    cpu,
    load,
  };
}

interface ProfileRow {
  funcname: string;
  calls: string;
  total_ms: string;
  self_ms: string;
}

/**
 * The consumer's batched path without the broker: batches of `batch` deliveries, each split into
 * the consumer's lanes (by asset) applied at once, each lane in lock order on a connection of a
 * pool made as the service makes its own; the next batch when every lane has committed.
 * With `profile`, every connection sets track_functions = 'all' (superuser) first and the
 * per-function statistics are read afterwards.
 */
async function directBatched(
  t: Teardown,
  stream: FillStream,
  batch: number,
  profile: boolean,
): Promise<Rate & { profile?: ProfileRow[] }> {
  const db = await benchDatabase(t, profile ? 'pm_bench_prof' : 'pm_bench_batch', 2);
  const deliveries = asDeliveries(stream.fills, FILLS_QUEUE);
  const pool = createPool(db.url, 4, 'bench-ingest-batched');
  // open the connections before the clock starts
  const warm = await Promise.all(Array.from({ length: 4 }, () => pool.connect()));
  for (const c of warm) {
    if (profile) await c.query("set track_functions = 'all'");
    c.release();
  }
  const load = loadAverage();
  const probe = new CpuProbe(await cpuGroups(db)).start();
  const started = now();
  let lanesUsed = 0;
  for (let i = 0; i < deliveries.length; i += batch) {
    const parts = lanes(deliveries.slice(i, i + batch));
    lanesUsed = Math.max(lanesUsed, parts.length);
    await Promise.all(parts.map((lane) => ingestMessages(pool, 'fill', lockOrder(lane))));
  }
  const seconds = (now() - started) / 1000;
  const cpu = probe.stop();
  // the backends flush their function statistics when they exit
  await pool.end();
  const bad = await checkSizes(db.pool, stream.expected);
  let rows: ProfileRow[] | undefined;
  if (profile) {
    await sleep(1000);
    rows = (
      await db.pool.query<ProfileRow>(
        `select funcname, calls::text, round(total_time::numeric, 1)::text as total_ms,
                round(self_time::numeric, 1)::text as self_ms
           from pg_stat_user_functions order by self_time desc`,
      )
    ).rows;
  }
  return {
    label: `direct SQL ingest_messages, batches of ${batch} in ${lanesUsed} lanes${profile ? ", track_functions = 'all'" : ''}`,
    applied: stream.unique,
    seconds,
    rate: stream.unique / seconds,
    exact: bad.length === 0,
    pgCpuMs: cpu.groups[0]!.ms / stream.unique,
    cpu,
    load,
    ...(rows ? { profile: rows } : {}),
  };
}

/** The per-function profile: top `top` by self time, per fill in µs, and the share of the wall time. */
function printProfile(rows: ProfileRow[], fills: number, seconds: number, top: number): void {
  const perFill = (msText: string) => ((Number(msText) * 1000) / fills).toFixed(1);
  const selfSum = rows.reduce((a, r) => a + Number(r.self_ms), 0);
  console.log(
    `  per-function profile of ingest_messages over ${int(fills)} applied fills (pg_stat_user_functions, by self time; ` +
      `top ${top} of ${rows.length}; all functions' self time, summed over the lanes, ${((selfSum * 1000) / fills).toFixed(0)} µs ` +
      `per fill in ${((seconds * 1e6) / fills).toFixed(0)} µs of wall time per fill):`,
  );
  table([
    ['function', 'calls', 'total ms', 'self ms', 'self µs/fill', 'total µs/fill'],
    ...rows
      .slice(0, top)
      .map((r) => [r.funcname, int(Number(r.calls)), r.total_ms, r.self_ms, perFill(r.self_ms), perFill(r.total_ms)]),
  ]);
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
  queue: string,
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
      queue,
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
  /** fills published per second, as achieved */
  achieved: number;
  fills: number;
  received: number;
  complete: boolean;
  latency: ReturnType<typeof summary>;
  cpu: CpuReport;
  load: string;
}

interface EventSink {
  events: Set<string>;
  firstSeen: Map<string, number>;
  duplicatesReceived: number;
  waitFor(count: number, timeoutMs: number): Promise<boolean>;
  lastAt: number;
}

/**
 * Consumes a queue; `key` names a distinct message (a position_updated event's event_id; for the
 * echo, every delivery). firstSeen: when the first message carrying each trace_id arrived.
 */
async function sink(
  conn: amqp.ChannelModel,
  queue: string,
  key: (m: amqp.ConsumeMessage, body: { event_id?: string }) => string,
): Promise<EventSink> {
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
    queue,
    (m) => {
      if (!m) return;
      const at = now();
      ch.ack(m);
      const body = JSON.parse(m.content.toString('utf8')) as { event_id?: string; trace_id?: string };
      const k = key(m, body);
      if (sink.events.has(k)) sink.duplicatesReceived++;
      else {
        sink.events.add(k);
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

/** Publish → first receipt, per trace_id published. */
function latencies(published: Map<string, number>, received: Map<string, number>): number[] {
  const out: number[] = [];
  for (const [trace, p] of published) {
    const at = received.get(trace);
    if (at !== undefined) out.push(at - p);
  }
  return out;
}

interface Echo {
  messages: number;
  received: number;
  seconds: number;
  rate: number;
  latency: ReturnType<typeof summary>;
  cpu: CpuReport;
  load: string;
}

/** The bare AMQP echo (bench/echo.ts, own process, own vhost): every fill body in, echoed, received. */
async function bareEcho(t: Teardown, fills: Fill[]): Promise<Echo> {
  const broker = await freshBroker(t);
  const setup = await broker.connection.createChannel();
  await setup.assertQueue(ECHO_IN, { durable: true });
  await setup.assertQueue(ECHO_OUT, { durable: true });
  await setup.close();
  const { child, exited } = benchChild(t, 'echo.ts', [broker.url, ECHO_IN, ECHO_OUT, String(PREFETCH)]);
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
      if (out.includes('ready\n')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`bench/echo.ts exited with ${code} before it was ready`)));
  });
  let deliveries = 0;
  const echoes = await sink(broker.connection, ECHO_OUT, () => String(++deliveries));
  const ch = broker.channel as amqp.ConfirmChannel;
  const published = new Map<string, number>();
  const load = loadAverage();
  const probe = new CpuProbe(await cpuGroups(undefined, [['echo process', child.pid]])).start();
  const started = now();
  await publishAll(ch, ECHO_IN, fills, WINDOW, published);
  const complete = await echoes.waitFor(fills.length, Number(opt.timeout) * 1000);
  const seconds = ((complete ? echoes.lastAt : now()) - started) / 1000;
  const cpu = probe.stop();
  child.kill('SIGTERM');
  await exited;
  return {
    messages: fills.length,
    received: echoes.events.size,
    seconds,
    rate: echoes.events.size / seconds,
    latency: summary(latencies(published, echoes.firstSeen)),
    cpu,
    load,
  };
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
    env: {
      POSITION_MANAGER_ROLES: 'consumer,relay',
      POSITION_MANAGER_LOG_LEVEL: 'info',
      POSITION_MANAGER_CONSUMER_PREFETCH: String(PREFETCH),
    },
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
  const events = await sink(broker.connection, EVENTS_QUEUE, (_m, body) => String(body.event_id));
  const ch = broker.channel as amqp.ConfirmChannel;
  const published = new Map<string, number>();
  const groups = await cpuGroups(db, [['service (consumer, relay)', svc.child.pid]]);

  const load = loadAverage();
  const probe = new CpuProbe(groups).start();
  const started = now();
  await publishAll(ch, FILLS_QUEUE, stream.fills, WINDOW, published);
  const publishSeconds = (now() - started) / 1000;
  const complete = await events.waitFor(stream.unique, Number(opt.timeout) * 1000);
  const seconds = ((complete ? events.lastAt : now()) - started) / 1000;
  const cpu = probe.stop();
  await sleep(1000); // anything extra (there should be nothing) arrives now
  const bad = await checkSizes(db.pool, stream.expected);
  if (bad.length) console.log(`  end to end: ${bad.length} size mismatches, first: ${bad.slice(0, 3).join('; ')}`);
  const fillsRows = Number(
    (await db.pool.query<{ n: string }>("select count(*) as n from position_fills where kind = 'fill'")).rows[0]!.n,
  );
  const e2e: E2E = {
    label: 'end to end (AMQP in → commit → AMQP out)',
    applied: events.events.size,
    seconds,
    rate: events.events.size / seconds,
    exact: bad.length === 0 && fillsRows === stream.unique && events.events.size === stream.unique,
    publishSeconds,
    latency: summary(latencies(published, events.firstSeen)),
    received: events.events.size,
    extraEvents: events.duplicatesReceived,
    missing: stream.unique - events.events.size,
    note: `ledger rows ${fillsRows}`,
    pgCpuMs: cpu.groups[0]!.ms / Math.max(1, events.events.size),
    cpu,
    load,
  };

  // Every later phase adds to the same positions: keep the expected sizes cumulative.
  const combined = new Map(stream.expected);
  const addExpected = (m: Map<string, Decimal>) => {
    for (const [a, v] of m) combined.set(a, (combined.get(a) ?? new Decimal(0)).plus(v));
  };

  let paced: Paced | undefined;
  const pacedSeconds = Number(opt['paced-seconds']);
  if (pacedSeconds > 0 && complete) {
    // Latency at a steady rate: --paced-rate (SPEC.md §11: 1,000 fills/s), or half the measured rate.
    const rate = Math.max(10, Math.floor(Number(opt['paced-rate']) || e2e.rate / 2));
    const pStream = fillStream(
      rate * pacedSeconds,
      ASSETS,
      Number(opt.seed) + 1,
      `paced-${Date.now().toString(36)}`,
      0,
    );
    const pPublished = new Map<string, number>();
    const before = events.events.size;
    const pLoad = loadAverage();
    const pProbe = new CpuProbe(groups).start();
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
      await sleep(2);
    }
    const achieved = pStream.fills.length / ((now() - t0) / 1000);
    await ch.waitForConfirms();
    const ok = await events.waitFor(before + pStream.unique, 120_000);
    const pCpu = pProbe.stop();
    addExpected(pStream.expected);
    paced = {
      rate,
      achieved,
      fills: pStream.fills.length,
      received: events.events.size - before,
      complete: ok,
      latency: summary(latencies(pPublished, events.firstSeen)),
      cpu: pCpu,
      load: pLoad,
    };
  }

  let tc031: { seconds: number; received: number; exact: boolean } | undefined;
  if (opt['skip-tc031'] !== 'true') {
    // TC-031: 100 events published concurrently, all processed within 5 s, none lost.
    const tcStream = fillStream(100, 10, 7, `tc031-${Date.now().toString(36)}`, 0);
    const before = events.events.size;
    const t0 = now();
    await Promise.all(tcStream.fills.map((f) => broker.publish(FILLS_QUEUE, f)));
    const ok = await events.waitFor(before + tcStream.unique, 30_000);
    const secs = ((ok ? events.lastAt : now()) - t0) / 1000;
    addExpected(tcStream.expected);
    const tcBad = await checkSizes(db.pool, combined);
    tc031 = { seconds: secs, received: events.events.size - before, exact: ok && tcBad.length === 0 };
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

const met = (ok: boolean) => (ok ? 'met' : 'MISSED');

runBench(async (t) => {
  const prefix = `bench-${Date.now().toString(36)}`;
  const stream = fillStream(N, ASSETS, Number(opt.seed), prefix);
  console.log(
    `# ingest: ${int(N)} fills over ${ASSETS} assets (${int(stream.unique)} unique, ${stream.duplicates} duplicates), prefetch ${PREFETCH}`,
  );
  console.log(
    `  mix: ${Object.entries(stream.mix)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
  );
  // the first n fills of the same stream (the generator is sequential)
  const first = (n: number) =>
    Math.min(N, n) === N ? stream : fillStream(Math.min(N, n), ASSETS, Number(opt.seed), prefix);

  const rows: Rate[] = [];
  let batched: Rate | undefined;
  let profiled: (Rate & { profile?: ProfileRow[] }) | undefined;
  if (opt['skip-direct'] !== 'true') {
    const batchBase = first(Number(opt['batch-n']));
    const base = first(Number(opt['direct-n']));
    console.log(
      `  SQL baselines without the broker: batched over the first ${int(batchBase.fills.length)} fills, ` +
        `profile and per-fill over the first ${int(base.fills.length)}`,
    );
    batched = await directBatched(t, batchBase, PREFETCH, false);
    rows.push(batched);
    console.log(`  ${batched.label}: ${int(batched.rate)} fills/s (load ${batched.load})`);
    printCpu('batched SQL path', batched.cpu!, batched.applied);
    profiled = await directBatched(t, base, PREFETCH, true);
    rows.push(profiled);
    console.log(`  ${profiled.label}: ${int(profiled.rate)} fills/s (load ${profiled.load})`);
    printProfile(profiled.profile ?? [], profiled.applied, profiled.seconds, Number(opt['profile-top']));
    const direct = await directPerFill(t, base, CONCURRENCY);
    rows.push(direct);
    console.log(`  ${direct.label}: ${int(direct.rate)} fills/s (load ${direct.load})`);
    if (opt.single === 'true') {
      const one = await directPerFill(t, base, 1);
      rows.push(one);
      console.log(`  ${one.label}: ${int(one.rate)} fills/s`);
    }
    await t.run(); // drop the baseline databases before the broker runs
  }

  let echo: Echo | undefined;
  if (opt['skip-echo'] !== 'true') {
    echo = await bareEcho(t, stream.fills);
    console.log(
      `  bare AMQP echo (own process, prefetch ${PREFETCH}, republish persistent + confirm, then ack; no database): ` +
        `${int(echo.received)} of ${int(echo.messages)} in ${echo.seconds.toFixed(2)} s = ${int(echo.rate)} msg/s ` +
        `(load ${echo.load}); latency p50 ${ms(echo.latency.p50)} ms, p99 ${ms(echo.latency.p99)} ms (saturated)`,
    );
    printCpu('bare echo', echo.cpu, echo.messages, 'message');
    await t.run(); // its vhost goes before the end-to-end run
  }

  const { e2e, paced, tc031, peakRssMb, logs, stderr } = await endToEnd(t, stream);
  rows.unshift(e2e);
  console.log();
  table([
    ['path', 'applied', 'seconds', 'events/s', 'PG CPU ms/fill', 'exact', 'load average at start'],
    ...rows.map((r) => [
      r.label,
      int(r.applied),
      r.seconds.toFixed(2),
      int(r.rate),
      r.pgCpuMs === undefined ? '' : r.pgCpuMs.toFixed(3),
      r.exact ? 'yes' : 'no',
      r.load ?? '',
    ]),
    ...(echo
      ? [
          [
            'bare AMQP echo (no database; messages)',
            int(echo.received),
            echo.seconds.toFixed(2),
            int(echo.rate),
            '',
            echo.received === echo.messages ? 'all' : 'MISSING',
            echo.load,
          ],
        ]
      : []),
  ]);
  console.log();
  printCpu('end to end', e2e.cpu!, e2e.applied);
  console.log(
    `end to end: publishing took ${e2e.publishSeconds.toFixed(2)} s (${int(N / e2e.publishSeconds)} msg/s confirmed); ` +
      `${int(e2e.received)} of ${int(stream.unique)} events received, ${e2e.missing} missing, ${e2e.extraEvents} redelivered`,
  );
  console.log(
    `end to end latency publish → position_updated received (saturated, queue backlog included): ` +
      `p50 ${ms(e2e.latency.p50)} ms, p99 ${ms(e2e.latency.p99)} ms, max ${ms(e2e.latency.max)} ms`,
  );
  if (echo)
    console.log(
      `ratio end to end / bare echo: ${ratio(e2e.rate / echo.rate)} (${int(e2e.rate)} events/s / ${int(echo.rate)} msg/s; ` +
        `target ≥ 0.8: ${met(e2e.rate >= 0.8 * echo.rate)})`,
    );
  if (batched)
    console.log(
      `ratio end to end / batched SQL path without the broker: ${ratio(e2e.rate / batched.rate)}` +
        ` (${int(e2e.rate)} / ${int(batched.rate)})`,
    );
  console.log(
    `PostgreSQL CPU per fill (backends of the run's database; target ≤ ${PG_CPU_TARGET_MS} ms in batches): ` +
      [
        ...(batched
          ? [`batched SQL path ${batched.pgCpuMs!.toFixed(3)} ms (${met(batched.pgCpuMs! <= PG_CPU_TARGET_MS)})`]
          : []),
        `end to end ${e2e.pgCpuMs!.toFixed(3)} ms (${met(e2e.pgCpuMs! <= PG_CPU_TARGET_MS)})`,
      ].join('; '),
  );
  console.log(`exact: ${e2e.exact ? 'yes' : 'no'}`);
  console.log(
    `service peak RSS through the run: ${peakRssMb ?? '?'} MB (target < 256 MB: ${peakRssMb === undefined ? 'unknown' : peakRssMb < 256 ? 'met' : 'missed'})`,
  );
  if (paced) {
    const saturated =
      paced.rate > e2e.rate ? ` (above the measured end-to-end rate of ${int(e2e.rate)}/s: a backlog builds)` : '';
    console.log(
      `end to end latency at a steady ${int(paced.rate)} fills/s (achieved ${int(paced.achieved)}/s) for ${opt['paced-seconds']} s, ` +
        `load ${paced.load}${saturated}: p50 ${ms(paced.latency.p50)} ms, p99 ${ms(paced.latency.p99)} ms, max ${ms(paced.latency.max)} ms ` +
        `over ${int(paced.latency.n)} fills; ${int(paced.received)} of ${int(paced.fills)} events${paced.complete ? '' : ' (INCOMPLETE)'}` +
        (paced.rate === 1000 ? `; target p99 ≤ 20 ms: ${met(paced.latency.p99 <= 20)}` : ''),
    );
    printCpu(`steady ${int(paced.rate)} fills/s`, paced.cpu, Math.max(1, paced.received));
  }
  if (tc031)
    console.log(
      `TC-031: 100 concurrent fills processed in ${tc031.seconds.toFixed(2)} s, ${tc031.received} events, exact ${tc031.exact ? 'yes' : 'no'} → ${tc031.seconds < 5 && tc031.exact ? 'pass' : 'FAIL'}`,
    );
  const problems = reportLogs(logs, stderr);
  console.log(`service warnings/errors: ${problems.length ? '\n  ' + problems.join('\n  ') : 'none'}`);
  console.log(
    'RESULT ' +
      JSON.stringify({
        bench: 'ingest',
        n: N,
        unique: stream.unique,
        prefetch: PREFETCH,
        rows,
        e2e,
        echo,
        paced,
        tc031,
        peakRssMb,
        problems,
      }),
  );
});
