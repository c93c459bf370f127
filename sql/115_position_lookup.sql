-- Which row a single-position request means (SPEC.md §2 convention 2): the given mode, or
-- without one the asset's open row (one-way first), else its most recently updated row. REST
-- and psql resolve it here, so both return the same row; no row is P0002 (HTTP 404).
create or replace function position_mode_for(asset text, mode text default null) returns text
  language plpgsql stable
  as $$
declare
  a text := input_asset(asset);
  m text;
begin
  if mode is not null then return input_mode(mode); end if;
  select p.mode into m from positions p where p.asset = a
   order by p.gross_size > 0 desc, (p.gross_size > 0 and p.mode = 'one-way') desc, p.last_updated desc limit 1;
  if m is null then raise exception 'position_not_found' using errcode = 'P0002'; end if;
  return m;
end $$;
