// The refresh_mark_prices task (SPEC.md R-31): one ticker request, one SQL call. A failing
// source is the outside world's fault, not the job's: the run records it, /health shows it, and
// the chain goes on at its interval.
import type { Config } from '../config.js';
import { applyMarkPrices } from '../db/exchange.js';
import { anyOpenPosition } from '../db/positions.js';
import type { Queryable } from '../db/query.js';
import type { Logger } from '../log.js';
import { metrics } from '../metrics.js';
import { fetchLinearTickers } from '../outside/bybit.js';
import type { SourceState } from '../runtime.js';
import { trackSource } from './outside-source.js';

export function markPriceRefresher(config: Readonly<Config>, state: SourceState, log: Logger) {
  const source =
    config.priceRefreshIntervalSeconds > 0
      ? trackSource(state, log, metrics.priceRefreshes, {
          failing: 'mark prices cannot be refreshed; positions keep their last price',
          recovered: 'mark prices are refreshed again',
        })
      : undefined;

  return async (_payload: Record<string, unknown>, traceId: string, db: Queryable): Promise<unknown> => {
    if (!source) return { outcome: 'off' };
    if (!(await anyOpenPosition(db))) {
      metrics.priceRefreshes.inc({ outcome: 'skipped' });
      return { outcome: 'skipped', reason: 'no open position' };
    }
    const r = await source.readAndApply(
      traceId,
      () => fetchLinearTickers(config),
      (answer) => applyMarkPrices(db, answer, traceId),
    );
    if (r.outcome === 'ok') {
      if (r.skipped_prices > 0) metrics.markPricesSkipped.inc(r.skipped_prices);
      if (r.positions_updated > 0) metrics.positionUpdates.inc({ source: 'mark_price' }, r.positions_updated);
    }
    return r;
  };
}
