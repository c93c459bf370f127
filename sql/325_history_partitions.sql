-- The time partitions of the history tables (issue 21, migration 17): a partition per UTC day of
-- position_snapshots (R-27 retention drops whole days, sql/320) and per UTC month of
-- position_events (kept forever, R-28: months keep the partitions few); per UTC week of the inbox
-- and per UTC day of the outbox's events and deliveries and of job_runs (migration 21), which
-- retention empties.

-- The partitioned history tables, the span of one partition and how many days ahead at most to
-- make them; a table not (yet) partitioned is left out. The inbox and outbox_events are read
-- without their partition key (the duplicate probe by message key, the relay's join by id), so
-- each of their partitions costs every such read an index probe: they are kept few. The inbox
-- goes by UTC week (7 days of keys kept: 2 or 3 weeks; a duplicate probe of 100 new keys took
-- 0.3 ms on the unpartitioned inbox, 1.5-3.6 ms over 12 day partitions), the outbox by UTC day
-- (24 hours kept); both are made at most 3 days ahead, the daily job's margin to be refused
-- twice, rather than the 14 of the others. job_runs (30 days) goes by day: a run's row is
-- updated by id once, when it ends.
-- `analyzed`: see ensure_history_partitions. (Dropped first: create or replace cannot add columns.)
drop function if exists _history_tables();
create function _history_tables() returns table (parent regclass, unit text, max_days_ahead integer, analyzed boolean)
  language sql stable
  as $$
    select c.oid::regclass, t.unit, t.ahead, t.ahead is not null
      from (values ('position_snapshots', 'day', null), ('position_events', 'month', null), ('inbox', 'week', 3),
                   ('outbox_events', 'day', 3), ('outbox_sent', 'day', 3), ('job_runs', 'day', 3)) t(name, unit, ahead)
      join pg_class c on c.oid = to_regclass(t.name) and c.relkind = 'p'
  $$;

-- The partitions of a table with their bounds, read back from the catalog (the text holds the
-- offset, so it reads back in any time zone); the DEFAULT partition has null bounds.
create or replace function _history_partitions(parent regclass)
  returns table (part regclass, lower_at timestamptz, upper_at timestamptz)
  language sql stable
  as $$
    select c.oid::regclass,
           case b[1] when 'MINVALUE' then '-infinity' else btrim(b[1], '''')::timestamptz end,
           case b[2] when 'MAXVALUE' then 'infinity' else btrim(b[2], '''')::timestamptz end
      from pg_inherits i
      join pg_class c on c.oid = i.inhrelid
      cross join lateral regexp_match(pg_get_expr(c.relpartbound, c.oid), '^FOR VALUES FROM \((.+)\) TO \((.+)\)$') b
     where i.inhparent = parent
  $$;

-- One partition [from_at, to_at) of parent, `<parent>_pYYYYMMDD`. Made apart and then attached:
-- CREATE TABLE ... PARTITION OF would lock the whole table against every reader and writer,
-- ATTACH only against other schema changes (and the DEFAULT partition, which it checks). Rows the
-- DEFAULT partition holds in the range move into the new one first.
create or replace function _attach_history_partition(parent regclass, from_at timestamptz, to_at timestamptz)
  returns text
  language plpgsql
  set timezone to 'UTC'
  as $$
declare
  new_name text := format('%s_p%s', (select c.relname from pg_class c where c.oid = parent), to_char(from_at, 'YYYYMMDD'));
  key_column text := (select a.attname from pg_partitioned_table pt
                        join pg_attribute a on a.attrelid = pt.partrelid and a.attnum = pt.partattrs[0]
                       where pt.partrelid = parent);
  catch_all regclass := (select p.part from _history_partitions(parent) p where p.lower_at is null);
begin
  execute format('create table %I (like %s including defaults including constraints including storage)', new_name, parent);
  if catch_all is not null then
    execute format('with moved as (delete from %s where %I >= $1 and %I < $2 returning *) insert into %I select * from moved',
                   catch_all, key_column, key_column, new_name)
      using from_at, to_at;
  end if;
  execute format('alter table %s attach partition %I for values from (%L) to (%L)', parent, new_name, from_at, to_at);
  return new_name;
end $$;

-- The partitions from the newest one's end until `days_ahead` days from now, so that an insert
-- finds its partition (the DEFAULT one is the safety net, not the plan). Idempotent; called by
-- the sql/ step (below) and daily by the ensure_history_partitions job. Returns the partitions
-- made, and the tables whose lock it could not have within 100 ms (`busy`), left to the next
-- run, as there are two weeks of partitions ahead: a waiting ATTACH queues everyone after it, the
-- readers of the DEFAULT partition and, for position_events, whose foreign key makes it lock
-- `positions` against writes, every fill.
create or replace function ensure_history_partitions(days_ahead integer default 14) returns jsonb
  language plpgsql
  set timezone to 'UTC'
  set lock_timeout from current
  as $$
declare
  t record;
  next_at timestamptz;
  step interval;
  created text[] := '{}';
  busy text[] := '{}';
begin
  perform pg_advisory_xact_lock(hashtextextended('history partitions', 0));
  perform set_config('lock_timeout', '100ms', true);
  for t in select * from _history_tables() loop
    step := ('1 ' || t.unit)::interval;
    select max(p.upper_at) into next_at from _history_partitions(t.parent) p where p.upper_at < 'infinity';
    next_at := coalesce(next_at, date_trunc(t.unit, now()));
    while next_at < now() + make_interval(days => least(days_ahead, t.max_days_ahead)) loop
      begin
        created := created || _attach_history_partition(t.parent, next_at, next_at + step);
      exception when lock_not_available then
        busy := busy || t.parent::text;
        exit;
      end;
      next_at := next_at + step;
    end loop;
  end loop;
  -- Autovacuum analyzes only the partitions, never a partitioned parent, and a query that no bound
  -- prunes (the inbox's duplicate probe, the relay's join by id, a run's row by id) is planned with
  -- the parent's statistics: a sample, taken daily here, keeps them from going stale. Only for the
  -- tables that retention keeps small: ANALYZE of a parent samples every partition again too (1 to
  -- 3 s for 150,000 outbox events and 350,000 inbox keys), which for 20 M snapshots would hold this
  -- job, and the snapshot retention waiting for its lock, far longer; their reads are bounded in
  -- time and planned with the partitions' own statistics. A table whose lock is refused (say to
  -- autovacuum) is left to the next day.
  for t in select * from _history_tables() h where h.analyzed loop
    begin
      execute format('analyze %s', t.parent);
    exception when lock_not_available then
      null;
    end;
  end loop;
  return jsonb_build_object('created', to_jsonb(created), 'busy', to_jsonb(busy));
end $$;

-- Migration 17 leaves the tables with their legacy and DEFAULT partitions only.
select ensure_history_partitions();
