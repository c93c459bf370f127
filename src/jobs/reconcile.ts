// The reconcile_with_exchange task (SPEC.md R-34): read every linear USDT position from Bybit's
// signed REST API and hand the whole answer to one SQL call, which applies each as a report and
// treats a position open here but flat or absent there as a discrepancy (validation settles it
// after the grace period). Reports can be lost on the way; this read cannot.
import type { Config } from '../config.js';
import { reconcilePositions } from '../db/exchange.js';
import type { Queryable } from '../db/query.js';
import type { Logger } from '../log.js';
import { metrics } from '../metrics.js';
import { fetchLinearPositions } from '../outside/bybit.js';
import type { SourceState } from '../runtime.js';
import { trackSource } from './outside-source.js';

export function exchangeReconciler(config: Readonly<Config>, state: SourceState, log: Logger) {
  const credentials =
    config.reconcileIntervalSeconds > 0 ? { key: config.bybitApiKey!, secret: config.bybitApiSecret! } : undefined;
  const source = credentials
    ? trackSource(state, log, metrics.reconcileRuns, {
        failing: 'cannot read positions from the exchange; reconciliation is behind',
        recovered: 'positions are read from the exchange again',
      })
    : undefined;

  return async (_payload: Record<string, unknown>, traceId: string, db: Queryable): Promise<unknown> => {
    if (!source || !credentials) return { outcome: 'off' };
    const r = await source.readAndApply(
      traceId,
      () => fetchLinearPositions(config, credentials),
      (pages) => reconcilePositions(db, pages, traceId),
    );
    if (r.outcome === 'ok')
      for (const d of r.discrepancies) {
        metrics.reconcileDiscrepancies.inc();
        log.warn({ trace_id: traceId, ...d }, 'the exchange disagrees: validation scheduled after the grace period');
      }
    return r;
  };
}
