// The ledger's SQL functions against the real PostgreSQL: ACCOUNTING.md's worked examples and
// the processing rules of SPEC.md §4, with the exact numbers the documents give.
import t from 'tap';
import { type FillFields, fillFields } from '../helpers/ledger-fill.js';
import { freshDatabase, type TestDb, writePositionsDirectly } from '../helpers/db.js';

let seq = 0;
const fill = (f: Record<string, unknown>) => ({ execution_id: `x-${++seq}`, ...f });

async function apply(db: TestDb, f: Record<string, unknown>) {
  return (await db.query('select * from apply_order_fill($1::jsonb)', [JSON.stringify(f)])).rows[0];
}
/** One fill through apply_order_fill: asset, side, quantity and price, and any other fields (ledger-fill.ts). */
const trade = (db: TestDb, ...f: FillFields) => apply(db, fill(fillFields(...f)));
async function report(db: TestDb, r: Record<string, unknown>) {
  return (await db.query('select * from apply_position_report($1::jsonb)', [JSON.stringify(r)])).rows[0];
}
async function row(db: TestDb, asset: string, mode = 'one-way') {
  return (await db.query('select * from positions where asset = $1 and mode = $2', [asset, mode])).rows[0];
}
async function json(db: TestDb, asset: string, mode = 'one-way') {
  return (await db.query('select position_json(p) as j from positions p where asset = $1 and mode = $2', [asset, mode]))
    .rows[0].j;
}
/** Canonical decimal text (trailing zeros removed), so values compare exactly, never as floats. */
const dec = (s: string | null) => (s === null ? null : s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s);

t.test('ACCOUNTING.md §2 worked examples', async (t) => {
  const db = await freshDatabase(t);

  await t.test('1. increase (TC-004): weighted average rounded to 10 places', async (t) => {
    await trade(db, 'AAAUSDT', 'Buy', '1.0', '48000');
    const p = await trade(db, 'AAAUSDT', 'BUY', '0.5', '50000.00', { execution_fees: '25.00' });
    t.equal(p.size, '1.5');
    t.equal(p.average_entry_price, '48666.6666666667');
    t.equal(p.realized_pnl, '0');
    t.equal(p.total_fees, '25.00');
    t.equal((await json(db, 'AAAUSDT')).average_entry_price, '48666.66666667', 'emitted at 8 places');
  });

  await t.test('2. reduce (TC-005)', async (t) => {
    await trade(db, 'BBBUSDT', 'Buy', '2.0', '50000');
    await report(db, {
      event_type: 'position',
      data: { symbol: 'BBBUSDT', side: 'Buy', size: '2.0', markPrice: '51000' },
    });
    const p = await trade(db, 'BBBUSDT', 'SELL', '0.5', '51000.00', { execution_fees: '25.50' });
    t.equal(p.size, '1.5');
    t.equal(p.average_entry_price, '50000');
    t.equal(Number(p.realized_pnl), 474.5);
    t.equal(Number(p.unrealized_pnl), 1500);
  });

  await t.test('3. close (TC-006): flat, closed, average kept, position_closed published', async (t) => {
    await trade(db, 'CCCUSDT', 'Buy', '1.0', '50000');
    const p = await apply(db, {
      asset: 'CCCUSDT',
      side: 'SELL',
      execution_price: '51000.00',
      execution_quantity: '1.0',
      execution_fees: '51.00',
      trace_id: 'test-trace-006',
    });
    t.equal(Number(p.size), 0);
    t.not(p.closed_at, null);
    t.equal(p.average_entry_price, '50000');
    t.equal(Number(p.unrealized_pnl), 0);
    t.equal(Number(p.realized_pnl), 949);
    const closed = (
      await db.query(
        "select payload from outbox where event_type = 'position_closed' and payload->>'asset' = 'CCCUSDT'",
      )
    ).rows;
    t.equal(closed.length, 1);
    t.match(closed[0].payload, {
      reason: 'fill',
      realized_pnl_delta: '949',
      exit_price: '51000',
      closed_size: '1',
      leg: 'net',
    });
  });

  await t.test('4. short, add then cover', async (t) => {
    await trade(db, 'DDDUSDT', 'Sell', '1.0', '50000');
    let p = await trade(db, 'DDDUSDT', 'Sell', '1.0', '48000');
    t.equal(p.size, '-2.0');
    t.equal(dec(p.average_entry_price), '49000');
    p = await trade(db, 'DDDUSDT', 'Buy', '0.5', '47000', { execution_fees: '1.00' });
    t.equal(p.size, '-1.5');
    t.equal(Number(p.realized_pnl), 999);
  });

  await t.test('5. flip: fee split by quantity, new lifecycle at the fill price', async (t) => {
    await trade(db, 'EEEUSDT', 'Buy', '2.0', '50000', { executed_at: '2025-01-15T10:00:00Z' });
    const p = await trade(db, 'EEEUSDT', 'Sell', '3.0', '51000', {
      execution_fees: '10.00',
      executed_at: '2025-01-15T11:00:00Z',
    });
    t.equal(p.realized_pnl, '1993.3333333333');
    t.equal(p.size, '-1.0');
    t.equal(p.average_entry_price, '51000');
    t.equal((p.opened_at as Date).toISOString(), '2025-01-15T11:00:00.000Z');
    t.equal(p.total_fees, '10.00');
  });

  await t.test('6. decimals: a float implementation gets this wrong', async (t) => {
    await trade(db, 'FFFUSDT', 'Buy', '0.1', '30000.1');
    let p = await trade(db, 'FFFUSDT', 'Buy', '0.2', '30000.2');
    t.equal(p.average_entry_price, '30000.1666666667');
    p = await trade(db, 'FFFUSDT', 'Buy', 0.3, 30000.3);
    t.equal(p.average_entry_price, '30000.2333333334');
    t.equal((await json(db, 'FFFUSDT')).average_entry_price, '30000.23333333');
  });

  await t.test('7. hedge legs are accounted separately', async (t) => {
    await trade(db, 'GGGUSDT', 'Buy', '1.0', '50000', { mode: 'hedge' });
    let p = await trade(db, 'GGGUSDT', 'Sell', '2.0', '51000', { mode: 'hedge' });
    t.same(
      [p.long_size, p.short_size, p.size, p.long_avg_price, p.short_avg_price],
      ['1.0', '2.0', '-1.0', '50000', '51000'],
    );
    p = await trade(db, 'GGGUSDT', 'Buy', '1.0', '50500', { mode: 'hedge', reduce_only: true });
    t.equal(p.short_size, '1.0');
    t.equal(p.long_size, '1.0');
    t.equal(Number(p.realized_pnl), 500);
    t.equal(Number(p.short_realized_pnl), 500);
    const j = await json(db, 'GGGUSDT', 'hedge');
    t.equal(j.side, 'hedged');
    t.equal(j.legs.short.realized_pnl, '500');
  });

  await t.test('a hedge reduction larger than the leg is capped and scheduled for validation', async (t) => {
    const p = await trade(db, 'GGGUSDT', 'Sell', '3.0', '50000', {
      mode: 'hedge',
      position_idx: 1,
      execution_fees: '2',
    });
    t.equal(p.long_size, '0.0');
    t.equal(p.short_size, '1.0');
    const note = (
      await db.query("select details from position_events where kind = 'size_discrepancy' and asset = 'GGGUSDT'")
    ).rows;
    t.equal(note.length, 1);
    t.equal(Number(note[0].details.excess), 2);
    const jobs = (await db.query("select key from graphile_worker.jobs where task_identifier = 'validate_position'"))
      .rows;
    t.same(
      jobs.map((j) => j.key),
      ['validate:GGGUSDT:hedge'],
    );
  });
});

