// The refresh_mark_prices task (SPEC.md R-31): one ticker request, one SQL call. A failing
// source is the outside world's fault, not the job's: the run records it, /health shows it, and
// the chain goes on at its interval.
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { metrics } from '../metrics.js';
import { BybitError, fetchLinearTickers } from '../outside/bybit.js';
import type { SourceState } from '../runtime.js';
import type { Query } from './connection.js';
import { trackSource } from './outside-source.js';

export function markPriceRefresher(config: Readonly<Config>, state: SourceState, log: Logger) {
  const source =
    config.priceRefreshIntervalSeconds > 0
      ? trackSource(state, log, metrics.priceRefreshes, {
          failing: 'mark prices cannot be refreshed; positions keep their last price',
          recovered: 'mark prices are refreshed again',
        })
      : undefined;

  return async (_payload: Record<string, unknown>, traceId: string, q: Query): Promise<unknown> => {
    if (!source) return { outcome: 'off' };
    if (!(await q('select exists (select 1 from positions where gross_size > 0)'))) {
      metrics.priceRefreshes.inc({ outcome: 'skipped' });
      return { outcome: 'skipped', reason: 'no open position' };
    }
    let answer: string;
    try {
      answer = await fetchLinearTickers(config);
    } catch (err) {
      if (err instanceof BybitError) return source.failed(err.message, traceId);
      throw err;
    }
    let result: { skipped_prices: number; positions_updated: number };
    try {
      result = (await q('select apply_mark_prices($1::jsonb, $2)', [answer, traceId])) as typeof result;
    } catch (err) {
      // an answer SQL rejects (no time, no list) is the source's failure, not the database's
      if ((err as { code?: string }).code === '22023')
        return source.failed(`the answer was rejected: ${(err as Error).message}`, traceId);
      throw err;
    }
    source.succeeded(traceId);
    if (result.skipped_prices > 0) metrics.markPricesSkipped.inc(result.skipped_prices);
    if (result.positions_updated > 0) metrics.positionUpdates.inc({ source: 'mark_price' }, result.positions_updated);
    return { outcome: 'ok', ...result };
  };
}
