// The consumers and the outbox relay against the real RabbitMQ (a vhost of this file's own)
// and PostgreSQL: every payload variant of SPEC.md §6.1, dead letters, duplicates, fan-out,
// and reconnection after the broker drops the service's connections.
import crypto from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import t from 'tap';
import { freshBroker, type Collected } from '../helpers/amqp.js';
import { freshDatabase } from '../helpers/db.js';
import { listQueues, queueArguments } from '../helpers/reliability-queues.js';
import { startWorker } from '../helpers/reliability-stack.js';
import { waitFor } from '../helpers/wait.js';

const FILLS = 'order-manager.order_executed';
const ORDER_EVENTS = 'order-manager.order_events';
const REPORTS = 'ws-gateway.position';
const UPDATED = 'position-manager.position_updated';
const DLQ = 'position-manager.dead_letter';

const db = await freshDatabase(t);
const broker = await freshBroker(t);
const svc = await startWorker(t, db, broker, { env: { POSITION_MANAGER_SIZE_DISCREPANCY_GRACE_SECONDS: '1' } });

const updated = await broker.collect(UPDATED);
const deadLetters = await broker.collect(DLQ);
const position = async (asset: string, mode = 'one-way') =>
  (await db.query('select * from positions where asset = $1 and mode = $2', [asset, mode])).rows[0];
const eventsFor = (c: Collected, asset: string) => c.bodies().filter((b) => b.asset === asset);
const waitPosition = (asset: string, pred: (p: any) => boolean, what: string, mode = 'one-way') =>
  waitFor(
    async () => {
      const p = await position(asset, mode);
      return p && pred(p) ? p : undefined;
    },
    { what, timeoutMs: 15_000 },
  );
/** A buy of 1 @ 10 of `asset` on the fill queue, `extra` fields (an id, a trace id) after those four. */
const buyOneAtTen = (asset: string, extra: Record<string, unknown> = {}) =>
  broker.publish(FILLS, { asset, side: 'Buy', execution_quantity: '1', execution_price: '10', ...extra });
/** Publishes raw bodies in order, each on its queue. */
const publishRaw = async (messages: [queue: string, body: string][]) => {
  for (const [queue, body] of messages) await broker.publish(queue, body);
};

t.test('a fill becomes a committed change and a position_updated event; fan-out copies', async (t) => {
  const ch = await broker.connection.createChannel();
  t.teardown(() => ch.close().catch(() => undefined));
  const copies: any[][] = [[], []];
  for (const i of [0, 1]) {
    const q = await ch.assertQueue('', { exclusive: true });
    await ch.bindQueue(q.queue, 'position-manager.events', UPDATED);
    await ch.consume(q.queue, (m) => m && copies[i]!.push(JSON.parse(m.content.toString())), { noAck: true });
  }
  await broker.publish(
    FILLS,
    '{"event_type":"order_executed","order_id":"order-123","asset":"btcusdt","side":"BUY","execution_price":48000.00,"execution_quantity":"1.0","execution_fees":"0E-8","executed_at":"2025-01-15T10:00:00","trace_id":"test-trace-004"}',
  );
  await broker.publish(FILLS, {
    event_type: 'order_executed',
    order_id: 'order-124',
    asset: 'BTCUSDT',
    side: 'BUY',
    execution_price: '50000.00',
    execution_quantity: '0.5',
    execution_fees: '25.00',
    executed_at: '2025-01-15T10:10:00Z',
    trace_id: 'test-trace-004b',
  });
  const p = await waitPosition('BTCUSDT', (p) => p.version === '2', 'two fills applied');
  t.equal(p.size, '1.5');
  t.equal(p.average_entry_price, '48666.6666666667', 'TC-004 from a JSON number, exactly');
  t.equal(p.total_fees, '25.00000000', '"0E-8" + 25.00, exactly');
  const events = await waitFor(() => eventsFor(updated, 'BTCUSDT').length >= 2 && eventsFor(updated, 'BTCUSDT'), {
    what: 'events',
  });
  const last = events[1];
  t.match(last, {
    event_type: 'position_updated',
    asset: 'BTCUSDT',
    mode: 'one-way',
    size: '1.5',
    average_entry_price: '48666.66666667',
    average_price: '48666.66666667',
    update_source: 'order_execution',
    version: 2,
    trace_id: 'test-trace-004b',
    position: { size: '1.5', position_size_norm: '1', time_held_minutes: Number },
  });
  t.ok(Array.isArray(last.changed_fields) && last.changed_fields.includes('size'), 'changed_fields');
  const msg = updated.messages.find((m) => JSON.parse(m.content.toString()).event_id === last.event_id)!;
  t.equal(msg.properties.messageId, last.event_id, 'message_id = event_id');
  t.equal(msg.properties.deliveryMode, 2, 'persistent');
  t.equal(msg.properties.type, 'position_updated');
  t.equal(msg.properties.headers?.trace_id, 'test-trace-004b');
  await waitFor(() => copies.every((c) => c.filter((b) => b.asset === 'BTCUSDT').length >= 2), {
    what: 'both subscribers get every event',
  });
});

