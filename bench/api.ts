// Read API throughput and latency (SPEC.md §11 "Portfolio read latency", seed TC-032).
//
//   node --import=./node_modules/@tapjs/typescript/dist/esm/import.mjs bench/api.ts
//        [--positions 1000] [--connections 10] [--duration 10] [--rounds 5] [--sequential 1000]
//
// 1,000 open positions are seeded through apply_order_fill (one set-based statement). The built
// service runs with role api, NODE_ENV=production (the test helper's NODE_ENV=test would
// validate every response against openapi.yaml) and log level info, three times side by side:
// portfolio cache on (TTL 10 s), cache off (TTL 0), and cache on with
// POSITION_MANAGER_RATE_LIMIT_ENABLED=false (what the per-key limiter costs). GET
// /api/v1/portfolio, also with `Accept-Encoding: gzip` (what compression costs; the load client
// counts the compressed bytes and does not inflate them), and GET /api/v1/positions/{asset}
// (rotating over all assets) are driven by C concurrent keep-alive connections for D seconds
// (after 1 s of warm-up). Baseline, same machine, same connections and duration: a bare Express
// app (bench/bare-express.mjs, own process) returning the same bytes, gzip-compressed once when
// the client asks. Every case runs in R rounds of D/R seconds taking the cases in turn, so a
// neighbour's burst on this shared machine falls on all cases alike, not on one (req/s over all
// rounds; p50 and p99 are the median round's). TC-032: 1,000 sequential GET /api/v1/portfolio by
// fetch (which asks for gzip and inflates), mean latency and the cache hit ratio from
// position_manager_metrics_cache_requests_total on GET /metrics.
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writePositionsDirectly } from '../test/helpers/db.js';
import { freePort, startService, type RunningService } from '../test/helpers/service.js';
import { waitFor } from '../test/helpers/wait.js';
import {
  args,
  assetName,
  benchChild,
  benchDatabase,
  httpLoad,
  int,
  median,
  ms,
  now,
  ratio,
  runBench,
  summary,
  table,
  type LoadResult,
  type Teardown,
  type LogLine,
  problemLines,
} from './lib.js';

const opt = args({ positions: 1000, connections: 10, duration: 10, rounds: 5, sequential: 1000 });
const POSITIONS = Number(opt.positions);
const C = Number(opt.connections);
const D = Number(opt.duration);
const SEQ = Number(opt.sequential);
const ROUNDS = Math.max(1, Number(opt.rounds));

/** Seeds n open positions, then ANALYZE: with autovacuum off the planner would not see them. */
async function seed(pool: import('pg').Pool, n: number): Promise<void> {
  // one open position per asset, half long, half short, marked at a price away from entry
  await pool.query(
    `select apply_order_fill(jsonb_build_object(
        'execution_id', 'seed-' || i, 'asset', 'BA' || i || 'USDT',
        'side', case when i % 2 = 0 then 'Buy' else 'Sell' end,
        'execution_quantity', ((1 + i % 97) * 0.125)::text,
        'execution_price', round(10 + (i * 7919) % 50000 / 10.0, 1)::text,
        'execution_fees', '0.01'))
       from generate_series(0, $1::int - 1) i`,
    [n],
  );
  // direct writes: only inside the window of R-32, else the guard trigger ignores them
  await writePositionsDirectly(
    pool,
    'update positions set current_price = current_price * 1.01, current_price_at = now()',
  );
  await writePositionsDirectly(
    pool,
    `update positions set unrealized_pnl = (current_price - average_entry_price) * size`,
  );
  await pool.query('analyze');
}

async function cacheCounts(svc: RunningService): Promise<{ hit: number; miss: number }> {
  const res = await fetch(`${svc.url}/metrics`);
  const text = await res.text();
  const get = (r: string) => {
    const m = new RegExp(
      `^position_manager_metrics_cache_requests_total\\{result="${r}"[^}]*\\} (\\d+(?:\\.\\d+)?)`,
      'm',
    ).exec(text);
    return m ? Number(m[1]) : 0;
  };
  return { hit: get('hit'), miss: get('miss') };
}

