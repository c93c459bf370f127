// The consumer's lanes (src/messaging/consumer.ts): a batch of fills is split by asset so that
// two transactions apply it at once, and every asset's fills stay in one lane in arrival order.
// The end-to-end effect (positions equal the reference model) is in test/reliability/.
import t from 'tap';
import { lanes, lockOrder } from '../../src/messaging/consumer.js';
import { checkBody } from '../../src/messaging/schemas.js';

const body = (o: unknown) => Buffer.from(JSON.stringify(o));

t.test('the asset of a fill, as SQL reads it; none for reports', async (t) => {
  const flat = checkBody(
    'fill',
    body({ asset: ' btcusdt ', side: 'Buy', execution_quantity: '1', execution_price: '2' }),
  );
  t.match(flat, { ok: true, asset: 'BTCUSDT' }, 'flat fill: asset, trimmed, upper case');
  t.match(checkBody('fill', body({ symbol: 'ethUSDT', side: 'Sell' })), { ok: true, asset: 'ETHUSDT' }, 'symbol alias');
  t.match(
    checkBody('fill', body({ order: { asset: 'SolUsdt', order_id: 'o' } })),
    { ok: true, asset: 'SOLUSDT' },
    'enriched fill',
  );
  const report = checkBody('report', body({ event_type: 'position', data: { symbol: 'BTCUSDT', size: '1' } }));
  t.equal(report.ok && report.asset, undefined, 'reports carry no lane asset');
});

t.test('each asset in exactly one lane, arrival order kept; anything without an asset stays one batch', async (t) => {
  const assets = Array.from({ length: 40 }, (_, i) => `A${i}USDT`);
  const batch = Array.from({ length: 400 }, (_, i) => ({ asset: assets[(i * 7) % assets.length]!, seq: i }));
  const split = lanes(batch);
  t.equal(split.length, 2, 'forty assets fill two lanes');
  t.equal(split.flat().length, batch.length, 'nothing lost or copied');
  for (const lane of split)
    t.ok(
      lane.every((d, i) => i === 0 || lane[i - 1]!.seq < d.seq),
      'arrival order within the lane',
    );
  const lanesOf = new Map<string, Set<number>>();
  split.forEach((lane, k) => lane.forEach((d) => lanesOf.set(d.asset, (lanesOf.get(d.asset) ?? new Set()).add(k))));
  t.equal(lanesOf.size, assets.length, 'every asset placed');
  t.same(
    [...lanesOf.values()].filter((s) => s.size > 1),
    [],
    'no asset in two lanes',
  );

  t.same(
    lanes([{ asset: 'A1USDT' }, { asset: undefined }]),
    [[{ asset: 'A1USDT' }, { asset: undefined }]],
    'a message without an asset: one batch',
  );
  t.same(
    lanes([{ asset: 'A1USDT' }, { asset: 'A1USDT' }]),
    [[{ asset: 'A1USDT' }, { asset: 'A1USDT' }]],
    'one asset: one lane',
  );
});

t.test(
  "lock order: each transaction takes its rows by (asset, mode), one position's messages in arrival order",
  async (t) => {
    const key = (o: unknown, kind: 'fill' | 'report' = 'fill') => {
      const c = checkBody(kind, body(o));
      return c.ok ? c.lockKey : 'invalid';
    };
    t.equal(key({ asset: ' btcusdt ', side: 'Buy', execution_quantity: '1', execution_price: '2' }), 'BTCUSDT one-way');
    t.equal(
      key({ asset: 'btcusdt', mode: 'Hedge', side: 'Buy', execution_quantity: '1', execution_price: '2' }),
      'BTCUSDT hedge',
    );
    t.equal(
      key({ event_type: 'position', data: { symbol: 'ethusdt', size: '1' } }, 'report'),
      'ETHUSDT',
      'a report of one position',
    );
    t.equal(
      key({ event_type: 'position', payload: { size: '1', raw: { symbol: 'SOLUSDT' } } }, 'report'),
      'SOLUSDT',
      "the Gateway's raw symbol",
    );
    t.equal(
      key({ event_type: 'position', payload: [{ symbol: 'A1USDT', size: '1' }] }, 'report'),
      undefined,
      'an array: unknown',
    );

    const batch = ['C one-way', 'A hedge', 'B one-way', 'A one-way', 'C one-way', 'A hedge'].map((lockKey, seq) => ({
      lockKey,
      seq,
    }));
    t.same(
      lockOrder(batch).map((d) => d.seq),
      [1, 5, 3, 2, 0, 4],
      'sorted by row, stable within one row',
    );
    const mixed = [{ lockKey: 'B' }, { lockKey: undefined }, { lockKey: 'A' }];
    t.same(lockOrder(mixed), mixed, 'a message whose row is unknown: arrival order');
  },
);