t.test('R-6: one order reported three times with growing cumulative quantity', async (t) => {
  for (const [q, price] of [
    ['0.1', '100'],
    ['0.3', '110'],
    ['0.6', '120'],
  ])
    await broker.publish(FILLS, {
      order_id: 'cum-1',
      asset: 'CUMUSDT',
      side: 'Buy',
      filled_quantity: q,
      execution_price: price,
    });
  await broker.publish(FILLS, {
    order_id: 'cum-1',
    asset: 'CUMUSDT',
    side: 'Buy',
    filled_quantity: '0.6',
    execution_price: '120',
    trace_id: 'again',
  });
  const p = await waitPosition('CUMUSDT', (p) => p.size === '0.6', 'cumulative total');
  t.equal(p.average_entry_price, '120.0000000000', 'the order average is the cumulative price');
  const fills = (await db.query("select quantity from position_fills where order_id = 'cum-1' order by id")).rows.map(
    (r) => r.quantity,
  );
  t.same(fills, ['0.1', '0.2', '0.3'], 'three increments summing to the total');
  const inbox = (
    await db.query('select outcome from inbox where source = $1 and position_id = $2 order by applied_at', [
      FILLS,
      p.id,
    ])
  ).rows;
  t.ok(
    inbox.some((r) => r.outcome === 'no_op'),
    'the repeated statement is a no-op',
  );
});

t.test("today's Order Manager events on order_events: created no-op, partial, filled, re-published", async (t) => {
  const ev = (type: string, filled: string, avg: string | null, fees: string | null) => ({
    event_id: crypto.randomUUID(),
    event_type: type,
    timestamp: '2025-01-15T10:00:00',
    trace_id: 'om-1',
    order: {
      order_id: 'om-order-1',
      asset: 'OMXUSDT',
      side: 'SELL',
      quantity: '2',
      filled_quantity: filled,
      average_price: avg,
      fees,
      status: type,
      executed_at: null,
    },
    execution_details: {},
  });
  await broker.publish(ORDER_EVENTS, ev('created', '0', null, null));
  await broker.publish(ORDER_EVENTS, ev('partially_filled', '1', '10', '0.01'));
  await broker.publish(ORDER_EVENTS, ev('filled', '2', '11', '0.02'));
  await broker.publish(ORDER_EVENTS, ev('filled', '2', '11', '0.02'));
  const marker = { order_id: 'om-marker', asset: 'OMXUSDT', side: 'Sell', execution_quantity: '1' };
  await broker.publish(FILLS, { ...marker, execution_price: '12' });
  const p = await waitPosition('OMXUSDT', (p) => p.size === '-3', 'order events and the marker applied');
  t.equal(p.total_fees, '0.02');
  t.equal(p.average_entry_price, '11.3333333333', '2 @ 11 then 1 @ 12');
  t.equal(
    Number((await db.query("select count(*) from position_fills where order_id = 'om-order-1'")).rows[0].count),
    2,
  );
});

