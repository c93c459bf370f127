/**
 * One record of Bybit's position list (GET /v5/position/list) as reconciliation reads it: the fields every test
 * gives, in this order, then any others (cumRealisedPnl, updatedTime, createdTime, seq) in `more`.
 */
export const bybitPosition = (
  symbol: string,
  positionIdx: number,
  side: string,
  size: string,
  avgPrice: string,
  markPrice: string,
  unrealisedPnl: string,
  more: Record<string, unknown> = {},
) => ({ symbol, positionIdx, side, size, avgPrice, markPrice, unrealisedPnl, ...more });
