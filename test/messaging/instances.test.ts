// Several consumer instances on one database and one broker (SPEC.md §11: any number of
// instances of each role). Their batches overlap in assets; each transaction takes its rows in
// (asset, mode) order, so they never deadlock each other (each deadlock had cost a second).
import t from 'tap';
import { freshDatabase } from '../helpers/db.js';
import { freshBroker } from '../helpers/amqp.js';
import { rolesStarted, startService } from '../helpers/service.js';
import { waitFor } from '../helpers/wait.js';

const db = await freshDatabase(t);
const broker = await freshBroker(t);
const instances = await Promise.all(
  [1, 2, 3].map(() =>
    startService(t, { databaseUrl: db.url, amqpUrl: broker.url, env: { POSITION_MANAGER_ROLES: 'consumer' } }),
  ),
);
await Promise.all(instances.map((svc) => rolesStarted(svc, ['consumer'])));

t.test('three consumers, both fill queues, six shared assets: every fill once, no conflict between them', async (t) => {
  const assets = ['AAAUSDT', 'BBBUSDT', 'CCCUSDT', 'DDDUSDT', 'EEEUSDT', 'FFFUSDT'];
  const queues = ['order-manager.order_executed', 'order-manager.order_events'];
  const n = 3000;
  let x = 12345;
  const next = () => (x = (x * 1103515245 + 12345) % 2 ** 31);
  const expected = new Map<string, bigint>();
  for (let i = 0; i < n; i++) {
    // assets in a different order in every stretch, so batches lock them in every order
    const asset = assets[next() % assets.length]!;
    const buy = next() % 3 !== 0;
    expected.set(asset, (expected.get(asset) ?? 0n) + (buy ? 1n : -1n));
    await broker.publish(queues[i % 2]!, {
      execution_id: `inst-${i}`,
      asset,
      side: buy ? 'Buy' : 'Sell',
      execution_quantity: '0.01',
      execution_price: String(100 + (i % 7)),
    });
  }
  await waitFor(async () => (await db.query('select count(*)::int as n from position_fills')).rows[0].n === n, {
    what: `all ${n} fills in the ledger`,
    timeoutMs: 120_000,
  });
  for (const [asset, units] of expected) {
    const size = (await db.query('select size from positions where asset = $1', [asset])).rows[0].size as string;
    t.equal(Number(size) * 100, Number(units), `${asset}: the sum of its fills`);
  }
  const conflicts = instances.flatMap((svc) =>
    svc.logs.filter((l) => /conflict|deadlock|database unavailable/.test(`${l.msg} ${l.err ?? ''}`)),
  );
  t.same(
    conflicts.map((l) => l.err ?? l.msg),
    [],
    'no deadlock or retry in any instance',
  );
});
