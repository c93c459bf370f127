// The maintained portfolio totals (sql/115_portfolio_totals.sql, migration 19) against a
// from-scratch computation over positions, after random operations of every writer of
// positions: fills, reports, mark prices, validation with a fix, snapshots, a foreign write the
// guard keeps out, writes let through own_positions_write (an operator's UPDATE and DELETE),
// concurrent transactions on the two rows of one asset, compactions among them, a TRUNCATE.
import t, { type Test } from 'tap';
import type pg from 'pg';
import { freshDatabase, writePositionsDirectly, type TestDb } from '../helpers/db.js';
import { rng } from '../helpers/random.js';

// The figures as the view computed them before the totals were maintained: sums over
// portfolio_asset_totals_view, which reads every position.
const FROM_SCRATCH = `
  select coalesce(sum(a.exposure_usdt), 0)::text as total_exposure_usdt,
         coalesce(sum(a.long_exposure_usdt), 0)::text as long_exposure_usdt,
         coalesce(sum(a.short_exposure_usdt), 0)::text as short_exposure_usdt,
         coalesce(sum(a.net_exposure_usdt), 0)::text as net_exposure_usdt,
         coalesce(sum(a.net_exposure_usdt), 0)::text as portfolio_value_usdt,
         coalesce(sum(a.unrealized_pnl_usdt), 0)::text as total_unrealized_pnl_usdt,
         coalesce(sum(a.realized_pnl_usdt), 0)::text as total_realized_pnl_usdt,
         coalesce(sum(a.unrealized_pnl_usdt + a.realized_pnl_usdt), 0)::text as total_pnl_usdt,
         coalesce(sum(a.total_fees_usdt), 0)::text as total_fees_usdt,
         coalesce(sum(a.open_positions_count), 0)::integer as open_positions_count,
         coalesce(sum(a.long_positions_count), 0)::integer as long_positions_count,
         coalesce(sum(a.short_positions_count), 0)::integer as short_positions_count,
         trim_scale((select coalesce(sum(_position_exposure(p)), 0) from positions p where p.gross_size > 0))::text
           as raw_exposure
    from portfolio_asset_totals_view a`;
// (the unrounded total exposure compared by value: its scale depends on the order of the sums)
const MAINTAINED = `
  select total_exposure_usdt::text, long_exposure_usdt::text, short_exposure_usdt::text, net_exposure_usdt::text,
         portfolio_value_usdt::text, total_unrealized_pnl_usdt::text, total_realized_pnl_usdt::text,
         total_pnl_usdt::text, total_fees_usdt::text, open_positions_count, long_positions_count,
         short_positions_count, trim_scale(_portfolio_total_exposure())::text as raw_exposure
    from portfolio_metrics_view`;
// The folded per-asset sums against positions (after a compaction that found no other deltas).
const ASSET_SUMS_DIFF = `
  select count(*)::integer as n from (
    (select asset, positions_count, long_exposure, short_exposure, unrealized_pnl, realized_pnl, total_fees, size,
            open_positions_count, long_positions_count, short_positions_count from portfolio_asset_sums
     except
     select * from _portfolio_delta_rows(array(select p from positions p), '{}'))
    union all
    (select * from _portfolio_delta_rows(array(select p from positions p), '{}')
     except
     select asset, positions_count, long_exposure, short_exposure, unrealized_pnl, realized_pnl, total_fees, size,
            open_positions_count, long_positions_count, short_positions_count from portfolio_asset_sums)) x`;

const ASSETS = ['AAAUSDT', 'BBBUSDT', 'CCCUSDT', 'DDDUSDT', 'EEEUSDT'];
const MODES = ['one-way', 'hedge'];
const OPERATOR_ASSETS = ['OPAUSDT', 'OPBUSDT'];

// by_asset of portfolio_metrics() as it was built from positions
const BY_ASSET_FROM_SCRATCH = `
  select coalesce(jsonb_object_agg(t.asset, jsonb_build_object(
           'exposure_usdt', dec_out(t.exposure_usdt), 'net_exposure_usdt', dec_out(t.net_exposure_usdt),
           'unrealized_pnl_usdt', dec_out(t.unrealized_pnl_usdt), 'realized_pnl_usdt', dec_out(t.realized_pnl_usdt),
           'total_pnl_usdt', dec_out(t.unrealized_pnl_usdt + t.realized_pnl_usdt), 'size', dec_out(t.size),
           'open_positions_count', t.open_positions_count)), '{}') as by_asset,
         dec_out(coalesce(sum(t.exposure_usdt), 0)) as total_exposure_usdt,
         dec_out(coalesce(sum(t.unrealized_pnl_usdt + t.realized_pnl_usdt), 0)) as total_pnl_usdt
    from portfolio_asset_totals_view t`;
