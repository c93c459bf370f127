-- Retention (SPEC.md §7, R-27): snapshots, inbox keys, sent outbox events and job history after
-- their periods. Every one of these tables is partitioned by time (migrations 17 and 21; a UTC
-- day, the inbox a week), so retention drops whole partitions, and deletes rows, in bounded
-- batches, only in the partitions that span any time (the legacy and DEFAULT ones) and, for
-- snapshots, where a day straddles the cutoff.

-- Retention of one partitioned table. `keep` is the condition, on a row `t` with $1 the cutoff,
-- under which a row stays. A partition before the cutoff is dropped whole when no row of it is to
-- stay; the legacy and DEFAULT partitions lose their rows that are not to stay, and with
-- `straddling` so do the partitions begun before the cutoff. Without it a row outlives its period
-- by up to a partition's span, until its partition is dropped whole: for an hourly job, deleting
-- in the straddling partition would delete every row one by one before dropping it empty. The
-- drops come last and bounded in their lock wait: each holds the whole table exclusively until
-- commit, and one that cannot have its lock at once is dropped by the next run (`busy`).
-- A row written into a partition after its check here would go with it: only a transaction that
-- began before the cutoff (now() is its start) could do that, and the cutoffs are hours or days.
create or replace function _prune_partitions(parent regclass, cutoff timestamptz, keep text, batch_size integer,
                                             straddling boolean)
  returns jsonb
  language plpgsql
  set lock_timeout from current
  as $$
declare
  p record;
  kept boolean;
  in_batch integer;
  deleted bigint := 0;
  expired text[] := '{}';
  dropped text[] := '{}';
  busy text[] := '{}';
  doomed text;
begin
  -- not while ensure_history_partitions moves rows out of the DEFAULT partition
  perform pg_advisory_xact_lock(hashtextextended('history partitions', 0));
  for p in select * from _history_partitions(parent) h where h.lower_at is null or h.lower_at < cutoff loop
    if p.upper_at <= cutoff then
      execute format('select exists (select 1 from %s t where %s)', p.part, keep) into kept using cutoff;
      if not kept then
        expired := expired || p.part::text;
        continue;
      end if;
    end if;
    continue when not straddling and p.lower_at > '-infinity';
    loop
      execute format('delete from %1$s where ctid = any(array(select ctid from %1$s t where not (%2$s) limit $2))',
                     p.part, keep)
        using cutoff, batch_size;
      get diagnostics in_batch = row_count;
      deleted := deleted + in_batch;
      exit when in_batch < batch_size;
    end loop;
  end loop;
  perform set_config('lock_timeout', '2s', true);
  foreach doomed in array expired loop
    begin
      execute format('drop table %s', doomed);
      dropped := dropped || doomed;
    exception when lock_not_available then
      -- whoever holds the table holds it for the others too
      busy := expired[cardinality(dropped) + 1 :];
      exit;
    end;
  end loop;
  return jsonb_build_object('deleted', deleted, 'partitions_dropped', to_jsonb(dropped), 'partitions_busy', to_jsonb(busy));
end $$;

-- Inbox keys after `inbox_days`; outbox events once sent and `outbox_hours` past it. A pending
-- event is never dropped, however old: it stays until the broker has it, and its day with it.
-- The events go before their records of delivery, which say which are old; an event left with
-- neither (its record gone by a partition dropped while the event's was busy) has been sent and
-- goes too. `batch_size` bounds each delete.
create or replace function prune_inbox_outbox(inbox_days integer, outbox_hours integer, batch_size integer default 10000)
  returns jsonb
  language plpgsql
  as $$
declare
  sent_cutoff timestamptz := now() - make_interval(hours => outbox_hours);
  inbox jsonb;
  events jsonb;
  sent jsonb;
begin
  inbox := _prune_partitions('inbox', now() - make_interval(days => inbox_days), 't.applied_at >= $1', batch_size, false);
  -- a day of events (by created_at) goes once every event of it is sent and past the retention:
  -- for the days, the cutoff is now
  events := _prune_partitions('outbox_events', now(), format(
    'exists (select 1 from outbox_pending p where p.id = t.id)
     or exists (select 1 from outbox_sent s where s.id = t.id and s.sent_at >= %L)', sent_cutoff), batch_size, false);
  sent := _prune_partitions('outbox_sent', sent_cutoff, 't.sent_at >= $1', batch_size, false);
  -- the partitions named only when there are any: the job's result reads as it did
  return jsonb_build_object('inbox_deleted', (inbox ->> 'deleted')::bigint, 'outbox_deleted', (events ->> 'deleted')::bigint)
      || jsonb_strip_nulls(jsonb_build_object(
           'partitions_dropped', nullif((inbox -> 'partitions_dropped') || (events -> 'partitions_dropped')
                                        || (sent -> 'partitions_dropped'), '[]'),
           'partitions_busy', nullif((inbox -> 'partitions_busy') || (events -> 'partitions_busy')
                                     || (sent -> 'partitions_busy'), '[]')));
end $$;

create or replace function prune_job_history(retention_days integer) returns integer
  language plpgsql
  as $$
begin
  return (_prune_partitions('job_runs', now() - make_interval(days => retention_days), 't.started_at >= $1', 10000, false)
          ->> 'deleted')::integer;
end $$;

-- R-27, daily: the rows before the cutoff in its straddling day are few, as the job runs at 00:05
-- UTC (_next_run_at, sql/330), and are deleted. Age is created_at, as before partitioning; the partitions go by snapshot_timestamp, which
-- the service sets to the same instant, so a partition ending before the cutoff is dropped once
-- nothing in it is younger.
create or replace function prune_snapshot_partitions(retention_days integer, batch_size integer default 10000)
  returns jsonb
  language plpgsql
  as $$
begin
  if retention_days <= 0 then
    return jsonb_build_object('deleted', 0, 'partitions_dropped', '[]'::jsonb);
  end if;
  return _prune_partitions('position_snapshots', now() - make_interval(days => retention_days),
                           't.created_at >= $1', batch_size, true);
end $$;
