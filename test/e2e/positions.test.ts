// Acceptance cases of SPEC.md §12 about single positions, black-box against the running service
// (one stack, one asset per case): messages in, HTTP, events and logs out.
import { Decimal } from 'decimal.js';
import t, { type Test } from 'tap';
import { writePositionsDirectly } from '../helpers/db.js';
import { startStack, acceptanceSummary, givenBuy } from '../helpers/stack.js';
import { TEST_API_KEY } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';

const record = acceptanceSummary(t);
const acceptance = async (title: string, fn: (t: Test) => Promise<void>) => record(title, await t.test(title, fn));

const s = await startStack(t, { POSITION_MANAGER_SNAPSHOT_INTERVAL: '3' });
const updatedFor = (asset: string) => s.events.updated.bodies().filter((b) => b.asset === asset);

/** The asset's `size_discrepancy` audit rows (R-15: stored, reported, relative difference), decimals canonical. */
async function discrepancyAudit(asset: string) {
  const r = await s.db.query(
    `select trace_id, trim_scale((details->>'stored')::numeric)::text as stored, trim_scale((details->>'reported')::numeric)::text as reported,
            trim_scale(round((details->>'relative_difference')::numeric, 8))::text as relative_difference
       from position_events_view where asset = $1 and kind = 'size_discrepancy'`,
    [asset],
  );
  return r.rows;
}

/** Events about one position leave in commit order: once a later change's event is here, any event of an earlier change is too. */
async function laterChange(asset: string, marker: string) {
  await s.fill({
    execution_id: marker,
    asset,
    side: 'Buy',
    execution_quantity: '1',
    execution_price: '100',
    trace_id: marker,
  });
  await waitFor(() => updatedFor(asset).some((b) => b.trace_id === marker), { what: 'the marker event' });
}

await acceptance(
  'TC-002 report for an existing position: average and PnL at once, size through validation',
  async (t) => {
    const before = await givenBuy(s, 'TC002USDT', 'tc2-1', '1.0', '48000', 'given 1.0 @ 48000', {
      executed_at: '2025-01-15T10:00:00Z',
    });
    await s.report({
      event_type: 'position',
      channel: 'position',
      data: {
        symbol: 'TC002USDT',
        side: 'Buy',
        size: '2.0',
        avgPrice: '49000.00',
        unrealisedPnl: '200.00',
        positionValue: '98000.00',
        mode: 'one-way',
        timestamp: '2025-01-15T10:05:00Z',
      },
      trace_id: 'test-trace-002',
    });
    const ev = await waitFor(() => updatedFor('TC002USDT').find((b) => b.update_source === 'websocket'), {
      what: 'the report change event',
    });
    t.match(
      ev,
      {
        size: '1',
        average_entry_price: '49000',
        unrealized_pnl: '200',
        unrealized_pnl_pct: '0.40816327',
        trace_id: 'test-trace-002',
      },
      'immediately',
    );
    t.ok(Date.parse(ev.position.last_updated) > Date.parse(before.last_updated), 'last_updated advanced');
    await s.log(
      (l) => l.msg.startsWith('size discrepancy') && l.asset === 'TC002USDT' && l.level === 'warn',
      'the discrepancy warning',
    );
    t.same(
      await discrepancyAudit('TC002USDT'),
      [{ trace_id: 'test-trace-002', stored: '1', reported: '2', relative_difference: '0.5' }],
      'a size_discrepancy audit row',
    );
    const p = await s.until('TC002USDT', (p) => p.size === '2', 'validation adopts the newer report');
    t.match(p, { average_entry_price: '49000', unrealized_pnl_pct: '0.20408163' });
    t.ok(
      Number.isInteger(p.time_held_minutes) && p.time_held_minutes >= 0,
      'time_held_minutes is a non-negative integer',
    );
    const fixEv = await waitFor(() => updatedFor('TC002USDT').find((b) => b.update_source === 'validation'), {
      what: 'validation event',
    });
    t.equal(fixEv.size, '2');
  },
);

