// apply_mark_prices (SPEC.md R-31) and the mark rules of reports against the real
// PostgreSQL, with worked numbers: one ticker answer moves every open position it names, both
// hedge legs, newer prices only, no audit row, one position_updated per new version.
import t from 'tap';
import { type FillFields, fillFields } from '../helpers/ledger-fill.js';
import { canonical as dec, freshDatabase, positionRow as row, type TestDb } from '../helpers/db.js';

let seq = 0;
const fill = (f: Record<string, unknown>) => ({ execution_id: `mp-${++seq}`, ...f });
const apply = (db: TestDb, f: Record<string, unknown>) =>
  db.query('select apply_order_fill($1::jsonb)', [JSON.stringify(fill(f))]);
/** One fill: asset, side, quantity and price, and any other fields (ledger-fill.ts). */
const trade = (db: TestDb, ...f: FillFields) => apply(db, fillFields(...f));
const report = (db: TestDb, r: Record<string, unknown>) =>
  db.query('select _apply_position_report(null, $1::jsonb) as r', [
    JSON.stringify({ event_type: 'position', event_id: `ev-${++seq}`, payload: r }),
  ]);
/** An hour ago in whole seconds: prices must not be from the future (R-31 rejects > 5 min ahead). */
const base = () => Math.floor(Date.now() / 1000) * 1000 - 3_600_000;
const iso = (ms: number) => new Date(ms).toISOString();

/** A Bybit V5 /v5/market/tickers answer; `list` entries as Bybit sends them (strings). */
function tickers(time: number, list: Record<string, unknown>[]) {
  return { retCode: 0, retMsg: 'OK', result: { category: 'linear', list }, retExtInfo: {}, time };
}
async function mark(db: TestDb, answer: unknown) {
  return (await db.query('select apply_mark_prices($1::jsonb, $2) as r', [JSON.stringify(answer), 'mark-trace']))
    .rows[0].r;
}
const events = async (db: TestDb, asset: string) =>
  (
    await db.query(
      "select payload from outbox where event_type = 'position_updated' and payload->>'asset' = $1 order by id",
      [asset],
    )
  ).rows.map((r) => r.payload);
const audits = async (db: TestDb, asset: string) =>
  Number((await db.query('select count(*) from position_events where asset = $1', [asset])).rows[0].count);

t.test("a one-way long bought at 50000, 50500 and 51000 is marked to the market (the issue's example)", async (t) => {
  const db = await freshDatabase(t);
  const at = base();
  for (const [price, i] of [
    ['50000', 0],
    ['50500', 1],
    ['51000', 2],
  ] as const)
    await trade(db, 'BTCUSDT', 'Buy', '0.1', price, { executed_at: new Date(at + i * 1000).toISOString() });
  let p = await row(db, 'BTCUSDT');
  t.equal(dec(p.average_entry_price), '50500');
  t.equal(dec(p.current_price), '50000', "without a mark, the first fill's price");
  t.equal(p.current_price_source, 'fill');
  t.equal(dec(p.unrealized_pnl), '-150', '(50000 − 50500) × 0.3: stale');
  const auditBefore = await audits(db, 'BTCUSDT');

  const r = await mark(
    db,
    tickers(at + 60_000, [
      { symbol: 'BTCUSDT', markPrice: '50800', lastPrice: '50801.5' },
      { symbol: 'ETHUSDT', markPrice: '3000' }, // not held
      { symbol: 'NANUSDT', markPrice: 'NaN' },
      { symbol: 'EMPTYUSDT', markPrice: '' },
      { symbol: 'NEGUSDT', markPrice: '-1' },
      { symbol: 'ZEROUSDT', markPrice: '0' },
      { symbol: 'bad symbol', markPrice: '1' },
    ]),
  );
  t.match(r, { symbols: 2, skipped_prices: 5, positions_marked: 1, positions_updated: 1, time: iso(at + 60_000) });
  p = await row(db, 'BTCUSDT');
  t.equal(dec(p.current_price), '50800');
  t.equal(p.current_price_source, 'ticker');
  t.equal(iso(p.current_price_at), iso(at + 60_000), "the answer's time is the price time");
  t.equal(dec(p.unrealized_pnl), '90', '(50800 − 50500) × 0.3');
  t.equal(p.version, '4', 'one new version');
  t.equal(await audits(db, 'BTCUSDT'), auditBefore, 'a mark refresh writes no audit row');
  const ev = (await events(db, 'BTCUSDT')).at(-1);
  t.match(ev, {
    update_source: 'mark_price',
    version: 4,
    current_price: '50800',
    unrealized_pnl: '90',
    trace_id: 'mark-trace',
    changed_fields: ['current_price', 'current_price_at', 'current_price_source', 'unrealized_pnl'],
    position: {
      current_price_source: 'ticker',
      unrealized_pnl_pct: '0.5940594',
      position_size_norm: '1',
      exposure_usdt: '15240',
    },
  });
  const kept = (await db.query('select symbol, price, source from mark_prices order by symbol')).rows;
  t.same(
    kept.map((k) => [k.symbol, dec(k.price), k.source]),
    [
      ['BTCUSDT', '50800', 'ticker'],
      ['ETHUSDT', '3000', 'ticker'],
    ],
  );
  const metrics = (await db.query('select portfolio_metrics() as m')).rows[0].m;
  t.equal(metrics.total_exposure_usdt, '15240', 'the portfolio follows: 0.3 × 50800');
  t.equal(metrics.total_unrealized_pnl_usdt, '90');

  // the same price again, later: the price's time is renewed, nothing changed, no event
  const again = await mark(db, tickers(at + 70_000, [{ symbol: 'BTCUSDT', markPrice: '50800.00' }]));
  t.match(again, { positions_marked: 1, positions_updated: 0 });
  p = await row(db, 'BTCUSDT');
  t.equal(p.version, '4');
  t.equal(iso(p.current_price_at), iso(at + 70_000));
  t.equal((await events(db, 'BTCUSDT')).length, 4, 'no event without a change');

  // an older answer than the price held changes nothing
  const older = await mark(db, tickers(at + 30_000, [{ symbol: 'BTCUSDT', markPrice: '1' }]));
  t.match(older, { positions_marked: 0, positions_updated: 0 });
  t.equal(dec((await row(db, 'BTCUSDT')).current_price), '50800');
  t.equal(
    dec((await db.query("select price from mark_prices where symbol = 'BTCUSDT'")).rows[0].price),
    '50800',
    'the kept mark too',
  );
});

