-- Time series for Grafana (SPEC.md §9). Materialized views have unique indexes so that the
-- refresh job can use REFRESH ... CONCURRENTLY (readers are never blocked).

create view portfolio_metrics_history_view as
  select id, calculated_at, total_exposure_usdt, long_exposure_usdt, short_exposure_usdt, net_exposure_usdt,
         portfolio_value_usdt, total_unrealized_pnl_usdt, total_realized_pnl_usdt, total_pnl_usdt, total_fees_usdt,
         open_positions_count, long_positions_count, short_positions_count
    from portfolio_metrics_history;

create materialized view portfolio_pnl_hourly as
  select date_trunc('hour', h.calculated_at) as hour,
         (array_agg(h.total_unrealized_pnl_usdt order by h.calculated_at desc, h.id desc))[1] as total_unrealized_pnl_usdt,
         (array_agg(h.total_realized_pnl_usdt order by h.calculated_at desc, h.id desc))[1] as total_realized_pnl_usdt,
         (array_agg(h.total_pnl_usdt order by h.calculated_at desc, h.id desc))[1] as total_pnl_usdt,
         max(h.total_exposure_usdt) as max_total_exposure_usdt,
         (array_agg(h.total_exposure_usdt order by h.calculated_at desc, h.id desc))[1] as total_exposure_usdt
    from portfolio_metrics_history h
   group by 1;
create unique index portfolio_pnl_hourly_hour_idx on portfolio_pnl_hourly (hour);

create materialized view position_pnl_hourly as
  select date_trunc('hour', s.snapshot_timestamp) as hour, s.asset, s.mode,
         (array_agg(s.size order by s.snapshot_timestamp desc, s.id desc))[1] as size,
         (array_agg(s.unrealized_pnl order by s.snapshot_timestamp desc, s.id desc))[1] as unrealized_pnl,
         (array_agg(s.realized_pnl order by s.snapshot_timestamp desc, s.id desc))[1] as realized_pnl,
         (array_agg(s.unrealized_pnl_pct order by s.snapshot_timestamp desc, s.id desc))[1] as unrealized_pnl_pct
    from position_snapshots s
   group by 1, 2, 3;
create unique index position_pnl_hourly_key_idx on position_pnl_hourly (hour, asset, mode);

-- Only ours: the schema is shared, and another service's materialized view (perhaps without a
-- unique index, so that CONCURRENTLY fails) must neither be touched nor stop ours.
create or replace function refresh_materialized_views() returns jsonb
  language plpgsql
  as $$
declare
  v text;
  done text[] := '{}';
begin
  foreach v in array array['portfolio_pnl_hourly', 'position_pnl_hourly'] loop
    execute format('refresh materialized view concurrently %I', v);
    done := done || v;
  end loop;
  return jsonb_build_object('refreshed', to_jsonb(done));
end $$;