t.test('reports (SPEC.md R-10..R-15)', async (t) => {
  const db = await freshDatabase(t);

  await t.test('TC-001 a report creates an unknown position with a reset ledger row', async (t) => {
    const p = await report(db, {
      event_type: 'position',
      channel: 'position',
      data: {
        symbol: 'BTCUSDT',
        side: 'Buy',
        size: '1.5',
        avgPrice: '50000.00',
        unrealisedPnl: '150.00',
        positionValue: '75000.00',
        mode: 'one-way',
        timestamp: '2025-01-15T10:00:00Z',
      },
      trace_id: 'test-trace-001',
    });
    t.equal(p.size, '1.5');
    t.equal(Number(p.average_entry_price), 50000);
    t.equal(Number(p.unrealized_pnl), 150);
    t.equal(Number(p.realized_pnl), 0);
    t.equal((p.opened_at as Date).toISOString(), '2025-01-15T10:00:00.000Z');
    const j = await json(db, 'BTCUSDT');
    t.equal(j.unrealized_pnl_pct, '0.2');
    t.equal(j.position_size_norm, '1');
    t.equal(j.exposure_usdt, '75000');
    const resets = (await db.query("select reset_size from position_fills where kind = 'reset' and asset = 'BTCUSDT'"))
      .rows;
    t.same(resets, [{ reset_size: '1.5' }]);
    t.equal(
      (await db.query("select count(*)::int as n from outbox where event_type = 'position_updated'")).rows[0].n,
      1,
    );
  });

  await t.test('TC-003 a size discrepancy is audited and schedules one validation; the size stays', async (t) => {
    const p = await report(db, {
      event_type: 'position',
      data: { symbol: 'BTCUSDT', size: '1.8', avgPrice: '50000.00', unrealisedPnl: '180.00' },
      trace_id: 'test-trace-003',
    });
    t.equal(p.size, '1.5');
    t.equal(Number(p.unrealized_pnl), 180);
    await report(db, { event_type: 'position', data: { symbol: 'BTCUSDT', size: '1.9', unrealisedPnl: '181' } });
    const notes = (await db.query("select details from position_events where kind = 'size_discrepancy'")).rows;
    t.equal(notes.length, 2);
    const jobs = (
      await db.query("select count(*)::int as n from graphile_worker.jobs where key = 'validate:BTCUSDT:one-way'")
    ).rows[0].n;
    t.equal(jobs, 1, 'job key: one validation however many discrepancies');
  });

  await t.test('TC-008 the average is replaced only strictly above the threshold', async (t) => {
    await trade(db, 'AVGUSDT', 'Buy', '1.0', '50000');
    let p = await report(db, {
      event_type: 'position',
      data: { symbol: 'AVGUSDT', avgPrice: '50050.00', size: '1.0' },
      trace_id: 'test-trace-008',
    });
    t.equal(p.average_entry_price, '50000', 'exactly 0.1 % keeps the stored average');
    p = await report(db, { event_type: 'position', data: { symbol: 'AVGUSDT', avgPrice: '50060', size: '1.0' } });
    t.equal(p.average_entry_price, '50060');
    t.equal(p.average_entry_price_source, 'exchange');
    const v = (await db.query("select validate_position('AVGUSDT', 'one-way', false) as v")).rows[0].v;
    t.equal(v.is_valid, true, 'the replacement is in the ledger, so replay reproduces it');
    await db.query('update position_manager_settings set use_ws_avg_price = false');
    p = await report(db, { event_type: 'position', data: { symbol: 'AVGUSDT', avgPrice: '60000', size: '1.0' } });
    t.equal(p.average_entry_price, '50060', 'USE_WS_AVG_PRICE=false never replaces');
    await db.query('update position_manager_settings set use_ws_avg_price = true');
  });

  await t.test('R-11 stale reports change nothing; R-13 zero is a value', async (t) => {
    await report(db, {
      event_type: 'position',
      data: { symbol: 'STLUSDT', side: 'Sell', size: '2', avgPrice: '100', unrealisedPnl: '5', seq: 10 },
    });
    let p = await report(db, {
      event_type: 'position',
      data: { symbol: 'STLUSDT', side: 'Sell', size: '2', unrealisedPnl: '7', seq: 9 },
    });
    t.equal(Number(p.unrealized_pnl), 5);
    t.equal(p.size, '-2');
    t.equal(
      (await db.query("select count(*)::int as n from position_events where kind = 'report_stale'")).rows[0].n,
      1,
    );
    p = await report(db, {
      event_type: 'position',
      data: { symbol: 'STLUSDT', side: 'Sell', size: '2', unrealisedPnl: '0', realisedPnl: '0', seq: 11 },
    });
    t.equal(Number(p.unrealized_pnl), 0);
  });

  await t.test("today's Gateway payload: snake_case, integer mode, raw record, shared event_id", async (t) => {
    const res = (
      await db.query('select _apply_position_report(null, $1::jsonb) as r', [
        JSON.stringify({
          event_id: 'gw-1',
          event_type: 'position',
          topic: 'position',
          timestamp: '2025-01-15T10:00:00',
          trace_id: 'gw',
          payload: [
            {
              symbol: 'ethusdt',
              size: '2',
              side: 'Buy',
              avg_price: '3000',
              unrealised_pnl: '10',
              realised_pnl: '1',
              mode: 1,
              raw: { markPrice: '3005', seq: 5, updatedTime: '1736935200000', positionIdx: 1 },
            },
            {
              symbol: 'ETHUSDT',
              size: '1',
              side: 'Sell',
              avg_price: '3100',
              unrealised_pnl: '95',
              mode: 2,
              raw: { markPrice: '3005', seq: 6, updatedTime: '1736935200000', positionIdx: 2 },
            },
          ],
        }),
      ])
    ).rows[0].r;
    t.same(
      res.map((r: any) => r.outcome),
      ['applied', 'applied'],
      'both positions of one event_id are applied',
    );
    const p = await row(db, 'ETHUSDT', 'hedge');
    t.same(
      [p.long_size, p.short_size, p.size, p.short_avg_price, p.current_price],
      ['2', '1', '1', '3100', '3005'],
      'R-12 per leg: the second leg, which never held anything, is adopted at once',
    );
    const v = (await db.query("select validate_position('ETHUSDT', 'hedge') as v")).rows[0].v;
    t.same(v.discrepancies, [], 'nothing left for validation');
  });

  await t.test('TC-029 invalid input names the field and leaves nothing behind', async (t) => {
    const before = (await db.query('select count(*)::int as n from positions')).rows[0].n;
    await t.rejects(
      report(db, { event_type: 'position', data: { symbol: 'INVALID', size: 'not-a-number', avgPrice: null } }),
      { message: /^size: /, code: '22023' },
    );
    await t.rejects(apply(db, { asset: 'BTCUSDT', side: 'Hold', execution_quantity: '1', execution_price: '1' }), {
      message: /^side: /,
    });
    await t.rejects(apply(db, { asset: 'BTCUSDT', side: 'Buy', execution_quantity: '0', execution_price: '1' }), {
      message: /^execution_quantity: /,
    });
    await t.rejects(
      apply(db, { asset: 'BTCUSDT', side: 'Buy', execution_quantity: '1.123456789', execution_price: '1' }),
      { message: /^execution_quantity: at most 8/ },
    );
    await t.rejects(apply(db, { asset: 'BTC-USDT', side: 'Buy', execution_quantity: '1', execution_price: '1' }), {
      message: /^asset: /,
    });
    await t.rejects(
      apply(db, { asset: 'NEWUSDT', mode: 'cross', side: 'Buy', execution_quantity: '1', execution_price: '1' }),
      { message: /^mode: / },
    );
    await t.rejects(
      apply(db, { asset: 'NEWUSDT', side: 'Buy', execution_quantity: '1', execution_price: '1', execution_fees: '-1' }),
      { message: /^execution_fees: / },
    );
    t.equal((await db.query('select count(*)::int as n from positions')).rows[0].n, before);
  });
});