t.test("reports: TC-001 via data; today's Gateway payload with raw and a shared event_id", async (t) => {
  // The TC-001 report: a long of 1.5 at 50000.00, 150.00 unrealised, opened at 10:00 UTC.
  const held = { side: 'Buy', size: '1.5', avgPrice: '50000.00', unrealisedPnl: '150.00' };
  const opened = { positionValue: '75000.00', mode: 'one-way', timestamp: '2025-01-15T10:00:00Z' };
  await broker.publish(REPORTS, {
    event_type: 'position',
    channel: 'position',
    data: { symbol: 'TCAUSDT', ...held, ...opened },
    trace_id: 'test-trace-001',
  });
  const p = await waitPosition('TCAUSDT', () => true, 'TC-001');
  t.match(p, {
    size: '1.5',
    average_entry_price: '50000.00',
    unrealized_pnl: '150.00',
    average_entry_price_source: 'exchange',
  });
  t.equal((p.opened_at as Date).toISOString(), '2025-01-15T10:00:00.000Z');
  const shared = crypto.randomUUID();
  const gw = (symbol: string, side: string, idx: number, seq: number) => ({
    event_id: shared,
    event_type: 'position',
    topic: 'position',
    timestamp: '2025-01-15T10:00:00',
    received_at: '2025-01-15T10:00:00',
    trace_id: 'gw-1',
    payload: {
      symbol,
      size: '2',
      side,
      avg_price: '100',
      unrealised_pnl: '4',
      realised_pnl: '1',
      mode: idx,
      timestamp: '2025-01-15T10:00:00',
      source_channel: 'position',
      trace_id: 'gw-1',
      raw: {
        symbol,
        entryPrice: '100',
        markPrice: '102',
        seq,
        updatedTime: String(Date.now() - 1000),
        createdTime: String(Date.now() - 60_000),
        positionIdx: idx,
        cumRealisedPnl: '1',
      },
    },
  });
  await broker.publish(REPORTS, gw('GWAUSDT', 'Buy', 1, 10));
  await broker.publish(REPORTS, gw('GWAUSDT', 'Sell', 2, 11));
  const keys = await waitFor(
    async () => {
      const r = (await db.query('select message_key from inbox where message_key like $1 order by 1', [`${shared}:%`]))
        .rows;
      return r.length === 2 && r.map((x) => x.message_key);
    },
    { what: 'both reports of one event_id applied' },
  );
  t.same(keys, [`${shared}:GWAUSDT:long`, `${shared}:GWAUSDT:short`], 'R-3 report keys per symbol and leg');
  const h = await position('GWAUSDT', 'hedge');
  t.match(
    h,
    { long_size: '2', long_avg_price: '100', current_price: '102' },
    'integer mode 1 = long leg; prices from raw',
  );
  t.match(
    h,
    { short_size: '2', short_avg_price: '100', size: '0' },
    'R-12 per leg: the short leg, never held, is adopted at once',
  );
  const note = await db.query(
    "select details from position_events where position_id = $1 and kind = 'size_discrepancy'",
    [h.id],
  );
  t.equal(note.rowCount, 0, 'no discrepancy, no validation to wait for');
});

t.test(
  'an array payload is applied in one transaction; queues owned by others get their owner arguments',
  async (t) => {
    await broker.publish(REPORTS, {
      event_type: 'position',
      event_id: 'arr-1',
      payload: [
        { symbol: 'ARRAUSDT', side: 'Buy', size: '1', avgPrice: '10' },
        { symbol: 'ARRBUSDT', side: 'Sell', size: '2', avgPrice: '20' },
      ],
    });
    const a = await waitPosition('ARRAUSDT', () => true, 'first report');
    const b = await waitPosition('ARRBUSDT', () => true, 'second report');
    t.same([a.size, b.size], ['1', '-2']);
    const queues = await listQueues(broker.vhost);
    t.match(
      queueArguments(queues, REPORTS),
      { 'x-message-ttl': 86400000, 'x-max-length': 100000, 'x-overflow': 'drop-head' },
      "the Gateway's arguments",
    );
    for (const q of [
      'position-manager.dead_letter',
      UPDATED,
      'position-manager.portfolio_updated',
      'position-manager.position_snapshot_created',
      'position-manager.position_closed',
      'position-manager.portfolio_limit_exceeded',
    ])
      t.ok(
        queues.some((x) => x.name === q),
        `${q} declared`,
      );
  },
);

