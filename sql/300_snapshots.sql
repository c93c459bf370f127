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
create or replace function snapshot_event_payload(j jsonb) returns jsonb
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

-- Snapshots of the given positions with one consistent total exposure; returns the rows.
create or replace function take_snapshots(ids uuid[], trigger text, trace_id text)
  returns setof position_snapshots
  language sql
  as $$
    -- setting last_snapshot_at below is this service's write (R-32); callers close the window
    select own_positions_write(true);
    -- materialized: referenced once, the CTE would otherwise be inlined and the full scan of
    -- positions run again for every snapshot row (quadratic at scale).
    with total as materialized (select portfolio_total_exposure() as exposure),
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
             p.unrealized_pnl, p.realized_pnl, p.total_fees, position_unrealized_pnl_pct(p),
             position_time_held_minutes(p, now()), position_size_norm(p, total.exposure),
             position_json(p, total.exposure, now()), now(), now(), take_snapshots.trigger, take_snapshots.trace_id
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
    ),
    events as (
      insert into outbox (event_id, routing_key, event_type, payload, trace_id)
      select e.id, 'position-manager.position_snapshot_created', 'position_snapshot_created',
             jsonb_build_object('event_id', e.id, 'event_type', 'position_snapshot_created',
                                'trace_id', take_snapshots.trace_id, 'timestamp', ts_out(now()))
               || snapshot_event_payload(e.j),
             take_snapshots.trace_id
        from (select gen_random_uuid() as id, snapshot_json(jsonb_populate_record(null::position_snapshots, to_jsonb(s))) as j
                from shots s order by s.asset, s.mode offset 0) e
    )
    select * from shots
  $$;

-- Returns the row (DESIGN.md's SQL contract); snapshot_json(row) is the REST API's Snapshot.
drop function if exists create_position_snapshot(text, text, text, text);
create or replace function create_position_snapshot(asset text, mode text default null,
                                                    trigger text default 'manual', trace_id text default null)
  returns position_snapshots
  language plpgsql
  as $$
declare
  s position_snapshots;
begin
  select * into s from take_snapshots(array[(require_position(asset, mode)).id], trigger, coalesce(trace_id, gen_random_uuid()::text));
  perform own_positions_write(false);
  perform pg_notify('position_manager_outbox', '');
  -- last_snapshot_at changed: cached responses that embed positions are dropped (R-21)
  perform pg_notify('position_manager_changes', json_build_object('asset', s.asset, 'mode', s.mode, 'snapshot', true)::text);
  return s;
end $$;

-- Every open position and every position changed since its last snapshot (so closes are captured).
create or replace function snapshot_all_positions(trace_id text default null) returns integer
  language plpgsql
  as $$
declare
  n integer;
begin
  select count(*) into n
    from take_snapshots(array(select p.id from positions p
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
  perform own_positions_write(false);
  if n > 0 then
    perform pg_notify('position_manager_outbox', '');
    perform pg_notify('position_manager_changes', json_build_object('snapshot', true)::text);
  end if;
  return n;
end $$;

create or replace function list_position_snapshots(asset text, mode text default null,
                                                   "limit" integer default 100, "offset" integer default 0)
  returns jsonb
  language plpgsql stable
  as $$
declare
  pid uuid;
begin
  if "limit" is null or "limit" < 1 or "limit" > 1000 then perform bad_input('limit', 'must be between 1 and 1000'); end if;
  if "offset" is null or "offset" < 0 then perform bad_input('offset', 'must not be negative'); end if;
  pid := (require_position(asset, mode)).id;
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
  n integer := 0;
  k integer;
begin
  if retention_days <= 0 then return 0; end if;
  loop
    delete from position_snapshots where id in (
      select id from position_snapshots where created_at < now() - make_interval(days => retention_days) limit batch_size);
    get diagnostics k = row_count;
    n := n + k;
    exit when k < batch_size;
  end loop;
  return n;
end $$;

create view position_snapshots_view as
  select id, position_id, asset, mode, size, long_size, short_size, average_entry_price, current_price,
         unrealized_pnl, realized_pnl, total_fees, unrealized_pnl_pct, time_held_minutes, position_size_norm,
         snapshot_timestamp, created_at, trigger, trace_id
    from position_snapshots;
