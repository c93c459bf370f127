// Validation checkpoints (issue 21): validate_position replays each leg on from the checkpoint a
// validation left (position_checkpoints), and gives exactly what a replay of the whole ledger
// (`full => true`) gives. Random ledgers of fills, flips, hedge legs, reports and resets, with
// validations in between that write checkpoints which later validations start from.
import { readFileSync } from 'node:fs';
import t from 'tap';
import { freshDatabase, type TestDb } from '../helpers/db.js';

const README = new URL('../../README.md', import.meta.url);

/** A small seeded generator (mulberry32), so that a failing sequence can be run again. */
function generator(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
  return {
    int: (n: number) => Math.floor(next() * n),
    chance: (p: number) => next() < p,
    pick: <T>(xs: readonly T[]) => xs[Math.floor(next() * xs.length)]!,
  };
}
type Random = ReturnType<typeof generator>;

type Mode = 'one-way' | 'hedge';
/** The positions of one sequence: two one-way, one hedge. */
const positionsOf = (seed: number): readonly { asset: string; mode: Mode }[] => [
  { asset: `CK${seed}AUSDT`, mode: 'one-way' },
  { asset: `CK${seed}BUSDT`, mode: 'one-way' },
  { asset: `CK${seed}HUSDT`, mode: 'hedge' },
];
const QUANTITIES = ['0.1', '0.25', '0.5', '1', '1.5', '2', '3'] as const;

/** A validation's result without its time, and (after a fix) without the fix's own times. */
function comparable(v: any): any {
  const rest = { ...v };
  delete rest.checked_at;
  const updated = rest.updated_position;
  if (!updated) return rest;
  const position = { ...updated, opened: updated.opened_at !== null, closed: updated.closed_at !== null };
  for (const k of ['last_updated', 'time_held_minutes', 'opened_at', 'closed_at']) delete position[k];
  return { ...rest, updated_position: position };
}

type Queryable = Pick<TestDb, 'query'>;

async function validate(c: Queryable, asset: string, mode: Mode, fix: boolean, full: boolean) {
  return (await c.query('select validate_position($1, $2, $3, full => $4) as v', [asset, mode, fix, full])).rows[0].v;
}

/** The full replay's result, in a transaction that is rolled back: it fixes and writes nothing. */
async function fullReplay(db: TestDb, asset: string, mode: Mode, fix: boolean) {
  const c = await db.pool.connect();
  try {
    await c.query('begin');
    return await validate({ query: (sql, params) => c.query(sql, params) }, asset, mode, fix, true);
  } finally {
    await c.query('rollback');
    c.release();
  }
}

/** Legs whose checkpoint is not what a replay of the whole ledger gives at the leg's last row. */
async function checkpointsOff(db: TestDb, asset: string, mode: Mode) {
  return (
    await db.query(
      `select l.leg, to_jsonb(c) as checkpoint, to_jsonb(r) as replay
         from positions p cross join unnest(_legs(p.mode)) l(leg)
         cross join lateral _leg_replay(p.id, l.leg, null::position_checkpoints) r
         left join position_checkpoints c on c.position_id = p.id and c.leg = l.leg
        where p.asset = $1 and p.mode = $2
          and case when r.ledger_id = 0 then c is not null
                   else (c.ledger_id, c.size, c.avg_price, c.last_entry_at)
                        is distinct from (r.ledger_id, r.size, r.avg_price, r.last_entry_at) end`,
      [asset, mode],
    )
  ).rows;
}

/** What the next checkpointed validation of the position starts from. */
async function pending(db: TestDb, asset: string, mode: Mode) {
  return (
    await db.query<{ from_checkpoint: boolean; after_reset: boolean }>(
      `select coalesce(bool_or(c.ledger_id is not null and exists (
                select 1 from position_fills f where f.position_id = p.id and f.leg = c.leg and f.id > c.ledger_id)), false)
                as from_checkpoint,
              coalesce(bool_or(exists (
                select 1 from position_fills f where f.position_id = p.id and f.leg = c.leg and f.id > c.ledger_id
                   and f.kind = 'reset')), false) as after_reset
         from positions p left join position_checkpoints c on c.position_id = p.id
        where p.asset = $1 and p.mode = $2`,
      [asset, mode],
    )
  ).rows[0]!;
}

