-- The portfolio responses of the REST API (SPEC.md §5.1), cut from portfolio_metrics() so that
-- every endpoint shows the same figures.

-- GET /api/v1/portfolio: the metrics, plus the open positions in scope when asked.
create or replace function portfolio_json(asset text default null, include_positions boolean default false)
  returns jsonb
  language plpgsql stable
  as $$
declare
  metrics jsonb := portfolio_metrics(asset);
  total_exposure numeric;
begin
  if include_positions then
    total_exposure := _portfolio_total_exposure();
    metrics := metrics || jsonb_build_object('positions', coalesce(
      (select jsonb_agg(position_json(p, total_exposure) order by p.asset, p.mode)
         from positions p
        where p.gross_size > 0 and (portfolio_json.asset is null or p.asset = _input_asset(portfolio_json.asset))), '[]'));
  end if;
  return metrics;
end $$;

-- The metrics' `keys`, and `asset_keys` of each asset in by_asset: one computation, cut per endpoint.
create or replace function _portfolio_cut(metrics jsonb, keys text[], asset_keys text[]) returns jsonb
  language sql immutable
  as $$
    select (select jsonb_object_agg(k, metrics -> k) from unnest(keys) k)
           || jsonb_build_object('by_asset', coalesce(
                (select jsonb_object_agg(a.key, (select jsonb_object_agg(f, a.value -> f) from unnest(asset_keys) f))
                   from jsonb_each(metrics -> 'by_asset') a), '{}'))
  $$;

create or replace function portfolio_exposure_json(asset text default null) returns jsonb
  language sql stable
  as $$
    select _portfolio_cut(portfolio_metrics(asset),
                          array['total_exposure_usdt', 'long_exposure_usdt', 'short_exposure_usdt', 'net_exposure_usdt',
                                'limits', 'calculated_at'],
                          array['exposure_usdt', 'net_exposure_usdt'])
  $$;

create or replace function portfolio_pnl_json(asset text default null) returns jsonb
  language sql stable
  as $$
    select _portfolio_cut(portfolio_metrics(asset),
                          array['total_unrealized_pnl_usdt', 'total_realized_pnl_usdt', 'total_pnl_usdt', 'total_fees_usdt',
                                'calculated_at'],
                          array['unrealized_pnl_usdt', 'realized_pnl_usdt', 'total_pnl_usdt'])
  $$;