async function tc032(
  svc: RunningService,
): Promise<{ mean: number; p50: number; p99: number; hitRatio: number; non200: number }> {
  const before = await cacheCounts(svc);
  const lat: number[] = [];
  let non200 = 0;
  for (let i = 0; i < SEQ; i++) {
    const t0 = now();
    const res = await fetch(`${svc.url}/api/v1/portfolio`, { headers: { 'x-api-key': svc.apiKey } });
    await res.arrayBuffer();
    lat.push(now() - t0);
    if (res.status !== 200) non200++;
  }
  const after = await cacheCounts(svc);
  const hits = after.hit - before.hit;
  const total = hits + after.miss - before.miss;
  const s = summary(lat);
  return { mean: s.mean, p50: s.p50, p99: s.p99, hitRatio: total ? hits / total : NaN, non200 };
}

async function startBare(t: Teardown, portfolioBody: string, positionBody: string): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'pm-bench-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'portfolio.json'), portfolioBody);
  writeFileSync(join(dir, 'position.json'), positionBody);
  const port = await freePort();
  benchChild(t, 'bare-express.mjs', [String(port), join(dir, 'portfolio.json'), join(dir, 'position.json')]);
  await waitFor(async () => (await fetch(`http://127.0.0.1:${port}/health`).catch(() => undefined))?.status === 200, {
    timeoutMs: 10_000,
    what: 'bare express',
  });
  return port;
}

type Baseline = 'portfolio' | 'portfolio gzip' | 'position';
const GZIP = { 'accept-encoding': 'gzip' };

/** Content-Encoding and size of one response: a gzip case that is not gzip measures nothing. */
function encodingOf(
  port: number,
  path: string,
  headers: Record<string, string>,
): Promise<{ encoding: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, headers }, (res) => {
        let bytes = 0;
        res.on('data', (c: Buffer) => (bytes += c.length));
        res.on('end', () => resolve({ encoding: String(res.headers['content-encoding'] ?? 'identity'), bytes }));
      })
      .on('error', reject);
  });
}

function problems(svc: RunningService): string[] {
  return problemLines(svc.logs as LogLine[], svc.stderr);
}

