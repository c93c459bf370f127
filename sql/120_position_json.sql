-- The Position object (SPEC.md §3.2) and its features (§3.3), built in one place so that REST,
-- events, snapshots and psql all show the same thing.
-- The feature functions are single expressions that use each argument that callers may pass as
-- an expensive expression only once, so PostgreSQL inlines them: a function it cannot inline is
-- planned again on every call from PL/pgSQL.

-- Gross quantity × reference price (mark, else the leg's average), 0 when flat.
create or replace function _position_exposure(p positions) returns numeric
  language sql immutable parallel safe
  as $$ select _position_long_exposure(p) + _position_short_exposure(p) $$;

-- Signed: long quantities count positive, short ones negative.
create or replace function _position_net_exposure(p positions) returns numeric
  language sql immutable parallel safe
  as $$ select _position_long_exposure(p) - _position_short_exposure(p) $$;

-- From the maintained totals (sql/115_portfolio_totals.sql): the apply paths ask for it on
-- every batch, and a sum over every position grew with the portfolio.
create or replace function _portfolio_total_exposure() returns numeric
  language sql stable parallel safe
  as $$
    -- unrounded, so a plain sum of the deltas (no per-asset rounding as in portfolio_totals_view)
    select t.raw_exposure + coalesce((select sum(d.long_exposure + d.short_exposure) from portfolio_deltas d), 0)
      from portfolio_totals t
  $$;

create or replace function _position_unrealized_pnl_pct(p positions) returns numeric
  language sql immutable parallel safe
  as $$
    select case when p.gross_size = 0 then null else div10(p.unrealized_pnl * 100, _position_cost_basis(p)) end
  $$;

create or replace function _position_time_held_minutes(p positions, at timestamptz) returns integer
  language sql immutable parallel safe
  as $$
    select case when p.closed_at is not null or p.opened_at is null then null
                else greatest(0, floor(extract(epoch from (at - p.opened_at)) / 60))::integer end
  $$;

-- null when the portfolio has no exposure, else exposure / total (exactly 0 for a flat
-- position: the outer round drops the quotient's scale there).
create or replace function _position_size_norm(p positions, total_exposure numeric) returns numeric
  language sql immutable parallel safe
  as $$
    select round(div10(_position_exposure(p), nullif(total_exposure, 0)), case when p.gross_size = 0 then 0 else 10 end)
  $$;

create or replace function _position_side(p positions) returns text
  language sql immutable parallel safe
  as $$
    select case when p.size > 0 then 'long' when p.size < 0 then 'short'
                when p.gross_size > 0 then 'hedged' else 'flat' end
  $$;

create or replace function position_json(p positions, total_exposure numeric default null, at timestamptz default now())
  returns jsonb
  language sql stable
  as $$
    select jsonb_build_object(
      'id', p.id,
      'asset', p.asset,
      'mode', p.mode,
      'side', _position_side(p),
      'size', dec_out(p.size),
      'long_size', dec_out(p.long_size),
      'short_size', dec_out(p.short_size),
      'long_avg_price', dec_out(p.long_avg_price),
      'short_avg_price', dec_out(p.short_avg_price),
      'average_entry_price', dec_out(p.average_entry_price),
      'current_price', dec_out(p.current_price),
      'current_price_at', ts_out(p.current_price_at),
      'current_price_source', p.current_price_source,
      'unrealized_pnl', dec_out(p.unrealized_pnl),
      'realized_pnl', dec_out(p.realized_pnl),
      'total_fees', dec_out(p.total_fees),
      'exposure_usdt', dec_out(_position_exposure(p)),
      'unrealized_pnl_pct', dec_out(_position_unrealized_pnl_pct(p)),
      'time_held_minutes', _position_time_held_minutes(p, at),
      'position_size_norm', dec_out(_position_size_norm(p, coalesce(total_exposure, _portfolio_total_exposure()))),
      'legs', _position_legs_json(p),
      'is_open', p.gross_size > 0,
      'opened_at', ts_out(p.opened_at),
      'closed_at', ts_out(p.closed_at),
      'created_at', ts_out(p.created_at),
      'last_updated', ts_out(p.last_updated),
      'last_snapshot_at', ts_out(p.last_snapshot_at),
      'version', p.version::bigint
    )
  $$;

-- Positions with their features for Grafana and psql (SPEC.md §9). Stored precision is kept;
-- the features are rounded to 10 places like every division.
create view positions_view as
  -- The total is read here, not through _portfolio_total_exposure(), so that grafana_reader
  -- needs no access to the base table (a function would read it with the caller's rights).
  with total as materialized (select coalesce(sum(_position_exposure(t)), 0) as exposure from positions t where t.gross_size > 0),
       settings as (select price_stale_seconds from position_manager_settings)
  select p.id, p.asset, p.mode, p.size, p.long_size, p.short_size, p.long_avg_price, p.short_avg_price,
         p.long_unrealized_pnl, p.short_unrealized_pnl, p.long_realized_pnl, p.short_realized_pnl,
         p.average_entry_price, p.average_entry_price_source, p.current_price, p.current_price_at, p.current_price_source,
         p.unrealized_pnl, p.realized_pnl, p.total_fees, p.opened_at, p.closed_at, p.created_at,
         p.last_updated, p.last_snapshot_at, p.version, p.gross_size,
         _position_side(p) as side,
         p.gross_size > 0 as is_open,
         _position_exposure(p) as exposure_usdt,
         _position_net_exposure(p) as net_exposure_usdt,
         _position_unrealized_pnl_pct(p) as unrealized_pnl_pct,
         _position_time_held_minutes(p, now()) as time_held_minutes,
         _position_size_norm(p, total.exposure) as position_size_norm,
         floor(extract(epoch from now() - p.current_price_at))::bigint as price_age_seconds,
         coalesce(p.current_price_at < now() - make_interval(secs => settings.price_stale_seconds), false) as price_is_stale
    from positions p, total, settings;
