-- Snapshots (SPEC.md R-26, §3.5): the row, its JSON, the event, and last_snapshot_at — in one
-- transaction. snapshot_all_positions() is one set-based statement chain, not a loop.

create or replace function snapshot_json(s position_snapshots) returns jsonb
  language sql immutable
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

-- The event's flat fields are copies of the Snapshot object's, so it takes that JSON.
create or replace function _snapshot_event_payload(j jsonb) returns jsonb
  language sql immutable
  as $$
    select jsonb_build_object(
      'snapshot_id', j -> 'id', 'position_id', j -> 'position_id', 'asset', j -> 'asset', 'mode', j -> 'mode',
      'size', j -> 'size', 'long_size', j -> 'long_size', 'short_size', j -> 'short_size',
      'average_entry_price', j -> 'average_entry_price', 'unrealized_pnl', j -> 'unrealized_pnl',
      'realized_pnl', j -> 'realized_pnl', 'unrealized_pnl_pct', j -> 'unrealized_pnl_pct',
      'time_held_minutes', j -> 'time_held_minutes', 'position_size_norm', j -> 'position_size_norm',
      'snapshot_timestamp', j -> 'snapshot_timestamp', 'snapshot', j)
  $$;

-- Snapshots of the given positions with one consistent total exposure, last_snapshot_at and the
-- events; returns the rows.
create or replace function _take_snapshots(ids uuid[], trigger text, trace_id text)
  returns setof position_snapshots
  language plpgsql
  as $$
declare
  shot position_snapshots;
  payloads jsonb[] := '{}';
begin
  -- setting last_snapshot_at below is this service's write (R-32)
  perform own_positions_write(true);
  for shot in
    -- materialized: referenced once, the CTE would otherwise be inlined and the full scan of
    -- positions run again for every snapshot row (quadratic at scale).
    with total as materialized (select _portfolio_total_exposure() as exposure),
    -- the rows are locked in (asset, mode) order, as every other multi-row writer locks them
    -- (the consumer's sorted batches, validate_all_positions): no deadlock between them
    locked as materialized (
      select p.id from positions p join unnest(ids) u(id) on u.id = p.id order by p.asset, p.mode for update of p
    ),
    shots as (
      insert into position_snapshots (position_id, asset, mode, size, long_size, short_size, average_entry_price,
        current_price, unrealized_pnl, realized_pnl, total_fees, unrealized_pnl_pct, time_held_minutes,
        position_size_norm, snapshot_data, snapshot_timestamp, created_at, trigger, trace_id)
      select p.id, p.asset, p.mode, p.size, p.long_size, p.short_size, p.average_entry_price, p.current_price,
             p.unrealized_pnl, p.realized_pnl, p.total_fees, _position_unrealized_pnl_pct(p),
             _position_time_held_minutes(p, now()), _position_size_norm(p, total.exposure),
             position_json(p, total.exposure, now()), now(), now(), _take_snapshots.trigger, _take_snapshots.trace_id
        from positions p join locked u on u.id = p.id, total -- a join: `= any(ids)` is quadratic
       order by p.asset, p.mode
      returning *
    ),
    -- Only a row still at the snapshotted version: a change that committed after this
    -- statement's snapshot is re-checked here against its new version and left unmarked, so
    -- the next run captures it (a close, R-26).
    marked as (
      update positions p set last_snapshot_at = now() from shots s
       where p.id = s.position_id and p.version = (s.snapshot_data ->> 'version')::bigint
    )
    select * from shots s order by s.asset, s.mode
  loop
    payloads := payloads || _snapshot_event_payload(snapshot_json(shot));
    -- in parts, so that a run over every position never holds all its events in one array
    if cardinality(payloads) >= 1000 then
      perform _enqueue_events('position_snapshot_created', trace_id, payloads);
      payloads := '{}';
    end if;
    return next shot;
  end loop;
  perform _enqueue_events('position_snapshot_created', trace_id, payloads);
  perform own_positions_write(false);
end $$;

-- Returns the row (DESIGN.md's SQL contract); snapshot_json(row) is the REST API's Snapshot.
create or replace function create_position_snapshot(asset text, mode text default null,
                                                    trigger text default 'manual', trace_id text default null)
  returns position_snapshots
  language plpgsql
  as $$
declare
  shot position_snapshots;
begin
  select * into shot
    from _take_snapshots(array[(_require_position(asset, mode)).id], trigger, coalesce(trace_id, gen_random_uuid()::text));
  -- last_snapshot_at changed: cached responses that embed positions are dropped (R-21)
  perform _notify_position_changes(json_build_object('asset', shot.asset, 'mode', shot.mode, 'snapshot', true));
  return shot;
end $$;

-- Every open position and every position changed since its last snapshot (so closes are captured).
create or replace function snapshot_all_positions(trace_id text default null) returns integer
  language plpgsql
  as $$
declare
  taken integer;
begin
  select count(*) into taken
    from _take_snapshots(array(select p.id from positions p
                               where p.gross_size > 0 or p.last_updated > coalesce(p.last_snapshot_at, '-infinity')
                                  -- last_updated is its transaction's start, which can precede a
                                  -- snapshot run that committed before the change did: the version
                                  -- tells a closed row changed since its latest snapshot for sure
                                  -- (no snapshot left, or one without a version, written by another
                                  -- service, says nothing: last_snapshot_at decides then)
                                  or p.version > coalesce((select (s.snapshot_data ->> 'version')::bigint
                                                             from position_snapshots s where s.position_id = p.id
                                                            order by s.snapshot_timestamp desc, s.id desc limit 1), p.version)),
                        'scheduled', coalesce(trace_id, gen_random_uuid()::text));
  if taken > 0 then
    perform _notify_position_changes(json_build_object('snapshot', true));
  end if;
  return taken;
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

create or replace function prune_snapshots(retention_days integer, batch_size integer default 10000) returns integer
  language plpgsql
  as $$
declare
  deleted integer := 0;
  in_batch integer;
begin
  if retention_days <= 0 then return 0; end if;
  loop
    delete from position_snapshots where id in (
      select id from position_snapshots where created_at < now() - make_interval(days => retention_days) limit batch_size);
    get diagnostics in_batch = row_count;
    deleted := deleted + in_batch;
    exit when in_batch < batch_size;
  end loop;
  return deleted;
end $$;

create view position_snapshots_view as
  select id, position_id, asset, mode, size, long_size, short_size, average_entry_price, current_price,
         unrealized_pnl, realized_pnl, total_fees, unrealized_pnl_pct, time_held_minutes, position_size_norm,
         snapshot_timestamp, created_at, trigger, trace_id
    from position_snapshots;