t.test('dead letters: each bad input lands there with its reason; nothing of it is applied', async (t) => {
  const before = deadLetters.messages.length;
  const bad: [string, string | object, RegExp][] = [
    [REPORTS, { event_type: 'position', data: { symbol: 'INVALID', size: 'not-a-number', avgPrice: null } }, /size/],
    [FILLS, '{"asset": "BADUSDT", "side": ', /body: not valid JSON/],
    [FILLS, { asset: 'BADUSDT', side: 'Buy', execution_quantity: '-1', execution_price: '10' }, /execution_quantity/],
    [FILLS, { asset: 'bad asset!', side: 'Buy', execution_quantity: '1', execution_price: '10' }, /asset/],
    [FILLS, { asset: 'BADUSDT', side: 'Hold', execution_quantity: '1', execution_price: '10' }, /side/],
    [
      FILLS,
      { asset: 'BADUSDT', side: 'Buy', execution_quantity: '1.123456789', execution_price: '10' },
      /execution_quantity/,
    ],
    [
      FILLS,
      { asset: 'BADUSDT', side: 'Buy', execution_quantity: '1', execution_price: '10', junk: 'x'.repeat(1024 * 1024) },
      /larger than/,
    ],
    [REPORTS, { event_type: 'position', payload: [] }, /payload/],
    [REPORTS, { data: { symbol: 'NOTYPEUSDT', side: 'Buy', size: '1' } }, /event_type: must be position/],
    [
      REPORTS,
      { event_type: 'position', data: { symbol: 'IDXUSDT', side: 'Buy', size: '1', positionIdx: 1.5 } },
      /positionIdx/,
    ],
    [
      FILLS,
      '{"asset":"BADUSDT","side":"Buy","execution_quantity":1e1000000,"execution_price":"10"}',
      /execution_quantity/,
    ],
    [
      FILLS,
      { asset: 'BADUSDT', side: 'Buy', execution_quantity: '1', execution_price: '1e1000000' },
      /execution_price/,
    ],
  ];
  for (const [queue, body] of bad) await broker.publish(queue, body, { messageId: crypto.randomUUID() });
  await buyOneAtTen('GOODUSDT');
  await waitPosition('GOODUSDT', () => true, 'the consumer keeps going');
  await waitFor(() => deadLetters.messages.length >= before + bad.length, { what: 'dead letters', timeoutMs: 15_000 });
  const got = deadLetters.messages.slice(before);
  for (const [queue, , reason] of bad) {
    const hit = got.find(
      (m) =>
        m.properties.headers?.['x-original-queue'] === queue &&
        reason.test(String(m.properties.headers?.['x-dead-letter-reason'])),
    );
    t.ok(hit, `dead-lettered with a reason matching ${reason}`);
    if (hit) {
      t.ok(hit.properties.headers?.['x-first-failed-at'], 'x-first-failed-at');
      t.equal(hit.properties.headers?.['x-original-message-id'], hit.properties.messageId);
    }
  }
  t.equal(
    (await db.query("select count(*) from positions where asset in ('BADUSDT', 'INVALID', 'NOTYPEUSDT', 'IDXUSDT')"))
      .rows[0].count,
    '0',
  );
  t.ok(
    svc.logs.some((l) => l.msg === 'message dead-lettered' && l.level === 'warn' && /size/.test(l.reason)),
    'logged at warn with the reason',
  );
});

