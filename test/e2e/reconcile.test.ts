// R-34 through the real service: reconcile_with_exchange reads a local server that answers like
// Bybit and checks the signature. A fill lost on the way (never published) is found and the
// position brought back to the exchange's size; a position never seen is adopted; a failing
// exchange degrades /health without ever logging the key or the secret.
import t from 'tap';
import { startFakeBybitAccount } from '../helpers/fake-bybit.js';
import { bybitPosition } from '../helpers/ledger-bybit.js';
import { startStack } from '../helpers/stack.js';
import { waitFor } from '../helpers/wait.js';

const credentials = { key: 'e2e-read-only-key', secret: 'e2e-secret-abcdef0123456789' };

t.test('reconciliation with the exchange, end to end', async (t) => {
  const account = await startFakeBybitAccount(t, credentials, { kind: 'positions', list: [] });
  const s = await startStack(t, {
    BYBIT_API_KEY: credentials.key,
    BYBIT_API_SECRET: credentials.secret,
    POSITION_MANAGER_PRICE_API_URL: account.url,
    POSITION_MANAGER_RECONCILE_INTERVAL: '10',
    POSITION_MANAGER_PRICE_API_TIMEOUT: '2',
    POSITION_MANAGER_PRICE_API_RETRIES: '0',
  });
  const health = async () => (await s.get('/health')).body;
  const first = await waitFor(
    async () => {
      const h = await health();
      return h.checks.exchange_reconcile.last_success_at && h;
    },
    { what: 'the first reconciliation at start', timeoutMs: 20_000 },
  );
  t.match(first.checks.exchange_reconcile, { state: 'ok' });
  t.ok(
    account.requests.every((r) => r.signed === 'ok'),
    'signed as Bybit checks it',
  );

  // Order Manager published the first fill of BTCUSDT; the second (0.5 @ 51000) never arrived
  const executed = Date.now() - 60_000;
  await s.fill({
    execution_id: 'rc-1',
    asset: 'BTCUSDT',
    side: 'Buy',
    execution_quantity: '1',
    execution_price: '50000',
    executed_at: new Date(executed).toISOString(),
  });
  await s.until('BTCUSDT', (p) => p.size === '1', 'the published fill');
  account.set({
    kind: 'positions',
    pageSize: 1,
    list: [
      bybitPosition('BTCUSDT', 0, 'Buy', '1.5', '50333.33333333', '50400', '100', {
        cumRealisedPnl: '0',
        updatedTime: String(executed + 30_000),
        createdTime: String(executed),
        seq: 7,
      }),
      bybitPosition('SOLUSDT', 0, 'Sell', '10', '150', '149', '10', {
        cumRealisedPnl: '0',
        updatedTime: String(executed),
        createdTime: String(executed),
      }),
    ],
  });
  // reconciliation runs every 10 s: a one-way position reaches the listed size within 25 s
  const listedSize = (asset: string, size: string, what: string) =>
    s.until(asset, (p) => p.size === size, what, 'one-way', 25_000);
  const sol = await listedSize('SOLUSDT', '-10', 'the position never seen here, adopted');
  t.match(sol, { average_entry_price: '150', unrealized_pnl: '10', current_price: '149' });
  const btc = await listedSize('BTCUSDT', '1.5', "validation after the grace period adopts the exchange's size");
  t.match(btc, { average_entry_price: '50333.33333333' });
  const fix = (
    await s.db.query(
      "select source, kind, before->>'size' as b, after->>'size' as a from position_events where asset = 'BTCUSDT' and kind in ('size_discrepancy', 'validation_fix') order by id",
    )
  ).rows;
  t.match(
    fix,
    [
      { source: 'exchange_rest', kind: 'size_discrepancy' },
      { source: 'validation', kind: 'validation_fix', b: '1', a: '1.5' },
    ],
    'the audit trail says what was seen and what was done',
  );
  const warned = await s.log(
    (l) => l.msg === 'the exchange disagrees: validation scheduled after the grace period' && l.asset === 'BTCUSDT',
    'the discrepancy logged',
  );
  t.match(warned, { level: 'warn', stored: '1', reported: '1.5' });
  t.ok(
    account.requests.some((r) => r.query.get('cursor') === '1'),
    'the second page was read by its cursor',
  );
  const metrics = (await s.get('/metrics')).body as string;
  t.match(metrics, /position_manager_reconcile_runs_total\{[^}]*outcome="ok"[^}]*\} [1-9]/);
  t.match(metrics, /position_manager_reconcile_discrepancies_total\{[^}]*\} [1-9]/);

  // the exchange refuses the key (the secret was rotated there): failing, degraded, warned once
  credentials.secret = 'rotated-on-the-exchange';
  const failing = await waitFor(
    async () => {
      const h = await health();
      return h.checks.exchange_reconcile.state === 'failing' && h;
    },
    { what: 'reconciliation failing', timeoutMs: 25_000 },
  );
  t.equal(failing.status, 'degraded');
  t.equal(account.requests.at(-1)!.signed, 'bad_sign');
  const warn = await s.log(
    (l) => l.msg === 'cannot read positions from the exchange; reconciliation is behind',
    'the warning',
  );
  t.match(warn, { level: 'warn', reason: /retCode 10004/ });
  const all = JSON.stringify(s.svc.logs) + s.svc.stderr.join('');
  t.notOk(
    all.includes('e2e-read-only-key') || all.includes('e2e-secret-abcdef0123456789'),
    'never the key or the secret',
  );
});
