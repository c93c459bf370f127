-- Writing a change: the audit row (R-28), the outbox events (R-29) and the notifications
-- (cache invalidation, relay wake-up), all in the caller's transaction.

create or replace function enqueue_event(routing_key text, event_type text, payload jsonb, trace_id text)
  returns uuid
  language plpgsql
  as $$
declare
  id uuid := gen_random_uuid();
begin
  insert into outbox (event_id, routing_key, event_type, payload, trace_id)
  values (id, routing_key, event_type,
          jsonb_build_object('event_id', id, 'event_type', event_type, 'trace_id', trace_id,
                             'timestamp', ts_out(now())) || payload,
          trace_id);
  perform pg_notify('position_manager_outbox', '');
  return id;
end $$;

-- The stored columns that changed (version and last_updated always do). Each image is turned
-- into jsonb once: comparing key by key against to_jsonb(before) re-built it for every column.
create or replace function position_changed_fields(before jsonb, after jsonb) returns text[]
  language sql immutable
  as $$
    select coalesce(array_agg(a.key order by a.key), '{}')
      from jsonb_each(after) a
     where a.key not in ('version', 'last_updated', 'gross_size', 'exchange_state')
       and (before is null or before -> a.key is distinct from a.value)
  $$;

create or replace function position_changed_fields(before positions, after positions) returns text[]
  language sql immutable
  as $$ select position_changed_fields(to_jsonb(before), to_jsonb(after)) $$;

-- The portfolio's total exposure as this transaction sees it after the change (R-19), for
-- position_size_norm in events. The first change of a transaction sums over positions; later
-- ones add their own delta to the total kept in a transaction-local setting, so a batch of
-- many messages pays for one scan, not one per message.
create or replace function transaction_total_exposure(before positions, after positions) returns numeric
  language plpgsql
  as $$
declare
  kept text := current_setting('position_manager.total_exposure', true);
  total numeric;
begin
  if kept is null or kept = '' then
    total := portfolio_total_exposure();
  else
    total := kept::numeric + position_exposure(after) - coalesce(position_exposure(before), 0);
  end if;
  perform set_config('position_manager.total_exposure', total::text, true);
  return total;
end $$;

-- The fields of a position_updated event (SPEC.md §6.2): the flat ones of the seed and the
-- whole Position object `pos`.
create or replace function position_updated_fields(after positions, pos jsonb, update_source text, changed text[])
  returns jsonb
  language sql immutable
  as $$
    select jsonb_build_object(
      'position_id', after.id, 'asset', after.asset, 'mode', after.mode,
      'size', pos -> 'size', 'long_size', pos -> 'long_size', 'short_size', pos -> 'short_size',
      'average_entry_price', pos -> 'average_entry_price', 'average_price', pos -> 'average_entry_price',
      'current_price', pos -> 'current_price', 'unrealized_pnl', pos -> 'unrealized_pnl',
      'realized_pnl', pos -> 'realized_pnl', 'total_fees', pos -> 'total_fees',
      'unrealized_pnl_pct', pos -> 'unrealized_pnl_pct', 'time_held_minutes', pos -> 'time_held_minutes',
      'position_size_norm', pos -> 'position_size_norm', 'version', pos -> 'version', 'closed_at', pos -> 'closed_at',
      'update_source', update_source, 'changed_fields', to_jsonb(changed), 'position', pos)
  $$;

create or replace function record_position_change(
  before positions, after positions, source text, kind text,
  message_key text, trace_id text, details jsonb default null)
  returns void
  language plpgsql
  as $$
declare
  before_image jsonb := to_jsonb(before);
  after_image jsonb := to_jsonb(after);
  changed text[] := position_changed_fields(before_image, after_image);
  pos jsonb := position_json(after, transaction_total_exposure(before, after), now());
begin
  insert into position_events (position_id, asset, mode, source, kind, before, after, changed_fields, message_key, trace_id, details)
  values (after.id, after.asset, after.mode, source, kind, before_image, after_image, changed, message_key, trace_id, details);
  perform enqueue_event('position-manager.position_updated', 'position_updated',
    position_updated_fields(after, pos, case source when 'manual' then 'validation' else source end, changed),
    trace_id);
  perform pg_notify('position_manager_changes',
                    json_build_object('asset', after.asset, 'mode', after.mode, 'version', after.version)::text);
end $$;