await acceptance('TC-003 report with a size discrepancy: unrealized now, size after the grace period', async (t) => {
  await givenBuy(s, 'TC003USDT', 'tc3-1', '1.5', '50000');
  await s.report({
    event_type: 'position',
    data: { symbol: 'TC003USDT', size: '1.8', avgPrice: '50000.00', unrealisedPnl: '180.00' },
    trace_id: 'test-trace-003',
  });
  // Seen before it runs: it waits out the grace period (1 s here), and the worker deletes it once done.
  const jobs = await waitFor(
    async () => {
      const r = await s.db.query(
        "select key from job_queue_view where task = 'validate_position' and key like 'validate:TC003USDT:%'",
      );
      return r.rowCount ? r.rows : undefined;
    },
    { what: 'the validate_position job', intervalMs: 20 },
  );
  t.same(jobs, [{ key: 'validate:TC003USDT:one-way' }], 'one validate_position job scheduled');
  const ev = await waitFor(() => updatedFor('TC003USDT').find((b) => b.update_source === 'websocket'), {
    what: 'report event',
  });
  t.match(ev, { size: '1.5', unrealized_pnl: '180', average_entry_price: '50000' });
  const warn = await s.log((l) => l.msg.startsWith('size discrepancy') && l.asset === 'TC003USDT', 'warning');
  t.match(warn, {
    level: 'warn',
    stored: '1.5',
    reported: '1.8',
    relative_difference: '0.16666667',
    trace_id: 'test-trace-003',
  });
  t.same(
    await discrepancyAudit('TC003USDT'),
    [{ trace_id: 'test-trace-003', stored: '1.5', reported: '1.8', relative_difference: '0.16666667' }],
    'a size_discrepancy audit row',
  );
  await s.until('TC003USDT', (p) => p.size === '1.8', 'size 1.8 after the grace period');
});

await acceptance('TC-004 buy fill adds to a long: 48666.66666667', async (t) => {
  const before = await givenBuy(s, 'TC004USDT', 'tc4-0', '1.0', '48000', 'given 1.0 @ 48000');
  await s.fill({
    event_type: 'order_executed',
    order_id: 'order-123',
    asset: 'TC004USDT',
    side: 'BUY',
    execution_price: '50000.00',
    execution_quantity: '0.5',
    execution_fees: '25.00',
    executed_at: '2025-01-15T10:10:00Z',
    trace_id: 'test-trace-004',
  });
  const p = await s.until('TC004USDT', (p) => p.size === '1.5', 'applied');
  t.equal(p.average_entry_price, '48666.66666667');
  t.equal(Number(p.average_entry_price).toFixed(2), '48666.67');
  t.equal(p.realized_pnl, before.realized_pnl, 'realized unchanged');
  t.equal(p.total_fees, '25');
  await waitFor(() => updatedFor('TC004USDT').some((b) => b.trace_id === 'test-trace-004' && b.size === '1.5'), {
    what: 'event',
  });
});

await acceptance('TC-005 partial close by a sell fill: +474.50 realized, 1500 unrealized', async (t) => {
  // Fills and reports arrive on different queues: wait for each before the next.
  await givenBuy(s, 'TC005USDT', 'tc5-0', '2.0', '50000', 'given 2.0 @ 50000');
  await s.report({
    event_type: 'position',
    data: { symbol: 'TC005USDT', side: 'Buy', size: '2.0', markPrice: '51000', unrealisedPnl: '2000' },
  });
  await s.until('TC005USDT', (p) => p.current_price === '51000', 'given, mark 51000');
  await s.fill({
    event_type: 'order_executed',
    order_id: 'order-124',
    asset: 'TC005USDT',
    side: 'SELL',
    execution_price: '51000.00',
    execution_quantity: '0.5',
    execution_fees: '25.50',
    executed_at: '2025-01-15T10:15:00Z',
    trace_id: 'test-trace-005',
  });
  const p = await s.until('TC005USDT', (p) => p.size === '1.5', 'applied');
  t.match(p, { average_entry_price: '50000', realized_pnl: '474.5', unrealized_pnl: '1500' });
  await waitFor(() => updatedFor('TC005USDT').some((b) => b.trace_id === 'test-trace-005'), { what: 'event' });
});

