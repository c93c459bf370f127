-- Periodic jobs (SPEC.md §7) as self-rescheduling graphile-worker jobs keyed by task name:
-- intervals need not be whole minutes, and however many workers run, one job exists per slot.

-- The next slot, after a successful run. Called from the running job, so graphile-worker
-- creates a new job and clears the running one's key.
create or replace function schedule_next_run(task text, interval_seconds integer) returns void
  language sql
  as $$
    select graphile_worker.add_job(task, '{}'::json, job_key => task,
                                   run_at => now() + make_interval(secs => interval_seconds), max_attempts => 5)
  $$;

-- At worker start and then now and again: start the chain when no live job holds the key (a
-- fresh database, or a job that exhausted its attempts). A pending job with a past run_at
-- (missed while no worker was up) is left alone and runs once. Serialized per task, and a
-- running job still holds its key, so two workers cannot start two chains.
create or replace function ensure_periodic_job(task text) returns boolean
  language plpgsql
  as $$
begin
  perform pg_advisory_xact_lock(hashtextextended('periodic:' || task, 0));
  if exists (select 1 from graphile_worker.jobs j where j.key = task and j.attempts < j.max_attempts) then
    return false;
  end if;
  perform graphile_worker.add_job(task, '{}'::json, job_key => task, run_at => now(), max_attempts => 5);
  return true;
end $$;

-- R-18 (a): every open position and every position changed since the previous run, fixed.
-- One call; a position whose validation is already running elsewhere is skipped.
create or replace function validate_all_positions(since timestamptz default null) returns jsonb
  language plpgsql
  as $$
declare
  r record;
  res jsonb;
  validated integer := 0; invalid integer := 0; fixed integer := 0; busy integer := 0;
  found_ jsonb := '[]';
begin
  for r in select p.asset, p.mode from positions p
            where p.gross_size > 0 or (since is not null and p.last_updated > since)
            order by p.asset, p.mode loop
    begin
      res := validate_position(r.asset, r.mode, true);
      validated := validated + 1;
      if not (res ->> 'is_valid')::boolean then
        invalid := invalid + 1;
        if res -> 'updated_position' <> 'null' then fixed := fixed + 1; end if;
        found_ := found_ || jsonb_build_object('asset', r.asset, 'mode', r.mode, 'discrepancies', res -> 'discrepancies');
      end if;
    exception when sqlstate '55P03' then
      busy := busy + 1;
    end;
  end loop;
  return jsonb_build_object('validated', validated, 'invalid', invalid, 'fixed', fixed, 'skipped_busy', busy,
                            'discrepancies', found_);
end $$;