t.test('identity: duplicates, cumulative order statements, Python decimals', async (t) => {
  const db = await freshDatabase(t);
  const f = { asset: 'DUPUSDT', side: 'Buy', execution_quantity: '1', execution_price: '100', execution_id: 'dup-1' };
  await apply(db, f);
  await apply(db, f);
  await db.query('select _apply_order_fill($1::jsonb, $2::jsonb)', [
    JSON.stringify({ source: 'q', message_key: 'other-key' }),
    JSON.stringify(f),
  ]);
  t.equal((await row(db, 'DUPUSDT')).size, '1', 'an execution_id is applied once, whatever the message key');

  const r = {
    event_type: 'position',
    data: { symbol: 'DUPUSDT', side: 'Buy', size: '1', unrealisedPnl: '3' },
    trace_id: 'dup-001',
  };
  await report(db, r);
  await report(db, r);
  const audits = (
    await db.query("select count(*)::int as n from position_events where kind = 'report' and asset = 'DUPUSDT'")
  ).rows[0].n;
  t.equal(audits, 1, 'TC-030: the same report twice is applied once');
  await report(db, { ...r, data: { ...r.data, unrealisedPnl: '4' } });
  t.equal(Number((await row(db, 'DUPUSDT')).unrealized_pnl), 4, 'another report with the same trace_id applies');

  // R-6 (2): three cumulative statements of one order → three increments summing to the total
  for (const [q, p] of [
    ['0.3', '100'],
    ['0.5', '101'],
    ['1.0', '102'],
  ])
    await apply(db, {
      asset: 'CUMUSDT',
      side: 'Buy',
      order_id: 'o-1',
      filled_quantity: q,
      execution_price: p,
      event_id: `e-${q}`,
    });
  await apply(db, {
    asset: 'CUMUSDT',
    side: 'Buy',
    order_id: 'o-1',
    filled_quantity: '1.0',
    execution_price: '102',
    event_id: 'e-again',
  });
  const cum = await row(db, 'CUMUSDT');
  t.equal(Number(cum.size), 1, 'the order total, not the sum of the statements');
  t.equal(Number(cum.average_entry_price), 102, 'the average is the order average');
  const legs = (await db.query("select quantity from position_fills where order_id = 'o-1' order by id")).rows.map(
    (x) => Number(x.quantity),
  );
  t.same(legs, [0.3, 0.2, 0.5]);

  // the existing enriched Order Manager event, re-published with a new event_id
  const om = (id: string, type: string, filled: string | null) => ({
    event_id: id,
    event_type: type,
    timestamp: '2025-01-15T10:00:00',
    trace_id: 'om',
    order: {
      order_id: 'om-1',
      asset: 'OMXUSDT',
      side: 'SELL',
      quantity: '2',
      filled_quantity: filled,
      average_price: filled ? '10' : null,
      fees: null,
      status: type,
    },
  });
  await apply(db, om('a', 'created', '0'));
  await apply(db, om('b', 'partially_filled', '1'));
  await apply(db, om('c', 'filled', '2'));
  await apply(db, om('d', 'filled', '2'));
  t.equal((await row(db, 'OMXUSDT')).size, '-2');

  const z = await apply(db, {
    asset: 'PYDUSDT',
    side: 'Buy',
    execution_quantity: '1.0E-7',
    execution_price: '5',
    execution_fees: '0E-8',
    execution_id: 'py',
  });
  t.equal(Number(z.size), 1e-7);
  t.equal(Number(z.total_fees), 0);
});

