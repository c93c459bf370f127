// The rules SPEC.md changed on 2026-12-07 after running the trading system's own services
// against this one, through the SQL functions a psql user calls: per-leg adoption,
// one shape per order, computed order averages (§6.1), epoch seconds (convention 5),
// mode defaults (convention 2) and error messages without empty values.
import t from 'tap';
import {
  canonical as dec,
  freshDatabase,
  jobsWithKey as jobs,
  positionRow as row,
  writePositionsDirectly,
  type TestDb,
} from '../helpers/db.js';
import { type FillFields, fillFields } from '../helpers/ledger-fill.js';

let seq = 0;
const ingestFill = async (db: TestDb, f: Record<string, unknown>) =>
  (await db.query('select _apply_order_fill(null, $1::jsonb) as r', [JSON.stringify(f)])).rows[0].r;
/** One fill: asset, side, quantity and price, and any other fields (ledger-fill.ts). */
const trade = (db: TestDb, ...f: FillFields) => ingestFill(db, fillFields(...f));
const report = async (db: TestDb, payload: Record<string, unknown>) =>
  (
    await db.query('select _apply_position_report(null, $1::jsonb) as r', [
      JSON.stringify({ event_type: 'position', event_id: `rs-${++seq}`, payload }),
    ])
  ).rows[0].r;

t.test(
  'R-12 per leg: the Gateway sends the two legs of one hedge update as two messages; both are right at once',
  async (t) => {
    const db = await freshDatabase(t);
    const now = Date.now();
    // the Gateway's own shape: snake_case, integer mode = positionIdx, Bybit's record under raw
    const leg = (side: string, idx: number, size: string, avg: string, upnl: string) => ({
      symbol: 'BTCUSDT',
      side,
      size,
      avg_price: avg,
      unrealised_pnl: upnl,
      realised_pnl: '0',
      mode: idx,
      raw: { markPrice: '50500', positionIdx: idx, updatedTime: String(now - 1000), createdTime: String(now - 60_000) },
    });
    const first = await report(db, leg('Buy', 1, '2', '50000', '1000'));
    t.match(first, [{ outcome: 'applied', mode: 'hedge' }]);
    const second = await report(db, leg('Sell', 2, '1', '52000', '1500'));
    t.match(
      second,
      [{ outcome: 'applied', changed: true, leg_adopted: 'short' }],
      'the second leg is adopted, not a discrepancy',
    );
    t.notOk(second[0].size_discrepancy, 'no size discrepancy');
    const p = await row(db, 'BTCUSDT', 'hedge');
    t.same([p.long_size, p.long_avg_price, p.short_size, p.short_avg_price, p.size].map(dec), [
      '2',
      '50000',
      '1',
      '52000',
      '1',
    ]);
    t.same(
      [p.long_unrealized_pnl, p.short_unrealized_pnl, p.unrealized_pnl].map(dec),
      ['1000', '1500', '2500'],
      'long (50500 − 50000) × 2, short (52000 − 50500) × 1: one mark',
    );
    t.equal(p.average_entry_price_source, 'exchange');
    const resets = (
      await db.query(
        "select leg, reset_size, reset_avg_price, reason from position_fills where asset = 'BTCUSDT' order by id",
      )
    ).rows;
    t.match(
      resets,
      [
        { leg: 'long', reset_size: '2', reset_avg_price: '50000', reason: 'report_created' },
        { leg: 'short', reset_size: '1', reset_avg_price: '52000', reason: 'report_created' },
      ],
      'a reset row per adopted leg, so replay reproduces both',
    );
    t.equal(await jobs(db, 'validate:BTCUSDT:hedge'), 0, 'no validation needed');
    const v = (await db.query("select validate_position('BTCUSDT', 'hedge', false) as v")).rows[0].v;
    t.equal(v.is_valid, true, 'the ledger agrees');
    const pct = (await db.query("select get_position('BTCUSDT', 'hedge') as j")).rows[0].j.unrealized_pnl_pct;
    t.equal(pct, '1.64473684', '2500 / (2 × 50000 + 1 × 52000) × 100');

    // a leg that has history is not adopted: its size is checked as before
    const again = await report(db, {
      ...leg('Sell', 2, '3', '52000', '1500'),
      raw: { markPrice: '50500', positionIdx: 2, updatedTime: String(now) },
    });
    t.match(again, [{ size_discrepancy: { leg: 'short', stored: '1', reported: '3' } }]);
    t.equal(dec((await row(db, 'BTCUSDT', 'hedge')).short_size), '1', 'the size waits for validation');
    t.equal(await jobs(db, 'validate:BTCUSDT:hedge'), 1);
  },
);

