// reconcile_positions (SPEC.md R-34) against the real PostgreSQL: the exchange's position list
// applied as reports of the source exchange_rest, with the validation that settles what it
// finds. The scenarios of the issue: a fill lost on the way, a position never seen here, one
// open here and flat or absent there; and a re-read of an unchanged account changes nothing.
import t from 'tap';
import { bybitPosition } from '../helpers/ledger-bybit.js';
import { type FillFields, fillFields } from '../helpers/ledger-fill.js';
import {
  canonical as dec,
  freshDatabase,
  jobsWithKey as jobs,
  positionRow as row,
  type TestDb,
} from '../helpers/db.js';

let seq = 0;
const fill = (db: TestDb, f: Record<string, unknown>) =>
  db.query('select apply_order_fill($1::jsonb)', [JSON.stringify({ execution_id: `rc-${++seq}`, ...f })]);
/** One fill: asset, side, quantity and price, and any other fields (ledger-fill.ts). */
const trade = (db: TestDb, ...f: FillFields) => fill(db, fillFields(...f));
const page = (list: Record<string, unknown>[], time: number, cursor = '') => ({
  retCode: 0,
  retMsg: 'OK',
  result: { category: 'linear', list, nextPageCursor: cursor },
  retExtInfo: {},
  time,
});
const reconcile = async (db: TestDb, pages: unknown[]) =>
  (await db.query('select reconcile_positions($1::jsonb, $2) as r', [JSON.stringify(pages), 'rc-trace'])).rows[0].r;
const validate = async (db: TestDb, asset: string, mode = 'one-way') =>
  (await db.query('select validate_position($1, $2, true, $3) as v', [asset, mode, 'rc-validation'])).rows[0].v;

t.test(
  "a fill lost on the way: reconciliation finds it, validation brings the position to the exchange's size",
  async (t) => {
    const db = await freshDatabase(t);
    const t0 = Date.now() - 600_000;
    const iso = (ms: number) => new Date(ms).toISOString();
    await trade(db, 'BTCUSDT', 'Buy', '1', '50000', { executed_at: iso(t0) });
    // a second Buy 0.5 @ 51000 at t0 + 60 s was executed on the exchange and never published
    const listed = bybitPosition('BTCUSDT', 0, 'Buy', '1.5', '50333.33333333', '50500', '250', {
      cumRealisedPnl: '0',
      updatedTime: String(t0 + 60_000),
      createdTime: String(t0),
      seq: 101,
    });
    const r = await reconcile(db, [page([listed], t0 + 120_000)]);
    t.match(r, {
      listed: 1,
      absent: 0,
      outcomes: { applied: 1 },
      discrepancies: [{ asset: 'BTCUSDT', mode: 'one-way', leg: 'net', stored: '1', reported: '1.5' }],
    });
    let p = await row(db, 'BTCUSDT');
    t.equal(dec(p.size), '1', "a report's size is never written (R-15)");
    t.same([p.current_price, p.unrealized_pnl].map(dec), ['50500', '250'], 'PnL and mark from the exchange (R-13)');
    t.equal(dec(p.average_entry_price), '50333.33333333', 'the average differs beyond 0.1 %: replaced (R-14)');
    t.equal(await jobs(db, 'validate:BTCUSDT:one-way'), 1, 'validation scheduled for after the grace period');
    const notes = (
      await db.query("select source, kind from position_events where asset = 'BTCUSDT' and kind = 'size_discrepancy'")
    ).rows;
    t.same(notes, [{ source: 'exchange_rest', kind: 'size_discrepancy' }], 'the audit trail says where it was seen');

    const v = await validate(db, 'BTCUSDT');
    t.match(v, {
      is_valid: false,
      discrepancies: [{ field: 'size', stored: '1', expected: '1.5', authority: 'exchange' }],
    });
    p = await row(db, 'BTCUSDT');
    t.equal(dec(p.size), '1.5', "back to the exchange's size");
    const fix = (
      await db.query(
        "select source, kind, before->>'size' as b, after->>'size' as a, trace_id from position_events where asset = 'BTCUSDT' and kind = 'validation_fix'",
      )
    ).rows;
    t.match(
      fix,
      [{ source: 'validation', kind: 'validation_fix', b: '1', a: '1.5', trace_id: 'rc-validation' }],
      'with an audit row',
    );
    const reset = (
      await db.query(
        "select reset_size, reason from position_fills where asset = 'BTCUSDT' and kind = 'reset' order by id desc limit 1",
      )
    ).rows[0];
    t.match(reset, { reset_size: '1.5', reason: 'validation' }, 'the ledger records the adopted state');
    t.equal((await validate(db, 'BTCUSDT')).is_valid, true, 'and stays valid');

    // the unchanged account read again: every report is a duplicate, nothing changes
    const version = (await row(db, 'BTCUSDT')).version;
    const again = await reconcile(db, [page([listed], t0 + 180_000)]);
    t.match(again, { outcomes: { duplicate: 1 }, discrepancies: [] });
    t.equal((await row(db, 'BTCUSDT')).version, version);
  },
);