t.test('validation (R-17): TC-026, TC-007 and fixes from the ledger', async (t) => {
  const db = await freshDatabase(t);
  await trade(db, 'BTCUSDT', 'Buy', '1.0', '50000', { executed_at: '2025-01-15T10:00:00Z' });
  const p = await report(db, {
    event_type: 'position',
    data: { symbol: 'BTCUSDT', side: 'Buy', size: '1.2', avgPrice: '51000', updatedTime: 1736935500000 },
  });
  t.equal(p.average_entry_price, '51000', 'the newer report replaces the average at once');
  const dry = (await db.query("select validate_position('BTCUSDT', 'one-way', false) as v")).rows[0].v;
  t.equal(dry.is_valid, false);
  t.same(dry.discrepancies, [{ field: 'size', stored: '1', expected: '1.2', authority: 'exchange' }]);
  t.equal((await row(db, 'BTCUSDT')).size, '1.0', 'without fix nothing changes');
  const fixed = (await db.query("select validate_position('BTCUSDT') as v")).rows[0].v;
  t.equal(fixed.updated_position.size, '1.2');
  t.equal(fixed.updated_position.average_entry_price, '51000');
  t.equal((await db.query("select validate_position('BTCUSDT') as v")).rows[0].v.is_valid, true, 'valid after the fix');

  // TC-007: a fill newer than the report wins
  await trade(db, 'ETHUSDT', 'Buy', '1.0', '50000', { executed_at: '2025-01-15T10:00:00Z' });
  await report(db, {
    event_type: 'position',
    data: { symbol: 'ETHUSDT', side: 'Buy', size: '1.2', avgPrice: '50000', updatedTime: 1736935260000 },
  });
  await trade(db, 'ETHUSDT', 'Buy', '0.3', '50000', { executed_at: '2025-01-15T10:02:00Z' });
  const v = (await db.query("select validate_position('ETHUSDT') as v")).rows[0].v;
  t.equal(v.is_valid, true);
  t.equal((await row(db, 'ETHUSDT')).size, '1.3');

  // a stored size that disagrees with the ledger is fixed from the ledger
  await writePositionsDirectly(db, "update positions set size = 5, unrealized_pnl = 0 where asset = 'ETHUSDT'");
  const fix = (await db.query("select validate_position('ETHUSDT') as v")).rows[0].v;
  t.same(fix.discrepancies[0], { field: 'size', stored: '5', expected: '1.3', authority: 'ledger' });
  t.equal((await row(db, 'ETHUSDT')).size, '1.3');
  t.equal(
    (await db.query("select count(*)::int as n from position_events where kind = 'validation_fix'")).rows[0].n,
    2,
  );

  await t.rejects(db.query("select validate_position('NONEUSDT')"), { message: 'position_not_found', code: 'P0002' });

  const asOf = (
    await db.query(
      "select position_as_of('BTCUSDT', 'one-way', now()) as j, position_as_of('BTCUSDT', 'one-way', '2000-01-01') as before",
    )
  ).rows[0];
  t.equal(asOf.j.size, '1.2');
  t.equal(asOf.j.position_size_norm, null);
  t.equal(asOf.before, null, 'null before the position existed');
});