/** One random operation on one of `positions`: a fill, or a report of the exchange. */
async function operate(db: TestDb, rnd: Random, positions: ReturnType<typeof positionsOf>, clock: number, n: number) {
  const { asset, mode } = rnd.pick(positions);
  const held = (await db.query('select * from positions where asset = $1 and mode = $2', [asset, mode])).rows[0];
  const price = (base: number) => (base * (0.9 + rnd.int(2001) / 10000)).toFixed(rnd.pick([0, 1, 2]));
  // fills arrive out of order: executed up to ten minutes before the clock, or a little after
  const executedAt = new Date(clock + (rnd.int(13) - 10) * 60_000).toISOString();
  if (!held || rnd.chance(0.75)) {
    const body: Record<string, unknown> = {
      execution_id: `ck-${n}`,
      asset,
      side: rnd.pick(['Buy', 'Sell']),
      execution_quantity: rnd.pick(QUANTITIES),
      execution_price: price(100),
      executed_at: executedAt,
      mode,
    };
    if (rnd.chance(0.3)) body.execution_fees = rnd.pick(['0.01', '0.05', '0.2']);
    if (mode === 'hedge') {
      // a leg, and whether the fill opens or reduces it (a reduce-only fill names its leg)
      const long = rnd.chance(0.5);
      const reduce = rnd.chance(0.4);
      body.position_idx = long ? 1 : 2;
      body.side = long === reduce ? 'Sell' : 'Buy';
      if (reduce) body.reduce_only = true;
    }
    await db.query('select apply_order_fill($1::jsonb)', [JSON.stringify(body)]);
    return;
  }
  const leg = mode === 'hedge' ? rnd.pick(['long', 'short'] as const) : 'net';
  const heldSize = Number(leg === 'long' ? held.long_size : leg === 'short' ? held.short_size : held.size);
  const heldAvg =
    leg === 'long' ? held.long_avg_price : leg === 'short' ? held.short_avg_price : held.average_entry_price;
  // the size held (no discrepancy), another one, or flat
  const size = rnd.pick([Math.abs(heldSize), Math.abs(heldSize), Number(rnd.pick(QUANTITIES)), 0]);
  const data: Record<string, unknown> = { symbol: asset, size: String(size) };
  if (mode === 'hedge') {
    data.positionIdx = leg === 'long' ? 1 : 2;
    data.side = leg === 'long' ? 'Buy' : 'Sell';
  } else {
    data.side = size === 0 ? '' : heldSize < 0 ? 'Sell' : heldSize > 0 ? 'Buy' : rnd.pick(['Buy', 'Sell']);
  }
  // the average held, one beyond the threshold (an avg_price_from_report reset), or another
  const avg = rnd.pick(['held', 'beyond', 'other', 'none'] as const);
  if (size > 0 && avg !== 'none') {
    // (random inputs: a JS number is good enough to make one up; reports carry 8 places at most)
    const base = heldAvg === null ? 100 : Number(heldAvg);
    data.avgPrice =
      avg === 'held' && heldAvg !== null
        ? (heldAvg as string).replace(/(\.\d{8})\d+$/, '$1')
        : avg === 'beyond'
          ? (base * 1.01).toFixed(2)
          : price(100);
  }
  data.markPrice = price(100);
  // reports come in order (an older one would be stale), between the fills' times
  data.updatedTime = clock;
  await db.query('select apply_position_report($1::jsonb)', [JSON.stringify({ event_type: 'position', data })]);
}

t.test('checkpointed validation gives what a full replay gives, on long random ledgers', async (t) => {
  const db = await freshDatabase(t);
  const seeds = process.env.CHECKPOINT_SEED ? [Number(process.env.CHECKPOINT_SEED)] : [1, 2, 3];
  const opsPerSeed = 400;
  let compared = 0;
  let fromCheckpoint = 0;
  let resetAfterCheckpoint = 0;
  let fixes = 0;
  for (const seed of seeds) {
    const positions = positionsOf(seed);
    const rnd = generator(seed);
    let clock = Date.parse('2025-03-01T00:00:00Z');
    let mismatches = 0;
    for (let n = 0; n < opsPerSeed && mismatches === 0; n++) {
      clock += 60_000;
      await operate(db, rnd, positions, clock, seed * 100_000 + n);
      // validations now and then, in bursts and with long gaps, some of them fixing
      if (!rnd.chance(n % 60 < 10 ? 0.6 : 0.12)) continue;
      for (const { asset, mode } of positions) {
        const exists = await db.query('select 1 from positions where asset = $1 and mode = $2', [asset, mode]);
        if (exists.rowCount === 0) continue;
        const fix = rnd.chance(0.25);
        const before = await pending(db, asset, mode);
        const full = await fullReplay(db, asset, mode, fix);
        const checkpointed = await validate(db, asset, mode, fix, false);
        compared++;
        if (before.from_checkpoint) fromCheckpoint++;
        if (before.after_reset) resetAfterCheckpoint++;
        if (checkpointed.updated_position) fixes++;
        const off = await checkpointsOff(db, asset, mode);
        const same = JSON.stringify(comparable(checkpointed)) === JSON.stringify(comparable(full));
        if (!same || off.length > 0) {
          mismatches++;
          t.fail(`seed ${seed}, after op ${n}, ${asset} ${mode} (fix ${fix})`, {
            checkpointed: comparable(checkpointed),
            full: comparable(full),
            checkpoints_off: off,
          });
        }
      }
    }
    t.equal(mismatches, 0, `seed ${seed}: every checkpointed validation equals the full replay`);
  }
  const rows = (
    await db.query(
      "select count(*)::int as n, count(*) filter (where kind = 'reset')::int as resets from position_fills",
    )
  ).rows[0];
  t.comment(
    `${compared} validations compared, ${fromCheckpoint} replayed on from a checkpoint (${resetAfterCheckpoint} ` +
      `past a reset after it), ${fixes} fixed; ledgers: ${rows.n} rows, ${rows.resets} resets`,
  );
  t.ok(fromCheckpoint > compared / 2, 'most validations started from a checkpoint with rows after it');
  t.ok(resetAfterCheckpoint > 0, 'some found a reset after their checkpoint');
  t.ok(fixes > 0, 'some fixed the row');
});