t.test('duplicates: same message_id, same body without ids — applied once, one event', async (t) => {
  const body = { asset: 'DUPUSDT', side: 'Buy', execution_quantity: '1', execution_price: '10' };
  await broker.publish(FILLS, body, { messageId: 'dup-m-1' });
  await broker.publish(FILLS, { ...body, execution_quantity: '2' }, { messageId: 'dup-m-1' });
  // One queue keeps its order: once the marker is applied, the duplicate was handled before it.
  await buyOneAtTen('DUPUSDT', { execution_id: 'dup-marker' });
  const p = await waitPosition('DUPUSDT', (p) => p.version === '2', 'fill and marker');
  t.equal(p.size, '2', 'the second message with the same message_id changed nothing');
  // Reports come on another queue: only after the fills, so the report cannot create the row.
  for (let copy = 0; copy < 2; copy++)
    await broker.publish(REPORTS, {
      event_type: 'position',
      data: { symbol: 'DUPUSDT', size: '2', unrealisedPnl: '5' },
      trace_id: 'dup-001',
    });
  await waitPosition('DUPUSDT', (p) => p.version === '3' && p.unrealized_pnl === '5', 'the report');
  await waitFor(
    () => svc.logs.filter((l) => l.msg === 'duplicate message ignored' && l.asset === 'DUPUSDT').length >= 2,
    { what: 'both duplicates logged' },
  );
  await buyOneAtTen('DUPUSDT', { execution_id: 'dup-marker-2' });
  await waitFor(() => eventsFor(updated, 'DUPUSDT').some((b) => b.version === 4), { what: 'the last marker event' });
  t.equal(eventsFor(updated, 'DUPUSDT').length, 4, 'one position_updated per applied change');
});

t.test('R-3 (3): without ids the key is the SHA-256 of the RFC 8785 canonical body', async (t) => {
  await broker.publish(FILLS, '{"side":"Buy","asset":"JCSUSDT","execution_price":"10","execution_quantity":1.0}');
  await broker.publish(
    FILLS,
    '{ "asset" : "JCSUSDT", "execution_quantity" : 1, "execution_price" : "10", "side" : "Buy" }',
  );
  await buyOneAtTen('JCSUSDT', { execution_id: 'jcs-marker' });
  const p = await waitPosition('JCSUSDT', (p) => p.version === '2', 'first body and marker');
  t.match(p.size, /^2(\.0+)?$/, 'the reordered body with 1 for 1.0 is the same message');
  const canonical = '{"asset":"JCSUSDT","execution_price":"10","execution_quantity":1,"side":"Buy"}';
  const key = crypto.createHash('sha256').update(canonical, 'utf8').digest('hex');
  t.equal(
    (await db.query('select count(*) from inbox where source = $1 and message_key = $2', [FILLS, key])).rows[0].count,
    '1',
    'inbox key',
  );
});

t.test('U+0000 anywhere is dead-lettered naming the field (jsonb cannot store it); nothing applied', async (t) => {
  const before = deadLetters.messages.length;
  await publishRaw([
    [
      FILLS,
      '{"asset":"NULUSDT","side":"Buy","execution_quantity":"1","execution_price":"10","note":{"x":["a\\u0000b"]}}',
    ],
    [FILLS, '{"asset":"NUL\\u0000USDT","side":"Buy","execution_quantity":"1","execution_price":"10"}'],
  ]);
  const dl = await waitFor(() => deadLetters.messages.length >= before + 2 && deadLetters.messages.slice(before), {
    what: 'both dead-lettered',
  });
  const reasons = dl.map((m) => String(m.properties.headers?.['x-dead-letter-reason']));
  t.match(reasons, [/^note\.x\.0: contains U\+0000/, /^asset: contains U\+0000/]);
  t.equal((await db.query("select count(*) from positions where asset like 'NUL%'")).rows[0].count, '0');
});