t.test('review findings: sides, lifecycles and event times', async (t) => {
  const db = await freshDatabase(t);
  const events = async (type: string, asset: string) =>
    (
      await db.query('select payload from outbox where event_type = $1 and payload->>$2 = $3 order by id', [
        type,
        'asset',
        asset,
      ])
    ).rows.map((r) => r.payload);

  await t.test('R-10: a report without side keeps a short short, also for validation', async (t) => {
    await trade(db, 'SHRTUSDT', 'Sell', '1', '100', { executed_at: '2025-01-15T10:00:00Z' });
    await report(db, {
      event_type: 'position',
      data: { symbol: 'SHRTUSDT', size: '1.0', unrealisedPnl: '-2', timestamp: '2025-01-15T10:01:00Z' },
    });
    t.equal((await row(db, 'SHRTUSDT')).exchange_state.net.size, -1, 'exchange_state keeps the stored sign');
    const v = (await db.query("select validate_position('SHRTUSDT') as v")).rows[0].v;
    t.equal(v.is_valid, true);
    t.equal(dec((await row(db, 'SHRTUSDT')).size), '-1');
  });

  await t.test(
    'R-8: a reduce-only hedge fill before its leg opened is kept: the row is created flat, the fee charged',
    async (t) => {
      const r = (
        await db.query('select _apply_order_fill(null, $1::jsonb) as r', [
          JSON.stringify(
            fill({
              asset: 'NEWHUSDT',
              mode: 'hedge',
              side: 'Sell',
              reduce_only: true,
              execution_quantity: '1',
              execution_price: '100',
              execution_fees: '0.5',
              executed_at: '2025-01-15T10:00:00Z',
            }),
          ),
        ])
      ).rows[0].r;
      t.match(r, { outcome: 'applied', size_discrepancy: { leg: 'long', requested: '1', applied: '0', excess: '1' } });
      const p = await row(db, 'NEWHUSDT', 'hedge');
      t.same(
        [p.size, p.long_size, p.short_size, p.total_fees, p.long_realized_pnl, p.realized_pnl].map(dec),
        ['0', '0', '0', '0.5', '-0.5', '-0.5'],
        'flat, the fee paid is charged to the leg and the row',
      );
      t.equal((p.closed_at as Date).toISOString(), '2025-01-15T10:00:00.000Z', 'a flat row is closed');
      t.equal(p.opened_at, null, 'it was never open');
      const ledger = (await db.query("select kind, leg, side, quantity from position_fills where asset = 'NEWHUSDT'"))
        .rows;
      t.match(ledger, [{ kind: 'fill', leg: 'long', side: 'Sell', quantity: '1' }], 'the ledger keeps the fill');
      const kinds = (await db.query("select kind from position_events where asset = 'NEWHUSDT' order by id")).rows.map(
        (x) => x.kind,
      );
      t.same(kinds, ['created', 'size_discrepancy']);
      const job = (await db.query("select key from graphile_worker.jobs where key = 'validate:NEWHUSDT:hedge'")).rows;
      t.equal(job.length, 1, 'a validation is scheduled');
      t.equal((await events('position_updated', 'NEWHUSDT')).length, 1, 'one event');
    },
  );

  await t.test(
    'R-8: a reduce-only fill whose position_idx names the leg its side would add to is invalid',
    async (t) => {
      for (const [side, idx, leg] of [
        ['Sell', 2, 'short'],
        ['Buy', 1, 'long'],
      ] as const) {
        await t.rejects(
          trade(db, 'ROADDUSDT', side, '1', '100', { mode: 'hedge', reduce_only: true, position_idx: idx }),
          { code: '22023', message: new RegExp(`^reduce_only: a reduce-only ${side} cannot act on the ${leg} leg`) },
        );
      }
      t.equal(await row(db, 'ROADDUSDT', 'hedge'), undefined, 'nothing applied');
    },
  );

  await t.test('a reduce-only fill on a closed hedge row leaves it closed, kind fill', async (t) => {
    await trade(db, 'CLHUSDT', 'Buy', '1', '100', { mode: 'hedge', executed_at: '2025-01-15T10:00:00Z' });
    await trade(db, 'CLHUSDT', 'Sell', '1', '110', {
      mode: 'hedge',
      reduce_only: true,
      executed_at: '2025-01-15T10:01:00Z',
    });
    const p = await trade(db, 'CLHUSDT', 'Sell', '1', '110', {
      mode: 'hedge',
      reduce_only: true,
      execution_fees: '0.1',
      executed_at: '2025-01-15T10:02:00Z',
    });
    t.equal((p.closed_at as Date).toISOString(), '2025-01-15T10:01:00.000Z', 'closed_at unchanged');
    const kinds = (await db.query("select kind from position_events where asset = 'CLHUSDT' order by id")).rows.map(
      (r) => r.kind,
    );
    t.same(
      kinds.filter((k) => k !== 'size_discrepancy'),
      ['created', 'closed', 'fill'],
    );
  });

  await t.test('position_closed.closed_at is the fill time for a flip and a hedge leg', async (t) => {
    await trade(db, 'FLPUSDT', 'Buy', '1', '100', { executed_at: '2025-01-15T10:00:00Z' });
    await trade(db, 'FLPUSDT', 'Sell', '3', '110', { executed_at: '2025-01-15T11:00:00Z' });
    t.match(await events('position_closed', 'FLPUSDT'), [
      { reason: 'flip', closed_at: '2025-01-15T11:00:00.000Z', opened_at: '2025-01-15T10:00:00.000Z' },
    ]);
    await trade(db, 'LEGUSDT', 'Buy', '1', '100', { mode: 'hedge', executed_at: '2025-01-15T10:00:00Z' });
    await trade(db, 'LEGUSDT', 'Sell', '1', '100', { mode: 'hedge', executed_at: '2025-01-15T10:01:00Z' });
    await trade(db, 'LEGUSDT', 'Sell', '1', '105', {
      mode: 'hedge',
      reduce_only: true,
      executed_at: '2025-01-15T10:02:00Z',
    });
    t.match(await events('position_closed', 'LEGUSDT'), [
      { leg: 'long', reason: 'fill', closed_at: '2025-01-15T10:02:00.000Z' },
    ]);
  });

  await t.test('R-17: a fix that reverses a one-way position ends one lifecycle and starts another', async (t) => {
    await trade(db, 'REVUSDT', 'Sell', '1', '100', { executed_at: '2025-01-15T10:00:00Z' });
    await report(db, {
      event_type: 'position',
      data: { symbol: 'REVUSDT', side: 'Buy', size: '1', avgPrice: '105', timestamp: '2025-01-15T10:05:00Z' },
    });
    const before = await row(db, 'REVUSDT');
    const v = (await db.query("select validate_position('REVUSDT') as v")).rows[0].v;
    t.equal(v.is_valid, false);
    const after = await row(db, 'REVUSDT');
    t.equal(dec(after.size), '1', 'the exchange is the authority');
    t.ok(after.opened_at > before.opened_at, 'a new lifecycle');
    t.match(await events('position_closed', 'REVUSDT'), [{ reason: 'validation', closed_size: '-1' }]);
  });
});

