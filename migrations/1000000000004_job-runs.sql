-- Up Migration
-- One row per job run (SPEC.md §7): graphile-worker deletes finished jobs, this keeps history.
create table job_runs (
  id bigserial primary key,
  task text not null,
  job_id bigint,
  job_key text,
  payload jsonb,
  attempt integer,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  duration_ms integer,
  outcome text check (outcome in ('success', 'failure')),
  error text,
  result jsonb,
  trace_id text
);
create index job_runs_started_at_idx on job_runs (started_at);
create index job_runs_task_idx on job_runs (task, started_at desc);

-- Down Migration
drop table if exists job_runs;
