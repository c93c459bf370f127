-- Periodic jobs (SPEC.md §7) as self-rescheduling graphile-worker jobs keyed by task name:
-- intervals need not be whole minutes, and however many workers run, one job exists per slot.

-- The next slot, after a successful run. Called from the running job, so graphile-worker
-- creates a new job and clears the running one's key.
-- When a periodic job runs next. A daily job (a whole number of days) runs at 00:05 UTC rather
-- than a day after whenever the service started: snapshot retention's cutoff then falls five
-- minutes into a day partition, so it deletes those minutes' rows one by one and drops whole days
-- (R-27; deleting most of a day row by row took 5-10 s at 3,000 positions every 5 minutes,
-- BENCHMARKS.md), and the partitions made ahead are made before the day's first write.
-- Always within (now, now + the interval], so ensure_periodic_job never reschedules it.
create or replace function _next_run_at(interval_seconds integer) returns timestamptz
  language sql stable
  as $$
    select case when interval_seconds % 86400 = 0
                then (date_trunc('day', (now() - interval '5 minutes') at time zone 'UTC')
                      + make_interval(days => interval_seconds / 86400, mins => 5)) at time zone 'UTC'
                else now() + make_interval(secs => interval_seconds) end
  $$;

create or replace function schedule_next_run(task text, interval_seconds integer) returns void
  language sql
  as $$
    select graphile_worker.add_job(task, '{}'::json, job_key => task, run_at => _next_run_at(interval_seconds),
                                   max_attempts => 5)
  $$;

-- How long a periodic job may stay locked before its worker counts as dead. graphile-worker
-- itself only expires a lock after 4 hours; our runs are single SQL calls that take seconds to
-- minutes, so twice the interval (at least 10 minutes, to leave a slow run alone) is far beyond
-- a live run, and it never exceeds graphile-worker's own expiry.
create or replace function _periodic_job_dead_after(interval_seconds integer) returns interval
  language sql immutable
  as $$
    select least(greatest(make_interval(secs => 2 * interval_seconds), interval '10 minutes'), interval '4 hours')
  $$;

-- Workers found dead: the job_runs rows of every job they hold are closed as failed, then
-- their jobs are unlocked (graphile-worker's own force_unlock_workers) so they run again.
create or replace function _release_dead_workers(workers text[]) returns void
  language sql
  as $$
    update job_runs r
       set finished_at = clock_timestamp(), outcome = 'failure',
           error = format('worker died: %s held the job since %s', j.locked_by, j.locked_at),
           duration_ms = round(extract(epoch from clock_timestamp() - r.started_at) * 1000)::integer
      from graphile_worker.jobs j
     where j.locked_by = any(workers) and r.job_id = j.id and r.outcome is null;
    select graphile_worker.force_unlock_workers(workers);
  $$;

-- At worker start and then now and again, under a per-task lock (two workers never start two
-- chains). Returns what it did, or null:
--  'revived'     the job was locked for longer than periodic_job_dead_after (a worker killed
--                mid-run): its lock is released so it runs again at once and the chain goes on,
--                and its job_runs rows still running are closed as failed;
--  'scheduled'   no live job held the key (a fresh database, or a job that exhausted its
--                attempts): the chain starts now;
--  'rescheduled' the pending slot lies further ahead than one interval (the interval was
--                lowered since it was planned): it moves to now + interval.
-- A pending job with a past run_at (missed while no worker was up) is left alone and runs once.
create or replace function ensure_periodic_job(task text, interval_seconds integer) returns text
  language plpgsql
  as $$
declare
  step interval := make_interval(secs => interval_seconds);
  dead text[];
  early bigint[];
begin
  perform pg_advisory_xact_lock(hashtextextended('periodic:' || task, 0));
  select array_agg(distinct j.locked_by) into dead from graphile_worker.jobs j
   where j.key = task and j.locked_at < now() - _periodic_job_dead_after(interval_seconds);
  if dead is not null then perform _release_dead_workers(dead); end if;
  if not exists (select 1 from graphile_worker.jobs j where j.key = task and j.attempts < j.max_attempts) then
    perform graphile_worker.add_job(task, '{}'::json, job_key => task, run_at => now(), max_attempts => 5);
    return 'scheduled';
  end if;
  select array_agg(j.id) into early from graphile_worker.jobs j
   where j.key = task and j.locked_at is null and j.run_at > now() + step;
  if early is not null then
    perform graphile_worker.reschedule_jobs(early, run_at => now() + step);
    return 'rescheduled';
  end if;
  return case when dead is not null then 'revived' end;
end $$;

-- The one-off jobs (a scheduled validate_position, a publish_portfolio_update) run for
-- milliseconds; one still locked after 10 minutes was taken by a worker that died, and would
-- otherwise wait for graphile-worker's 4-hour lock expiry. Called with ensure_periodic_job.
create or replace function release_dead_one_off_jobs(dead_after interval default interval '10 minutes')
  returns integer
  language plpgsql
  as $$
declare
  workers text[];
begin
  select array_agg(distinct j.locked_by) into workers from graphile_worker.jobs j
   where j.task_identifier in ('validate_position', 'publish_portfolio_update')
     and j.locked_at < now() - dead_after;
  if workers is null then return 0; end if;
  perform _release_dead_workers(workers);
  return cardinality(workers);
end $$;