t.test('hedge: one mark moves both legs; a short and a closed position', async (t) => {
  const db = await freshDatabase(t);
  const at = base();
  const ts = (s: number) => new Date(at + s * 1000).toISOString();
  await trade(db, 'ETHUSDT', 'Buy', '2', '3000', { mode: 'hedge', executed_at: ts(0) });
  await trade(db, 'ETHUSDT', 'Sell', '1', '3100', { mode: 'hedge', executed_at: ts(1) });
  await trade(db, 'SOLUSDT', 'Sell', '10', '100', { executed_at: ts(2) });
  await trade(db, 'XRPUSDT', 'Buy', '10', '1', { executed_at: ts(3) });
  await trade(db, 'XRPUSDT', 'Sell', '10', '1.1', { executed_at: ts(4) });
  const closed = await row(db, 'XRPUSDT');

  const r = await mark(
    db,
    tickers(at + 60_000, [
      { symbol: 'ETHUSDT', markPrice: '3050' },
      { symbol: 'SOLUSDT', markPrice: '95.5' },
      { symbol: 'XRPUSDT', markPrice: '2' },
    ]),
  );
  t.match(r, { positions_marked: 2, positions_updated: 2 });
  const h = await row(db, 'ETHUSDT', 'hedge');
  t.equal(dec(h.long_unrealized_pnl), '100', 'long: (3050 − 3000) × 2');
  t.equal(dec(h.short_unrealized_pnl), '50', 'short: (3100 − 3050) × 1');
  t.equal(dec(h.unrealized_pnl), '150', 'the row is the sum of its legs at one price');
  const ev = (await events(db, 'ETHUSDT')).at(-1);
  t.same(ev.changed_fields, [
    'current_price',
    'current_price_at',
    'current_price_source',
    'long_unrealized_pnl',
    'short_unrealized_pnl',
    'unrealized_pnl',
  ]);
  t.match(ev.position.legs, { long: { unrealized_pnl: '100' }, short: { unrealized_pnl: '50' } });
  t.equal(dec((await row(db, 'SOLUSDT')).unrealized_pnl), '45', 'short: (95.5 − 100) × −10');
  const after = await row(db, 'XRPUSDT');
  t.equal(after.version, closed.version, 'a closed position is not marked');
  t.equal(dec(after.current_price), dec(closed.current_price));
});

