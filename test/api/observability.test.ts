// /health and /metrics of a process that runs only the api role although AMQP_URL is set, as in
// the scaled docker-compose form: what it reports about the broker it does not use, the database
// when it is slow rather than down, the outbox it does not drain, and the service label.
import t from 'tap';
import { lockTables } from '../helpers/api-lock.js';
import { freshDatabase, writePositionsDirectly } from '../helpers/db.js';
import { startService } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';

const SERVICE = 'pm-observed';
const db = await freshDatabase(t);
let seq = 0;
const fill = (asset: string, qty: string) =>
  db.query('select apply_order_fill($1::jsonb)', [
    JSON.stringify({
      execution_id: `obs-${++seq}`,
      asset,
      side: 'Buy',
      execution_quantity: qty,
      execution_price: '100',
    }),
  ]);
await fill('BTCUSDT', '1');
await fill('ETHUSDT', '2');

const svc = await startService(t, {
  databaseUrl: db.url,
  // Nothing listens there: a process that does not use the broker must not notice.
  amqpUrl: 'amqp://guest:guest@127.0.0.1:1/unused',
  env: {
    POSITION_MANAGER_ROLES: 'api',
    POSITION_MANAGER_SERVICE_NAME: SERVICE,
    POSITION_MANAGER_DB_POOL_SIZE: '1',
    POSITION_MANAGER_METRICS_CACHE_TTL: '0',
  },
});
const health = () => svc.request('GET', '/health', { key: null });
const scrape = async () => (await svc.request('GET', '/metrics', { key: null })).body as string;
/** The value of one series: the metric name and the labels it must carry besides service. */
const sample = (text: string, name: string, labels = '') => {
  const line = text
    .split('\n')
    .find((l) => l.startsWith(`${name}{`) && l.includes(`service="${SERVICE}"`) && l.includes(labels));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
};
const unsent = async () => Number((await db.query('select count(*) as n from outbox where sent_at is null')).rows[0].n);

t.test(
  'roles=api with AMQP_URL set: healthy, messaging not in this process, no queue_connected, no broker gauge',
  async (t) => {
    const h = await health();
    t.equal(h.status, 200);
    t.match(h.body, {
      status: 'healthy',
      service: SERVICE,
      database_connected: true,
      messaging: 'not_in_this_process',
      roles: ['api'],
    });
    t.notOk('queue_connected' in h.body, 'SPEC.md §5.2: no queue_connected without a broker role');
    t.match(
      h.body.checks,
      {
        ws_gateway_subscription: 'off',
        prices: { source: 'off', last_success_at: null },
        exchange_reconcile: { state: 'off' },
      },
      'a process that does not run a check reports off',
    );
    const text = await scrape();
    t.notMatch(text, /position_manager_broker_up/, 'no broker to report, so no 0 that reads as an outage');
    t.equal(sample(text, 'position_manager_database_up'), 1);
  },
);

t.test('every series carries the service label; the process defaults are prefixed once', async (t) => {
  const text = await scrape();
  t.match(text, new RegExp(`^position_manager_process_cpu_seconds_total\\{service="${SERVICE}"\\} `, 'm'));
  t.match(text, /^position_manager_nodejs_heap_size_used_bytes\{/m);
  t.notMatch(text, /position_manager_process_process_|position_manager_process_nodejs_/);
  const samples = text.split('\n').filter((l) => l !== '' && !l.startsWith('#'));
  t.ok(samples.length > 20, 'a real scrape');
  t.same(
    samples.filter((l) => !l.includes(`service="${SERVICE}"`)),
    [],
    'no series without it',
  );
});

t.test('the outbox gauges are read at scrape time in a process without the relay', async (t) => {
  const pending = await unsent();
  t.ok(pending >= 2, 'the fills left events waiting (no relay anywhere)');
  await db.query(
    "update outbox_events set created_at = now() - interval '90 seconds' where id = (select min(id) from outbox_pending)",
  );
  const text = await scrape();
  t.equal(sample(text, 'position_manager_outbox_pending'), pending);
  t.ok(sample(text, 'position_manager_outbox_oldest_age_seconds')! >= 90, 'the oldest row is 90 s old');
  t.equal(sample(text, 'position_manager_positions_open', 'mode="one-way"'), 2);
  await fill('SOLUSDT', '3');
  t.equal(
    sample(await scrape(), 'position_manager_outbox_pending'),
    await unsent(),
    'a new row counts at the next scrape',
  );
  const h = await health();
  t.match(
    h.body,
    { status: 'degraded', outbox_pending: await unsent() },
    'a row waiting over 60 s: no relay is publishing',
  );
  t.ok(h.body.oldest_outbox_age_seconds >= 90);
  await db.query("update outbox_events set created_at = now() where created_at < now() - interval '60 seconds'");
});

t.test('a slow database is not a down one: /health and /metrics while positions and outbox are locked', async (t) => {
  const before = await scrape();
  const locker = await lockTables(t, db, 'positions, outbox');
  // The service's only pool connection waits behind the lock too.
  const blocked = svc.request('GET', '/api/v1/positions');
  await waitFor(
    async () =>
      (
        await db.query("select 1 from pg_stat_activity where application_name = $1 and wait_event_type = 'Lock'", [
          SERVICE,
        ])
      ).rowCount,
    { what: 'the API request waiting on the lock' },
  );
  const until = Date.now() + 3000;
  let checks = 0;
  while (Date.now() < until) {
    const started = Date.now();
    const h = await health();
    t.ok(Date.now() - started < 2500, 'answered promptly');
    t.equal(h.status, 200, 'not 503');
    t.match(
      h.body,
      { database_connected: true, positions_count: null, outbox_pending: null, oldest_outbox_age_seconds: null },
      'connected; the figures it could not count are null',
    );
    t.not(h.body.status, 'unhealthy');
    checks++;
  }
  t.ok(checks >= 2, `checked ${checks} times over 3 s`);
  const text = await scrape();
  t.equal(sample(text, 'position_manager_database_up'), 1);
  t.equal(
    sample(text, 'position_manager_outbox_pending'),
    sample(before, 'position_manager_outbox_pending'),
    'the last known value, not 0',
  );
  await locker.query('rollback');
  t.equal((await blocked).status, 200, 'the waiting request completes');
  t.match((await health()).body, { status: 'healthy', positions_count: 3, outbox_pending: await unsent() });
});

t.test('a validation fix through the API counts as a position update from validation', async (t) => {
  const updates = async () =>
    sample(await scrape(), 'position_manager_position_updates_total', 'source="validation"') ?? 0;
  t.equal(await updates(), 0);
  await writePositionsDirectly(db, "update positions set size = 7 where asset = 'ETHUSDT'");
  const fix = await svc.request('POST', '/api/v1/positions/ETHUSDT/validate');
  t.match(fix.body, { is_valid: false, updated_position: { size: '2' } });
  t.equal(await updates(), 1);
  const again = await svc.request('POST', '/api/v1/positions/ETHUSDT/validate');
  t.match(again.body, { is_valid: true, updated_position: null });
  await writePositionsDirectly(db, "update positions set size = 5 where asset = 'ETHUSDT'");
  const dry = await svc.request('POST', '/api/v1/positions/ETHUSDT/validate?fix_discrepancies=false');
  t.match(dry.body, { is_valid: false, updated_position: null });
  t.equal(await updates(), 1, 'neither a valid position nor a report without a fix changes anything');
});