t.test('a position this service never saw is adopted (R-12), one-way and per hedge leg, across pages', async (t) => {
  const db = await freshDatabase(t);
  const now = Date.now() - 5000;
  await trade(db, 'ETHUSDT', 'Buy', '2', '3000', { mode: 'hedge', executed_at: new Date(now - 60_000).toISOString() });
  const r = await reconcile(db, [
    page(
      [
        bybitPosition('SOLUSDT', 0, 'Sell', '10', '150', '149', '10', {
          cumRealisedPnl: '-3',
          updatedTime: String(now),
          createdTime: String(now - 3_600_000),
        }),
      ],
      now + 1000,
      'c1',
    ),
    page(
      [
        bybitPosition('ETHUSDT', 1, 'Buy', '2', '3000', '3010', '20', { updatedTime: String(now) }),
        bybitPosition('ETHUSDT', 2, 'Sell', '1', '3050', '3010', '40', { updatedTime: String(now) }),
      ],
      now + 1000,
    ),
  ]);
  t.match(r, { listed: 3, absent: 0, adopted: 2, discrepancies: [] });
  const sol = await row(db, 'SOLUSDT');
  t.same(
    [sol.size, sol.average_entry_price, sol.unrealized_pnl, sol.realized_pnl, sol.average_entry_price_source].map(
      String,
    ),
    ['-10', '150', '10', '-3', 'exchange'],
  );
  t.equal((sol.opened_at as Date).getTime(), now - 3_600_000, "opened at the exchange's createdTime");
  const eth = await row(db, 'ETHUSDT', 'hedge');
  t.same(
    [eth.long_size, eth.short_size, eth.short_avg_price, eth.long_unrealized_pnl, eth.short_unrealized_pnl].map(dec),
    ['2', '1', '3050', '20', '40'],
  );
  const created = (await db.query("select source, kind from position_events where asset = 'SOLUSDT'")).rows;
  t.same(created, [{ source: 'exchange_rest', kind: 'created' }]);
  const ev = (
    await db.query("select payload from outbox where event_type = 'position_updated' and payload->>'asset' = 'SOLUSDT'")
  ).rows[0].payload;
  t.equal(ev.update_source, 'exchange_rest');
  t.equal((await validate(db, 'SOLUSDT')).is_valid, true, 'the ledger reproduces the adopted state');
});

