// Shared pieces of the benchmarks (bench/*.ts): argument parsing, teardown, scratch databases
// copied from the migrated test template, statistics, an HTTP load loop on keep-alive
// connections and a generator of realistic fill streams.
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import http from 'node:http';
import { loadavg } from 'node:os';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Decimal } from 'decimal.js';
import type pg from 'pg';
import { messageMeta, type MessageMeta } from '../src/db/ingest.js';
import { checkBody } from '../src/messaging/schemas.js';
import { admin, freshDatabase } from '../test/helpers/db.js';
import { rng } from '../test/helpers/random.js';

export { admin, rng };

// ---------------------------------------------------------------------------------------------
// arguments: --name value | --name=value | --flag

export function args(defaults: Record<string, string | number | boolean>): Record<string, string> {
  const out: Record<string, string> = Object.fromEntries(Object.entries(defaults).map(([k, v]) => [k, String(v)]));
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) continue;
    const eq = a.indexOf('=');
    if (eq > 0) out[a.slice(2, eq)] = a.slice(eq + 1);
    else if (i + 1 < argv.length && !argv[i + 1]!.startsWith('--')) out[a.slice(2)] = argv[++i]!;
    else out[a.slice(2)] = 'true';
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// teardown: the test helpers take a tap-like { teardown(fn) }; run the functions in reverse.

export class Teardown {
  private fns: (() => unknown)[] = [];
  teardown(fn: () => unknown): void {
    this.fns.push(fn);
  }
  async run(): Promise<void> {
    while (this.fns.length) {
      const fn = this.fns.pop()!;
      try {
        await fn();
      } catch (err) {
        console.error('teardown failed:', (err as Error).message);
      }
    }
  }
}

/** The 1, 5 and 15-minute load averages, "0.52 0.61 0.40". */
export const loadAverage = () =>
  loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');

/** Runs main with a Teardown that always runs (also on SIGINT/SIGTERM); exits non-zero on error. */
export function runBench(main: (t: Teardown) => Promise<void>): void {
  const t = new Teardown();
  let done = false;
  const finish = async (code: number) => {
    if (done) return;
    done = true;
    await t.run();
    process.exit(code);
  };
  process.once('SIGINT', () => void finish(130));
  process.once('SIGTERM', () => void finish(143));
  const load = loadAverage;
  console.log(`(load average before: ${load()})`);
  main(t).then(
    () => {
      console.log(`(load average after: ${load()})`);
      return finish(0);
    },
    (err) => {
      console.error(err);
      return finish(1);
    },
  );
}

/**
 * Runs a script of bench/ (with this process's Node options, so a .ts file loads as this one did)
 * as a child process, its stdout piped; at teardown it gets SIGTERM and is waited for.
 */
export function benchChild(
  t: Teardown,
  file: string,
  argv: string[],
): { child: ChildProcessByStdio<null, Readable, null>; exited: Promise<unknown> } {
  const script = fileURLToPath(new URL(`./${file}`, import.meta.url));
  const child = spawn(process.execPath, [...process.execArgv, script, ...argv], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((r) => child.once('exit', r));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await exited;
    }
  });
  return { child, exited };
}

// ---------------------------------------------------------------------------------------------
// databases

export interface BenchDb {
  name: string;
  url: string;
  pool: pg.Pool;
}

let autovacuumChecked = false;

/** A migrated database copied from the test template; dropped (with force) at teardown. */
export async function benchDatabase(t: Teardown, prefix: string, poolSize = 20): Promise<BenchDb> {
  const db = await freshDatabase(t, { prefix, poolSize });
  if (!autovacuumChecked) {
    autovacuumChecked = true;
    const on = (await db.pool.query<{ autovacuum: string }>('show autovacuum')).rows[0]!.autovacuum === 'on';
    // Without autovacuum, statistics of growing tables stay as they were: plans rot (README).
    if (!on) console.log('note: autovacuum is off on this server; the benchmarks ANALYZE after seeding');
  }
  return db;
}

export async function pgVersion(): Promise<string> {
  return admin(async (c) => (await c.query<{ v: string }>('select version() as v')).rows[0]!.v);
}

// ---------------------------------------------------------------------------------------------
// statistics and formatting

/** A service log line as the benchmarks read it. */
export interface LogLine {
  level?: unknown;
  msg?: string;
  err?: unknown;
}