t.test('reports and the ticker: whichever price is newer wins; a report marks both hedge legs', async (t) => {
  const db = await freshDatabase(t);
  const at = base();
  await trade(db, 'BTCUSDT', 'Buy', '1', '50000', { executed_at: new Date(at).toISOString() });
  await mark(db, tickers(at + 60_000, [{ symbol: 'BTCUSDT', markPrice: '50600' }]));
  // a report older than the ticker's price: its PnL is taken, its mark is not
  await report(db, {
    symbol: 'BTCUSDT',
    side: 'Buy',
    size: '1',
    markPrice: '50100',
    unrealisedPnl: '100',
    updatedTime: String(at + 30_000),
  });
  let p = await row(db, 'BTCUSDT');
  t.equal(dec(p.current_price), '50600', "the older report's mark does not replace the newer ticker price");
  t.equal(p.current_price_source, 'ticker');
  t.equal(dec(p.unrealized_pnl), '100');
  // a newer report's mark does
  await report(db, {
    symbol: 'BTCUSDT',
    side: 'Buy',
    size: '1',
    markPrice: '50700',
    unrealisedPnl: '700',
    updatedTime: String(at + 90_000),
  });
  p = await row(db, 'BTCUSDT');
  t.equal(dec(p.current_price), '50700');
  t.equal(p.current_price_source, 'report');
  t.equal(new Date(p.current_price_at).toISOString(), new Date(at + 90_000).toISOString());
  t.match((await db.query("select price, source from mark_prices where symbol = 'BTCUSDT'")).rows[0], {
    price: '50700',
    source: 'report',
  });
  // and a ticker older than that report changes nothing
  t.match(await mark(db, tickers(at + 80_000, [{ symbol: 'BTCUSDT', markPrice: '1' }])), { positions_marked: 0 });

  // R-13 in hedge mode: long 1 @ 50000 and short 2 @ 51000 (ACCOUNTING.md §2 example 7's legs);
  // a report for the short leg at mark 50500 re-marks the long leg at the same price.
  await trade(db, 'ETHUSDT', 'Buy', '1', '50000', { mode: 'hedge', executed_at: new Date(at).toISOString() });
  await trade(db, 'ETHUSDT', 'Sell', '2', '51000', { mode: 'hedge', executed_at: new Date(at + 1000).toISOString() });
  await report(db, {
    symbol: 'ETHUSDT',
    side: 'Sell',
    size: '2',
    positionIdx: 2,
    avgPrice: '51000',
    markPrice: '50500',
    unrealisedPnl: '1000',
    updatedTime: String(at + 120_000),
  });
  const h = await row(db, 'ETHUSDT', 'hedge');
  t.equal(dec(h.current_price), '50500');
  t.equal(dec(h.short_unrealized_pnl), '1000', "the reported leg: the report's PnL, (51000 − 50500) × 2");
  t.equal(dec(h.long_unrealized_pnl), '500', 'the other leg at the same mark: (50500 − 50000) × 1');
  t.equal(dec(h.unrealized_pnl), '1500');
  const j = (await db.query("select position_json(p) as j from positions p where asset = 'ETHUSDT'")).rows[0].j;
  // entry notional 1 × 50000 + 2 × 51000 = 152000; 1500 / 152000 × 100
  t.equal(j.unrealized_pnl_pct, '0.98684211', 'unrealized_pnl_pct of one price');
});

t.test('a bad answer is rejected naming what is wrong, and nothing is applied', async (t) => {
  const db = await freshDatabase(t);
  await trade(db, 'BTCUSDT', 'Buy', '1', '50000');
  const before = await row(db, 'BTCUSDT');
  const bad = async (answer: unknown, field: RegExp) => {
    await t.rejects(mark(db, answer), { code: '22023', message: field });
  };
  await bad(
    { retCode: 10001, retMsg: 'params error', result: {}, time: Date.now() },
    /^retCode: .*10001.*params error/,
  );
  await bad({ retCode: 0, result: { list: [] } }, /^time: is required/);
  await bad({ retCode: 0, result: { list: {} }, time: Date.now() }, /^result\.list: must be an array/);
  await bad({ retCode: 0, result: { list: [] }, time: Date.now() + 3_600_000 }, /^time: .*future/);
  await bad([1, 2], /^body:/);
  t.same(await row(db, 'BTCUSDT'), before, 'the position is untouched');
  t.equal(Number((await db.query('select count(*) from mark_prices')).rows[0].count), 0);
});
