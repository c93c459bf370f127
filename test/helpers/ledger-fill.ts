// A fill's body from its four fields in order (asset, side, quantity, price) and any others in `more`.
export const fillFields = (
  asset: string,
  side: string,
  execution_quantity: string | number,
  execution_price: string | number,
  more: Record<string, unknown> = {},
) => ({ asset, side, execution_quantity, execution_price, ...more });

/** The arguments of fillFields, for a test file's own `trade(db, ...fields)`. */
export type FillFields = Parameters<typeof fillFields>;
