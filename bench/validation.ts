// validate_position on a deep ledger (SPEC.md §11 "History depth": a position with 1 M ledger
// rows validates in ≤ 100 ms, from a checkpoint rather than by a full replay).
//
//   node --import=./node_modules/@tapjs/typescript/dist/esm/import.mjs bench/validation.ts
//        [--rows 1000000] [--runs 5] [--full-runs 1] [--after 1000]
//
// Not part of `npm run bench`: seeding a million rows and replaying them take minutes.
// In a fresh database copied from the migrated template, one one-way position (a fill of 1 at
// 100 through apply_order_fill), then --rows ledger rows by one set-based INSERT: alternating
// Sell 1 / Buy 1 at 100 (the size stays 1, the average 100, so the ledger agrees with the row).
// Then, each printed with its statement:
//   full => true, --full-runs times (every row replayed; each run also rewrites the checkpoint)
//   from the checkpoint, nothing new since (median of --runs)
//   from the checkpoint, one fill since (apply_order_fill before each run; median of --runs)
//   from the checkpoint, --after rows since (inserted directly before each run; median of --runs)
import { args, benchDatabase, int, median, ms, now, runBench, table } from './lib.js';

const opt = args({ rows: 1_000_000, runs: 5, 'full-runs': 1, after: 1000 });
const ROWS = Number(opt.rows);
const RUNS = Number(opt.runs);
const FULL_RUNS = Number(opt['full-runs']);
const AFTER = Number(opt.after);

const ASSET = 'DEEPUSDT';
const CHECKPOINTED = `select validate_position('${ASSET}', 'one-way', false)`;
const FULL = `select validate_position('${ASSET}', 'one-way', false, full => true)`;
// n more rows, alternating Sell/Buy 1 at 100, after the existing ones (n even: the size stays)
const SEED = `insert into position_fills (position_id, asset, mode, kind, leg, side, quantity, price, fee, executed_at)
  select p.id, p.asset, p.mode, 'fill', 'net', case when g % 2 = 1 then 'Sell' else 'Buy' end, 1, 100, 0,
         now() - interval '1 day' + g * interval '1 ms'
    from positions p, generate_series(1, $1::int) g where p.asset = '${ASSET}' and p.mode = 'one-way'`;

runBench(async (t) => {
  const db = await benchDatabase(t, 'pm_bench_validation', 2);
  const q = (sql: string, params: unknown[] = []) => db.pool.query(sql, params);
  let fills = 0;
  const fill = (side: string) =>
    q('select apply_order_fill($1::jsonb)', [
      JSON.stringify({
        execution_id: `bv-${++fills}`,
        asset: ASSET,
        side,
        execution_quantity: '1',
        execution_price: '100',
      }),
    ]);
  const timed = async (sql: string) => {
    const t0 = now();
    const r = await db.pool.query<{ v: { is_valid: boolean; discrepancies: unknown[] } }>(`${sql} as v`);
    const elapsed = now() - t0;
    const v = r.rows[0]!.v;
    if (!v.is_valid) console.log(`  note: ${sql} reports ${JSON.stringify(v.discrepancies)}`);
    return elapsed;
  };

  await fill('Buy');
  const rows = ROWS % 2 === 0 ? ROWS : ROWS + 1;
  console.log(`seeding ${int(rows)} ledger rows:\n  ${SEED.replace('$1::int', String(rows))}`);
  let t0 = now();
  await q(SEED, [rows]);
  await q('vacuum analyze position_fills');
  console.log(`  ${ms((now() - t0) / 1000)} s`);

  const results: (string | number)[][] = [['validation', 'statement', 'runs', 'median ms']];
  const full: number[] = [];
  for (let i = 0; i < FULL_RUNS; i++) full.push(await timed(FULL));
  results.push([`full replay of ${int(rows + 1)} rows`, FULL, FULL_RUNS, ms(median(full))]);

  const idle: number[] = [];
  for (let i = 0; i < RUNS; i++) idle.push(await timed(CHECKPOINTED));
  results.push(['from the checkpoint, nothing new', CHECKPOINTED, RUNS, ms(median(idle))]);

  const one: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    await fill(i % 2 === 0 ? 'Sell' : 'Buy');
    one.push(await timed(CHECKPOINTED));
  }
  results.push(['from the checkpoint, 1 fill since', CHECKPOINTED, RUNS, ms(median(one))]);

  const many: number[] = [];
  const after = AFTER % 2 === 0 ? AFTER : AFTER + 1;
  for (let i = 0; i < RUNS; i++) {
    await q(SEED, [after]);
    many.push(await timed(CHECKPOINTED));
  }
  results.push([`from the checkpoint, ${int(after)} rows since`, CHECKPOINTED, RUNS, ms(median(many))]);

  t0 = now();
  const total = (
    await db.pool.query<{ n: number }>('select count(*)::int as n from position_fills where asset = $1', [ASSET])
  ).rows[0]!.n;
  console.log(`ledger rows of ${ASSET} at the end: ${int(total)} (${ms(now() - t0)} ms to count)`);
  table(results);
});
