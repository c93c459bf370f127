-- Up Migration
-- Another writer's numeric(p, s) columns (Order Manager's DECIMAL(20, 8)) would round every
-- stored average to their scale and overflow at 1e12: SPEC.md §2 keeps amounts unscaled. This
-- one place widens them, on a database migrated just now as on one migrated long ago. Our views
-- and the generated gross_size depend on the columns: the views are dropped (migrate
-- re-creates them right after the migrations, as sql_definitions lists them), gross_size and its
-- index are added back as migration 1 has them. A view of another service on one of the
-- columns stops this with its name.
do $$
declare
  vs text[];
  c record;
begin
  if not exists (select 1 from information_schema.columns
                  where table_schema = current_schema() and table_name in ('positions', 'position_snapshots')
                    and data_type = 'numeric' and numeric_precision is not null) then
    return;
  end if;
  if to_regclass('sql_definitions') is not null then
    select views into vs from sql_definitions;
    for i in reverse coalesce(array_upper(vs, 1), 0) .. 1 loop
      for c in select relkind from pg_class where oid = to_regclass(quote_ident(vs[i])) and relkind in ('v', 'm') loop
        execute format('drop %s %I', case c.relkind when 'm' then 'materialized view' else 'view' end, vs[i]);
      end loop;
    end loop;
    update sql_definitions set hash = 'views dropped by migration 8';
  end if;
  alter table positions drop column if exists gross_size;
  for c in
    select table_name, column_name from information_schema.columns
     where table_schema = current_schema() and table_name in ('positions', 'position_snapshots')
       and data_type = 'numeric' and numeric_precision is not null
  loop
    execute format('alter table %I alter column %I type numeric', c.table_name, c.column_name);
  end loop;
  alter table positions add column gross_size numeric generated always as (
    case when mode = 'hedge' then coalesce(long_size, 0) + coalesce(short_size, 0) else abs(size) end
  ) stored;
  create index if not exists positions_open_idx on positions (asset, mode) include (gross_size) where gross_size > 0;
end $$;

-- Down Migration
-- (nothing: the columns stay unscaled)