const BY_ASSET = `
  select m -> 'by_asset' as by_asset, m ->> 'total_exposure_usdt' as total_exposure_usdt,
         m ->> 'total_pnl_usdt' as total_pnl_usdt
    from portfolio_metrics() m`;

async function agree(t: Test, db: TestDb, what: string): Promise<void> {
  const [scratch, kept, assetsScratch, assetsKept] = await Promise.all(
    [FROM_SCRATCH, MAINTAINED, BY_ASSET_FROM_SCRATCH, BY_ASSET].map((q) => db.query(q)),
  );
  t.same(kept!.rows[0], scratch!.rows[0], `totals agree with positions after ${what}`);
  t.same(assetsKept!.rows[0], assetsScratch!.rows[0], `portfolio_metrics() agrees with positions after ${what}`);
}

t.test('the maintained totals equal a computation from scratch after random writes of every writer', async (t) => {
  const db = await freshDatabase(t, { poolSize: 6 });
  const seed = Number(process.env.TOTALS_SEED ?? 20261207);
  const random = rng(seed);
  t.comment(`seed ${seed} (TOTALS_SEED repeats a run)`);
  const pick = <T>(xs: T[]): T => xs[Math.floor(random() * xs.length)]!;
  // digits beyond the 8 places of the output, so that per-asset rounding matters
  const dec = (max: number, places: number) => (random() * max + 10 ** -places).toFixed(places);
  let seq = 0;
  let priceTime = Date.now() - 3_600_000;
  let operatorWrites = 0;

  const fill = (q: pg.Pool | pg.PoolClient, asset: string, mode: string) =>
    q.query('select apply_order_fill($1::jsonb)', [
      JSON.stringify({
        execution_id: `tt-${++seq}`,
        asset,
        mode,
        side: random() < 0.5 ? 'Buy' : 'Sell',
        execution_quantity: dec(3, 6),
        execution_price: dec(200, 8),
        execution_fees: dec(0.01, 8),
      }),
    ]);
  const report = (asset: string) =>
    db.query('select apply_position_report($1::jsonb)', [
      JSON.stringify({
        event_type: 'position',
        event_id: `tr-${++seq}`,
        payload: {
          symbol: asset,
          side: random() < 0.5 ? 'Buy' : 'Sell',
          size: dec(5, 4),
          markPrice: dec(200, 7),
          unrealisedPnl: (random() * 20 - 10).toFixed(8),
          realisedPnl: dec(3, 8),
        },
      }),
    ]);
  const markPrices = () =>
    db.query('select apply_mark_prices($1::jsonb)', [
      JSON.stringify({
        retCode: 0,
        time: (priceTime += 1000),
        result: { list: ASSETS.filter(() => random() < 0.7).map((symbol) => ({ symbol, markPrice: dec(200, 8) })) },
      }),
    ]);

  for (let i = 0; i < 200; i++) {
    const asset = pick(ASSETS);
    const mode = pick(MODES);
    // each twentieth of the range in turn, so that every kind of writer comes up
    const r = ((i % 20) + random()) / 20;
    let what: string;
    if (r < 0.35) {
      await fill(db.pool, asset, mode);
      what = `a fill of ${asset} ${mode}`;
    } else if (r < 0.45) {
      await report(asset);
      what = `a report of ${asset}`;
    } else if (r < 0.55) {
      await markPrices();
      what = 'mark prices';
    } else if (r < 0.62) {
      // a size the ledger does not explain, then validation puts the ledger's back
      await writePositionsDirectly(
        db,
        "update positions set size = size + 1, realized_pnl = realized_pnl + 0.123456789 where asset = $1 and mode = 'one-way'",
        [asset],
      );
      await db.query("select validate_position($1, 'one-way', true)", [asset]).catch(() => undefined);
      what = `an operator's UPDATE of ${asset} and its validation with a fix`;
    } else if (r < 0.67) {
      // the guard of R-32 keeps this from the row: nothing may be counted
      await db.query('update positions set size = size * 2, total_fees = 7 where asset = $1', [asset]);
      await db.query('delete from positions where asset = $1', [asset]);
      what = `a foreign UPDATE and DELETE of ${asset}`;
    } else if (r < 0.74) {
      // rows without a ledger, so that they can be deleted again
      if (operatorWrites++ % 3 < 2) {
        await writePositionsDirectly(
          db,
          `insert into positions (asset, mode, size, long_size, short_size, average_entry_price, current_price,
                                  unrealized_pnl, long_unrealized_pnl, realized_pnl, long_realized_pnl, total_fees)
           select $1, m, case when h then abs($3::numeric) else $3::numeric end, case when h then abs($3::numeric) end,
                  case when h then 0 end, case when not h then $4::numeric end, $5::numeric, $4::numeric,
                  case when h then $4::numeric end, $5::numeric, case when h then $5::numeric end, $4::numeric
             from (select $2::text as m, $2::text = 'hedge' as h) x
           on conflict do nothing`,
          [pick(OPERATOR_ASSETS), mode, (random() * 4 - 2).toFixed(7), dec(50, 8), dec(50, 8)],
        );
        what = `an operator's INSERT (${mode})`;
      } else {
        const gone = await writePositionsDirectly(
          db,
          'delete from positions where asset = any($1) returning asset, mode',
          [OPERATOR_ASSETS],
        );
        what = `an operator's DELETE of ${gone.rowCount} rows`;
      }
    } else if (r < 0.75) {
      await db.query('select snapshot_all_positions()');
      what = 'a snapshot run';
    } else if (r < 0.8) {
      await db.query('select _portfolio_compact()');
      what = 'a compaction';
    } else {
      // concurrent: the two rows of one asset written by two transactions at once, a fill of
      // another asset outside them, and a compaction while both are still open
      const [a, b] = [await db.pool.connect(), await db.pool.connect()];
      try {
        await a.query('begin');
        await b.query('begin');
        await fill(a, asset, 'one-way');
        await fill(b, asset, 'hedge');
        // rows the open transactions do not hold, or the test would wait for itself
        const others = ASSETS.filter((x) => x !== asset);
        await fill(a, pick(others), 'one-way');
        await Promise.all([fill(db.pool, pick(others), 'hedge'), db.query('select _portfolio_compact()')]);
        await fill(b, asset, 'hedge');
        const rollback = random() < 0.2;
        await a.query(rollback ? 'rollback' : 'commit');
        await db.query('select _portfolio_compact()');
        await b.query('commit');
        what = `concurrent transactions on ${asset}${rollback ? ' (one rolled back)' : ''}`;
      } finally {
        a.release();
        b.release();
      }
    }
    await agree(t, db, what);
  }

  t.equal(
    (await db.query('select _portfolio_compact() as c')).rows[0].c,
    true,
    'a compaction runs when none is running',
  );
  t.equal((await db.query('select count(*)::integer as n from portfolio_deltas')).rows[0].n, 0, 'it folds every delta');
  t.equal((await db.query(ASSET_SUMS_DIFF)).rows[0].n, 0, 'the per-asset sums equal the sums over positions');
  await agree(t, db, 'the final compaction');

  // a compaction that meets another one skips it instead of waiting
  const c = await db.pool.connect();
  try {
    await c.query('begin');
    await c.query('select _portfolio_compact()');
    await fill(db.pool, 'AAAUSDT', 'one-way');
    t.equal((await db.query('select _portfolio_compact() as c')).rows[0].c, false, 'skipped while another holds it');
    await agree(t, db, 'a skipped compaction');
    await c.query('commit');
  } finally {
    c.release();
  }

  await writePositionsDirectly(db, 'truncate positions cascade');
  await agree(t, db, 'a TRUNCATE');
  t.same(
    (await db.query('select total_exposure_usdt::text, open_positions_count from portfolio_metrics_view')).rows[0],
    { total_exposure_usdt: '0', open_positions_count: 0 },
    'an empty portfolio shows a plain 0',
  );
});

