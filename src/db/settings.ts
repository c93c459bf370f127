// Writes the configuration the SQL functions read (position_manager_settings), so that a
// psql caller gets the same thresholds as the service; and enables Grafana's login if asked.
import type pg from 'pg';
import type { Config } from '../config.js';

export async function writeSettings(pool: pg.Pool, config: Config): Promise<void> {
  await pool.query(
    `update position_manager_settings set
       use_ws_avg_price = $1, avg_price_diff_threshold = $2, size_validation_threshold = $3,
       size_discrepancy_grace_seconds = $4, max_exposure_usdt = $5, portfolio_event_interval_ms = $6,
       price_stale_seconds = $7, updated_at = now()`,
    [
      config.useWsAvgPrice,
      config.avgPriceDiffThreshold,
      config.sizeValidationThreshold,
      config.sizeDiscrepancyGraceSeconds,
      config.maxExposureUsdt ?? null,
      config.portfolioEventIntervalMs,
      config.priceStaleSeconds,
    ],
  );
  if (config.grafanaReaderPassword !== undefined) {
    const literal = (await pool.query<{ q: string }>('select quote_literal($1) as q', [config.grafanaReaderPassword]))
      .rows[0]!.q;
    await pool.query(`alter role grafana_reader login password ${literal}`);
  }
}
