-- Up Migration
-- Issue 21: the tables that retention empties become partitioned by time, so that retention
-- (sql/320) drops whole partitions instead of deleting rows (the spans are sql/325's: a UTC week
-- of the inbox, a UTC day of the others):
--   * inbox by applied_at (POSITION_MANAGER_INBOX_RETENTION_DAYS),
--   * outbox_events by created_at and outbox_sent by sent_at (…_OUTBOX_RETENTION_HOURS; a day of
--     events is dropped only once every event in it is sent and past the retention),
--   * job_runs by started_at (…_JOB_HISTORY_RETENTION_DAYS).
-- As migration 17 does, no row is copied: the old table is renamed `<table>_legacy` and attached
-- as the partition from MINVALUE to the end of the day of its newest row (at least to the start
-- of today), after a range CHECK that spares ATTACH its scan; a DEFAULT partition takes rows no
-- partition covers; ensure_history_partitions (sql/325) makes the partitions ahead.
-- A partitioned table's unique indexes must hold the partition key, so each primary key gains
-- it, and the legacy table's is rebuilt so (its other indexes are adopted as they are):
--   * inbox (source, message_key) becomes (source, message_key, applied_at): the key is no longer
--     unique across days. Dedupe does not need it to be: every apply locks the key itself before
--     it reads the inbox (_inbox_lock_keys in sql/100, and see there why), and the same index, by
--     its prefix, answers the duplicate probe in each partition.
--   * outbox_events.event_id loses its uniqueness (the ids are gen_random_uuid(); nothing reads by
--     it but an operator, migration 18): a plain index.
-- Views and functions with the tables' row types in their signatures (inbox[] in the apply
-- functions) are bound to the old relation: ours are dropped here and re-created by the sql/
-- step; another service's stops the migration with its name. Guarded: a table already
-- partitioned is left alone (tests run migrations again).
create function pg_temp._partition_by_day(tbl text, key text, ours text[]) returns void
  language plpgsql
  set timezone to 'UTC'
  as $$
declare
  legacy text := tbl || '_legacy';
  newest timestamptz;
  upper_at timestamptz;
  pk text;
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
  upper_at := greatest(date_trunc('day', newest) + interval '1 day', date_trunc('day', now()));
  select string_agg(quote_ident(a.attname), ', ' order by k.n) || ', ' || quote_ident(key) into pk
    from pg_constraint c cross join unnest(c.conkey) with ordinality k(attnum, n)
    join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.attnum
   where c.conrelid = tbl::regclass and c.contype = 'p' and a.attname <> key;

  execute format('alter table %I rename to %I', tbl, legacy);
  for r in
    select i.relname from pg_index x join pg_class i on i.oid = x.indexrelid
     where x.indrelid = legacy::regclass and starts_with(i.relname, tbl || '_')
  loop
    execute format('alter index %I rename to %I', r.relname, legacy || substr(r.relname, length(tbl) + 1));
  end loop;
  -- a trigger of the old table (the outbox's wake-up) is the sql/ step's to make on the new one
  for r in select tgname from pg_trigger where tgrelid = legacy::regclass and not tgisinternal loop
    execute format('drop trigger %I on %I', r.tgname, legacy);
  end loop;

  execute format('create table %I (like %I including defaults including constraints including storage including compression)
                  partition by range (%I)', tbl, legacy, key);
  execute format('alter table %I add constraint %I primary key (%s)', tbl, tbl || '_pkey', pk);
  -- a unique index other than the primary key becomes a plain one, built on the legacy partition
  -- by ATTACH (only outbox_events.event_id, over a day or so of events)
  for r in
    select i.relname, x.indisunique, pg_get_indexdef(x.indexrelid) as def from pg_index x join pg_class i on i.oid = x.indexrelid
     where x.indrelid = legacy::regclass and not x.indisprimary
  loop
    execute format('create index %s on %I %s',
                   case when starts_with(r.relname, legacy || '_')
                        then quote_ident(regexp_replace(tbl || substr(r.relname, length(legacy) + 1), '_key$', '_idx'))
                        else '' end,
                   tbl, substring(r.def from ' USING .*$'));
  end loop;
  for r in select a.attname, pg_get_serial_sequence(quote_ident(legacy), a.attname) as seq from pg_attribute a
            where a.attrelid = legacy::regclass and a.attnum > 0 and not a.attisdropped loop
    if r.seq is not null then
      execute format('alter sequence %s owned by %I.%I', r.seq, tbl, r.attname);
    end if;
  end loop;

  for r in select conname from pg_constraint where conrelid = legacy::regclass and contype in ('p', 'u') loop
    execute format('alter table %I drop constraint %I', legacy, r.conname);
  end loop;
  execute format('alter table %I add constraint %I primary key (%s)', legacy, legacy || '_pkey', pk);
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
  t record;
begin
  if not exists (select 1 from pg_class
                  where oid in (to_regclass('inbox'), to_regclass('outbox_events'), to_regclass('outbox_sent'),
                                to_regclass('job_runs')) and relkind = 'r') then
    return;
  end if;
  lock table inbox, outbox_events, outbox_sent, outbox_pending, job_runs in access exclusive mode;
  -- as migrations 8 and 17 do: our views go, newest first, and the sql/ step that follows makes them again
  select views, functions into vs, ours from sql_definitions;
  for c in
    select v.name, k.relkind from unnest(vs) with ordinality v(name, n) join pg_class k on k.oid = to_regclass(quote_ident(v.name))
     where k.relkind in ('v', 'm') order by v.n desc
  loop
    execute format('drop %s %I', case c.relkind when 'm' then 'materialized view' else 'view' end, c.name);
  end loop;
  update sql_definitions set hash = 'views and functions dropped by migration 21';
  for t in select * from (values ('inbox', 'applied_at'), ('outbox_events', 'created_at'), ('outbox_sent', 'sent_at'),
                                 ('job_runs', 'started_at')) v(tbl, key) loop
    if (select relkind from pg_class where oid = to_regclass(t.tbl)) = 'r' then
      perform pg_temp._partition_by_day(t.tbl, t.key, coalesce(ours, '{}'));
    end if;
  end loop;
end $$;

drop function pg_temp._partition_by_day(text, text, text[]);

-- Down Migration
-- (nothing: turning the partitions back into one table would copy every row; the partitioned
-- tables read and write as the plain ones did)