t.test('concurrency: 8 connections, 2,000 fills to one new asset, one row with the exact sum', async (t) => {
  const db = await freshDatabase(t);
  const workers = Array.from({ length: 8 }, (_, w) =>
    (async () => {
      const c = await db.pool.connect();
      try {
        for (let i = 0; i < 250; i++)
          await c.query('select apply_order_fill($1::jsonb)', [
            JSON.stringify({
              asset: 'RACEUSDT',
              side: 'Buy',
              execution_quantity: '0.001',
              execution_price: String(100 + (i % 7)),
              execution_id: `r-${w}-${i}`,
            }),
          ]);
      } finally {
        c.release();
      }
    })(),
  );
  await Promise.all(workers);
  const rows = (await db.query("select size, total_fees from positions where asset = 'RACEUSDT'")).rows;
  t.equal(rows.length, 1);
  t.equal(rows[0].size, '2.000');
  t.equal((await db.query("select count(*)::int as n from position_fills where asset = 'RACEUSDT'")).rows[0].n, 2000);
  t.equal((await db.query("select validate_position('RACEUSDT', 'one-way', false) as v")).rows[0].v.is_valid, true);
});

t.test('concurrency: the same 50 messages sent by 8 connections at once apply once each', async (t) => {
  const db = await freshDatabase(t);
  const bodies = Array.from(
    { length: 50 },
    (_, i) =>
      i % 2 === 0
        ? {
            asset: 'DUPCUSDT',
            side: 'Buy',
            execution_quantity: '0.01',
            execution_price: '100',
            execution_id: `dc-${i}`,
          }
        : { asset: 'DUPCUSDT', side: 'Buy', execution_quantity: '0.01', execution_price: String(100 + i) }, // keyed by body hash
  );
  const outcomes = await Promise.all(
    Array.from({ length: 8 }, async () => {
      const c = await db.pool.connect();
      try {
        const seen: string[] = [];
        for (const b of bodies)
          seen.push(
            (await c.query('select _apply_order_fill(null, $1::jsonb) as r', [JSON.stringify(b)])).rows[0].r.outcome,
          );
        return seen;
      } finally {
        c.release();
      }
    }),
  );
  const applied = outcomes.flat().filter((o) => o === 'applied').length;
  t.equal(applied, 50, 'each message applied exactly once');
  t.equal(outcomes.flat().filter((o) => o === 'duplicate').length, 350, 'the other deliveries are duplicates');
  t.equal((await db.query("select size from positions where asset = 'DUPCUSDT'")).rows[0].size, '0.50');
  t.equal(
    (await db.query("select count(*)::int as n from outbox where event_type = 'position_updated'")).rows[0].n,
    50,
    'one event each',
  );
});