t.test('a checkpoint keeps the latest entry time that decides the authority (R-17 step 4)', async (t) => {
  const db = await freshDatabase(t);
  const fill = (id: string, side: string, qty: string, at: string) =>
    db.query('select apply_order_fill($1::jsonb)', [
      JSON.stringify({
        execution_id: id,
        asset: 'LATEUSDT',
        side,
        execution_quantity: qty,
        execution_price: '100',
        executed_at: at,
      }),
    ]);
  await fill('late-1', 'Buy', '1', '2025-03-01T00:10:00Z');
  await fill('late-2', 'Buy', '1', '2025-03-01T00:01:00Z');
  t.equal((await validate(db, 'LATEUSDT', 'one-way', false, false)).is_valid, true, 'a checkpoint at the second fill');
  // a report older than the first fill, though newer than the last ledger row's time
  await db.query('select apply_position_report($1::jsonb)', [
    JSON.stringify({
      event_type: 'position',
      data: { symbol: 'LATEUSDT', side: 'Buy', size: '5', updatedTime: Date.parse('2025-03-01T00:05:00Z') },
    }),
  ]);
  const v = await validate(db, 'LATEUSDT', 'one-way', false, false);
  t.same(v.discrepancies, [], 'the fill at 00:10, before the checkpoint, is newer than the report: the fills win');
  t.same(comparable(v), comparable(await validate(db, 'LATEUSDT', 'one-way', false, true)), 'as in a full replay');
});

t.test('a validation reads only the ledger rows after its checkpoint; full => true reads them all', async (t) => {
  const db = await freshDatabase(t);
  const fill = (id: string, side: string, qty: string) =>
    db.query('select apply_order_fill($1::jsonb)', [
      JSON.stringify({ execution_id: id, asset: 'CORUSDT', side, execution_quantity: qty, execution_price: '100' }),
    ]);
  await fill('cor-1', 'Buy', '1');
  await fill('cor-2', 'Buy', '2');
  t.equal((await validate(db, 'CORUSDT', 'one-way', false, false)).is_valid, true);
  const checkpoint = (await db.query('select ledger_id, size from position_checkpoints')).rows;
  t.match(checkpoint, [{ size: '3' }], 'the validation left a checkpoint');
  // A ledger row under the checkpoint changed behind the service's back (nothing of the
  // service does that: the ledger is only appended to).
  await db.query("update position_fills set quantity = 5 where execution_id = 'cor-1'");
  await fill('cor-3', 'Sell', '0.5');
  const checkpointed = await validate(db, 'CORUSDT', 'one-way', false, false);
  t.equal(checkpointed.is_valid, true, 'the checkpointed replay does not read the changed row');
  t.match(
    (await db.query('select ledger_id, size from position_checkpoints')).rows,
    [{ size: '2.5' }],
    'and moved the checkpoint past the new fill',
  );
  const audit = await validate(db, 'CORUSDT', 'one-way', false, true);
  t.equal(audit.is_valid, false, 'full => true replays every row and finds it');
  t.match(audit.discrepancies, [{ field: 'size', stored: '2.5', expected: '6.5', authority: 'ledger' }]);
  t.equal(
    (await validate(db, 'CORUSDT', 'one-way', false, false)).is_valid,
    false,
    "the audit rewrote the checkpoint from its replay: later validations start from the ledger's truth",
  );
});

t.test("README's psql recipe for the full replay works", async (t) => {
  const db = await freshDatabase(t);
  const recipes = readFileSync(README, 'utf8')
    .split('\n')
    .filter((l) => /^select validate_position\(.*full => true.*\);/.test(l));
  t.ok(recipes.length > 0, 'the README has a full-replay recipe');
  await db.query('select apply_order_fill($1::jsonb)', [
    JSON.stringify({ asset: 'BTCUSDT', side: 'Buy', execution_quantity: '1', execution_price: '50000' }),
  ]);
  for (const sql of recipes) {
    const v = (await db.query(sql)).rows[0].validate_position;
    t.equal(v.is_valid, true, sql);
  }
});