t.test("an unpaired surrogate is dead-lettered naming the field; the log carries the body's trace_id", async (t) => {
  const before = deadLetters.messages.length;
  await publishRaw([
    [
      REPORTS,
      '{"event_type":"position","trace_id":"sur-1","payload":{"symbol":"SURUSDT","side":"Buy","size":"1","note":"\\ud800x"}}',
    ],
    [
      FILLS,
      '{"asset":"SUR2USDT","side":"Buy","execution_quantity":"1","execution_price":"10","trace_id":"sur-2","note":"\\u0000"}',
    ],
    [
      FILLS,
      '{"asset":"SUR3USDT","side":"Buy","execution_quantity":"1","execution_price":"10","note":"\\ud83d\\ude00"}',
    ],
    [
      FILLS,
      `{"asset":"SUR4USDT","side":"Buy","execution_quantity":"1","execution_price":"10","note":${'['.repeat(65)}${']'.repeat(65)}}`,
    ],
    [
      FILLS,
      '{"asset":"SUR5USDT","side":"Buy","execution_quantity":"1","execution_price":"10","trace_id":"bad\\u0000"}',
    ],
  ]);
  const dl = await waitFor(() => deadLetters.messages.length >= before + 4 && deadLetters.messages.slice(before), {
    what: 'all dead-lettered',
  });
  t.match(
    dl.map((m) => String(m.properties.headers?.['x-dead-letter-reason'])),
    [
      /^payload\.note: contains an unpaired UTF-16 surrogate/,
      /^note: contains U\+0000/,
      /^body: nested deeper than 64 levels/,
      /^trace_id: contains U\+0000/,
    ],
  );
  t.notOk(
    // the body's trace_id was 'bad' + U+0000; a random UUID may start with 'bad' too
    svc.logs.some((x) => String(x.trace_id).includes('\u0000')),
    'an unstorable trace_id is not logged as the trace id',
  );
  const logged = await waitFor(
    () => {
      const l = svc.logs.filter((x) => x.msg === 'message dead-lettered' && ['sur-1', 'sur-2'].includes(x.trace_id));
      return l.length === 2 && l;
    },
    { what: 'both logged with their trace_id' },
  );
  t.ok(logged.every((l) => l.level === 'warn'));
  await waitPosition('SUR3USDT', () => true, 'a paired surrogate (an emoji) is stored');
  t.equal(
    (await db.query("select count(*) from positions where asset in ('SURUSDT', 'SUR2USDT', 'SUR4USDT', 'SUR5USDT')"))
      .rows[0].count,
    '0',
  );
});

t.test('a report that changes nothing is logged as such, not as a position change', async (t) => {
  await buyOneAtTen('SAMEUSDT', { execution_id: 'same-1' });
  await waitPosition('SAMEUSDT', () => true, 'the fill');
  await broker.publish(REPORTS, {
    event_type: 'position',
    trace_id: 'same-r',
    payload: { symbol: 'SAMEUSDT', side: 'Buy', size: '1', avgPrice: '10' },
  });
  const line = await waitFor(() => svc.logs.find((l) => l.trace_id === 'same-r' && l.outcome === 'applied'), {
    what: 'the report logged',
  });
  t.equal(line.msg, 'report applied: nothing changed');
  t.equal(
    (await db.query("select version from positions where asset = 'SAMEUSDT'")).rows[0].version,
    '1',
    'no new version',
  );
});

t.test("the Gateway's symbol and size only under raw are taken from there", async (t) => {
  await broker.publish(REPORTS, {
    event_type: 'position',
    payload: { side: 'Buy', avg_price: '10', raw: { symbol: 'RAWUSDT', size: '3', markPrice: '11' } },
  });
  const p = await waitPosition('RAWUSDT', () => true, 'report from raw');
  t.match(p, { size: '3', current_price: '11' });
});

t.test('a deleted dead-letter queue is declared again; the bad message is not lost', async (t) => {
  const conn = await (await import('amqplib')).default.connect(broker.url);
  t.teardown(() => conn.close().catch(() => undefined));
  const ch = await conn.createChannel();
  await ch.deleteQueue(DLQ);
  const id = crypto.randomUUID();
  ch.sendToQueue(FILLS, Buffer.from('{"asset":'), { messageId: id });
  const got = await waitFor(
    async () => {
      const m = await ch.get(DLQ, { noAck: true }).catch(() => false as const);
      return m && m.properties.messageId === id ? m : undefined;
    },
    { what: 'the dead letter in the re-declared queue', timeoutMs: 15_000 },
  );
  t.match(String(got.properties.headers?.['x-dead-letter-reason']), /not valid JSON/);
});

