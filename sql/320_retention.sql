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