t.test('a rebuild recomputes the totals from positions', async (t) => {
  const db = await freshDatabase(t);
  await writePositionsDirectly(
    db,
    "insert into positions (asset, size, average_entry_price, current_price) values ('AAAUSDT', 0.3, 0.1, 0.12345679)",
  );
  // totals that went wrong (a restore of one table without the other)
  await db.query('update portfolio_totals set long_exposure = 999, raw_exposure = 999');
  await db.query('select _portfolio_compact()');
  t.not((await db.query(MAINTAINED)).rows[0].total_exposure_usdt, '0.03703704', 'the damage shows');
  await db.query('select portfolio_totals_rebuild()');
  await agree(t, db, 'a rebuild');
  t.equal((await db.query(MAINTAINED)).rows[0].total_exposure_usdt, '0.03703704');
});

t.test('without the portfolio job the writers fold the deltas themselves', async (t) => {
  const db = await freshDatabase(t);
  const deltas = async () => (await db.query('select count(*)::integer as n from portfolio_deltas')).rows[0].n;
  // 10,000 rows in one statement: folded at once
  await writePositionsDirectly(
    db,
    `insert into positions (asset, size, average_entry_price, current_price)
     select 'B' || i || 'USDT', i * 0.001, 1.5, 1.25 from generate_series(1, 10000) i`,
  );
  t.equal(await deltas(), 0, 'a statement of 10,000 rows folds them');
  // 2,500 rows a statement: each folds with a chance of one half, so twenty that all leave their
  // rows behind (one run in two million) would mean that none folds
  for (let i = 0; i < 20; i++) {
    await writePositionsDirectly(
      db,
      "update positions set current_price = current_price + 0.01 where asset like 'B%' and size <= 2.5",
    );
  }
  t.ok((await deltas()) < 20 * 2500, 'smaller statements fold now and then');
  await agree(t, db, 'bulk writes');
});
