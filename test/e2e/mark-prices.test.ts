// R-31 through the real service: the refresh_mark_prices job asks a local server that answers
// like Bybit, and the figures Order Manager and Model Service read follow the market; a failing
// source degrades /health, is logged at most once a minute, and blocks nothing else.
import t from 'tap';
import { startFakeBybit } from '../helpers/fake-bybit.js';
import { startStack } from '../helpers/stack.js';
import { waitFor } from '../helpers/wait.js';

const health = async (s: { get(p: string): Promise<{ body: any }> }) => (await s.get('/health')).body;

t.test("mark prices from the ticker: the issue's BTC example, failures, recovery", async (t) => {
  const bybit = await startFakeBybit(t, {
    kind: 'prices',
    list: [
      { symbol: 'BTCUSDT', markPrice: '50800' },
      { symbol: 'ETHUSDT', markPrice: '3000' },
    ],
  });
  const s = await startStack(t, {
    POSITION_MANAGER_PRICE_API_URL: bybit.url,
    POSITION_MANAGER_PRICE_REFRESH_INTERVAL: '1',
    POSITION_MANAGER_PRICE_API_TIMEOUT: '1',
    POSITION_MANAGER_PRICE_API_RETRIES: '0',
  });
  t.match((await health(s)).checks.prices, { source: 'ok', last_success_at: null }, 'nothing open: no request yet');

  // bought at 50000, 50500, 51000 (0.1 each): average 50500; the first fill's price is stale
  for (const [i, price] of ['50000', '50500', '51000'].entries())
    await s.fill({
      execution_id: `mp-${i}`,
      asset: 'BTCUSDT',
      side: 'Buy',
      execution_quantity: '0.1',
      execution_price: price,
    });
  const marked = await s.until(
    'BTCUSDT',
    (p) => p.size === '0.3' && p.current_price_source === 'ticker',
    'marked by the ticker',
  );
  t.match(
    marked,
    { current_price: '50800', unrealized_pnl: '90', average_entry_price: '50500', unrealized_pnl_pct: '0.5940594' },
    'unrealized (50800 − 50500) × 0.3 = 90, not (50000 − 50500) × 0.3 = −150',
  );
  const event = await waitFor(() => s.events.updated.bodies().find((b) => b.update_source === 'mark_price'), {
    what: 'a mark_price event',
  });
  t.match(event, {
    asset: 'BTCUSDT',
    current_price: '50800',
    unrealized_pnl: '90',
    position: { current_price_source: 'ticker' },
  });
  t.ok(
    bybit.requests.every((r) => r === 'GET /v5/market/tickers?category=linear'),
    'one request for every linear symbol',
  );
  const exposure = (await s.get('/api/v1/portfolio/exposure')).body;
  t.equal(exposure.total_exposure_usdt, '15240', "Order Manager's exposure follows: 0.3 × 50800");
  const ok = await waitFor(
    async () => {
      const h = await health(s);
      return h.checks.prices.last_success_at && h;
    },
    { what: 'last_success_at' },
  );
  t.match(ok, { status: 'healthy', checks: { prices: { source: 'ok', stale_open_positions: 0 } } });

  // the source fails: 5xx, then malformed JSON, then no answer at all
  bybit.set({ kind: 'status', status: 503, body: 'upstream unavailable' });
  const degraded = await waitFor(
    async () => {
      const h = await health(s);
      return h.checks.prices.source === 'failing' && h;
    },
    { what: 'the source failing' },
  );
  t.equal(degraded.status, 'degraded', 'a failing price source degrades the service');
  const warn = await s.log(
    (l) => l.msg === 'mark prices cannot be refreshed; positions keep their last price',
    'the warning',
  );
  t.match(warn, { level: 'warn', reason: /HTTP 503: upstream unavailable/ });
  bybit.set({ kind: 'raw', body: '{"retCode":0,"result":' });
  const requestsBefore = bybit.requests.length;
  await waitFor(() => bybit.requests.length >= requestsBefore + 2, { what: 'more failed refreshes' });
  bybit.set({ kind: 'hang' });
  const hangingFrom = bybit.requests.length;
  await waitFor(() => bybit.requests.length >= hangingFrom + 2, { what: 'refreshes that time out', timeoutMs: 20_000 });
  t.equal(
    s.svc.logs.filter((l) => l.msg === 'mark prices cannot be refreshed; positions keep their last price').length,
    1,
    'at most one warning a minute while it keeps failing',
  );
  // nothing else is blocked: a fill is applied meanwhile, and REST answers
  await s.fill({
    execution_id: 'mp-3',
    asset: 'BTCUSDT',
    side: 'Sell',
    execution_quantity: '0.1',
    execution_price: '50900',
  });
  await s.until('BTCUSDT', (p) => p.size === '0.2', 'a fill while prices fail');
  const metrics = (await s.get('/metrics')).body as string;
  t.match(metrics, /position_manager_price_refresh_total\{[^}]*outcome="failure"[^}]*\} [1-9]/);

  // it answers again; a bad price is skipped and counted, the good ones applied
  bybit.set({
    kind: 'prices',
    list: [
      { symbol: 'BTCUSDT', markPrice: '51000' },
      { symbol: 'ETHUSDT', markPrice: 'NaN' },
    ],
  });
  const back = await s.until('BTCUSDT', (p) => p.current_price === '51000', 'the new price');
  t.equal(back.unrealized_pnl, '100', '(51000 − 50500) × 0.2');
  await waitFor(async () => (await health(s)).checks.prices.source === 'ok', { what: 'the source ok again' });
  await s.log((l) => l.msg === 'mark prices are refreshed again', 'recovery logged');
  const after = (await s.get('/metrics')).body as string;
  t.match(after, /position_manager_mark_prices_skipped_total\{[^}]*\} [1-9]/, 'the NaN price is counted');
  t.match(after, /position_manager_price_refresh_total\{[^}]*outcome="ok"[^}]*\} [1-9]/);
  t.equal((await health(s)).status, 'healthy');
});