t.test('R-12 per leg: the other leg opened by fills; a closed row reopens from the adopted leg', async (t) => {
  const db = await freshDatabase(t);
  const at = Date.now() - 120_000;
  await trade(db, 'ETHUSDT', 'Buy', '1', '3000', {
    execution_id: 'f1',
    mode: 'hedge',
    executed_at: new Date(at).toISOString(),
  });
  const r = await report(db, {
    symbol: 'ETHUSDT',
    side: 'Sell',
    size: '2',
    positionIdx: 2,
    avgPrice: '3100',
    markPrice: '3050',
    unrealisedPnl: '100',
    updatedTime: String(at + 1000),
  });
  t.match(r, [{ leg_adopted: 'short' }]);
  let p = await row(db, 'ETHUSDT', 'hedge');
  t.same(
    [p.long_size, p.short_size, p.long_unrealized_pnl, p.short_unrealized_pnl].map(dec),
    ['1', '2', '50', '100'],
    "the fills' leg re-marked at 3050; the adopted leg has its report's PnL",
  );

  // a hedge row that is closed (both legs flat) and whose short leg never held anything
  await trade(db, 'SOLUSDT', 'Buy', '1', '100', {
    execution_id: 'g1',
    mode: 'hedge',
    executed_at: new Date(at).toISOString(),
  });
  await trade(db, 'SOLUSDT', 'Sell', '1', '101', {
    execution_id: 'g2',
    mode: 'hedge',
    reduce_only: true,
    executed_at: new Date(at + 1000).toISOString(),
  });
  t.ok((await row(db, 'SOLUSDT', 'hedge')).closed_at, 'closed');
  await report(db, {
    symbol: 'SOLUSDT',
    side: 'Sell',
    size: '5',
    positionIdx: 2,
    avgPrice: '99',
    createdTime: String(at + 2000),
    updatedTime: String(at + 3000),
  });
  p = await row(db, 'SOLUSDT', 'hedge');
  t.same([p.short_size, p.size].map(dec), ['5', '-5']);
  t.equal(p.closed_at, null, 'open again');
  t.equal((p.opened_at as Date).getTime(), at + 2000, "opened at the exchange's createdTime");
  const kinds = (await db.query("select kind from position_events where asset = 'SOLUSDT' order by id")).rows.map(
    (x) => x.kind,
  );
  t.same(kinds, ['created', 'closed', 'reopened']);
});

t.test('R-6.4: one shape per order; the other shape is not applied and validation is scheduled', async (t) => {
  const db = await freshDatabase(t);
  // counted as executions first
  await trade(db, 'BTCUSDT', 'Buy', '1', '100', { execution_id: 'e-1', order_id: 'o-1' });
  const other = await ingestFill(db, {
    event_id: 'cum-1',
    order_id: 'o-1',
    asset: 'BTCUSDT',
    side: 'Buy',
    filled_quantity: '2',
    price: '100',
  });
  t.match(other, { outcome: 'other_shape', warning: /order o-1 is counted as executions/ });
  t.equal(dec((await row(db, 'BTCUSDT')).size), '1', 'the cumulative statement is not applied');
  t.match((await db.query("select outcome from inbox where message_key = 'cum-1'")).rows, [{ outcome: 'other_shape' }]);
  t.equal(await jobs(db, 'validate:BTCUSDT:one-way'), 1, 'validation scheduled');
  // counted as cumulative statements first (today's Order Manager's enriched event)
  await ingestFill(db, {
    event_id: 'ev-1',
    event_type: 'partially_filled',
    order: { order_id: 'o-2', asset: 'ETHUSDT', side: 'Buy', filled_quantity: '1', average_price: '10' },
  });
  const exec = await trade(db, 'ETHUSDT', 'Buy', '1', '10', { execution_id: 'e-2', order_id: 'o-2' });
  t.match(exec, { outcome: 'other_shape', warning: /order o-2 is counted as cumulative statements/ });
  t.equal(dec((await row(db, 'ETHUSDT')).size), '1', 'not double-counted');
  // the same shape goes on as before
  const more = await ingestFill(db, {
    event_id: 'ev-2',
    event_type: 'filled',
    order: { order_id: 'o-2', asset: 'ETHUSDT', side: 'Buy', filled_quantity: '3', average_price: '11' },
  });
  t.match(more, { outcome: 'applied' });
  const p = await row(db, 'ETHUSDT');
  t.same(
    [p.size, p.average_entry_price].map(dec),
    ['3', '11'],
    '2 more at (3 × 11 − 10) / 2 = 11.5; average (10 + 23) / 3 = 11',
  );
});

t.test("§6.1: an order's average fill price may have up to 30 places; an execution price still 8", async (t) => {
  const db = await freshDatabase(t);
  const avg = '1.666666666666666666666666666667';
  const r = await ingestFill(db, {
    event_id: 'ev-a',
    event_type: 'filled',
    order: { order_id: 'o-a', asset: 'ADAUSDT', side: 'Buy', filled_quantity: '3', average_price: avg },
  });
  t.match(r, { outcome: 'applied' });
  t.equal((await row(db, 'ADAUSDT')).average_entry_price, avg, 'the average kept as given');
  const flat = await ingestFill(db, {
    order_id: 'o-b',
    asset: 'DOTUSDT',
    side: 'Buy',
    filled_quantity: '3',
    price: avg,
  });
  t.match(flat, { outcome: 'applied' }, 'the flat cumulative shape alike');
  await t.rejects(
    trade(db, 'DOTUSDT', 'Buy', '1', avg, { execution_id: 'x-1', order_id: 'o-c' }),
    { code: '22023', message: /^execution_price: at most 8 fractional digits/ },
    "one execution's price is a price",
  );
});