t.test('review findings: exchange adoption, reports and old timestamps', async (t) => {
  const db = await freshDatabase(t);
  const validate = async (asset: string, mode = 'one-way') =>
    (await db.query('select validate_position($1, $2, true) as v', [asset, mode])).rows[0].v;

  await t.test(
    "R-17: adopting a reopened size takes the report's unrealized PnL, though the row was flat",
    async (t) => {
      await trade(db, 'UPAUSDT', 'Buy', '1', '100', { executed_at: '2025-03-01T00:00:00Z' });
      await trade(db, 'UPAUSDT', 'Sell', '1', '101', { executed_at: '2025-03-01T00:01:00Z' });
      await report(db, {
        event_type: 'position',
        data: {
          symbol: 'UPAUSDT',
          side: 'Buy',
          size: '1',
          avgPrice: '100',
          markPrice: '105',
          unrealisedPnl: '4.5',
          updatedTime: 1740787500000,
        },
      });
      const v = await validate('UPAUSDT');
      t.match(v.updated_position, { size: '1', unrealized_pnl: '4.5', unrealized_pnl_pct: '4.5' });
      t.equal(dec((await row(db, 'UPAUSDT')).unrealized_pnl), '4.5');
    },
  );

  await t.test("R-17/R-7: without the report's PnL the adopted size is marked to the mark price", async (t) => {
    await trade(db, 'UPBUSDT', 'Buy', '1', '100', { executed_at: '2025-03-01T00:00:00Z' });
    await report(db, {
      event_type: 'position',
      data: { symbol: 'UPBUSDT', side: 'Buy', size: '3', markPrice: '110', updatedTime: 1740787500000 },
    });
    const v = await validate('UPBUSDT');
    t.match(v.updated_position, { size: '3', average_entry_price: '100', unrealized_pnl: '30' });
  });

  await t.test("R-17 in hedge mode: an adopted leg that was flat takes its report's PnL", async (t) => {
    await trade(db, 'UPHUSDT', 'Buy', '2', '50', { mode: 'hedge', executed_at: '2025-03-01T00:00:00Z' });
    await report(db, {
      event_type: 'position',
      data: {
        symbol: 'UPHUSDT',
        positionIdx: 2,
        side: 'Sell',
        size: '3',
        avgPrice: '52',
        markPrice: '51',
        unrealisedPnl: '3',
        updatedTime: 1740787500000,
      },
    });
    await validate('UPHUSDT', 'hedge');
    const p = await row(db, 'UPHUSDT', 'hedge');
    t.same([p.short_size, p.short_avg_price, p.short_unrealized_pnl].map(dec), ['3', '52', '3']);
    t.equal(dec(p.long_unrealized_pnl), '2', 'the long leg (ledger) is marked: (51 - 50) x 2');
    t.equal(dec(p.unrealized_pnl), '5');
  });

  await t.test('R-12: a hedge report without an average creates the leg with an unknown average', async (t) => {
    const r = (
      await db.query('select _apply_position_report(null, $1::jsonb) as r', [
        JSON.stringify({
          event_type: 'position',
          payload: { symbol: 'HNAUSDT', side: 'Buy', size: '2', positionIdx: 1, markPrice: '10', unrealisedPnl: '1.5' },
        }),
      ])
    ).rows[0].r;
    t.match(r, [{ outcome: 'applied' }]);
    let p = await row(db, 'HNAUSDT', 'hedge');
    t.same([p.long_size, p.long_avg_price, p.average_entry_price, p.unrealized_pnl].map(dec), ['2', null, null, '1.5']);
    p = await trade(db, 'HNAUSDT', 'Sell', '1', '12', { mode: 'hedge' });
    t.same(
      [p.short_size, p.short_avg_price, p.long_unrealized_pnl, p.short_unrealized_pnl].map(dec),
      ['1', '12', '1.5', '2'],
      "a fill on the other leg keeps the unknown leg's exchange PnL (the new leg: (12 - 10) x 1)",
    );
  });

  await t.test(
    "R-12/R-7: a reduction of a position whose average is unknown scales the exchange's PnL with the size",
    async (t) => {
      await report(db, {
        event_type: 'position',
        data: { symbol: 'NOAVUSDT', side: 'Buy', size: '2', markPrice: '60', unrealisedPnl: '100' },
      });
      const p = await trade(db, 'NOAVUSDT', 'Sell', '1.5', '61');
      t.same([p.size, p.average_entry_price, p.unrealized_pnl].map(dec), ['0.5', null, '25'], '100 x 0.5 / 2');
      await report(db, {
        event_type: 'position',
        data: { symbol: 'NOAVUSDT', positionIdx: 2, side: 'Sell', size: '4', markPrice: '60', unrealisedPnl: '-40' },
      });
      const h = await trade(db, 'NOAVUSDT', 'Buy', '3', '61', { mode: 'hedge', reduce_only: true });
      t.same(
        [h.short_size, h.short_unrealized_pnl, h.unrealized_pnl].map(dec),
        ['1', '-10', '-10'],
        'the hedge leg alike: -40 x 1 / 4',
      );
    },
  );

  await t.test(
    "R-17: a validation fix recomputes the position from the mark; the adopted leg takes its report's figure",
    async (t) => {
      await trade(db, 'TWOLUSDT', 'Buy', '1', '100', { mode: 'hedge', executed_at: '2025-03-01T00:00:00Z' });
      await trade(db, 'TWOLUSDT', 'Sell', '1', '100', { mode: 'hedge', executed_at: '2025-03-01T00:00:00Z' });
      // a report for each leg, both at mark 110
      for (const [positionIdx, side, size, unrealisedPnl] of [
        [1, 'Buy', '1', '10.5'],
        [2, 'Sell', '3', '-31'],
      ] as const) {
        const data = { symbol: 'TWOLUSDT', positionIdx, side, size, markPrice: '110', unrealisedPnl };
        await report(db, { event_type: 'position', data: { ...data, updatedTime: 1740787500000 } });
      }
      await validate('TWOLUSDT', 'hedge');
      const p = await row(db, 'TWOLUSDT', 'hedge');
      t.same(
        [p.long_unrealized_pnl, p.short_size, p.short_unrealized_pnl, p.unrealized_pnl].map(dec),
        ['10', '3', '-31', '-21'],
        "long: (110 - 100) x 1 as R-8 says; short: the report's -31",
      );
    },
  );

  await t.test('§6.1: report prices with more than 8 places are invalid, naming the field', async (t) => {
    const cases: [string, string][] = [
      ['avgPrice', '100.123456789'],
      ['markPrice', '101.1234567891'],
      ['entryPrice', '1.000000001'],
    ];
    for (const [field, value] of cases) {
      await t.rejects(
        report(db, { event_type: 'position', data: { symbol: 'DECUSDT', side: 'Buy', size: '1', [field]: value } }),
        {
          code: '22023',
          message: new RegExp(`^${field === 'entryPrice' ? 'avgPrice' : field}: at most 8 fractional digits`),
        },
        field,
      );
    }
    t.equal(await row(db, 'DECUSDT'), undefined, 'nothing created');
  });

  await t.test('R-10: side "" (or "None") is flat whatever the size', async (t) => {
    await report(db, { event_type: 'position', data: { symbol: 'EMPUSDT', side: '', size: '1', avgPrice: '10' } });
    t.equal(await row(db, 'EMPUSDT'), undefined, 'flat for an unknown position: no row');
    await trade(db, 'EMQUSDT', 'Buy', '1', '5');
    await report(db, { event_type: 'position', data: { symbol: 'EMQUSDT', side: 'None', size: '1', avgPrice: '5' } });
    t.equal((await row(db, 'EMQUSDT')).exchange_state.net.size, 0, 'the exchange reports it flat');
  });

  await t.test('§2 conv. 5: a time outside the years 0001-9999 is invalid input, naming the field', async (t) => {
    await t.rejects(
      trade(db, 'FUTUSDT', 'Buy', '1', '1', { executed_at: '0001-01-01T00:00:00+05:00' }),
      { code: '22023', message: /^executed_at: is outside/ },
      'a BC time',
    );
    await t.rejects(trade(db, 'FUTUSDT', 'Buy', '1', '1', { executed_at: '2000000000000000' }), {
      code: '22023',
      message: /^executed_at: is outside the years 0001 to 9999/,
    });
    await t.rejects(
      report(db, {
        event_type: 'position',
        data: { symbol: 'FUTUSDT', side: 'Buy', size: '1', createdTime: '2000000000000000' },
      }),
      { code: '22023', message: /^createdTime: is outside the years 0001 to 9999/ },
    );
    const p = await trade(db, 'FUTUSDT', 'Buy', '1', '1', { executed_at: '9999-12-31T23:59:59Z' });
    t.equal(
      (await json(db, 'FUTUSDT')).opened_at,
      '9999-12-31T23:59:59.000Z',
      `the last representable time is kept (${p.asset})`,
    );
  });

  await t.test("R-10: the Gateway's integer mode must agree with positionIdx", async (t) => {
    for (const [mode, raw, pidx] of [
      [1, { positionIdx: 2 }, undefined],
      [2, {}, 0],
    ] as const) {
      await t.rejects(
        report(db, {
          event_type: 'position',
          payload: {
            symbol: 'MODEUSDT',
            side: 'Buy',
            size: '1',
            avg_price: '5',
            mode,
            raw,
            ...(pidx === undefined ? {} : { positionIdx: pidx }),
          },
        }),
        { code: '22023', message: /^mode: contradicts positionIdx/ },
        `mode ${mode}`,
      );
    }
    await report(db, {
      event_type: 'position',
      payload: { symbol: 'MODEUSDT', side: 'Sell', size: '1', avg_price: '5', mode: 2, raw: { positionIdx: 2 } },
    });
    await report(db, {
      event_type: 'position',
      payload: { symbol: 'MODEUSDT', side: 'Buy', size: '1', avg_price: '5', mode: 1.0, positionIdx: '1' },
    });
    t.equal(
      (await row(db, 'MODEUSDT', 'hedge')).exchange_state.long.size,
      1,
      'mode 1.0 and positionIdx "1" agree: the long leg',
    );
    t.equal(dec((await row(db, 'MODEUSDT', 'hedge')).short_size), '1', 'agreeing: the short leg');
  });

  await t.test(
    'fuzz findings: absurd magnitudes, an odd offset and non-ASCII symbols are invalid input, naming the field',
    async (t) => {
      const base = { asset: 'FZZUSDT', side: 'Buy', execution_quantity: '1', execution_price: '1' };
      const cases: [Record<string, unknown>, RegExp][] = [
        [{ execution_quantity: '9e9999' }, /^execution_quantity: is out of range/],
        [{ execution_fees: '1e-9999' }, /^execution_fees: at most 30 fractional digits/],
        [{ executed_at: '2025-01-15T10:00:00+99:99' }, /^executed_at: is not a valid time/],
        [{ asset: 'btcu\u017fdt' }, /^asset: must be 2-20 letters or digits/],
      ];
      for (const [extra, message] of cases)
        await t.rejects(apply(db, fill({ ...base, ...extra })), { code: '22023', message }, JSON.stringify(extra));
      await t.rejects(
        report(db, {
          event_type: 'position',
          data: { symbol: 'FZZUSDT', side: 'Sell', size: '1', unrealisedPnl: '-9e9999' },
        }),
        { code: '22023', message: /^unrealisedPnl: is out of range/ },
      );
      const p = await apply(db, fill({ ...base, execution_fees: '0E-9999' }));
      t.equal(p.total_fees, '0', 'zeros with a long exponent are zero');
    },
  );

  await t.test('positions_view survives a price time more than 68 years old', async (t) => {
    await trade(db, 'OLDUSDT', 'Buy', '1', '5', { executed_at: '1900-01-01T00:00:00Z' });
    const v = (await db.query("select price_age_seconds from positions_view where asset = 'OLDUSDT'")).rows[0];
    t.ok(BigInt(v.price_age_seconds) > 2n ** 31n, `price_age_seconds ${v.price_age_seconds}`);
  });
});
