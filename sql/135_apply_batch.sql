-- Writing what a batch of messages did (SPEC.md R-3, R-28, R-29). The operations account for
-- their messages in memory, one after another in arrival order, and hand over what that left:
-- each row it touched in its final state, then the ledger rows, inbox keys, audit rows and
-- events in message order. Each table is written by one statement, so a batch of a hundred
-- messages costs a handful of statements instead of a dozen per message.
--   locked, rows: each row as the batch locked it (a row of nulls: none yet) and as it ends
--   keys: every inbox key the batch claims, with its outcome
--   befores ... payloads: the changes, notes and other events (see _write_position_changes)
--   to_validate: 'asset mode' of each row a discrepancy sends to validation (R-15)
create or replace function _batch_write(
  locked positions[], rows positions[], ledger position_fills[], keys inbox[],
  befores positions[], afters positions[], changes position_events[], totals numeric[], notes position_events[],
  event_seqs bigint[], event_types text[], trace_ids text[], payloads jsonb[], to_validate text[])
  returns void
  language plpgsql
  as $$
declare
  created positions[] := '{}';
  updated positions[] := '{}';
begin
  for s in 1 .. coalesce(cardinality(rows), 0) loop
    continue when rows[s] is not distinct from locked[s];
    if (locked[s]).id is null then created := created || rows[s]; else updated := updated || rows[s]; end if;
  end loop;
  perform set_config('position_manager.writer', 'on', true);
  if cardinality(created) > 0 then
    insert into positions (id, asset, mode, size, long_size, short_size, long_avg_price, short_avg_price,
      long_unrealized_pnl, short_unrealized_pnl, long_realized_pnl, short_realized_pnl,
      average_entry_price, average_entry_price_source, current_price, current_price_at, current_price_source,
      unrealized_pnl, realized_pnl, total_fees, opened_at, closed_at, created_at, last_updated, version, exchange_state)
    select n.id, n.asset, n.mode, n.size, n.long_size, n.short_size, n.long_avg_price, n.short_avg_price,
      n.long_unrealized_pnl, n.short_unrealized_pnl, n.long_realized_pnl, n.short_realized_pnl,
      n.average_entry_price, n.average_entry_price_source, n.current_price, n.current_price_at, n.current_price_source,
      n.unrealized_pnl, n.realized_pnl, n.total_fees, n.opened_at, n.closed_at, n.created_at, n.last_updated, n.version,
      n.exchange_state
      from unnest(created) n;
  end if;
  if cardinality(updated) > 0 then
    update positions p set
      size = n.size, long_size = n.long_size, short_size = n.short_size,
      long_avg_price = n.long_avg_price, short_avg_price = n.short_avg_price,
      long_unrealized_pnl = n.long_unrealized_pnl, short_unrealized_pnl = n.short_unrealized_pnl,
      long_realized_pnl = n.long_realized_pnl, short_realized_pnl = n.short_realized_pnl,
      average_entry_price = n.average_entry_price, average_entry_price_source = n.average_entry_price_source,
      current_price = n.current_price, current_price_at = n.current_price_at, current_price_source = n.current_price_source,
      unrealized_pnl = n.unrealized_pnl, realized_pnl = n.realized_pnl, total_fees = n.total_fees,
      opened_at = n.opened_at, closed_at = n.closed_at, exchange_state = n.exchange_state,
      last_updated = n.last_updated, version = n.version
      from unnest(updated) n
     where p.id = n.id;
  end if;
  perform set_config('position_manager.writer', '', true);

  if cardinality(ledger) > 0 then
    insert into position_fills (position_id, asset, mode, kind, leg, side, quantity, price, fee, order_id, execution_id,
                                executed_at, message_key, trace_id, reset_size, reset_avg_price, reason)
    select l.position_id, l.asset, l.mode, l.kind, l.leg, l.side, l.quantity, l.price, coalesce(l.fee, 0), l.order_id,
           l.execution_id, l.executed_at, l.message_key, l.trace_id, l.reset_size, l.reset_avg_price, l.reason
      from unnest(ledger) with ordinality l order by l.ordinality;
  end if;
  if cardinality(keys) > 0 then
    insert into inbox (source, message_key, outcome, position_id)
    -- no conflict to handle: the batch locked its keys before it read them (_inbox_lock_keys)
    select k.source, k.message_key, k.outcome, k.position_id from unnest(keys) k;
  end if;
  perform _write_position_changes(befores, afters, changes, totals, notes, event_seqs, event_types, trace_ids, payloads);
  perform _notify_position_changes(json_build_object('asset', n.asset, 'mode', n.mode, 'version', n.version))
     from unnest(created || updated) n;
  perform _schedule_validation(split_part(v.key, ' ', 1), split_part(v.key, ' ', 2))
     from (select distinct key from unnest(to_validate) key order by key) v;
end $$;
