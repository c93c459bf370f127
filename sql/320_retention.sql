-- Retention (SPEC.md §7): inbox keys, sent outbox rows and job history after their periods.
-- Deletes run in bounded batches so that a large backlog never holds long locks.

create or replace function prune_inbox_outbox(inbox_days integer, outbox_hours integer, batch_size integer default 10000)
  returns jsonb
  language plpgsql
  as $$
declare
  inbox_deleted integer := 0; outbox_deleted integer := 0; in_batch integer;
begin
  loop
    delete from inbox where ctid in (
      select ctid from inbox where applied_at < now() - make_interval(days => inbox_days) limit batch_size);
    get diagnostics in_batch = row_count; inbox_deleted := inbox_deleted + in_batch;
    exit when in_batch < batch_size;
  end loop;
  loop
    -- an event goes with its record of delivery; pending events are never touched
    with gone as (
      delete from outbox_sent where id in (
        select id from outbox_sent where sent_at < now() - make_interval(hours => outbox_hours) limit batch_size)
      returning id)
    delete from outbox_events where id in (select gone.id from gone);
    get diagnostics in_batch = row_count; outbox_deleted := outbox_deleted + in_batch;
    exit when in_batch < batch_size;
  end loop;
  return jsonb_build_object('inbox_deleted', inbox_deleted, 'outbox_deleted', outbox_deleted);
end $$;

create or replace function prune_job_history(retention_days integer) returns integer
  language plpgsql
  as $$
declare deleted integer;
begin
  delete from job_runs where started_at < now() - make_interval(days => retention_days);
  get diagnostics deleted = row_count;
  return deleted;
end $$;

-- R-27 on the snapshots partitioned by day (migration 17): a partition whose every snapshot is
-- past the retention is dropped whole, and rows are deleted, in batches, only where a partition
-- straddles the cutoff (and from the legacy and DEFAULT partitions, which span any time). Age
-- is created_at, as before partitioning; the partitions go by snapshot_timestamp, which the
-- service sets to the same instant, so a partition ending before the cutoff is dropped once its
-- created_at index confirms that nothing in it is younger. The drops come last and bounded in
-- their lock wait: each holds the whole table exclusively until commit, and one that cannot
-- have its lock at once is dropped by the next run.
create or replace function prune_snapshot_partitions(retention_days integer, batch_size integer default 10000)
  returns jsonb
  language plpgsql
  set lock_timeout from current
  as $$
declare
  cutoff timestamptz := now() - make_interval(days => retention_days);
  p record;
  younger boolean;
  in_batch integer;
  deleted bigint := 0;
  expired text[] := '{}';
  dropped text[] := '{}';
  busy text[] := '{}';
  doomed text;
begin
  if retention_days <= 0 then
    return jsonb_build_object('deleted', 0, 'partitions_dropped', '[]'::jsonb);
  end if;
  -- not while ensure_history_partitions moves rows out of the DEFAULT partition
  perform pg_advisory_xact_lock(hashtextextended('history partitions', 0));
  for p in select * from _history_partitions('position_snapshots') h where h.lower_at is null or h.lower_at < cutoff loop
    if p.upper_at <= cutoff then
      execute format('select exists (select 1 from %s where created_at >= $1)', p.part) into younger using cutoff;
      if not younger then
        expired := expired || p.part::text;
        continue;
      end if;
    end if;
    loop
      execute format('delete from %1$s where ctid = any(array(select ctid from %1$s where created_at < $1 limit $2))', p.part)
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
