// Names several test files check against: the relations Grafana reads and the portfolio's metric fields.

/** The views of §9 that grafana_reader may select (sql/900_grafana_grants.sql), portfolio_asset_totals_view aside. */
export const GRAFANA_VIEWS = [
  'positions_view',
  'portfolio_metrics_view',
  'portfolio_by_asset_view',
  'position_snapshots_view',
  'portfolio_metrics_history_view',
  'portfolio_pnl_hourly',
  'position_pnl_hourly',
  'position_events_view',
  'job_history_view',
  'job_queue_view',
] as const;

/** The portfolio's totals in portfolio_metrics() and portfolio_updated. */
export const PORTFOLIO_TOTALS = [
  'total_exposure_usdt',
  'total_unrealized_pnl_usdt',
  'total_realized_pnl_usdt',
  'portfolio_value_usdt',
  'net_exposure_usdt',
  'open_positions_count',
] as const;

/** The totals and the long and short counts. */
export const PORTFOLIO_METRICS = [...PORTFOLIO_TOTALS, 'long_positions_count', 'short_positions_count'] as const;
