-- Up Migration
-- Issue 21: the history tables become partitioned by time, so that retention drops whole
-- partitions instead of deleting rows, and a query bounded in time reads only its partitions.
--   * position_snapshots by snapshot_timestamp, a partition per UTC day: R-27 keeps a number of
--     days, and the daily prune_snapshots job then drops one partition a day.
--   * position_events by at, a partition per UTC month: audit rows are kept forever (R-28), so
--     partitions serve pruning (position_as_of, the audit panels) and archiving, and stay few.
-- No row is copied. The old table is renamed `<table>_legacy` and attached as the partition from
-- MINVALUE to the end of the period of its newest row (at least to the start of the current
-- period); a range CHECK validated first spares ATTACH its own scan. Its primary key becomes
-- (id, key), as a partitioned table's must hold the partition key: the one index built here. Its
-- other indexes, CHECK constraints, foreign keys and sequence are carried over to the new parent
-- as they are, so that ATTACH adopts the existing indexes rather than building them. A DEFAULT
-- partition takes rows no partition covers (a worker down for longer than the partitions made
-- ahead); ensure_history_partitions (sql/325) makes the partitions from there on, in the sql/ step
-- that follows and daily as a job, and moves such rows into them.
-- Views and functions with the tables' row types in their signatures are bound to the old
-- relation: ours are dropped here and re-created by the sql/ step (its hash is reset so that it
-- runs); another service's view or function on them stops the migration with its name. Guarded:
-- a table already partitioned is left alone (migrate.test.ts runs migrations again).
create function pg_temp._partition_history_table(tbl text, key text, unit text, ours text[]) returns void
  language plpgsql
  set timezone to 'UTC'
  as $$
declare
  legacy text := tbl || '_legacy';
  newest timestamptz;
  upper_at timestamptz;
  r record;
  others text;
begin
  select string_agg(distinct v.ev_class::regclass::text, ', ') into others
    from pg_depend d join pg_rewrite v on v.oid = d.objid
   where d.classid = 'pg_rewrite'::regclass and d.refobjid = tbl::regclass and v.ev_class <> tbl::regclass;
  if others is not null then
    raise exception '% cannot become partitioned while views of another service read it: %', tbl, others
      using hint = 'drop them, migrate, then create them again';
  end if;
  for r in
    select distinct d.objid::regprocedure::text as fn
      from pg_depend d join pg_class c on c.oid = tbl::regclass join pg_type ty on ty.oid = c.reltype
     where d.classid = 'pg_proc'::regclass and d.refclassid = 'pg_type'::regclass and d.refobjid in (ty.oid, ty.typarray)
  loop
    if not r.fn = any(ours) then
      raise exception '% cannot become partitioned while function % of another service takes or returns its rows', tbl, r.fn
        using hint = 'drop it, migrate, then create it again';
    end if;
    execute format('drop routine %s', r.fn);
  end loop;

  execute format('select max(%I) from %I', key, tbl) into newest;
  upper_at := greatest(date_trunc(unit, newest) + ('1 ' || unit)::interval, date_trunc(unit, now()));

  execute format('alter table %I rename to %I', tbl, legacy);
  for r in
    select i.relname from pg_index x join pg_class i on i.oid = x.indexrelid
     where x.indrelid = legacy::regclass and starts_with(i.relname, tbl || '_')
  loop
    execute format('alter index %I rename to %I', r.relname, legacy || substr(r.relname, length(tbl) + 1));
  end loop;

  execute format('create table %I (like %I including defaults including constraints including storage)
                  partition by range (%I)', tbl, legacy, key);
  execute format('alter table %I add constraint %I primary key (id, %I)', tbl, tbl || '_pkey', key);
  -- a unique index without the partition key cannot exist on the parent: it stays the legacy one's
  for r in
    select i.relname, pg_get_indexdef(x.indexrelid) as def from pg_index x join pg_class i on i.oid = x.indexrelid
     where x.indrelid = legacy::regclass and not x.indisunique
  loop
    execute format('create index %s on %I %s',
                   case when starts_with(r.relname, legacy || '_')
                        then quote_ident(tbl || substr(r.relname, length(legacy) + 1)) else '' end,
                   tbl, substring(r.def from ' USING .*$'));
  end loop;
  for r in select conname, pg_get_constraintdef(oid) as def from pg_constraint
            where conrelid = legacy::regclass and contype = 'f' loop
    execute format('alter table %I add constraint %I %s', tbl, r.conname, r.def);
  end loop;
  for r in select a.attname, pg_get_serial_sequence(quote_ident(legacy), a.attname) as seq from pg_attribute a
            where a.attrelid = legacy::regclass and a.attnum > 0 and not a.attisdropped loop
    if r.seq is not null then
      execute format('alter sequence %s owned by %I.%I', r.seq, tbl, r.attname);
    end if;
  end loop;

  for r in select conname from pg_constraint where conrelid = legacy::regclass and contype = 'p' loop
    execute format('alter table %I drop constraint %I', legacy, r.conname);
  end loop;
  execute format('alter table %I add constraint %I primary key (id, %I)', legacy, legacy || '_pkey', key);
  execute format('alter table %I add constraint %I check (%I is not null and %I < %L)',
                 legacy, legacy || '_range', key, key, upper_at);
  execute format('alter table %I attach partition %I for values from (minvalue) to (%L)', tbl, legacy, upper_at);
  execute format('alter table %I drop constraint %I', legacy, legacy || '_range');
  execute format('create table %I partition of %I default', tbl || '_default', tbl);
end $$;

do $$
declare
  vs text[];
  ours text[];
  c record;
begin
  if not exists (select 1 from pg_class
                  where oid in (to_regclass('position_snapshots'), to_regclass('position_events')) and relkind = 'r') then
    return;
  end if;
  lock table position_snapshots, position_events in access exclusive mode;
  -- as migration 8 does: our views go, newest first, and the sql/ step that follows creates them again
  select views, functions into vs, ours from sql_definitions;
  for c in
    select v.name, k.relkind from unnest(vs) with ordinality v(name, n) join pg_class k on k.oid = to_regclass(quote_ident(v.name))
     where k.relkind in ('v', 'm') order by v.n desc
  loop
    execute format('drop %s %I', case c.relkind when 'm' then 'materialized view' else 'view' end, c.name);
  end loop;
  update sql_definitions set hash = 'views and functions dropped by migration 17';
  if (select relkind from pg_class where oid = to_regclass('position_snapshots')) = 'r' then
    perform pg_temp._partition_history_table('position_snapshots', 'snapshot_timestamp', 'day', coalesce(ours, '{}'));
  end if;
  if (select relkind from pg_class where oid = to_regclass('position_events')) = 'r' then
    perform pg_temp._partition_history_table('position_events', 'at', 'month', coalesce(ours, '{}'));
  end if;
end $$;

drop function pg_temp._partition_history_table(text, text, text, text[]);

-- Down Migration
-- (nothing: turning the partitions back into one table would copy every row; the partitioned
-- tables read and write as the plain ones did)
