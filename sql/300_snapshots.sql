-- Snapshots (SPEC.md R-26, §3.5): the row, its JSON, the event, and last_snapshot_at — in one
-- transaction per chunk of positions; a run's chunks share one snapshot_timestamp and one total
-- exposure.

-- Stable, as ts_out and jsonb_build_object are: so PostgreSQL inlines it (over a stable body, an
-- immutable function is called, not inlined, at twice the cost per row of a snapshot run).
create or replace function snapshot_json(s position_snapshots) returns jsonb
  language sql stable
  as $$
    select jsonb_build_object(
      'id', s.id, 'position_id', s.position_id, 'asset', s.asset, 'mode', s.mode,
      'size', dec_out(s.size), 'long_size', dec_out(s.long_size), 'short_size', dec_out(s.short_size),
      'average_entry_price', dec_out(s.average_entry_price), 'current_price', dec_out(s.current_price),
      'unrealized_pnl', dec_out(s.unrealized_pnl), 'realized_pnl', dec_out(s.realized_pnl),
      'total_fees', dec_out(s.total_fees), 'unrealized_pnl_pct', dec_out(s.unrealized_pnl_pct),
      'time_held_minutes', s.time_held_minutes, 'position_size_norm', dec_out(s.position_size_norm),
      'snapshot_data', s.snapshot_data, 'snapshot_timestamp', ts_out(s.snapshot_timestamp),
      'created_at', ts_out(s.created_at), 'trigger', s.trigger, 'trace_id', s.trace_id)
  $$;

-- The event of a snapshot (SPEC.md §6.2) with its envelope, built in one go: its flat fields are
-- copies of the Snapshot object's, so it takes that JSON. Stable, as jsonb_build_object is, so
-- that it is inlined (over columns only: it names its arguments often).
create or replace function _snapshot_event_payload(j jsonb, event_id uuid, trace_id text, stamp text) returns jsonb
  language sql stable
  as $$
    select jsonb_build_object(
      'event_id', event_id, 'event_type', 'position_snapshot_created', 'trace_id', trace_id, 'timestamp', stamp,
      'snapshot_id', j -> 'id', 'position_id', j -> 'position_id', 'asset', j -> 'asset', 'mode', j -> 'mode',
      'size', j -> 'size', 'long_size', j -> 'long_size', 'short_size', j -> 'short_size',
      'average_entry_price', j -> 'average_entry_price', 'unrealized_pnl', j -> 'unrealized_pnl',
      'realized_pnl', j -> 'realized_pnl', 'unrealized_pnl_pct', j -> 'unrealized_pnl_pct',
      'time_held_minutes', j -> 'time_held_minutes', 'position_size_norm', j -> 'position_size_norm',
      'snapshot_timestamp', j -> 'snapshot_timestamp', 'snapshot', j)
  $$;

-- The snapshots of the given rows, each locked by the caller and read after its lock was granted
-- (so it is the version the lock holds), with the total exposure and snapshot_timestamp of the
-- run; the events, last_snapshot_at and last_snapshot_version too. Returns the rows in (asset,
-- mode) order. Set-based: each Position object is built once, then one insert, one update, one
-- outbox write.
create or replace function _snapshots_write(shots positions[], total_exposure numeric, snapshot_at timestamptz,
                                            trigger text, trace_id text)
  returns position_snapshots[]
  language plpgsql
  as $$
declare
  written position_snapshots[];
  stamp text := ts_out(now());
begin
  -- setting last_snapshot_at below is this service's write (R-32)
  perform own_positions_write(true);
  with shot as (
    insert into position_snapshots as s (position_id, asset, mode, size, long_size, short_size, average_entry_price,
      current_price, unrealized_pnl, realized_pnl, total_fees, unrealized_pnl_pct, time_held_minutes,
      position_size_norm, snapshot_data, snapshot_timestamp, created_at, trigger, trace_id)
    select p.id, p.asset, p.mode, p.size, p.long_size, p.short_size, p.average_entry_price, p.current_price,
           p.unrealized_pnl, p.realized_pnl, p.total_fees, _position_unrealized_pnl_pct(p),
           _position_time_held_minutes(p, snapshot_at), _position_size_norm(p, _snapshots_write.total_exposure),
           position_json(p, _snapshots_write.total_exposure, snapshot_at), snapshot_at, now(),
           _snapshots_write.trigger, _snapshots_write.trace_id
      from unnest(shots) p
    returning s),
  -- Only a row still at the snapshotted version: the caller's lock makes that every row; kept as
  -- the guard that a version moved past its snapshot is left for the next run (a close, R-26).
  marked as (
    update positions p set last_snapshot_at = snapshot_at, last_snapshot_version = s.version
      from unnest(shots) s where p.id = s.id and p.version = s.version)
  select coalesce(array_agg(shot.s order by (shot.s).asset, (shot.s).mode), '{}') into written from shot;
  perform own_positions_write(false);
  if cardinality(written) = 0 then return written; end if;
  -- offset 0: the payload function names its arguments often, so it is inlined only over columns
  perform _outbox_insert(array_fill('position_snapshot_created'::text, array[cardinality(written)]),
                         array_fill(_snapshots_write.trace_id, array[cardinality(written)]),
                         array(select _snapshot_event_payload(x.j, x.event_id, _snapshots_write.trace_id, stamp)
                                 from (select snapshot_json(w) as j, gen_random_uuid() as event_id
                                         from unnest(written) w offset 0) x));
  return written;