await acceptance(
  'TC-006 full close: size 0, 949 realized, position_closed, out of the list and exposure',
  async (t) => {
    const given = await givenBuy(s, 'TC006USDT', 'tc6-0', '1.0', '50000');
    const exposureBefore = (await s.get('/api/v1/portfolio/exposure')).body.total_exposure_usdt;
    await s.fill({
      event_type: 'order_executed',
      asset: 'TC006USDT',
      side: 'SELL',
      execution_price: '51000.00',
      execution_quantity: '1.0',
      execution_fees: '51.00',
      trace_id: 'test-trace-006',
    });
    const p = await s.until('TC006USDT', (p) => p.size === '0', 'closed');
    t.match(p, {
      average_entry_price: '50000',
      unrealized_pnl: '0',
      realized_pnl: '949',
      total_fees: '51',
      is_open: false,
      closed_at: String,
    });
    const closed = await waitFor(() => s.events.closed.bodies().find((b) => b.asset === 'TC006USDT'), {
      what: 'position_closed',
    });
    t.match(closed, {
      reason: 'fill',
      realized_pnl_delta: '949',
      exit_price: '51000',
      closed_size: '1',
      average_entry_price: '50000',
      trace_id: 'test-trace-006',
    });
    await waitFor(() => updatedFor('TC006USDT').some((b) => b.size === '0'), { what: 'position_updated' });
    t.notOk(
      (await s.get('/api/v1/positions')).body.positions.some((x: any) => x.asset === 'TC006USDT'),
      'not listed by default',
    );
    const e = await s.get('/api/v1/portfolio/exposure?asset=TC006USDT');
    t.equal(e.body.total_exposure_usdt, '0', 'excluded from exposure');
    const whole = (await s.get('/api/v1/portfolio/exposure')).body;
    t.equal(
      whole.total_exposure_usdt,
      new Decimal(exposureBefore).minus(given.exposure_usdt).toString(),
      "the whole portfolio's exposure lost exactly its exposure",
    );
    t.equal(whole.by_asset.TC006USDT?.exposure_usdt, '0', 'its by_asset entry is 0');
  },
);

await acceptance('TC-007 size conflict: the fill newer than the report wins', async (t) => {
  await givenBuy(s, 'TC007USDT', 'tc7-0', '1.0', '50000', 'given', {
    executed_at: new Date(Date.now() - 10_000).toISOString(),
  });
  await s.report({
    event_type: 'position',
    data: { symbol: 'TC007USDT', side: 'Buy', size: '1.2', avgPrice: '50000', updatedTime: String(Date.now() - 5_000) },
    trace_id: 'tc7-report',
  });
  await s.fill({
    execution_id: 'tc7-1',
    asset: 'TC007USDT',
    side: 'Buy',
    execution_quantity: '0.3',
    execution_price: '50000',
    executed_at: new Date().toISOString(),
  });
  await s.log((l) => l.msg.startsWith('size discrepancy') && l.asset === 'TC007USDT', 'the discrepancy is logged');
  const outcome = await s.log(
    (l) => /validation after a size discrepancy/.test(l.msg) && l.asset === 'TC007USDT',
    'the validation outcome is logged',
  );
  t.match(outcome.msg, /valid/);
  const p = await s.until('TC007USDT', (p) => p.size === '1.3', 'size 1.3');
  t.equal(p.average_entry_price, '50000');
  const v = await s.post('/api/v1/positions/TC007USDT/validate?fix_discrepancies=false');
  t.equal(v.body.is_valid, true, 'the ledger stands');
});

await acceptance('TC-008 average-price threshold: exactly 0.1% keeps, above replaces; both logged', async (t) => {
  await givenBuy(s, 'TC008USDT', 'tc8-0', '1.0', '50000');
  await s.report({
    event_type: 'position',
    data: { symbol: 'TC008USDT', avgPrice: '50050.00', size: '1.0' },
    trace_id: 'test-trace-008',
  });
  const kept = await s.log((l) => l.asset === 'TC008USDT' && /kept/.test(l.msg), 'the decision is logged');
  t.match(kept, { stored_avg_price: '50000', reported_avg_price: '50050', trace_id: 'test-trace-008' });
  t.equal((await s.get('/api/v1/positions/TC008USDT')).body.average_entry_price, '50000');
  t.notOk(
    s.svc.logs.some((l) => l.asset === 'TC008USDT' && l.msg.startsWith('size discrepancy')),
    'size matches: no discrepancy',
  );
  await s.report({
    event_type: 'position',
    data: { symbol: 'TC008USDT', avgPrice: '50051.00', size: '1.0' },
    trace_id: 'test-trace-008b',
  });
  await s.until('TC008USDT', (p) => p.average_entry_price === '50051', '50051 replaces it');
  const replaced = await s.log((l) => l.asset === 'TC008USDT' && /replaced/.test(l.msg), 'replacement logged');
  t.match(replaced, { level: 'warn', old_avg_price: '50000', new_avg_price: '50051', trace_id: 'test-trace-008b' });
});

