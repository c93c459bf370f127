-- Writing a change of a position: the audit row (R-28), the events (R-29) and the notification
-- that drops cached responses, all in the caller's transaction.

-- Cache invalidation and portfolio event scheduling (docs/CONTRACTS.md, Notifications).
create or replace function _notify_position_changes(payload json) returns void
  language sql
  as $$ select pg_notify('position_manager_changes', payload::text) $$;

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

-- Changes of positions written together (R-28, R-29), set-based: one insert of audit rows and
-- one of events for a whole batch. Change i is the row before it (a row of nulls: created),
-- after it, the audit row that says what it was (source, kind, message_key, trace_id, details;
-- its id is the change's place in the batch) and the portfolio's total exposure after it (for
-- position_size_norm, R-19). `notes` are audit rows without images, and the other events
-- (event_seqs, event_types, trace_ids, payloads) take their places among the changes' by the
-- same numbering.
create or replace function _write_position_changes(
  befores positions[], afters positions[], changes position_events[], totals numeric[], notes position_events[],
  event_seqs bigint[], event_types text[], trace_ids text[], payloads jsonb[])
  returns void
  language plpgsql
  as $$
declare
  types text[];
  traces text[];
  bodies jsonb[];
begin
  if coalesce(cardinality(afters), 0) + coalesce(cardinality(notes), 0) + coalesce(cardinality(payloads), 0) = 0 then
    return;
  end if;
  with ch as materialized (
    select x.c, x.a, x.pos, x.b_img, x.a_img,
           -- the stored columns that changed (version and last_updated always do)
           (select coalesce(array_agg(f.key order by f.key), '{}') from jsonb_each(x.a_img) f
             where f.key not in ('version', 'last_updated', 'gross_size', 'exchange_state')
               and (x.b_img is null or x.b_img -> f.key is distinct from f.value)) as changed
      -- the Position object computed here, once, so that _position_updated_fields is inlined
      from (select changes[i] as c, afters[i] as a, position_json(afters[i], totals[i], now()) as pos,
                   case when (befores[i]).id is not null then to_jsonb(befores[i]) end as b_img,
                   to_jsonb(afters[i]) as a_img
              from generate_subscripts(afters, 1) i offset 0) x
  ), audit as (
    insert into position_events (position_id, asset, mode, at, source, kind, before, after, changed_fields, message_key,
                                 trace_id, details)
    select r.position_id, r.asset, r.mode, r.at, r.source, r.kind, r.before, r.after, r.changed_fields, r.message_key,
           r.trace_id, r.details
      from (select (ch.c).id as seq, (ch.a).id as position_id, (ch.a).asset, (ch.a).mode, now() as at, (ch.c).source,
                   (ch.c).kind, ch.b_img as before, ch.a_img as after, ch.changed as changed_fields, (ch.c).message_key,
                   (ch.c).trace_id, (ch.c).details
              from ch
            union all
            select n.id, n.position_id, n.asset, n.mode, now(), n.source, n.kind, n.before, n.after, n.changed_fields,
                   n.message_key, n.trace_id, n.details
              from unnest(notes) n) r
     order by r.seq
  )
  select array_agg(e.event_type order by e.seq), array_agg(e.trace_id order by e.seq), array_agg(e.payload order by e.seq)
    into types, traces, bodies
    from (select (ch.c).id as seq, 'position_updated' as event_type, (ch.c).trace_id,
                 _position_updated_fields(ch.a, ch.pos,
                                          case (ch.c).source when 'manual' then 'validation' else (ch.c).source end,
                                          ch.changed) as payload
            from ch
          union all
          select u.seq, u.event_type, u.trace_id, u.payload
            from unnest(event_seqs, event_types, trace_ids, payloads) u(seq, event_type, trace_id, payload)) e;
  perform _enqueue_events(types, traces, bodies);
end $$;

-- What a change was, for _write_position_changes.
create or replace function _change_info(seq bigint, source text, kind text, message_key text, trace_id text,
                                        details jsonb)
  returns position_events
  language plpgsql immutable
  as $$
declare
  info position_events;
begin
  info.id := seq; info.source := source; info.kind := kind; info.message_key := message_key;
  info.trace_id := trace_id; info.details := details;
  return info;
end $$;

create or replace function _record_position_change(
  before positions, after positions, source text, kind text,
  message_key text, trace_id text, details jsonb default null)
  returns void
  language plpgsql
  as $$
begin
  perform _write_position_changes(array[before], array[after],
                                  array[_change_info(1, source, kind, message_key, trace_id, details)],
                                  array[_transaction_total_exposure(before, after)], '{}', '{}', '{}', '{}', '{}');
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
  perform _write_position_changes('{}', '{}', '{}', '{}', array[_position_note(p, source, kind, message_key, trace_id, details)],
                                  '{}', '{}', '{}', '{}');
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