end $$;

-- One chunk of a run (R-26): the due positions after (after_asset, after_mode), at most
-- chunk_size, locked in (asset, mode) order as every other multi-row writer locks them (the
-- consumer's sorted batches, validate_all_positions: no deadlock between them). A position
-- already marked with the run's snapshot_timestamp is done: a second session sharing the run
-- skips it, and rows the other session holds are skipped too when skip_locked (its first pass);
-- the second pass waits for every lock, so a position a writer held during the first is not left
-- out. The lock is taken before the row is read, so the snapshot is of the version it holds.
create or replace function _snapshot_chunk(snapshot_at timestamptz, total_exposure numeric, trigger text,
                                           trace_id text, after_asset text, after_mode text, chunk_size integer,
                                           skip_locked boolean, out taken integer, out last_asset text,
                                           out last_mode text)
  language plpgsql
  as $$
declare
  picked positions[];
begin
  -- dynamic only for the lock clause; planned once per chunk
  execute format($sql$
    select coalesce(array_agg(c.p order by (c.p).asset, (c.p).mode), '{}') from (
      select p from positions p
       where (p.asset, p.mode) > ($1, $2) and p.last_snapshot_at is distinct from $3
         and (p.gross_size > 0 or p.last_updated > coalesce(p.last_snapshot_at, '-infinity')
              -- last_updated is its transaction's start, which can precede a snapshot run that
              -- committed before the change did: the version tells a closed row changed since
              -- its last snapshot for sure (none kept, as before migration 20 found no snapshot
              -- of the row with a version: last_snapshot_at decides then)
              or p.version > coalesce(p.last_snapshot_version, p.version))
       order by p.asset, p.mode limit $4
       for update of p %s) c$sql$, case when skip_locked then 'skip locked' end)
    into picked using after_asset, after_mode, snapshot_at, chunk_size;
  taken := cardinality(picked);
  if taken = 0 then return; end if;
  last_asset := picked[taken].asset;
  last_mode := picked[taken].mode;
  perform _snapshots_write(picked, total_exposure, snapshot_at, trigger, trace_id);
  -- last_snapshot_at changed: cached responses that embed positions are dropped (R-21)
  perform _notify_position_changes(json_build_object('snapshot', true));
end $$;

-- Returns the row (DESIGN.md's SQL contract); snapshot_json(row) is the REST API's Snapshot.
create or replace function create_position_snapshot(asset text, mode text default null,
                                                    trigger text default 'manual', trace_id text default null)
  returns position_snapshots
  language plpgsql
  as $$
declare
  target positions := _require_position(asset, mode);
  shot position_snapshots;
begin
  select p.* into target from positions p where p.id = target.id for update;
  shot := (_snapshots_write(array[target], _portfolio_total_exposure(), now(), trigger,
                            coalesce(trace_id, gen_random_uuid()::text)))[1];
  perform _notify_position_changes(json_build_object('asset', shot.asset, 'mode', shot.mode, 'snapshot', true));
  return shot;
end $$;

-- A run of R-26: every open position and every position changed since its last snapshot (so
-- closes are captured), chunk by chunk, all with the total exposure and snapshot_timestamp taken
-- at the start. commit_chunks: each chunk its own transaction, so position locks are held for one
-- chunk (`call` outside an explicit transaction, as the job does); without it the whole run is
-- the caller's transaction. A second worker shares a run by passing its snapshot_at and
-- total_exposure (result of the first) with the same trace_id: each position is snapshotted once
-- by one of them. result: snapshots (this call's), chunks, snapshot_timestamp, total_exposure.
create or replace procedure snapshot_all_positions_chunked(trace_id text default null, chunk_size integer default 500,
                                                           snapshot_at timestamptz default null,
                                                           total_exposure numeric default null,
                                                           commit_chunks boolean default true,
                                                           inout result jsonb default null)
  language plpgsql
  as $$
declare
  run_at timestamptz := coalesce(snapshot_at, now());
  total numeric := coalesce(total_exposure, _portfolio_total_exposure());
  trace text := coalesce(trace_id, gen_random_uuid()::text);
  skip_locked boolean;
  -- assets are never empty, so ('', '') sorts before every position
  after_asset text;
  after_mode text;
  got record;
  taken integer := 0;
  chunks integer := 0;
begin
  if chunk_size is null or chunk_size < 1 then
    raise exception 'chunk_size must be at least 1' using errcode = '22023';
  end if;
  foreach skip_locked in array array[true, false] loop
    after_asset := '';
    after_mode := '';
    loop
      select * into got
        from _snapshot_chunk(run_at, total, 'scheduled', trace, after_asset, after_mode, chunk_size, skip_locked);
      exit when got.taken = 0;
      taken := taken + got.taken;
      chunks := chunks + 1;
      if commit_chunks then commit; end if;
      exit when got.taken < chunk_size;
      after_asset := got.last_asset;
      after_mode := got.last_mode;
    end loop;
  end loop;
  -- exact, so that a second worker can pass them back: microseconds, every digit
  result := jsonb_build_object('snapshots', taken, 'chunks', chunks, 'snapshot_timestamp', run_at,
                               'total_exposure', total::text);
end $$;

-- The snapshot_timestamp and total exposure of the scheduled job's run (R-26): an earlier
-- attempt's when graphile-worker retries a failed job (under the same job id), so that the retry
-- resumes that run: the positions its committed chunks snapshotted carry the run's timestamp in
-- last_snapshot_at and are skipped. Otherwise new ones. Kept as the result of the attempt's
-- job_runs row (trace_id: the attempt's), which a failure leaves in place for the next attempt.
create or replace function snapshot_run_of_job(job_id bigint, trace_id text) returns jsonb
  language plpgsql
  as $$
declare
  run jsonb;
begin
  select r.result into run from job_runs r
   where r.task = 'snapshot_all_positions' and r.job_id = snapshot_run_of_job.job_id and r.result ? 'snapshot_timestamp'
   order by r.id desc limit 1;
  run := coalesce(run, jsonb_build_object('snapshot_timestamp', now(), 'total_exposure', _portfolio_total_exposure()::text));
  update job_runs r set result = run
   where r.task = 'snapshot_all_positions' and r.job_id = snapshot_run_of_job.job_id
     and r.trace_id = snapshot_run_of_job.trace_id;
  return run;
end $$;

-- The run in the caller's transaction (psql, tests): one call, one number.
create or replace function snapshot_all_positions(trace_id text default null) returns integer
  language plpgsql
  as $$
declare
  result jsonb;
begin
  call snapshot_all_positions_chunked(trace_id => snapshot_all_positions.trace_id, commit_chunks => false,
                                      result => result);
  return (result ->> 'snapshots')::integer;
end $$;

create or replace function list_position_snapshots(asset text, mode text default null,
                                                   "limit" integer default 100, "offset" integer default 0)
  returns jsonb
  language plpgsql stable
  as $$
declare
  pid uuid;
begin
  if "limit" is null or "limit" < 1 or "limit" > 1000 then perform _bad_input('limit', 'must be between 1 and 1000'); end if;
  if "offset" is null or "offset" < 0 then perform _bad_input('offset', 'must not be negative'); end if;
  pid := (_require_position(asset, mode)).id;
  return (
    with page as (
      select s from position_snapshots s where s.position_id = pid
       order by s.snapshot_timestamp desc, s.id desc limit "limit" offset "offset")
    select jsonb_build_object(
      'snapshots', coalesce((select jsonb_agg(snapshot_json(x.s) order by (x.s).snapshot_timestamp desc, (x.s).id desc) from page x), '[]'),
      'count', (select count(*) from page)::integer,
      'total', (select count(*) from position_snapshots s where s.position_id = pid)::integer,
      'limit', "limit", 'offset', "offset"));
end $$;

create view position_snapshots_view as
  select id, position_id, asset, mode, size, long_size, short_size, average_entry_price, current_price,
         unrealized_pnl, realized_pnl, total_fees, unrealized_pnl_pct, time_held_minutes, position_size_norm,
         snapshot_timestamp, created_at, trigger, trace_id
    from position_snapshots;
