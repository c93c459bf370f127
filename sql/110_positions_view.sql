-- Positions with their features for Grafana and psql (SPEC.md §9). Stored precision is kept;
-- the features are rounded to 10 places like every division.
create view positions_view as
  -- The total is read here, not through portfolio_total_exposure(), so that grafana_reader
  -- needs no access to the base table (a function would read it with the caller's rights).
  with total as materialized (select coalesce(sum(position_exposure(t)), 0) as exposure from positions t where t.gross_size > 0),
       settings as (select price_stale_seconds from position_manager_settings)
  select p.id, p.asset, p.mode, p.size, p.long_size, p.short_size, p.long_avg_price, p.short_avg_price,
         p.long_unrealized_pnl, p.short_unrealized_pnl, p.long_realized_pnl, p.short_realized_pnl,
         p.average_entry_price, p.average_entry_price_source, p.current_price, p.current_price_at, p.current_price_source,
         p.unrealized_pnl, p.realized_pnl, p.total_fees, p.opened_at, p.closed_at, p.created_at,
         p.last_updated, p.last_snapshot_at, p.version, p.gross_size,
         position_side(p) as side,
         p.gross_size > 0 as is_open,
         position_exposure(p) as exposure_usdt,
         position_net_exposure(p) as net_exposure_usdt,
         position_unrealized_pnl_pct(p) as unrealized_pnl_pct,
         position_time_held_minutes(p, now()) as time_held_minutes,
         position_size_norm(p, total.exposure) as position_size_norm,
         floor(extract(epoch from now() - p.current_price_at))::bigint as price_age_seconds,
         coalesce(p.current_price_at < now() - make_interval(secs => settings.price_stale_seconds), false) as price_is_stale
    from positions p, total, settings;
