-- Retention (SPEC.md §7): inbox keys, sent outbox rows and job history after their periods.
-- Deletes run in bounded batches so that a large backlog never holds long locks.

create or replace function prune_inbox_outbox(inbox_days integer, outbox_hours integer, batch_size integer default 10000)
  returns jsonb
  language plpgsql
  as $$
declare
  inbox_n integer := 0; outbox_n integer := 0; k integer;
begin
  loop
    delete from inbox where ctid in (
      select ctid from inbox where applied_at < now() - make_interval(days => inbox_days) limit batch_size);
    get diagnostics k = row_count; inbox_n := inbox_n + k;
    exit when k < batch_size;
  end loop;
  loop
    delete from outbox where id in (
      select id from outbox where sent_at is not null and sent_at < now() - make_interval(hours => outbox_hours)
       limit batch_size);
    get diagnostics k = row_count; outbox_n := outbox_n + k;
    exit when k < batch_size;
  end loop;
  return jsonb_build_object('inbox_deleted', inbox_n, 'outbox_deleted', outbox_n);
end $$;

create or replace function prune_job_history(retention_days integer) returns integer
  language plpgsql
  as $$
declare k integer;
begin
  delete from job_runs where started_at < now() - make_interval(days => retention_days);
  get diagnostics k = row_count;
  return k;
end $$;