runBench(async (t) => {
  const db = await benchDatabase(t, 'pm_bench_api', 4);
  await seed(db.pool, POSITIONS);
  const open = (await db.pool.query<{ n: string }>('select count(*) as n from positions where gross_size > 0')).rows[0]!
    .n;
  console.log(`# api: ${open} open positions, ${C} connections, ${D} s per case (+1 s warm-up) in ${ROUNDS} round(s)`);

  const assets = Array.from({ length: POSITIONS }, (_, i) => assetName(i));
  const results: { label: string; r: LoadResult; baseline: Baseline }[] = [];
  const seq: Record<string, Awaited<ReturnType<typeof tc032>>> = {};
  const logProblems: string[] = [];
  let portfolioBody = '';
  let positionBody = '';
  let gzipBytes = 0;
  // The limiter, when on, counts every request under a limit this load never reaches: its cost,
  // not 429s (its default of 6,000 a minute per key would reject most of this load).
  const variants: { cache: string; ttl: number; env?: Record<string, string>; cases: Baseline[]; tc032: boolean }[] = [
    { cache: 'cache on (TTL 10 s)', ttl: 10, cases: ['portfolio', 'portfolio gzip', 'position'], tc032: true },
    { cache: 'cache off (TTL 0)', ttl: 0, cases: ['portfolio', 'position'], tc032: true },
    {
      cache: 'cache on, rate limit off',
      ttl: 10,
      env: { POSITION_MANAGER_RATE_LIMIT_ENABLED: 'false' },
      cases: ['portfolio', 'portfolio gzip'],
      tc032: false,
    },
  ];

  // Every service and the bare baseline run side by side, idle but for the case being measured.
  const services: { cache: string; svc: RunningService; tc032: boolean }[] = [];
  const jobs: { label: string; baseline: Baseline | null; target: Parameters<typeof httpLoad>[1] }[] = [];
  for (const { cache, ttl, env, cases, tc032: sequential } of variants) {
    const svc = await startService(t, {
      databaseUrl: db.url,
      env: {
        POSITION_MANAGER_ROLES: 'api',
        POSITION_MANAGER_METRICS_CACHE_TTL: String(ttl),
        POSITION_MANAGER_LOG_LEVEL: 'info',
        NODE_ENV: 'production',
        POSITION_MANAGER_RATE_LIMIT_DEFAULT: '1000000',
        ...env,
      },
    });
    services.push({ cache, svc, tc032: sequential });
    const p = await svc.request('GET', '/api/v1/portfolio');
    const q = await svc.request('GET', `/api/v1/positions/${assets[1]}`);
    if (p.status !== 200 || q.status !== 200) throw new Error(`service answered ${p.status} / ${q.status}`);
    portfolioBody = JSON.stringify(p.body);
    positionBody = JSON.stringify(q.body);
    const key = { 'x-api-key': svc.apiKey };
    const gz = await encodingOf(svc.port, '/api/v1/portfolio', { ...key, ...GZIP });
    if (gz.encoding !== 'gzip') throw new Error(`service answered Accept-Encoding: gzip with ${gz.encoding}`);
    gzipBytes = gz.bytes;
    for (const c of cases) {
      const paths = c === 'position' ? assets.map((a) => `/api/v1/positions/${a}`) : ['/api/v1/portfolio'];
      const label =
        c === 'position'
          ? 'GET /api/v1/positions/{asset}'
          : `GET /api/v1/portfolio${c === 'portfolio gzip' ? ', gzip' : ''}`;
      jobs.push({
        label: `${label}, ${cache}`,
        baseline: c,
        target: {
          host: '127.0.0.1',
          port: svc.port,
          paths,
          headers: c === 'portfolio gzip' ? { ...key, ...GZIP } : key,
        },
      });
    }
  }

  const barePort = await startBare(t, portfolioBody, positionBody);
  const bareGz = await encodingOf(barePort, '/portfolio', GZIP);
  if (bareGz.encoding !== 'gzip')
    throw new Error(`bare Express answered Accept-Encoding: gzip with ${bareGz.encoding}`);
  const bareTarget = (path: string, headers?: Record<string, string>) => ({
    host: '127.0.0.1',
    port: barePort,
    paths: [path],
    headers,
  });
  jobs.push({ label: 'bare portfolio', baseline: null, target: bareTarget('/portfolio') });
  jobs.push({ label: 'bare portfolio gzip', baseline: null, target: bareTarget('/portfolio', GZIP) });
  jobs.push({ label: 'bare position', baseline: null, target: bareTarget('/position') });

  const rounds = new Map<string, LoadResult[]>(jobs.map((j) => [j.label, []]));
  for (let round = 0; round < ROUNDS; round++)
    for (const j of jobs)
      rounds.get(j.label)!.push(await httpLoad(j.label, j.target, C, D / ROUNDS, round === 0 ? 1 : 0.2));
  const merged = (label: string): LoadResult => {
    const rs = rounds.get(label)!;
    const total = (f: (r: LoadResult) => number) => rs.reduce((a, r) => a + f(r), 0);
    const requests = total((r) => r.requests);
    const seconds = total((r) => r.seconds);
    return {
      label,
      requests,
      seconds,
      errors: total((r) => r.errors),
      non2xx: total((r) => r.non2xx),
      rps: requests / seconds,
      p50: median(rs.map((r) => r.p50)),
      p99: median(rs.map((r) => r.p99)),
      mean: total((r) => r.mean * r.requests) / requests,
      bytes: total((r) => r.bytes * r.requests) / requests,
    };
  };
  for (const j of jobs) if (j.baseline) results.push({ label: j.label, r: merged(j.label), baseline: j.baseline });
  const bare: Record<Baseline, LoadResult> = {
    portfolio: merged('bare portfolio'),
    'portfolio gzip': merged('bare portfolio gzip'),
    position: merged('bare position'),
  };
  for (const { cache, svc, tc032: sequential } of services) {
    if (sequential) seq[cache] = await tc032(svc);
    logProblems.push(...problems(svc).map((x) => `[${cache}] ${x}`));
    await svc.stop('SIGTERM');
  }

  console.log();
  console.log(
    `response sizes: portfolio ${int(Buffer.byteLength(portfolioBody))} B (gzip level 1: ${int(gzipBytes)} B, bare Express ${int(bareGz.bytes)} B), position ${int(Buffer.byteLength(positionBody))} B`,
  );
  const row = (label: string, r: LoadResult, rel: string) => [
    label,
    int(r.rps),
    ms(r.p50),
    ms(r.p99),
    int(r.bytes),
    `${r.errors}/${r.non2xx}`,
    rel,
  ];
  table([
    ['case', 'req/s', 'p50 ms', 'p99 ms', 'B/response', 'errors/non-2xx', 'ratio to bare Express'],
    ...results.map(({ label, r, baseline }) => row(label, r, ratio(r.rps / bare[baseline].rps))),
    row(`bare Express, fixed ${int(Buffer.byteLength(portfolioBody))} B body`, bare.portfolio, '1.00'),
    row(`bare Express, same body, gzip (compressed once)`, bare['portfolio gzip'], '1.00'),
    row(`bare Express, fixed ${int(Buffer.byteLength(positionBody))} B body`, bare.position, '1.00'),
  ]);
  const find = (label: string) => results.find((x) => x.label === label)!.r;
  const on = find('GET /api/v1/portfolio, cache on (TTL 10 s)');
  const onGz = find('GET /api/v1/portfolio, gzip, cache on (TTL 10 s)');
  const off = find('GET /api/v1/portfolio, cache on, rate limit off');
  const offGz = find('GET /api/v1/portfolio, gzip, cache on, rate limit off');
  console.log();
  console.log(
    `gzip / identity, req/s: service ${ratio(onGz.rps / on.rps)} (rate limit off: ${ratio(offGz.rps / off.rps)}), ` +
      `bare Express ${ratio(bare['portfolio gzip'].rps / bare.portfolio.rps)}`,
  );
  console.log(
    `rate limit on / off, req/s: identity ${ratio(on.rps / off.rps)}, gzip ${ratio(onGz.rps / offGz.rps)}; ` +
      `p99 ${ms(on.p99)} / ${ms(off.p99)} ms, gzip ${ms(onGz.p99)} / ${ms(offGz.p99)} ms`,
  );
  console.log();
  for (const [cache, s] of Object.entries(seq))
    console.log(
      `TC-032 (${cache}): ${SEQ} sequential GET /api/v1/portfolio: mean ${ms(s.mean)} ms, p50 ${ms(s.p50)} ms, p99 ${ms(s.p99)} ms, ` +
        `cache hit ratio ${Number.isFinite(s.hitRatio) ? (s.hitRatio * 100).toFixed(1) + ' %' : 'n/a'}, non-200 ${s.non200} → ${s.mean < 100 && s.non200 === 0 ? 'pass' : 'FAIL'}`,
    );
  for (const [what, r, b] of [
    ['identity', on, bare.portfolio],
    ['gzip', onGz, bare['portfolio gzip']],
  ] as const)
    console.log(
      `target p99 ≤ 10 ms (portfolio, cache on, ${what}, ${C} connections): ${r.p99 <= 10 ? 'met' : `missed (${ms(r.p99)} ms)`}; ` +
        `≥ 0.5 × bare Express: ${r.rps >= 0.5 * b.rps ? 'met' : `missed (${ratio(r.rps / b.rps)})`}`,
    );
  console.log(
    `service warnings/errors: ${logProblems.length ? '\n  ' + logProblems.slice(0, 20).join('\n  ') : 'none'}`,
  );
  console.log(
    'RESULT ' +
      JSON.stringify({
        bench: 'api',
        positions: POSITIONS,
        connections: C,
        duration: D,
        results,
        bare,
        seq,
        problems: logProblems,
        id: randomBytes(3).toString('hex'),
      }),
  );
});
