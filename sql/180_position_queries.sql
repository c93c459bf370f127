-- Read functions behind the REST API (SPEC.md §5.1), so that a psql call returns exactly what
-- the API returns. Bad parameters raise 22023 naming the field; a missing row raises P0002.

create or replace function get_position(asset text, mode text default null) returns jsonb
  language sql stable
  as $$ select position_json(_require_position(asset, mode)) $$;

-- size_min/size_max compare with the gross quantity, inclusive; ordered by asset, mode.
create or replace function list_positions(
  asset text default null, mode text default null, size_min numeric default null, size_max numeric default null,
  include_closed boolean default false, "limit" integer default 1000, "offset" integer default 0)
  returns jsonb
  language plpgsql stable
  as $$
declare
  wanted_asset text := case when asset is null then null else _input_asset(asset) end;
  wanted_mode text := case when mode is null then null else _input_mode(mode) end;
  total_exposure numeric := _portfolio_total_exposure();
  listing jsonb;
begin
  if size_min < 0 then perform _bad_input('size_min', 'must not be negative'); end if;
  if size_max < 0 then perform _bad_input('size_max', 'must not be negative'); end if;
  if size_min > size_max then perform _bad_input('size_min', 'must not be greater than size_max'); end if;
  if "limit" is null or "limit" < 1 or "limit" > 10000 then perform _bad_input('limit', 'must be between 1 and 10000'); end if;
  if "offset" is null or "offset" < 0 then perform _bad_input('offset', 'must not be negative'); end if;
  with matches as (
    select p from positions p
     where (wanted_asset is null or p.asset = wanted_asset) and (wanted_mode is null or p.mode = wanted_mode)
       and (include_closed or p.gross_size > 0)
       and (size_min is null or p.gross_size >= size_min)
       and (size_max is null or p.gross_size <= size_max)
  ), page as (
    select (x.p).* from matches x order by (x.p).asset, (x.p).mode limit "limit" offset "offset"
  )
  select jsonb_build_object(
           'positions', coalesce((select jsonb_agg(position_json(pg, total_exposure) order by pg.asset, pg.mode)
                                    from page pg), '[]'),
           'count', (select count(*) from page)::integer,
           'total', (select count(*) from matches)::integer,
           'limit', "limit", 'offset', "offset")
    into listing;
  return listing;
end $$;
