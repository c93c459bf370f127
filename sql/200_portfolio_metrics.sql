-- Portfolio figures (SPEC.md R-20, ACCOUNTING.md §5) in one pass over positions, grouped by
-- asset; the totals are sums of the per-asset rows, so they always equal the sums of by_asset.
-- Views read the table directly (not through functions that read it) so grafana_reader needs only
-- the views.

-- Each per-asset figure is rounded to the 8 places of the JSON output first (long and short
-- separately, exposure and net built from them), so that every published total is exactly
-- the sum of its by_asset entries and net = long − short holds digit for digit (R-20).
create view portfolio_asset_totals_view as
  select g.asset,
         g.long_exposure_usdt + g.short_exposure_usdt as exposure_usdt,
         g.long_exposure_usdt, g.short_exposure_usdt,
         g.long_exposure_usdt - g.short_exposure_usdt as net_exposure_usdt,
         g.unrealized_pnl_usdt, g.realized_pnl_usdt, g.total_fees_usdt, g.size,
         g.open_positions_count, g.long_positions_count, g.short_positions_count, g.current_price
    from (select r.asset,
                 round(sum(r.long_exposure), 8) as long_exposure_usdt,
                 round(sum(r.short_exposure), 8) as short_exposure_usdt,
                 round(coalesce(sum(r.unrealized_pnl) filter (where r.is_open), 0), 8) as unrealized_pnl_usdt,
                 round(sum(r.realized_pnl), 8) as realized_pnl_usdt,
                 round(sum(r.total_fees), 8) as total_fees_usdt,
                 round(sum(r.size), 8) as size,
                 (count(*) filter (where r.is_open))::integer as open_positions_count,
                 (count(*) filter (where r.size > 0))::integer as long_positions_count,
                 (count(*) filter (where r.size < 0))::integer as short_positions_count,
                 max(r.current_price) filter (where r.is_open) as current_price
            from (select p.asset, p.size, p.gross_size > 0 as is_open,
                         coalesce(p.unrealized_pnl, 0) as unrealized_pnl,
                         coalesce(p.realized_pnl, 0) as realized_pnl,
                         coalesce(p.total_fees, 0) as total_fees,
                         p.current_price,
                         _position_long_exposure(p) as long_exposure,
                         _position_short_exposure(p) as short_exposure
                    from positions p) r
           group by r.asset) g;

create view portfolio_by_asset_view as
  select a.asset, a.exposure_usdt, a.net_exposure_usdt, a.unrealized_pnl_usdt, a.realized_pnl_usdt,
         a.unrealized_pnl_usdt + a.realized_pnl_usdt as total_pnl_usdt, a.size, a.open_positions_count,
         a.current_price,
         case when sum(a.exposure_usdt) over () = 0 then null
              else div10(a.exposure_usdt, sum(a.exposure_usdt) over ()) end as share_of_exposure
    from portfolio_asset_totals_view a;

-- From the maintained totals (sql/115_portfolio_totals.sql), not from portfolio_asset_totals_view:
-- the same sums of the rounded per-asset figures without reading every position (SPEC.md §11).
-- Without positions the figures are a plain 0, as sums over no asset were.
create view portfolio_metrics_view as
  select case when t.positions_count = 0 then 0 else round(t.long_exposure + t.short_exposure, 8) end as total_exposure_usdt,
         case when t.positions_count = 0 then 0 else round(t.long_exposure, 8) end as long_exposure_usdt,
         case when t.positions_count = 0 then 0 else round(t.short_exposure, 8) end as short_exposure_usdt,
         case when t.positions_count = 0 then 0 else round(t.long_exposure - t.short_exposure, 8) end as net_exposure_usdt,
         case when t.positions_count = 0 then 0 else round(t.long_exposure - t.short_exposure, 8) end as portfolio_value_usdt,
         case when t.positions_count = 0 then 0 else round(t.unrealized_pnl, 8) end as total_unrealized_pnl_usdt,
         case when t.positions_count = 0 then 0 else round(t.realized_pnl, 8) end as total_realized_pnl_usdt,
         case when t.positions_count = 0 then 0 else round(t.unrealized_pnl + t.realized_pnl, 8) end as total_pnl_usdt,
         case when t.positions_count = 0 then 0 else round(t.total_fees, 8) end as total_fees_usdt,
         t.open_positions_count::integer as open_positions_count,
         t.long_positions_count::integer as long_positions_count,
         t.short_positions_count::integer as short_positions_count,
         s.max_exposure_usdt,
         t.long_exposure + t.short_exposure > coalesce(s.max_exposure_usdt, 'Infinity') as exposure_limit_exceeded,
         now() as calculated_at
    from portfolio_totals_view t left join position_manager_settings s on true;

