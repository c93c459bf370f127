// What the exchange says, applied (SPEC.md ). Bybit's answers go in as their own
// text, so no price or size passes through a JS number; SQL rejects an answer it cannot read
// with 22023.
import { queryValue, type Queryable } from './query.js';

export interface MarkPricesApplied {
  skipped_prices: number;
  positions_updated: number;
}

/** the tickers answer's mark prices on the open positions. */
export function applyMarkPrices(db: Queryable, answer: string, traceId: string): Promise<MarkPricesApplied> {
  return queryValue(db, 'select apply_mark_prices($1::jsonb, $2)', [answer, traceId]);
}

export interface Reconciled {
  listed: number;
  absent: number;
  discrepancies: { asset: string; mode: string; leg: string; stored: string; reported: string }[];
}

/** every page of the position list, each position applied as a report. */
export function reconcilePositions(db: Queryable, pages: string[], traceId: string): Promise<Reconciled> {
  return queryValue(db, 'select reconcile_positions($1::jsonb, $2)', [`[${pages.join(',')}]`, traceId]);
}
