-- Job history and queue for the Jobs dashboard and psql (SPEC.md §7). graphile-worker deletes
-- finished jobs, so history comes from job_runs, written by every task run.

create or replace function job_run_start(task text, job_id bigint, job_key text, payload jsonb, attempt integer, trace_id text)
  returns bigint
  language sql
  as $$
    insert into job_runs (task, job_id, job_key, payload, attempt, trace_id)
    values (task, job_id, job_key, payload, attempt, trace_id)
    returning id
  $$;

create or replace function job_run_finish(run_id bigint, outcome text, error text default null, result jsonb default null)
  returns void
  language sql
  as $$
    update job_runs set finished_at = clock_timestamp(), outcome = job_run_finish.outcome,
           -- a failure keeps what the run noted at its start (snapshot_run_of_job)
           error = left(job_run_finish.error, 4000), result = coalesce(job_run_finish.result, job_runs.result),
           duration_ms = round(extract(epoch from clock_timestamp() - started_at) * 1000)::integer
     where id = run_id
  $$;

create view job_history_view as
  select id, task, job_id, job_key, payload, attempt, started_at, finished_at, duration_ms,
         coalesce(outcome, 'running') as outcome, error, result, trace_id
    from job_runs;

create view job_queue_view as
  select j.id, j.task_identifier as task, j.key, j.run_at, j.attempts, j.max_attempts, j.last_error,
         j.locked_at, j.locked_by, j.created_at,
         case when j.locked_at is not null then 'running'
              when j.attempts >= j.max_attempts then 'failed'
              when j.attempts > 0 then 'retrying'
              else 'pending' end as state
    from graphile_worker.jobs j;

create view position_events_view as
  select id, position_id, asset, mode, at, source, kind, changed_fields, message_key, trace_id, details
    from position_events;
