// Read API throughput and latency (SPEC.md §11 "Portfolio read latency", seed TC-032).
//
//   node --import=./node_modules/@tapjs/typescript/dist/esm/import.mjs bench/api.ts
//        [--positions 1000] [--connections 10] [--duration 10] [--sequential 1000]
//
// 1,000 open positions are seeded through apply_order_fill (one set-based statement). The built
// service runs with role api, NODE_ENV=production (the test helper's NODE_ENV=test would
// validate every response against openapi.yaml) and log level info, once with the portfolio
// cache on (TTL 10 s) and once off (TTL 0). GET /api/v1/portfolio and GET
// /api/v1/positions/{asset} (rotating over all assets) are driven by C concurrent keep-alive
// connections for D seconds (after 1 s of warm-up). Baseline, same machine, same connections
// and duration: a bare Express app (bench/bare-express.mjs, own process) returning fixed JSON
// bodies of the same sizes. TC-032: 1,000 sequential GET /api/v1/portfolio, mean latency and
// the cache hit ratio from position_manager_metrics_cache_requests_total on GET /metrics.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writePositionsDirectly } from '../test/helpers/db.js';
import { freePort, startService, type RunningService } from '../test/helpers/service.js';
import { waitFor } from '../test/helpers/wait.js';
import {
  args, assetName, benchDatabase, httpLoad, int, ms, now, ratio, runBench, summary, table,
  type LoadResult, type Teardown,
} from './lib.js';

const opt = args({ positions: 1000, connections: 10, duration: 10, sequential: 1000 });
const POSITIONS = Number(opt.positions);
const C = Number(opt.connections);
const D = Number(opt.duration);
const SEQ = Number(opt.sequential);

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
  await writePositionsDirectly(pool, "update positions set current_price = current_price * 1.01, current_price_at = now()");
  await writePositionsDirectly(pool, `update positions set unrealized_pnl = (current_price - average_entry_price) * size`);
}

async function cacheCounts(svc: RunningService): Promise<{ hit: number; miss: number }> {
  const res = await fetch(`${svc.url}/metrics`);
  const text = await res.text();
  const get = (r: string) => {
    const m = new RegExp(`^position_manager_metrics_cache_requests_total\\{result="${r}"[^}]*\\} (\\d+(?:\\.\\d+)?)`, 'm').exec(text);
    return m ? Number(m[1]) : 0;
  };
  return { hit: get('hit'), miss: get('miss') };
}

async function tc032(svc: RunningService): Promise<{ mean: number; p50: number; p99: number; hitRatio: number; non200: number }> {
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
  const script = fileURLToPath(new URL('./bare-express.mjs', import.meta.url));
  const child = spawn(process.execPath, [script, String(port), join(dir, 'portfolio.json'), join(dir, 'position.json')], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((r) => child.once('exit', r));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await exited;
    }
  });
  await waitFor(async () => (await fetch(`http://127.0.0.1:${port}/health`).catch(() => undefined))?.status === 200, {
    timeoutMs: 10_000,
    what: 'bare express',
  });
  return port;
}

function problems(svc: RunningService): string[] {
  const out = svc.logs.filter((l) => typeof l.level === 'number' && l.level >= 40).map((l) => `${l.level >= 50 ? 'ERROR' : 'WARN'} ${l.msg} ${l.err ?? ''}`);
  const err = svc.stderr.join('').trim();
  if (err) out.push(`stderr: ${err.slice(0, 500)}`);
  return out;
}