t.test('convention 5: a 10-digit epoch is seconds, 13 digits milliseconds', async (t) => {
  const db = await freshDatabase(t);
  const seconds = 1736935200; // 2025-01-15T10:00:00Z
  await trade(db, 'BTCUSDT', 'Buy', '1', '100', { execution_id: 's-1', executed_at: seconds });
  await trade(db, 'ETHUSDT', 'Buy', '1', '100', { execution_id: 's-2', executed_at: String(seconds * 1000) });
  t.equal(((await row(db, 'BTCUSDT')).opened_at as Date).toISOString(), '2025-01-15T10:00:00.000Z');
  t.equal(((await row(db, 'ETHUSDT')).opened_at as Date).toISOString(), '2025-01-15T10:00:00.000Z');
});

t.test('convention 2: without a mode, lists cover both modes and a single lookup finds the open row', async (t) => {
  const db = await freshDatabase(t);
  await trade(db, 'HEDGEUSDT', 'Buy', '1', '10', { execution_id: 'c-1', mode: 'hedge' });
  await trade(db, 'ONEUSDT', 'Buy', '1', '10', { execution_id: 'c-2' });
  await trade(db, 'BOTHUSDT', 'Buy', '1', '10', { execution_id: 'c-3', mode: 'hedge' });
  await trade(db, 'BOTHUSDT', 'Buy', '1', '10', { execution_id: 'c-4' });
  // closed one-way row updated last, open hedge row: the open one is meant
  await trade(db, 'MIXUSDT', 'Buy', '1', '10', { execution_id: 'c-5', mode: 'hedge' });
  await trade(db, 'MIXUSDT', 'Buy', '1', '10', { execution_id: 'c-6' });
  await trade(db, 'MIXUSDT', 'Sell', '1', '10', { execution_id: 'c-7' });
  // both closed: the most recently updated
  await trade(db, 'OLDUSDT', 'Buy', '1', '10', { execution_id: 'c-8' });
  await trade(db, 'OLDUSDT', 'Sell', '1', '10', { execution_id: 'c-9' });
  await trade(db, 'OLDUSDT', 'Buy', '1', '10', { execution_id: 'c-10', mode: 'hedge' });
  await trade(db, 'OLDUSDT', 'Sell', '1', '10', { execution_id: 'c-11', mode: 'hedge', reduce_only: true });

  const list = (await db.query('select list_positions() as l')).rows[0].l;
  t.same(
    list.positions.map((p: any) => `${p.asset}/${p.mode}`),
    ['BOTHUSDT/hedge', 'BOTHUSDT/one-way', 'HEDGEUSDT/hedge', 'MIXUSDT/hedge', 'ONEUSDT/one-way'],
    'both modes, ordered by asset, mode',
  );
  const one = async (asset: string) => (await db.query('select get_position($1) as j', [asset])).rows[0].j;
  t.equal((await one('HEDGEUSDT')).mode, 'hedge', 'an asset held only in hedge mode is found');
  t.equal((await one('BOTHUSDT')).mode, 'one-way', 'both open: the one-way row');
  t.equal((await one('MIXUSDT')).mode, 'hedge', 'the open row before a more recently updated closed one');
  t.equal((await one('OLDUSDT')).mode, 'hedge', 'none open: the most recently updated');
  await t.rejects(one('NONEUSDT'), { code: 'P0002' });
  t.equal(
    (await db.query("select validate_position('HEDGEUSDT') as v")).rows[0].v.is_valid,
    true,
    'validate resolves the mode too',
  );
  const snap = (await db.query("select mode from create_position_snapshot('HEDGEUSDT')")).rows[0];
  t.equal(snap.mode, 'hedge', 'and a snapshot');
  t.equal((await db.query("select list_position_snapshots('HEDGEUSDT') as l")).rows[0].l.total, 1);
});

t.test('R-17: an error_message never renders a null value as an empty string', async (t) => {
  const db = await freshDatabase(t);
  await report(db, { symbol: 'NOAVGUSDT', side: 'Buy', size: '2', markPrice: '10' }); // adopted without an average
  await trade(db, 'NOAVGUSDT', 'Buy', '1', '12', { execution_id: 'n-1' });
  await writePositionsDirectly(db, "update positions set average_entry_price = null where asset = 'NOAVGUSDT'");
  const v = (await db.query("select validate_position('NOAVGUSDT', null, false) as v")).rows[0].v;
  t.equal(v.is_valid, false);
  t.notMatch(v.error_message, / {2}/, 'no empty value between two spaces');
  t.match(v.error_message, /average_entry_price null differs from ledger average entry price 12/);
});