/** The service's warnings and errors, one "WARN msg (err)" line each, then its stderr. */
export function problemLines(logs: LogLine[], stderr: string[]): string[] {
  const lines = logs
    .filter((l): l is LogLine & { level: number } => typeof l.level === 'number' && l.level >= 40)
    .map(
      (l) => `${l.level >= 50 ? 'ERROR' : 'WARN'} ${l.msg}${l.err ? ` (${JSON.stringify(l.err).slice(0, 160)})` : ''}`,
    );
  const err = stderr.join('').trim();
  if (err) lines.push(`stderr: ${err.slice(0, 500)}`);
  return lines;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
export const now = () => performance.now();

export function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

export function summary(values: number[]): { n: number; mean: number; p50: number; p99: number; max: number } {
  const s = Float64Array.from(values).sort() as unknown as number[];
  const sum = values.reduce((a, b) => a + b, 0);
  return {
    n: values.length,
    mean: values.length ? sum / values.length : NaN,
    p50: percentile(s, 50),
    p99: percentile(s, 99),
    max: s.length ? s[s.length - 1]! : NaN,
  };
}

export function median(values: number[]): number {
  return percentile(
    [...values].sort((a, b) => a - b),
    50,
  );
}

export const ms = (x: number) =>
  Number.isFinite(x) ? (x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : x.toFixed(0)) : 'n/a';
export const int = (x: number) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : 'n/a');
export const ratio = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : 'n/a');

/** Prints an aligned table (first row = header). */
export function table(rows: (string | number)[][]): void {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => String(r[i] ?? '').length)));
  rows.forEach((r, k) => {
    console.log('| ' + r.map((c, i) => String(c).padEnd(widths[i]!)).join(' | ') + ' |');
    if (k === 0) console.log('|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|');
  });
}

// ---------------------------------------------------------------------------------------------
// HTTP load: C workers, each with its own keep-alive socket, for D seconds.

export interface LoadResult {
  label: string;
  requests: number;
  errors: number;
  non2xx: number;
  seconds: number;
  rps: number;
  p50: number;
  p99: number;
  mean: number;
  bytes: number;
}

export async function httpLoad(
  label: string,
  target: { host: string; port: number; paths: string[]; headers?: Record<string, string> },
  connections: number,
  seconds: number,
  warmupSeconds = 1,
): Promise<LoadResult> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections, maxFreeSockets: connections });
  const once = (path: string) =>
    new Promise<{ status: number; bytes: number }>((resolve, reject) => {
      const req = http.request(
        { host: target.host, port: target.port, path, method: 'GET', agent, headers: target.headers },
        (res) => {
          let bytes = 0;
          res.on('data', (c: Buffer) => (bytes += c.length));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes }));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end();
    });
  const run = async (durationMs: number, record: boolean) => {
    const latencies: number[] = [];
    let requests = 0;
    let errors = 0;
    let non2xx = 0;
    let bytes = 0;
    const started = now();
    const end = started + durationMs;
    await Promise.all(
      Array.from({ length: connections }, async (_, w) => {
        let k = w;
        while (now() < end) {
          const path = target.paths[k++ % target.paths.length]!;
          const t0 = now();
          try {
            const r = await once(path);
            if (r.status < 200 || r.status >= 300) non2xx++;
            bytes += r.bytes;
          } catch {
            errors++;
          }
          if (record) latencies.push(now() - t0);
          requests++;
        }
      }),
    );
    return { latencies, requests, errors, non2xx, bytes, elapsed: (now() - started) / 1000 };
  };
  if (warmupSeconds > 0) await run(warmupSeconds * 1000, false);
  const r = await run(seconds * 1000, true);
  agent.destroy();
  const s = summary(r.latencies);
  return {
    label,
    requests: r.requests,
    errors: r.errors,
    non2xx: r.non2xx,
    seconds: r.elapsed,
    rps: r.requests / r.elapsed,
    p50: s.p50,
    p99: s.p99,
    mean: s.mean,
    bytes: r.requests ? r.bytes / r.requests : 0,
  };
}

// ---------------------------------------------------------------------------------------------
// fills: a deterministic pseudo-random stream over many assets with opens, adds, reduces,
// closes, flips and re-sent duplicates; the expected net size of every asset is kept exactly.

export interface Fill {
  execution_id: string;
  asset: string;
  side: 'Buy' | 'Sell';
  execution_quantity: string;
  execution_price: string;
  execution_fees: string;
  trace_id: string;
}

