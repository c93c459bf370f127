// The reconcile_with_exchange task (SPEC.md R-34): read every linear USDT position from Bybit's
// signed REST API and hand the whole answer to one SQL call, which applies each as a report and
// treats a position open here but flat or absent there as a discrepancy (validation settles it
// after the grace period). Reports can be lost on the way; this read cannot.
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { metrics } from '../metrics.js';
import { BybitError, fetchLinearPositions } from '../outside/bybit.js';
import type { SourceState } from '../runtime.js';
import type { Query } from './connection.js';
import { trackSource } from './outside-source.js';

interface Reconciled {
  listed: number;
  absent: number;
  discrepancies: { asset: string; mode: string; leg: string; stored: string; reported: string }[];
}

export function exchangeReconciler(config: Readonly<Config>, state: SourceState, log: Logger) {
  const credentials =
    config.reconcileIntervalSeconds > 0 ? { key: config.bybitApiKey!, secret: config.bybitApiSecret! } : undefined;
  const source = credentials
    ? trackSource(state, log, metrics.reconcileRuns, {
        failing: 'cannot read positions from the exchange; reconciliation is behind',
        recovered: 'positions are read from the exchange again',
      })
    : undefined;

  return async (_payload: Record<string, unknown>, traceId: string, q: Query): Promise<unknown> => {
    if (!source || !credentials) return { outcome: 'off' };
    let pages: string[];
    try {
      pages = await fetchLinearPositions(config, credentials);
    } catch (err) {
      if (err instanceof BybitError) return source.failed(err.message, traceId);
      throw err;
    }
    let result: Reconciled;
    try {
      result = (await q('select reconcile_positions($1::jsonb, $2)', [`[${pages.join(',')}]`, traceId])) as Reconciled;
    } catch (err) {
      if ((err as { code?: string }).code === '22023')
        return source.failed(`the answer was rejected: ${(err as Error).message}`, traceId);
      throw err;
    }
    source.succeeded(traceId);
    for (const d of result.discrepancies) {
      metrics.reconcileDiscrepancies.inc();
      log.warn({ trace_id: traceId, ...d }, 'the exchange disagrees: validation scheduled after the grace period');
    }
    return { outcome: 'ok', ...result };
  };
}