runBench(async (t) => {
  const db = await benchDatabase(t, 'pm_bench_api', 4);
  await seed(db.pool, POSITIONS);
  const open = (await db.pool.query<{ n: string }>('select count(*) as n from positions where gross_size > 0')).rows[0]!.n;
  console.log(`# api: ${open} open positions, ${C} connections, ${D} s per case (+1 s warm-up)`);

  const assets = Array.from({ length: POSITIONS }, (_, i) => assetName(i));
  const results: { label: string; r: LoadResult; baseline: 'portfolio' | 'position' }[] = [];
  const seq: Record<string, Awaited<ReturnType<typeof tc032>>> = {};
  const logProblems: string[] = [];
  let portfolioBody = '';
  let positionBody = '';

  for (const ttl of [10, 0]) {
    const st = new (class {
      fns: (() => unknown)[] = [];
      teardown(fn: () => unknown) {
        this.fns.push(fn);
      }
    })();
    const svc = await startService(st, {
      databaseUrl: db.url,
      env: {
        POSITION_MANAGER_ROLES: 'api',
        POSITION_MANAGER_METRICS_CACHE_TTL: String(ttl),
        POSITION_MANAGER_LOG_LEVEL: 'info',
        NODE_ENV: 'production',
      },
    });
    try {
      const p = await svc.request('GET', '/api/v1/portfolio');
      const q = await svc.request('GET', `/api/v1/positions/${assets[1]}`);
      if (p.status !== 200 || q.status !== 200) throw new Error(`service answered ${p.status} / ${q.status}`);
      portfolioBody = JSON.stringify(p.body);
      positionBody = JSON.stringify(q.body);
      const target = { host: '127.0.0.1', port: svc.port, headers: { 'x-api-key': svc.apiKey } };
      const cache = ttl > 0 ? `cache on (TTL ${ttl} s)` : 'cache off (TTL 0)';
      results.push({ label: `GET /api/v1/portfolio, ${cache}`, r: await httpLoad('portfolio', { ...target, paths: ['/api/v1/portfolio'] }, C, D), baseline: 'portfolio' });
      results.push({
        label: `GET /api/v1/positions/{asset}, ${cache}`,
        r: await httpLoad('position', { ...target, paths: assets.map((a) => `/api/v1/positions/${a}`) }, C, D),
        baseline: 'position',
      });
      seq[cache] = await tc032(svc);
      logProblems.push(...problems(svc).map((x) => `[${cache}] ${x}`));
    } finally {
      await svc.stop('SIGTERM');
      for (const fn of st.fns.reverse()) await fn();
    }
  }

  const barePort = await startBare(t, portfolioBody, positionBody);
  const bare = {
    portfolio: await httpLoad('bare portfolio', { host: '127.0.0.1', port: barePort, paths: ['/portfolio'] }, C, D),
    position: await httpLoad('bare position', { host: '127.0.0.1', port: barePort, paths: ['/position'] }, C, D),
  };

  console.log();
  console.log(`response sizes: portfolio ${int(Buffer.byteLength(portfolioBody))} B, position ${int(Buffer.byteLength(positionBody))} B`);
  table([
    ['case', 'req/s', 'p50 ms', 'p99 ms', 'errors/non-2xx', 'ratio to bare Express'],
    ...results.map(({ label, r, baseline }) => [label, int(r.rps), ms(r.p50), ms(r.p99), `${r.errors}/${r.non2xx}`, ratio(r.rps / bare[baseline].rps)]),
    [`bare Express, fixed ${int(Buffer.byteLength(portfolioBody))} B body`, int(bare.portfolio.rps), ms(bare.portfolio.p50), ms(bare.portfolio.p99), `${bare.portfolio.errors}/${bare.portfolio.non2xx}`, '1.00'],
    [`bare Express, fixed ${int(Buffer.byteLength(positionBody))} B body`, int(bare.position.rps), ms(bare.position.p50), ms(bare.position.p99), `${bare.position.errors}/${bare.position.non2xx}`, '1.00'],
  ]);
  console.log();
  for (const [cache, s] of Object.entries(seq))
    console.log(`TC-032 (${cache}): ${SEQ} sequential GET /api/v1/portfolio: mean ${ms(s.mean)} ms, p50 ${ms(s.p50)} ms, p99 ${ms(s.p99)} ms, ` +
      `cache hit ratio ${Number.isFinite(s.hitRatio) ? (s.hitRatio * 100).toFixed(1) + ' %' : 'n/a'}, non-200 ${s.non200} → ${s.mean < 100 && s.non200 === 0 ? 'pass' : 'FAIL'}`);
  const on = results[0]!.r;
  console.log(`target p99 ≤ 10 ms (portfolio, cache on, ${C} connections): ${on.p99 <= 10 ? 'met' : `missed (${ms(on.p99)} ms)`}; ` +
    `≥ 0.5 × bare Express: ${on.rps >= 0.5 * bare.portfolio.rps ? 'met' : `missed (${ratio(on.rps / bare.portfolio.rps)})`}`);
  console.log(`service warnings/errors: ${logProblems.length ? '\n  ' + logProblems.slice(0, 20).join('\n  ') : 'none'}`);
  console.log('RESULT ' + JSON.stringify({ bench: 'api', positions: POSITIONS, connections: C, duration: D, results, bare, seq, problems: logProblems, id: randomBytes(3).toString('hex') }));
});