create or replace function _portfolio_limits_json(total_exposure numeric) returns jsonb
  language sql stable
  as $$
    select jsonb_build_object('max_exposure_usdt', dec_out(s.max_exposure_usdt),
                              'exposure_limit_exceeded', coalesce(total_exposure > s.max_exposure_usdt, false))
      from position_manager_settings s
  $$;

-- R-20: every metric as canonical decimal strings; with an asset, over that asset's rows only
-- (the limit is always the whole portfolio's).
create or replace function portfolio_metrics(asset text default null) returns jsonb
  language plpgsql stable
  as $$
declare
  wanted text := case when asset is null then null else _input_asset(asset) end;
  metrics jsonb;
begin
  select jsonb_build_object(
           'total_exposure_usdt', dec_out(coalesce(sum(t.exposure_usdt), 0)),
           'long_exposure_usdt', dec_out(coalesce(sum(t.long_exposure_usdt), 0)),
           'short_exposure_usdt', dec_out(coalesce(sum(t.short_exposure_usdt), 0)),
           'net_exposure_usdt', dec_out(coalesce(sum(t.net_exposure_usdt), 0)),
           'portfolio_value_usdt', dec_out(coalesce(sum(t.net_exposure_usdt), 0)),
           'total_unrealized_pnl_usdt', dec_out(coalesce(sum(t.unrealized_pnl_usdt), 0)),
           'total_realized_pnl_usdt', dec_out(coalesce(sum(t.realized_pnl_usdt), 0)),
           'total_pnl_usdt', dec_out(coalesce(sum(t.unrealized_pnl_usdt + t.realized_pnl_usdt), 0)),
           'total_fees_usdt', dec_out(coalesce(sum(t.total_fees_usdt), 0)),
           'open_positions_count', coalesce(sum(t.open_positions_count), 0)::integer,
           'long_positions_count', coalesce(sum(t.long_positions_count), 0)::integer,
           'short_positions_count', coalesce(sum(t.short_positions_count), 0)::integer,
           -- JSON text joined and parsed once: a jsonb_build_object per asset merged by
           -- jsonb_object_agg took 40 % more CPU at 1,500 assets (issue 21)
           'by_asset', coalesce(('{' || string_agg(t.figures, ',') || '}')::jsonb, '{}'),
           'limits', _portfolio_limits_json(case when wanted is null then coalesce(sum(t.exposure_usdt), 0)
                                                 else _portfolio_total_exposure() end),
           'calculated_at', ts_out(now()))
    into metrics
    -- the whole portfolio from the maintained per-asset sums (sql/115), one asset from its rows
    -- (an index probe, where the sums would be read whole)
    from (select * from portfolio_asset_sums_view where wanted is null
          union all
          select a.asset, a.exposure_usdt, a.long_exposure_usdt, a.short_exposure_usdt, a.net_exposure_usdt,
                 a.unrealized_pnl_usdt, a.realized_pnl_usdt, a.total_fees_usdt, a.size, a.open_positions_count,
                 a.long_positions_count, a.short_positions_count,
                 _portfolio_asset_figures(a.asset, a.long_exposure_usdt, a.short_exposure_usdt, a.unrealized_pnl_usdt,
                                          a.realized_pnl_usdt, a.size, a.open_positions_count)
            from portfolio_asset_totals_view a where a.asset = wanted) t;
  return metrics;
end $$;