await acceptance('TC-014 validation through the API', async (t) => {
  await givenBuy(s, 'TC014USDT', 'tc14-0', '1', '100');
  const r = await s.post('/api/v1/positions/TC014USDT/validate');
  t.equal(r.status, 200);
  t.match(r.body, {
    is_valid: true,
    error_message: null,
    discrepancies: [],
    updated_position: null,
    checked_at: String,
  });
  // A stored size the ledger disagrees with, which only an operator can create by hand.
  await writePositionsDirectly(s.db, "update positions set size = 5 where asset = 'TC014USDT'");
  const bad = await s.post('/api/v1/positions/TC014USDT/validate');
  t.equal(bad.status, 200);
  t.match(bad.body, {
    is_valid: false,
    error_message: /\bsize\b.*\b5\b.*\b1\b/,
    discrepancies: [{ field: 'size', stored: '5', expected: '1', authority: 'ledger' }],
    updated_position: { size: '1' },
    checked_at: String,
  });
  t.equal((await s.get('/api/v1/positions/TC014USDT')).body.size, '1', 'fixed (fix_discrepancies defaults to true)');
  await s.log((l) => l.level === 'warn' && /^validation: size/.test(l.msg) && l.asset === 'TC014USDT', 'and logged');
});

await acceptance('TC-015, TC-021, TC-024 snapshots through the API, their history and event', async (t) => {
  // A stack without the worker role: no scheduled snapshot comes between a POST and the list read after it.
  const s = await startStack(t, { POSITION_MANAGER_ROLES: 'api,consumer,relay' });
  await givenBuy(s, 'TC015USDT', 'tc15-0', '1.0', '50000', 'given 1.0');
  await s.report({
    event_type: 'position',
    data: { symbol: 'TC015USDT', side: 'Buy', size: '1.0', unrealisedPnl: '150.00' },
  });
  await s.until('TC015USDT', (p) => p.unrealized_pnl === '150', 'given 1.0, unrealized 150');
  const r = await s.post('/api/v1/positions/TC015USDT/snapshot');
  t.equal(r.status, 201);
  t.match(r.body, {
    size: '1',
    unrealized_pnl: '150',
    trigger: 'manual',
    snapshot_data: { asset: 'TC015USDT', size: '1', unrealized_pnl: '150' },
  });
  const first = await s.get('/api/v1/positions/TC015USDT/snapshots');
  t.equal(first.body.snapshots[0]?.id, r.body.id, 'the list returns it first');
  const r2 = await s.post('/api/v1/positions/TC015USDT/snapshot');
  const list = await s.get('/api/v1/positions/TC015USDT/snapshots');
  t.equal(list.status, 200);
  t.same(
    list.body.snapshots.map((x: any) => x.id),
    [r2.body.id, r.body.id],
    'TC-021 both, the later one first',
  );
  const stamps = list.body.snapshots.map((x: any) => x.snapshot_timestamp);
  t.same(stamps, [...stamps].sort().reverse(), 'newest first');
  for (const x of list.body.snapshots)
    t.ok(x.snapshot_data && x.snapshot_data.asset === 'TC015USDT', 'each with the full state');
  const ev = await waitFor(() => s.events.snapshots.bodies().find((b) => b.snapshot_id === r.body.id), {
    what: 'position_snapshot_created',
  });
  const fields = Object.keys((await s.get('/api/v1/positions/TC015USDT')).body);
  for (const f of fields) t.ok(f in ev.snapshot.snapshot_data, `TC-024 snapshot.snapshot_data.${f}`);
  t.ok(ev.snapshot.created_at, 'TC-024 snapshot.created_at');
});

await acceptance('TC-016 API key: none, wrong, right', async (t) => {
  t.equal((await s.svc.request('GET', '/api/v1/positions', { key: null })).status, 401);
  t.equal((await s.svc.request('GET', '/api/v1/positions', { key: 'wrong-key-123' })).status, 401);
  t.equal((await s.svc.request('GET', '/api/v1/positions', { key: TEST_API_KEY })).status, 200);
  await s.log((l) => l.msg === 'authentication failed' && l.key_present === false, 'the missing key failure is logged');
  await s.log((l) => l.msg === 'authentication failed' && l.key_present === true, 'the wrong key failure is logged');
  t.notOk(JSON.stringify(s.svc.logs).includes('wrong-key-123'), 'without the key');
});

