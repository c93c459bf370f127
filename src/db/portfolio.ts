// The portfolio (SPEC.md R-20..R-23): the API's metrics, and the worker's events and samples.
// `asset` narrows the figures to one asset; null is the whole portfolio.
import { queryValue, type JsonObject, type Queryable } from './query.js';

/** openapi.yaml's Portfolio. */
export function portfolio(db: Queryable, asset: string | null, includePositions: boolean): Promise<JsonObject> {
  return queryValue(db, 'select portfolio_json($1, $2)', [asset, includePositions]);
}

/** openapi.yaml's Exposure. */
export function portfolioExposure(db: Queryable, asset: string | null): Promise<JsonObject> {
  return queryValue(db, 'select portfolio_exposure_json($1)', [asset]);
}

/** openapi.yaml's Pnl. */
export function portfolioPnl(db: Queryable, asset: string | null): Promise<JsonObject> {
  return queryValue(db, 'select portfolio_pnl_json($1)', [asset]);
}

/** where the total exposure stands against its limit, and whether it just crossed it. */
export interface LimitCheck {
  limit?: { transition: string | null; limit_value: string; current_value: string };
}

/** a portfolio_updated event, unless nothing changed since the last one. */
export function publishPortfolioUpdate(db: Queryable, traceId: string): Promise<LimitCheck> {
  return queryValue(db, 'select publish_portfolio_update(true, $1)', [traceId]);
}

/** One row of portfolio metrics history. */
export function samplePortfolioMetrics(db: Queryable, traceId: string): Promise<LimitCheck> {
  return queryValue(db, 'select sample_portfolio_metrics($1)', [traceId]);
}
