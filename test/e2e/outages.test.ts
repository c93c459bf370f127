// TC-027 and TC-028: the database or the broker goes away under a running service.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { freshBroker } from '../helpers/amqp.js';
import { freshDatabase, writePositionsDirectly } from '../helpers/db.js';
import { proxiedStack } from '../helpers/reliability-stack.js';
import { startService } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';
import { acceptanceSummary } from '../helpers/stack.js';

const record = acceptanceSummary(t);
const acceptance = async (title: string, fn: (t: Test) => Promise<void>) => record(title, await t.test(title, fn));

const run = promisify(execFile);

await acceptance(
  'TC-027 database unavailable: 503 problems, /health unhealthy, nothing lost, back after',
  async (t) => {
    const { broker, proxy, svc } = await proxiedStack(t, { started: ['consumer'] });
    t.teardown(() => {
      if (svc.child.exitCode !== null)
        t.comment(`service exited ${svc.child.exitCode}: ${svc.stderr.join('')} ${JSON.stringify(svc.logs.slice(-5))}`);
    });
    proxy.cut();
    const r = await svc.request('GET', '/api/v1/positions');
    t.equal(r.status, 503);
    t.match(r.body, { code: 'database_unavailable' });
    const h = await svc.request('GET', '/health', { key: null });
    t.equal(h.status, 503);
    t.match(h.body, { status: 'unhealthy', database_connected: false });
    await broker.publish('order-manager.order_executed', {
      execution_id: 'while-down',
      asset: 'DBDUSDT',
      side: 'Buy',
      execution_quantity: '1',
      execution_price: '10',
      trace_id: 'tr-while-down',
    });
    const held = await waitFor(
      () => svc.logs.find((l) => /database unavailable; messages stay unacknowledged/.test(l.msg)),
      { what: 'the consumer holds the message', timeoutMs: 10_000 },
    );
    t.match(
      held,
      { trace_id: 'tr-while-down', trace_ids: ['tr-while-down'] },
      'the line names the message by its trace_id (SPEC.md §10)',
    );
    proxy.restore();
    await waitFor(async () => (await svc.request('GET', '/api/v1/positions/DBDUSDT')).body?.size === '1', {
      what: 'applied after the database is back',
      timeoutMs: 40_000,
    });
    t.equal((await svc.request('GET', '/health', { key: null })).status, 200);
  },
);

await acceptance('TC-028 broker unavailable: degraded, REST changes commit, their events go out later', async (t) => {
  const db = await freshDatabase(t);
  const broker = await freshBroker(t);
  const user = new URL(broker.url).username || 'guest';
  const svc = await startService(t, {
    databaseUrl: db.url,
    amqpUrl: broker.url,
    env: { POSITION_MANAGER_ROLES: 'api,consumer,relay' },
  });
  await waitFor(() => svc.logs.some((l) => l.msg === 'outbox relay active'), { what: 'relay' });
  await db.query(
    `select apply_order_fill('{"execution_id":"b1","asset":"BRKUSDT","side":"Buy","execution_quantity":"1","execution_price":"10"}')`,
  );
  // "RabbitMQ is stopped" for this service: its permissions go and its connections are closed.
  await run('rabbitmqctl', ['-q', 'clear_permissions', '-p', broker.vhost, user]);
  await run('rabbitmqctl', ['-q', 'close_all_connections', '-p', broker.vhost, 'test: broker down']);
  await waitFor(async () => (await svc.request('GET', '/health', { key: null })).body.status === 'degraded', {
    what: 'degraded',
  });
  const h = await svc.request('GET', '/health', { key: null });
  t.equal(h.status, 200);
  t.match(h.body, { status: 'degraded', queue_connected: false, database_connected: true });
  t.equal((await svc.request('GET', '/api/v1/positions/BRKUSDT')).status, 200, 'REST reads work');
  const snap = await svc.request('POST', '/api/v1/positions/BRKUSDT/snapshot');
  t.equal(snap.status, 201, 'a snapshot through REST commits');
  // A validation fix through REST: a stored size the ledger disagrees with (only an operator can make one) is corrected.
  await writePositionsDirectly(db, "update positions set size = 5 where asset = 'BRKUSDT'");
  const fix = await svc.request('POST', '/api/v1/positions/BRKUSDT/validate');
  t.equal(fix.status, 200);
  t.match(fix.body, { is_valid: false, updated_position: { size: '1' } });
  t.equal(
    (await svc.request('GET', '/api/v1/positions/BRKUSDT')).body.size,
    '1',
    'a validation fix through REST commits',
  );
  const waiting = (await db.query('select event_type, payload from outbox where sent_at is null')).rows;
  t.ok(
    waiting.some((r) => r.event_type === 'position_snapshot_created' && r.payload.snapshot_id === snap.body.id),
    'the snapshot event waits in the outbox',
  );
  t.ok(
    waiting.some((r) => r.event_type === 'position_updated' && r.payload.update_source === 'validation'),
    'the fix event waits in the outbox',
  );
  await run('rabbitmqctl', ['-q', 'set_permissions', '-p', broker.vhost, user, '.*', '.*', '.*']);
  await waitFor(async () => (await svc.request('GET', '/health', { key: null })).body.status === 'healthy', {
    what: 'reconnected',
    timeoutMs: 60_000,
  });
  const amqp = (await import('amqplib')).default;
  const c = await amqp.connect(broker.url);
  t.teardown(() => c.close().catch(() => undefined));
  const ch = await c.createChannel();
  const got: any[] = [];
  for (const queue of ['position-manager.position_snapshot_created', 'position-manager.position_updated'])
    await ch.consume(queue, (m) => m && (got.push(JSON.parse(m.content.toString())), ch.ack(m)));
  await waitFor(() => got.find((b) => b.snapshot_id === snap.body.id), {
    what: 'the snapshot event published after',
    timeoutMs: 20_000,
  });
  await waitFor(() => got.find((b) => b.asset === 'BRKUSDT' && b.update_source === 'validation' && b.size === '1'), {
    what: 'the fix event published after',
    timeoutMs: 20_000,
  });
  t.equal(
    (await db.query('select count(*) from outbox where sent_at is null')).rows[0].count,
    '0',
    'the outbox drained',
  );
});