await acceptance('TC-020 scheduled snapshots', async (t) => {
  const p = await givenBuy(s, 'TC020USDT', 'tc20-0', '1', '100');
  const snap = await waitFor(
    async () => {
      const r = await s.get('/api/v1/positions/TC020USDT/snapshots');
      return r.body.snapshots.find((x: any) => x.trigger === 'scheduled');
    },
    { what: 'a scheduled snapshot', timeoutMs: 15_000 },
  );
  t.equal(snap.position_id, p.id);
  for (const f of Object.keys(p)) t.ok(f in snap.snapshot_data, `snapshot_data.${f}`);
  const ev = await waitFor(() => s.events.snapshots.bodies().find((b) => b.snapshot_id === snap.id), {
    what: 'its event',
  });
  t.match(
    ev.snapshot,
    { id: snap.id, position_id: p.id, trigger: 'scheduled' },
    "event snapshot.position_id is the position's id",
  );
  for (const f of Object.keys(p)) t.ok(f in ev.snapshot.snapshot_data, `event snapshot.snapshot_data.${f}`);
  // The run's trace_id is the trace of what it did (§6.2), so it names the run that took this snapshot.
  const run = await waitFor(
    async () =>
      (
        await s.db.query(
          "select outcome, result from job_history_view where task = 'snapshot_all_positions' and trace_id = $1 and outcome <> 'running'",
          [ev.trace_id],
        )
      ).rows[0],
    { what: 'the job_runs row of the run' },
  );
  t.match(run, { outcome: 'success' }, 'job_history_view records the run');
  t.ok(run.result.snapshots >= 1, 'with its count of snapshots');
});

await acceptance('TC-022 position_updated carries the features flat and under position', async (t) => {
  await givenBuy(s, 'TC022USDT', 'tc22-0', '1', '100', 'given 1');
  await s.report({
    event_type: 'position',
    data: { symbol: 'TC022USDT', side: 'Buy', size: '1', markPrice: '101', unrealisedPnl: '1' },
    trace_id: 'tc22',
  });
  const ev = await waitFor(() => updatedFor('TC022USDT').find((b) => b.trace_id === 'tc22'), { what: 'event' });
  await laterChange('TC022USDT', 'tc22-marker');
  t.equal(updatedFor('TC022USDT').filter((b) => b.trace_id === 'tc22').length, 1, 'one message');
  for (const f of [
    'event_id',
    'event_type',
    'trace_id',
    'timestamp',
    'position_id',
    'asset',
    'mode',
    'size',
    'long_size',
    'short_size',
    'average_entry_price',
    'current_price',
    'unrealized_pnl',
    'realized_pnl',
    'total_fees',
    'unrealized_pnl_pct',
    'time_held_minutes',
    'position_size_norm',
    'version',
    'closed_at',
    'update_source',
    'changed_fields',
    'average_price',
    'position',
  ])
    t.ok(f in ev, `event.${f}`);
  t.equal(ev.update_source, 'websocket');
  for (const f of ['unrealized_pnl_pct', 'time_held_minutes', 'position_size_norm'])
    t.same(ev.position[f], ev[f], `position.${f} equals the flat field`);
  t.equal(ev.unrealized_pnl_pct, '1');
});

await acceptance('TC-029 invalid event: dead-lettered naming size, nothing applied or published', async (t) => {
  await s.report('{"event_type":"position","data":{"symbol":"INVALID","size":"not-a-number","avgPrice":null}}');
  const dl = await waitFor(
    () => s.events.dead.messages.find((m) => m.properties.headers?.['x-original-queue'] === 'ws-gateway.position'),
    { what: 'dead letter' },
  );
  t.match(String(dl.properties.headers?.['x-dead-letter-reason']), /size/);
  await s.log((l) => l.msg === 'message dead-lettered' && /size/.test(l.reason), 'the error is logged');
  t.equal((await s.get('/api/v1/positions/INVALID')).status, 404, 'no position');
  t.notOk(
    s.events.updated.bodies().some((b) => b.asset === 'INVALID'),
    'no event',
  );
});

await acceptance(
  'TC-030 duplicate event: applied once; a different report with the same trace_id applies',
  async (t) => {
    await givenBuy(s, 'TC030USDT', 'tc30-0', '1', '100');
    const body = {
      event_type: 'position',
      data: { symbol: 'TC030USDT', side: 'Buy', size: '1', unrealisedPnl: '3' },
      trace_id: 'dup-001',
    };
    await s.report(body);
    await s.report(body);
    await s.log(
      (l) => l.msg === 'duplicate message ignored' && l.asset === 'TC030USDT',
      'the second delivery is logged as a duplicate',
    );
    await laterChange('TC030USDT', 'tc30-marker');
    t.equal(updatedFor('TC030USDT').filter((b) => b.trace_id === 'dup-001').length, 1, 'one position_updated');
    const audit = await s.db.query(
      "select count(*) from position_events_view where asset = 'TC030USDT' and kind = 'report'",
    );
    t.equal(audit.rows[0].count, '1', 'one audit row');
    await s.report({ ...body, data: { ...body.data, size: '2', unrealisedPnl: '4' } });
    await s.until('TC030USDT', (p) => p.unrealized_pnl === '4', 'a different report with the same trace_id is applied');
  },
);