-- An audit row without images (stale reports, discrepancies).
create or replace function record_position_note(p positions, source text, kind text, message_key text, trace_id text, details jsonb)
  returns void
  language sql
  as $$
    insert into position_events (position_id, asset, mode, source, kind, message_key, trace_id, details)
    values (p.id, p.asset, p.mode, source, kind, message_key, trace_id, details)
  $$;

drop function if exists enqueue_position_closed(positions, text, numeric, numeric, numeric, numeric, timestamptz, text, text);
-- closed_at is passed, not read from the row: the closing half of a flip and a hedge leg that
-- closes while the other stays open end a lifecycle on a row that is still open.
create or replace function enqueue_position_closed(
  p positions, leg text, closed_size numeric, avg numeric, exit_price numeric,
  realized_delta numeric, opened_at timestamptz, closed_at timestamptz, reason text, trace_id text)
  returns void
  language sql
  as $$
    select enqueue_event('position-manager.position_closed', 'position_closed', jsonb_build_object(
      'position_id', p.id, 'asset', p.asset, 'mode', p.mode, 'leg', leg,
      'closed_size', dec_out(closed_size), 'average_entry_price', dec_out(avg), 'exit_price', dec_out(exit_price),
      'realized_pnl_delta', dec_out(realized_delta), 'realized_pnl', dec_out(p.realized_pnl),
      'total_fees', dec_out(p.total_fees), 'opened_at', ts_out(opened_at),
      'closed_at', ts_out(closed_at), 'reason', reason), trace_id);
  $$;

-- Saves a position row built in a variable (insert when new), bumping version and last_updated.
create or replace function save_position(n positions, is_new boolean) returns positions
  language plpgsql
  as $$
declare
  r positions;
begin
  -- own_positions_write(true), written out: every fill passes here, and from PL/pgSQL a call of
  -- the SQL function is planned anew each time
  perform set_config('position_manager.writer', 'on', true);
  if is_new then
    insert into positions (id, asset, mode, size, long_size, short_size, long_avg_price, short_avg_price,
      long_unrealized_pnl, short_unrealized_pnl, long_realized_pnl, short_realized_pnl,
      average_entry_price, average_entry_price_source, current_price, current_price_at, current_price_source,
      unrealized_pnl, realized_pnl, total_fees, opened_at, closed_at, created_at, last_updated, version, exchange_state)
    values (n.id, n.asset, n.mode, n.size, n.long_size, n.short_size, n.long_avg_price, n.short_avg_price,
      n.long_unrealized_pnl, n.short_unrealized_pnl, n.long_realized_pnl, n.short_realized_pnl,
      n.average_entry_price, n.average_entry_price_source, n.current_price, n.current_price_at, n.current_price_source,
      n.unrealized_pnl, n.realized_pnl, n.total_fees, n.opened_at, n.closed_at, now(), now(), 1, n.exchange_state)
    returning * into r;
  else
    update positions set
      size = n.size, long_size = n.long_size, short_size = n.short_size,
      long_avg_price = n.long_avg_price, short_avg_price = n.short_avg_price,
      long_unrealized_pnl = n.long_unrealized_pnl, short_unrealized_pnl = n.short_unrealized_pnl,
      long_realized_pnl = n.long_realized_pnl, short_realized_pnl = n.short_realized_pnl,
      average_entry_price = n.average_entry_price, average_entry_price_source = n.average_entry_price_source,
      current_price = n.current_price, current_price_at = n.current_price_at,
      current_price_source = n.current_price_source,
      unrealized_pnl = n.unrealized_pnl, realized_pnl = n.realized_pnl, total_fees = n.total_fees,
      opened_at = n.opened_at, closed_at = n.closed_at, exchange_state = n.exchange_state,
      last_updated = now(), version = positions.version + 1
    where id = n.id
    returning * into r;
  end if;
  perform set_config('position_manager.writer', '', true);
  return r;
end $$;

-- Locks the (asset, mode) row, or the key of a row not created yet, so that two first
-- fills cannot create two rows. Returns null when there is no row.
create or replace function lock_position(a text, m text) returns positions
  language plpgsql
  as $$
declare
  p positions;
begin
  select * into p from positions where asset = a and mode = m for update;
  if not found then
    perform pg_advisory_xact_lock(hashtextextended('position:' || a || ':' || m, 0));
    select * into p from positions where asset = a and mode = m for update;
  end if;
  return p;
end $$;