export interface FillStream {
  /** In publication order, duplicates included (a duplicate is the identical body again). */
  fills: Fill[];
  duplicates: number;
  unique: number;
  /** Expected net size per asset (sum of signed quantities of the unique fills). */
  expected: Map<string, Decimal>;
  mix: Record<string, number>;
}

export function assetName(i: number): string {
  return `BA${i}USDT`;
}

export function fillStream(n: number, assets: number, seed: number, prefix: string, duplicateRate = 0.01): FillStream {
  const rand = rng(seed);
  const size = new Map<string, Decimal>();
  const basePrice = Array.from({ length: assets }, (_, i) => 1 + ((i * 7919) % 50_000) / 10);
  const fills: Fill[] = [];
  const mix: Record<string, number> = { open: 0, add: 0, reduce: 0, close: 0, flip: 0, duplicate: 0 };
  let duplicates = 0;
  let seq = 0;
  const qty = (max: number) => new Decimal(Math.floor(1 + rand() * max * 1000)).div(1000); // 0.001 .. max, 3 places
  while (fills.length < n) {
    if (fills.length > 0 && rand() < duplicateRate) {
      // the broker redelivers / the producer re-sends an earlier fill: identical body
      fills.push(fills[Math.floor(rand() * fills.length)]!);
      duplicates++;
      mix.duplicate!++;
      continue;
    }
    const ai = Math.floor(rand() * assets);
    const asset = assetName(ai);
    const cur = size.get(asset) ?? new Decimal(0);
    let signed: Decimal;
    if (cur.isZero()) {
      signed = qty(10).times(rand() < 0.5 ? 1 : -1);
      mix.open!++;
    } else {
      const dir = cur.isPositive() ? 1 : -1;
      const u = rand();
      if (u < 0.35) {
        signed = qty(5).times(dir);
        mix.add!++;
      } else if (u < 0.75) {
        const q = Decimal.min(qty(5), cur.abs());
        signed = q.times(-dir);
        if (q.eq(cur.abs())) mix.close!++;
        else mix.reduce!++;
      } else if (u < 0.85) {
        signed = cur.neg();
        mix.close!++;
      } else {
        signed = cur.abs().plus(qty(5)).times(-dir);
        mix.flip!++;
      }
    }
    size.set(asset, cur.plus(signed));
    const price = new Decimal(basePrice[ai]! * (0.95 + rand() * 0.1)).toDecimalPlaces(4);
    const fee = signed.abs().times(price).times('0.00055').toDecimalPlaces(8);
    const id = `${prefix}-${++seq}`;
    fills.push({
      execution_id: id,
      asset,
      side: signed.isPositive() ? 'Buy' : 'Sell',
      execution_quantity: signed.abs().toFixed(),
      execution_price: price.toFixed(),
      execution_fees: fee.toFixed(),
      trace_id: id,
    });
  }
  return { fills, duplicates, unique: n - duplicates, expected: size, mix };
}

/** Compares positions.size with the expected net sizes exactly; returns the mismatches. */
export async function checkSizes(pool: pg.Pool, expected: Map<string, Decimal>): Promise<string[]> {
  const rows = (
    await pool.query<{ asset: string; size: string }>(
      "select asset, size::text as size from positions where mode = 'one-way'",
    )
  ).rows;
  const actual = new Map(rows.map((r) => [r.asset, new Decimal(r.size)]));
  const bad: string[] = [];
  for (const [asset, want] of expected) {
    const got = actual.get(asset);
    if (!got || !got.eq(want)) bad.push(`${asset}: expected ${want.toFixed()}, got ${got?.toFixed() ?? 'no row'}`);
  }
  for (const asset of actual.keys()) if (!expected.has(asset)) bad.push(`${asset}: unexpected row`);
  return bad;
}

export interface Delivery {
  meta: MessageMeta;
  body: string;
  asset?: string;
  lockKey?: string;
}

/** The deliveries the consumer of `source` would build from these fills (src/messaging/consumer.ts receive()). */
export function asDeliveries(fills: Fill[], source: string): Delivery[] {
  return fills.map((f) => {
    const raw = Buffer.from(JSON.stringify(f));
    const checked = checkBody('fill', raw);
    if (!checked.ok) throw new Error(`the consumer would reject a generated fill: ${checked.reason}`);
    return {
      body: raw.toString('utf8'),
      meta: messageMeta({ source, bodyKey: checked.bodyKey, traceId: checked.traceId }),
      ...(checked.asset ? { asset: checked.asset } : {}),
      ...(checked.lockKey ? { lockKey: checked.lockKey } : {}),
    };
  });
}