t.test(
  'relay: an event after a returned one of the same position is not marked sent before it; others flow on',
  async (t) => {
    const conn = await (await import('amqplib')).default.connect(broker.url);
    t.teardown(() => conn.close().catch(() => undefined));
    const ch = await conn.createChannel();
    const CLOSED = 'position-manager.position_closed';
    await ch.unbindQueue(CLOSED, 'position-manager.events', CLOSED);
    t.teardown(() => ch.bindQueue(CLOSED, 'position-manager.events', CLOSED));
    await db.query(
      `select apply_order_fill('{"asset":"ORDUSDT","side":"Buy","execution_quantity":"1","execution_price":"10","execution_id":"ord-1"}')`,
    );
    await db.query(
      `select apply_order_fill('{"asset":"ORDUSDT","side":"Sell","execution_quantity":"1","execution_price":"11","execution_id":"ord-2"}')`,
    );
    await db.query(
      `select apply_order_fill('{"asset":"ORDUSDT","side":"Buy","execution_quantity":"2","execution_price":"12","execution_id":"ord-3"}')`,
    );
    await db.query(
      `select apply_order_fill('{"asset":"OTHUSDT","side":"Buy","execution_quantity":"1","execution_price":"5","execution_id":"oth-1"}')`,
    );
    const closed = (
      await db.query("select id from outbox where event_type = 'position_closed' and payload->>'asset' = 'ORDUSDT'")
    ).rows[0].id;
    await waitFor(
      async () => (await db.query('select last_error from outbox where id = $1', [closed])).rows[0].last_error,
      { what: 'the closed event returned as unroutable', timeoutMs: 15_000 },
    );
    const early = (
      await db.query(
        "select count(*) from outbox where id > $1 and sent_at is not null and payload->>'asset' = 'ORDUSDT'",
        [closed],
      )
    ).rows[0].count;
    t.equal(early, '0', 'nothing of that position after the returned event is marked sent');
    await waitFor(
      async () =>
        (await db.query("select 1 from outbox where payload->>'asset' = 'OTHUSDT' and sent_at is not null"))
          .rowCount === 1,
      { what: "another position's event flows on meanwhile", timeoutMs: 15_000 },
    );
    await ch.bindQueue(CLOSED, 'position-manager.events', CLOSED);
    await waitFor(
      async () => (await db.query('select count(*) from outbox where sent_at is null')).rows[0].count === '0',
      { what: 'everything sent once the queue is bound again', timeoutMs: 20_000 },
    );
  },
);

t.test('broker drops the connections: consumers and relay come back; events written meanwhile go out', async (t) => {
  await promisify(execFile)('rabbitmqctl', [
    '-q',
    'close_all_connections',
    '-p',
    broker.vhost,
    'test: broker-side close',
  ]);
  await db.query(
    `select apply_order_fill('{"asset":"RECUSDT","side":"Buy","execution_quantity":"1","execution_price":"10"}')`,
  );
  await waitFor(() => svc.logs.filter((l) => l.msg === 'connected to the broker').length >= 2, {
    what: 'reconnection',
    timeoutMs: 30_000,
  });
  // The test's own connection was closed too: collect again on a new one.
  const b2 = await (await import('amqplib')).default.connect(broker.url);
  t.teardown(() => b2.close().catch(() => undefined));
  const ch = await b2.createChannel();
  const seen: any[] = [];
  await ch.consume(UPDATED, (m) => m && (seen.push(JSON.parse(m.content.toString())), ch.ack(m)));
  await waitFor(() => seen.some((b) => b.asset === 'RECUSDT'), {
    what: 'the event written while disconnected',
    timeoutMs: 20_000,
  });
  ch.sendToQueue(
    FILLS,
    Buffer.from(JSON.stringify({ asset: 'RECUSDT', side: 'Buy', execution_quantity: '1', execution_price: '10' })),
  );
  await waitPosition('RECUSDT', (p) => p.size === '2', 'consumer consumes again');
  await waitFor(() => seen.filter((b) => b.asset === 'RECUSDT').length >= 2, { what: 'relay publishes again' });
  // The relay marks a row sent after the broker's confirm, which can come after a consumer got it.
  await waitFor(
    async () => (await db.query('select count(*) from outbox where sent_at is null')).rows[0].count === '0',
    { what: 'the outbox drained' },
  );
  t.pass('the outbox drained');
});
