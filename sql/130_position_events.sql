-- Writing a change of a position: the audit row (R-28), the events (R-29) and the notification
-- that drops cached responses, all in the caller's transaction.

-- Cache invalidation and portfolio event scheduling (docs/CONTRACTS.md, Notifications).
create or replace function _notify_position_changes(payload json) returns void
  language sql
  as $$ select pg_notify('position_manager_changes', payload::text) $$;

-- The stored columns that changed (version and last_updated always do). Each image is turned
-- into jsonb once: comparing key by key against to_jsonb(before) re-built it for every column.
-- PL/pgSQL, not SQL: a query in an SQL function that cannot be inlined is planned on every call.
create or replace function _position_changed_fields(before jsonb, after jsonb) returns text[]
  language plpgsql immutable
  as $$
begin
  return (select coalesce(array_agg(a.key order by a.key), '{}')
            from jsonb_each(after) a
           where a.key not in ('version', 'last_updated', 'gross_size', 'exchange_state')
             and (before is null or before -> a.key is distinct from a.value));
end $$;

create or replace function _position_changed_fields(before positions, after positions) returns text[]
  language sql stable
  as $$ select _position_changed_fields(to_jsonb(before), to_jsonb(after)) $$;

-- The portfolio's total exposure as this transaction sees it after the change (R-19), for
-- position_size_norm in events. The first change of a transaction sums over positions; later
-- ones add their own delta to the total kept in a transaction-local setting, so a batch of
-- many messages pays for one scan, not one per message.
create or replace function _transaction_total_exposure(before positions, after positions) returns numeric
  language plpgsql
  as $$
declare
  kept text := current_setting('position_manager.total_exposure', true);
  total numeric;
begin
  if kept is null or kept = '' then
    total := _portfolio_total_exposure();
  else
    total := kept::numeric + _position_exposure(after) - coalesce(_position_exposure(before), 0);
  end if;
  perform set_config('position_manager.total_exposure', total::text, true);
  return total;
end $$;

-- The fields of a position_updated event (SPEC.md §6.2): the flat ones of the seed and the
-- whole Position object `pos`.
create or replace function _position_updated_fields(after positions, pos jsonb, update_source text, changed text[])
  returns jsonb
  language sql stable
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

-- Audit rows (R-28) in the given order: the one insert into position_events besides the guard's.
create or replace function _write_position_events(audit position_events[]) returns void
  language plpgsql
  as $$
begin
  insert into position_events (position_id, asset, mode, at, source, kind, before, after, changed_fields, message_key,
                               trace_id, details)
  select a.position_id, a.asset, a.mode, a.at, a.source, a.kind, a.before, a.after, a.changed_fields, a.message_key,
         a.trace_id, a.details
    from unnest(audit) with ordinality a order by a.ordinality;
end $$;

-- The audit row (R-28) and the position_updated event (R-29) of a change, not written yet: a
-- batch writes them with its other rows. `total_exposure` is the portfolio's after the change.
create or replace function _position_change(
  before positions, after positions, source text, kind text, message_key text, trace_id text, details jsonb,
  total_exposure numeric, out audit position_events, out payload jsonb)
  language plpgsql
  as $$
declare
  before_image jsonb := to_jsonb(before);
  after_image jsonb := to_jsonb(after);
  changed text[] := _position_changed_fields(before_image, after_image);
begin
  audit.position_id := after.id; audit.asset := after.asset; audit.mode := after.mode; audit.at := now();
  audit.source := source; audit.kind := kind; audit.before := before_image; audit.after := after_image;
  audit.changed_fields := changed; audit.message_key := message_key; audit.trace_id := trace_id;
  audit.details := details;
  payload := _position_updated_fields(after, position_json(after, total_exposure, now()),
                                      case source when 'manual' then 'validation' else source end, changed);
end $$;

create or replace function _record_position_change(
  before positions, after positions, source text, kind text,
  message_key text, trace_id text, details jsonb default null)
  returns void
  language plpgsql
  as $$
declare
  change record := _position_change(before, after, source, kind, message_key, trace_id, details,
                                    _transaction_total_exposure(before, after));
begin
  perform _write_position_events(array[change.audit]);
  perform _enqueue_events('position_updated', trace_id, array[change.payload]);
  perform _notify_position_changes(json_build_object('asset', after.asset, 'mode', after.mode, 'version', after.version));
end $$;

-- An audit row without images (stale reports, discrepancies).
create or replace function _position_note(p positions, source text, kind text, message_key text, trace_id text,
                                          details jsonb)
  returns position_events
  language plpgsql stable
  as $$
declare
  note position_events;
begin
  note.position_id := p.id; note.asset := p.asset; note.mode := p.mode; note.at := now(); note.source := source;
  note.kind := kind; note.message_key := message_key; note.trace_id := trace_id; note.details := details;
  return note;
end $$;

create or replace function _record_position_note(p positions, source text, kind text, message_key text, trace_id text,
                                                  details jsonb)
  returns void
  language plpgsql
  as $$
begin
  perform _write_position_events(array[_position_note(p, source, kind, message_key, trace_id, details)]);
end $$;

-- closed_at is passed, not read from the row: the closing half of a flip and a hedge leg that
-- closes while the other stays open end a lifecycle on a row that is still open.
create or replace function _position_closed_payload(
  p positions, leg text, closed_size numeric, avg_price numeric, exit_price numeric,
  realized_delta numeric, opened_at timestamptz, closed_at timestamptz, reason text)
  returns jsonb
  language sql stable
  as $$
    select jsonb_build_object(
      'position_id', p.id, 'asset', p.asset, 'mode', p.mode, 'leg', leg,
      'closed_size', dec_out(closed_size), 'average_entry_price', dec_out(avg_price), 'exit_price', dec_out(exit_price),
      'realized_pnl_delta', dec_out(realized_delta), 'realized_pnl', dec_out(p.realized_pnl),
      'total_fees', dec_out(p.total_fees), 'opened_at', ts_out(opened_at),
      'closed_at', ts_out(closed_at), 'reason', reason)
  $$;

create or replace function _enqueue_position_closed(
  p positions, leg text, closed_size numeric, avg_price numeric, exit_price numeric,
  realized_delta numeric, opened_at timestamptz, closed_at timestamptz, reason text, trace_id text)
  returns void
  language plpgsql
  as $$
begin
  perform _enqueue_events('position_closed', trace_id, array[
    _position_closed_payload(p, leg, closed_size, avg_price, exit_price, realized_delta, opened_at, closed_at, reason)]);
end $$;