t.test('open here, flat or absent there: a discrepancy, and validation closes it', async (t) => {
  const db = await freshDatabase(t);
  const t0 = Date.now() - 600_000;
  await trade(db, 'XRPUSDT', 'Buy', '100', '0.5', { executed_at: new Date(t0).toISOString() });
  await trade(db, 'ADAUSDT', 'Sell', '50', '1', { executed_at: new Date(t0).toISOString() });
  await trade(db, 'DOTUSDT', 'Buy', '3', '7', { mode: 'hedge', executed_at: new Date(t0).toISOString() });
  await trade(db, 'DOTUSDT', 'Sell', '1', '7', { mode: 'hedge', executed_at: new Date(t0).toISOString() });
  const r = await reconcile(db, [
    page(
      [
        // ADAUSDT listed flat (Bybit lists a symbol with size 0 and side "")
        bybitPosition('ADAUSDT', 0, '', '0', '0', '1.01', '', { updatedTime: String(t0 + 60_000) }),
        // DOTUSDT: only the long leg listed
        bybitPosition('DOTUSDT', 1, 'Buy', '3', '7', '7.1', '0.3', { updatedTime: String(t0 + 60_000) }),
      ],
      t0 + 120_000,
    ),
  ]);
  t.match(r, { listed: 2, absent: 2 }, 'XRPUSDT and the DOTUSDT short leg are listed nowhere');
  t.same(r.discrepancies.map((d: any) => `${d.asset}/${d.leg}: ${d.stored} -> ${d.reported}`).sort(), [
    'ADAUSDT/net: -50 -> 0',
    'DOTUSDT/short: 1 -> 0',
    'XRPUSDT/net: 100 -> 0',
  ]);
  t.equal(dec((await row(db, 'XRPUSDT')).size), '100', 'nothing is closed before validation');

  for (const [asset, mode] of [
    ['XRPUSDT', 'one-way'],
    ['ADAUSDT', 'one-way'],
    ['DOTUSDT', 'hedge'],
  ] as const) {
    const v = await validate(db, asset, mode);
    t.equal(v.is_valid, false, `${asset}: a discrepancy`);
    t.ok(
      v.discrepancies.every((d: any) => d.authority === 'exchange' && d.expected === '0'),
      `${asset}: the exchange is flat`,
    );
  }
  const xrp = await row(db, 'XRPUSDT');
  t.equal(dec(xrp.size), '0');
  t.ok(xrp.closed_at, 'closed');
  const closed = (
    await db.query("select payload from outbox where event_type = 'position_closed' and payload->>'asset' = 'XRPUSDT'")
  ).rows;
  t.match(closed, [{ payload: { reason: 'validation', closed_size: '100' } }], 'position_closed says why');
  const dot = await row(db, 'DOTUSDT', 'hedge');
  t.same([dot.long_size, dot.short_size].map(dec), ['3', '0'], 'only the absent leg is closed');
  // flat here and there: nothing more to say
  const quiet = await reconcile(db, [page([], Date.now() - 1000)]);
  t.match(quiet, { listed: 0, absent: 1, discrepancies: [] }, 'only DOTUSDT long is still open here');
});

t.test('a stale entry changes nothing; a bad answer is rejected whole', async (t) => {
  const db = await freshDatabase(t);
  const now = Date.now() - 60_000;
  await db.query('select _apply_position_report(null, $1::jsonb)', [
    JSON.stringify({
      event_type: 'position',
      event_id: 'ws-1',
      payload: {
        symbol: 'BTCUSDT',
        side: 'Buy',
        size: '1',
        avgPrice: '100',
        markPrice: '101',
        unrealisedPnl: '1',
        seq: 50,
        updatedTime: String(now),
      },
    }),
  ]);
  const r = await reconcile(db, [
    page(
      [bybitPosition('BTCUSDT', 0, 'Buy', '2', '100', '90', '-10', { seq: 49, updatedTime: String(now - 1000) })],
      now + 1000,
    ),
  ]);
  t.match(r, { outcomes: { stale: 1 }, discrepancies: [] }, "an older seq than the Gateway's report is stale (R-11)");
  t.equal(dec((await row(db, 'BTCUSDT')).unrealized_pnl), '1');
  await t.rejects(reconcile(db, []), { code: '22023', message: /^pages:/ });
  await t.rejects(reconcile(db, [{ retCode: 0, result: {} }]), { code: '22023', message: /^result\.list:/ });
  await t.rejects(reconcile(db, [page([{ symbol: 'ETHUSDT', positionIdx: 0, side: 'Buy', size: 'lots' }], now)]), {
    code: '22023',
    message: /^size:/,
  });
  t.equal(await row(db, 'ETHUSDT'), undefined, 'nothing of a rejected answer is applied');
});
