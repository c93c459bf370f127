-- The portfolio responses of the REST API (SPEC.md §5.1), cut from portfolio_metrics() so that
-- every endpoint shows the same figures.

-- GET /api/v1/portfolio: the metrics, plus the open positions in scope when asked.
create or replace function portfolio_json(asset text default null, include_positions boolean default false)
  returns jsonb
  language plpgsql stable
  as $$
declare
  m jsonb := portfolio_metrics(asset);
  total_exposure numeric;
begin
  if include_positions then
    total_exposure := _portfolio_total_exposure();
    m := m || jsonb_build_object('positions', coalesce(
      (select jsonb_agg(position_json(p, total_exposure) order by p.asset, p.mode)
         from positions p
        where p.gross_size > 0 and (portfolio_json.asset is null or p.asset = _input_asset(portfolio_json.asset))), '[]'));
  end if;
  return m;
end $$;

create or replace function portfolio_exposure_json(asset text default null) returns jsonb
  language sql stable
  as $$
    select jsonb_build_object(
      'total_exposure_usdt', m -> 'total_exposure_usdt', 'long_exposure_usdt', m -> 'long_exposure_usdt',
      'short_exposure_usdt', m -> 'short_exposure_usdt', 'net_exposure_usdt', m -> 'net_exposure_usdt',
      'by_asset', coalesce((select jsonb_object_agg(k, jsonb_build_object('exposure_usdt', v -> 'exposure_usdt',
                                                                          'net_exposure_usdt', v -> 'net_exposure_usdt'))
                              from jsonb_each(m -> 'by_asset') e(k, v)), '{}'),
      'limits', m -> 'limits', 'calculated_at', m -> 'calculated_at')
    from (select portfolio_metrics(asset) as m offset 0) x -- offset 0: compute once, not per reference
  $$;

create or replace function portfolio_pnl_json(asset text default null) returns jsonb
  language sql stable
  as $$
    select jsonb_build_object(
      'total_unrealized_pnl_usdt', m -> 'total_unrealized_pnl_usdt', 'total_realized_pnl_usdt', m -> 'total_realized_pnl_usdt',
      'total_pnl_usdt', m -> 'total_pnl_usdt', 'total_fees_usdt', m -> 'total_fees_usdt',
      'by_asset', coalesce((select jsonb_object_agg(k, jsonb_build_object('unrealized_pnl_usdt', v -> 'unrealized_pnl_usdt',
                                                                          'realized_pnl_usdt', v -> 'realized_pnl_usdt',
                                                                          'total_pnl_usdt', v -> 'total_pnl_usdt'))
                              from jsonb_each(m -> 'by_asset') e(k, v)), '{}'),
      'calculated_at', m -> 'calculated_at')
    from (select portfolio_metrics(asset) as m offset 0) x -- offset 0: compute once, not per reference
  $$;
