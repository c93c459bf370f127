// Writes straight to the ledger through its SQL entry points, for API tests that need positions to read.
import type { TestDb } from './db.js';

/**
 * A function that applies one fill with apply_order_fill, its execution_id from `nextId` and any `extra` fields
 * (fees, executed_at, ...) added to the message.
 */
export function ledgerFill(db: TestDb, nextId: () => string) {
  return (asset: string, side: string, qty: string, price: string, extra: object = {}) =>
    db.query('select apply_order_fill($1::jsonb)', [
      JSON.stringify({
        execution_id: nextId(),
        asset,
        side,
        execution_quantity: qty,
        execution_price: price,
        ...extra,
      }),
    ]);
}
