-- The Position object (SPEC.md §3.2) and its features (§3.3), built in one place so that REST,
-- events, snapshots and psql all show the same thing.

-- Gross quantity × reference price (mark, else the leg's average), 0 when flat.
create or replace function position_exposure(p positions) returns numeric
  language sql immutable parallel safe
  as $$
    select case
      when p.mode = 'hedge' then
        coalesce(p.long_size * coalesce(p.current_price, p.long_avg_price, 0), 0)
        + coalesce(p.short_size * coalesce(p.current_price, p.short_avg_price, 0), 0)
      else abs(p.size) * coalesce(p.current_price, p.average_entry_price, 0)
    end
  $$;

-- Signed: long quantities count positive, short ones negative.
create or replace function position_net_exposure(p positions) returns numeric
  language sql immutable parallel safe
  as $$
    select case
      when p.mode = 'hedge' then
        coalesce(p.long_size * coalesce(p.current_price, p.long_avg_price, 0), 0)
        - coalesce(p.short_size * coalesce(p.current_price, p.short_avg_price, 0), 0)
      else p.size * coalesce(p.current_price, p.average_entry_price, 0)
    end
  $$;

create or replace function portfolio_total_exposure() returns numeric
  language sql stable parallel safe
  as $$ select coalesce(sum(position_exposure(p)), 0) from positions p where p.gross_size > 0 $$;

-- The feature functions below are single expressions that use each argument that callers may
-- pass as an expensive expression only once, so PostgreSQL inlines them; a function it cannot
-- inline is planned again on every call from PL/pgSQL (hundreds of µs per fill).
create or replace function position_unrealized_pnl_pct(p positions) returns numeric
  language sql immutable parallel safe
  as $$
    select case
      when p.gross_size = 0 then null
      when p.mode = 'hedge' then
        case when (p.long_size > 0 and coalesce(p.long_avg_price, 0) = 0)
                  or (p.short_size > 0 and coalesce(p.short_avg_price, 0) = 0) then null
             else div10(p.unrealized_pnl * 100,
                        nullif(case when p.long_size > 0 then p.long_size * p.long_avg_price else 0 end
                               + case when p.short_size > 0 then p.short_size * p.short_avg_price else 0 end, 0))
        end
      when coalesce(p.average_entry_price, 0) = 0 then null
      else div10(p.unrealized_pnl * 100, abs(p.size) * p.average_entry_price)
    end
  $$;

create or replace function position_time_held_minutes(p positions, at timestamptz) returns integer
  language sql immutable parallel safe
  as $$
    select case when p.closed_at is not null or p.opened_at is null then null
                else greatest(0, floor(extract(epoch from (at - p.opened_at)) / 60))::integer end
  $$;

-- null when the portfolio has no exposure, else exposure / total (exactly 0 for a flat
-- position: the outer round drops the quotient's scale there).
create or replace function position_size_norm(p positions, total_exposure numeric) returns numeric
  language sql immutable parallel safe
  as $$
    select round(div10(position_exposure(p), nullif(total_exposure, 0)), case when p.gross_size = 0 then 0 else 10 end)
  $$;

create or replace function position_side(p positions) returns text
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
      'side', position_side(p),
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
      'exposure_usdt', dec_out(position_exposure(p)),
      'unrealized_pnl_pct', dec_out(position_unrealized_pnl_pct(p)),
      'time_held_minutes', position_time_held_minutes(p, at),
      'position_size_norm', dec_out(position_size_norm(p, coalesce(total_exposure, portfolio_total_exposure()))),
      'legs', case when p.mode = 'hedge' then jsonb_build_object(
                'long', jsonb_build_object('size', dec_out(p.long_size), 'average_entry_price', dec_out(p.long_avg_price),
                                           'unrealized_pnl', dec_out(coalesce(p.long_unrealized_pnl, 0)),
                                           'realized_pnl', dec_out(coalesce(p.long_realized_pnl, 0))),
                'short', jsonb_build_object('size', dec_out(p.short_size), 'average_entry_price', dec_out(p.short_avg_price),
                                            'unrealized_pnl', dec_out(coalesce(p.short_unrealized_pnl, 0)),
                                            'realized_pnl', dec_out(coalesce(p.short_realized_pnl, 0))))
              end,
      'is_open', p.gross_size > 0,
      'opened_at', ts_out(p.opened_at),
      'closed_at', ts_out(p.closed_at),
      'created_at', ts_out(p.created_at),
      'last_updated', ts_out(p.last_updated),
      'last_snapshot_at', ts_out(p.last_snapshot_at),
      'version', p.version::bigint
    )
  $$;
