-- Applying exchange position reports (SPEC.md R-10..R-16). Reports own PnL and the mark
-- price; they never write the size (a discrepancy schedules validation instead).

-- One report (an element of the payload) as typed values: the leg it speaks about, its size as
-- a quantity (0 when flat) and its side (+1 Buy, -1 Sell, 0 none).
create or replace function _report_parse(item jsonb, envelope_at timestamptz,
  out asset text, out mode text, out leg text, out side integer, out quantity numeric,
  out avg_price numeric, out mark_price numeric, out unrealized_pnl numeric, out realized_pnl numeric,
  out exchange_at timestamptz, out opened_at timestamptz, out seq bigint)
  language plpgsql
  as $$
declare
  side_text text;
  mode_value jsonb;
  idx_text text;
  idx integer;
begin
  if jsonb_typeof(item) <> 'object' then perform _bad_input('payload', 'each report must be a JSON object'); end if;
  asset := _input_asset((_report_value(item, array['symbol'])) #>> '{}', 'symbol');
  quantity := _report_decimal(item, array['size'], 8);
  if quantity is null then perform _bad_input('size', 'is required'); end if;
  if quantity < 0 then perform _bad_input('size', 'must not be negative'); end if;
  -- prices follow the fill queue's decimal rules (at most 8 places); PnL is taken as it is
  avg_price := nullif(_report_decimal(item, array['avgPrice', 'avg_price', 'entryPrice', 'entry_price'], 8), 0);
  mark_price := nullif(_report_decimal(item, array['markPrice', 'mark_price'], 8), 0);
  unrealized_pnl := _report_decimal(item, array['unrealisedPnl', 'unrealised_pnl', 'unrealizedPnl', 'unrealized_pnl']);
  realized_pnl := _report_decimal(item, array['realisedPnl', 'realised_pnl', 'cumRealisedPnl', 'cum_realised_pnl']);
  if avg_price < 0 then perform _bad_input('avgPrice', 'must be positive'); end if;
  if mark_price < 0 then perform _bad_input('markPrice', 'must be positive'); end if;

  -- Not _report_value: an empty side is a value here (flat, R-10), not an absent one.
  side_text := coalesce(item ->> 'side', case when jsonb_typeof(item -> 'raw') = 'object' then item -> 'raw' ->> 'side' end);
  side := case when side_text is null or side_text in ('', 'None') then 0
               when lower(side_text) = 'buy' then 1 when lower(side_text) = 'sell' then -1 end;
  if side is null then perform _bad_input('side', format('must be Buy, Sell or empty, got %s', left(side_text, 40))); end if;
  if side_text in ('', 'None') then quantity := 0; end if;

  mode_value := item -> 'mode';
  -- the Gateway's integer mode is Bybit's positionIdx; both given, they must agree (R-10)
  idx_text := nullif(_report_value(item, array['positionIdx', 'position_idx']) #>> '{}', '');
  if (jsonb_typeof(mode_value) = 'number' or mode_value #>> '{}' ~ '^\d$') then
    if idx_text ~ '^\d+(\.\d+)?$' and idx_text::numeric <> (mode_value #>> '{}')::numeric then
      perform _bad_input('mode', 'contradicts positionIdx');
    end if;
    idx_text := coalesce(idx_text, mode_value #>> '{}');
  end if;
  if idx_text is not null and idx_text !~ '^[012]$' then
    perform _bad_input('positionIdx', format('must be 0, 1 or 2, got %s', left(idx_text, 40)));
  end if;
  idx := idx_text::integer;
  if jsonb_typeof(mode_value) = 'string' and mode_value #>> '{}' !~ '^\d$' then
    mode := _input_mode(mode_value #>> '{}');
    if (mode = 'one-way' and idx in (1, 2)) or (mode = 'hedge' and idx = 0) then
      perform _bad_input('mode', 'contradicts positionIdx');
    end if;
  else
    mode := case when idx in (1, 2) then 'hedge' else 'one-way' end;
  end if;
  leg := 'net';
  if mode = 'hedge' then
    leg := case when idx = 1 then 'long' when idx = 2 then 'short' when side = 1 then 'long' when side = -1 then 'short' end;
    if leg is null then perform _bad_input('positionIdx', 'is required for a flat hedge-mode report'); end if;
  end if;

  exchange_at := coalesce(_report_timestamp(item, array['updatedTime', 'updated_time']),
                          _input_timestamp(item, 'timestamp'), envelope_at);
  if exchange_at > now() + interval '5 minutes' then
    perform _bad_input('updatedTime', 'is more than 5 minutes in the future');
  end if;
  opened_at := _report_timestamp(item, array['createdTime', 'created_time']);
  if _report_value(item, array['seq']) is not null then
    if _report_value(item, array['seq']) #>> '{}' !~ '^-?\d{1,18}$' then perform _bad_input('seq', 'must be an integer'); end if;
    seq := (_report_value(item, array['seq']) #>> '{}')::bigint;
  end if;
end $$;

-- What the reports of one message share. key_base is the message's key; key_per_leg: each report
-- is keyed key_base:asset:leg (several reports in one message, or an event_id naming the message).
create or replace function _report_message(inout source text, inout received_at timestamptz, inout trace_id text,
                                           inout key_base text, inout key_per_leg boolean, inout envelope_at timestamptz,
                                           out audit_source text)
  language plpgsql immutable
  as $$
begin
  -- reconciliation's reports (R-34) are audited under their own source
  audit_source := case when source = 'exchange_rest' then 'exchange_rest' else 'websocket' end;
end $$;

-- R-11: a report older than the last accepted one of its leg (`accepted`, its exchange_state
-- entry) changes nothing: by seq when both have one, else by the exchange's time.
create or replace function _report_is_stale(accepted jsonb, seq bigint, exchange_at timestamptz) returns boolean
  language sql stable
  as $$
    select coalesce(
      (seq is not null and (accepted ->> 'seq') is not null and seq < (accepted ->> 'seq')::bigint)
      or ((seq is null or (accepted ->> 'seq') is null)
          and exchange_at is not null and (accepted ->> 'exchange_ts') is not null
          and exchange_at < (accepted ->> 'exchange_ts')::timestamptz), false)
  $$;

-- What exchange_state keeps of a leg's last accepted report: the size it gives the leg, as stored,
-- and the exchange's PnL for exactly that size, for a validation that adopts it (R-17).
create or replace function _report_state(report record, received_at timestamptz, message_key text, reported_size numeric)
  returns jsonb
  language plpgsql immutable
  as $$
begin
  return jsonb_build_object('size', reported_size, 'average_entry_price', report.avg_price,
                            'exchange_ts', report.exchange_at, 'seq', report.seq,
                            'received_at', received_at, 'message_key', message_key)
         || case when report.unrealized_pnl is not null
                 then jsonb_build_object('unrealized_pnl', report.unrealized_pnl) else '{}' end;
end $$;

-- R-12: the exchange knows a position we do not: adopt it, and record it in the ledger.
create or replace function _report_create(item jsonb, report record, msg record, message_key text) returns jsonb
  language plpgsql
  as $$
declare
  reported numeric := _leg_reported_size(report.leg, report.quantity, report.side, 0);
  n positions;
begin
  if report.quantity = 0 then
    perform _inbox_settle(msg.source, message_key, null, 'no_op');
    return jsonb_build_object('outcome', 'no_op', 'message_key', message_key, 'asset', report.asset, 'mode', report.mode);
  end if;
  n := _position_totals(_with_leg(_position_new(report.asset, report.mode), report.leg, reported, report.avg_price,
                                  coalesce(report.unrealized_pnl, 0), coalesce(report.realized_pnl, 0)));
  n.average_entry_price_source := 'exchange';
  n.current_price := report.mark_price;
  n.current_price_at := case when report.mark_price is not null then coalesce(report.exchange_at, msg.received_at) end;
  n.current_price_source := case when report.mark_price is not null then 'report' end;
  n.opened_at := coalesce(report.opened_at, report.exchange_at, msg.received_at);
  n.exchange_state := jsonb_build_object(report.leg, _report_state(report, msg.received_at, message_key, reported));
  n := _position_save(n, true);
  insert into position_fills (position_id, asset, mode, kind, leg, reset_size, reset_avg_price, executed_at,
                              message_key, trace_id, reason)
  values (n.id, n.asset, n.mode, 'reset', report.leg, reported, report.avg_price,
          coalesce(report.exchange_at, msg.received_at), message_key, msg.trace_id, 'report_created');
  perform _inbox_settle(msg.source, message_key, n.id);
  perform _record_position_change(null, n, msg.audit_source, 'created', message_key, msg.trace_id,
                                  jsonb_build_object('report', item));
  return _message_outcome('applied', message_key, report.asset, report.mode, n) || jsonb_build_object('created', true);
end $$;

-- R-12 per leg: a hedge leg that never held anything is the exchange's to give, at once (the
-- Gateway sends the two legs of one update as two messages); the ledger starts it with a reset.
create or replace function _report_adopt_leg(held positions, report record, msg record, message_key text)
  returns positions
  language plpgsql
  as $$
declare
  n positions := held;
  leg_before record := _leg(held, report.leg);
begin
  n := _with_leg(n, report.leg, report.quantity, report.avg_price, leg_before.unrealized_pnl, leg_before.realized_pnl);
  n.average_entry_price_source := 'exchange';
  if held.gross_size = 0 then
    n.opened_at := coalesce(report.opened_at, report.exchange_at, msg.received_at); n.closed_at := null;
  end if;
  insert into position_fills (position_id, asset, mode, kind, leg, reset_size, reset_avg_price, executed_at,
                              message_key, trace_id, reason)
  values (n.id, n.asset, n.mode, 'reset', report.leg, report.quantity, report.avg_price,
          coalesce(report.exchange_at, msg.received_at), message_key, msg.trace_id, 'report_created');
  return n;
end $$;

-- R-15: a size that disagrees beyond the threshold is audited and checked by validation after the
-- grace period. Returns the outcome's `size_discrepancy`, if any.
create or replace function _report_size_check(n positions, report record, msg record, message_key text,
                                              stored numeric, reported numeric, threshold numeric)
  returns jsonb
  language plpgsql
  as $$
declare
  drift numeric := _rel_diff(stored, reported);
begin
  if drift > threshold then
    perform _record_position_note(n, msg.audit_source, 'size_discrepancy', message_key, msg.trace_id,
      jsonb_build_object('leg', report.leg, 'stored', stored, 'reported', reported, 'relative_difference', round(drift, 10)));
    raise warning 'size discrepancy on % % (%): stored %, exchange reports %', report.asset, report.mode, report.leg,
      stored, reported;
    perform _schedule_validation(report.asset, report.mode);
    return jsonb_build_object('size_discrepancy', jsonb_build_object(
      'leg', report.leg, 'stored', dec_out(stored), 'reported', dec_out(reported), 'relative_difference', dec_out(drift)));
  end if;
  return '{}';
end $$;

-- A report about a row we hold (R-12 per leg, R-13..R-15).
create or replace function _report_update(report record, msg record, message_key text, held positions) returns jsonb
  language plpgsql
  as $$
declare
  settings position_manager_settings;
  n positions := held;
  at_price timestamptz := coalesce(report.exchange_at, msg.received_at);
  adopt boolean;
  this_leg record;
  reported numeric;
  new_avg numeric;
  details jsonb := '{}';
begin
  select * into settings from position_manager_settings;
  -- a hedge leg without a ledger row or an accepted report (R-12 per leg)
  adopt := report.mode = 'hedge' and report.quantity > 0 and not coalesce(held.exchange_state ? report.leg, false)
           and not exists (select 1 from position_fills f where f.position_id = held.id and f.leg = report.leg);
  if adopt then
    n := _report_adopt_leg(held, report, msg, message_key);
    details := details || jsonb_build_object('leg_adopted', report.leg);
  end if;
  -- R-13: PnL and mark price from the exchange (a flat leg keeps unrealized 0); a mark older than
  -- the one held (a ticker's, R-31) is not taken.
  if report.mark_price is not null and (n.current_price_at is null or at_price >= n.current_price_at) then
    n.current_price := report.mark_price; n.current_price_at := at_price; n.current_price_source := 'report';
    insert into mark_prices as mp (symbol, price, at, source) values (report.asset, report.mark_price, at_price, 'report')
    on conflict (symbol) do update set price = excluded.price, at = excluded.at, source = excluded.source, updated_at = now()
     where mp.at <= excluded.at;
  end if;
  this_leg := _leg(n, report.leg);
  -- R-10: without a side the stored sign applies, also to what validation later adopts.
  reported := _leg_reported_size(report.leg, report.quantity, report.side, this_leg.size);

  -- R-14: the exchange's average replaces ours only beyond the threshold (strictly).
  new_avg := this_leg.avg_price;
  if not adopt and report.avg_price is not null and this_leg.size <> 0 and (
       this_leg.avg_price is null
       or (settings.use_ws_avg_price
           and div10(abs(report.avg_price - this_leg.avg_price), this_leg.avg_price) > settings.avg_price_diff_threshold)) then
    new_avg := report.avg_price;
    n.average_entry_price_source := 'exchange';
    insert into position_fills (position_id, asset, mode, kind, leg, reset_size, reset_avg_price, executed_at,
                                message_key, trace_id, reason)
    values (n.id, n.asset, n.mode, 'reset', report.leg, this_leg.size, report.avg_price, at_price, message_key,
            msg.trace_id, 'avg_price_from_report');
    raise log 'average entry price of % % (%) replaced by the exchange''s: % -> %',
      report.asset, report.mode, report.leg, this_leg.avg_price, report.avg_price;
    details := details || jsonb_build_object('avg_price_replaced', jsonb_build_object(
      'old', dec_out(this_leg.avg_price), 'new', dec_out(report.avg_price)));
  elsif report.avg_price is not null and not adopt then
    details := details || jsonb_build_object('avg_price_kept', jsonb_build_object(
      'stored', dec_out(this_leg.avg_price), 'reported', dec_out(report.avg_price)));
  end if;
  n := _with_leg(n, report.leg, this_leg.size, new_avg,
                 case when report.unrealized_pnl is not null and this_leg.size <> 0 then report.unrealized_pnl
                      else this_leg.unrealized_pnl end,
                 coalesce(report.realized_pnl, this_leg.realized_pnl));
  -- R-13: the mark belongs to the row; in a hedge row a leg the report gave no PnL for is marked
  -- to it too, so the row's unrealized PnL is never a mix of two prices (a one-way row's PnL is
  -- the exchange's alone).
  if report.mode = 'hedge' and (n.current_price is not null and n.current_price is distinct from held.current_price or adopt) then
    n := _position_remark(n, case when report.unrealized_pnl is not null then report.leg end);
  end if;
  n := _position_totals(n);
  n.exchange_state := coalesce(n.exchange_state, '{}')
                      || jsonb_build_object(report.leg, _report_state(report, msg.received_at, message_key, reported));

  details := details || _report_size_check(n, report, msg, message_key, this_leg.size, reported,
                                            settings.size_validation_threshold);

  if cardinality(_position_changed_fields(held, n)) = 0 then
    perform own_positions_write(true);
    update positions set exchange_state = n.exchange_state where id = n.id;
    perform own_positions_write(false);
    perform _inbox_settle(msg.source, message_key, held.id);
    return _message_outcome('applied', message_key, report.asset, report.mode, held)
           || jsonb_build_object('changed', false) || details;
  end if;
  n := _position_save(n, false);
  perform _inbox_settle(msg.source, message_key, n.id);
  perform _record_position_change(held, n, msg.audit_source,
                                  case when adopt and held.gross_size = 0 then 'reopened' else 'report' end,
                                  message_key, msg.trace_id, details || jsonb_build_object('leg', report.leg));
  return _message_outcome('applied', message_key, report.asset, report.mode, n)
         || jsonb_build_object('changed', true) || details;
end $$;

-- One report of a message: claimed under its own key, then a new position, a stale report, or an
-- update of the row.
create or replace function _report_apply(item jsonb, msg record) returns jsonb
  language plpgsql
  as $$
declare
  report record := _report_parse(item, msg.envelope_at);
  message_key text := msg.key_base || case when msg.key_per_leg then ':' || report.asset || ':' || report.leg else '' end;
  held positions;
begin
  if not _inbox_claim(msg.source, message_key) then
    select * into held from positions where asset = report.asset and mode = report.mode;
    return _message_outcome('duplicate', message_key, report.asset, report.mode, held);
  end if;
  held := _position_lock(report.asset, report.mode);
  if held.id is null then
    return _report_create(item, report, msg, message_key);
  end if;
  if _report_is_stale(held.exchange_state -> report.leg, report.seq, report.exchange_at) then
    perform _inbox_settle(msg.source, message_key, held.id, 'stale');
    perform _record_position_note(held, msg.audit_source, 'report_stale', message_key, msg.trace_id,
      jsonb_build_object('leg', report.leg, 'seq', report.seq, 'exchange_ts', report.exchange_at,
                         'last_accepted', held.exchange_state -> report.leg));
    raise log 'stale report for % % (%): ignored', report.asset, report.mode, report.leg;
    return _message_outcome('stale', message_key, report.asset, report.mode, held);
  end if;
  return _report_update(report, msg, message_key, held);
end $$;

-- A report message with the transport's meta (ingest_messages): an envelope {event_type,
-- event_id, timestamp, trace_id, payload|data} whose payload is one report or an array of up to
-- 100 (applied together), or a bare report object (psql). Returns one outcome per report.
create or replace function _apply_position_report(meta jsonb, body jsonb) returns jsonb
  language plpgsql
  as $$
declare
  items jsonb;
  envelope_at timestamptz;
  transport record;
  event_id text;
  msg record;
  item jsonb;
  outcomes jsonb := '[]';
begin
  if body is null or jsonb_typeof(body) <> 'object' then perform _bad_input('body', 'must be a JSON object'); end if;
  if body ? 'payload' or body ? 'data' then
    if _input_text(body, 'event_type') is not null and _input_text(body, 'event_type') <> 'position' then
      perform _bad_input('event_type', 'must be position');
    end if;
    items := coalesce(body -> 'payload', body -> 'data');
    if jsonb_typeof(items) = 'object' then items := jsonb_build_array(items); end if;
    if jsonb_typeof(items) <> 'array' or jsonb_array_length(items) not between 1 and 100 then
      perform _bad_input('payload', 'must be a report object or an array of 1 to 100 reports');
    end if;
    envelope_at := _input_timestamp(body, 'timestamp');
  elsif body ? 'symbol' then
    items := jsonb_build_array(body);
  else
    perform _bad_input('payload', 'is required');
  end if;
  transport := _input_meta(meta, body);
  event_id := _input_bounded_text(body, 'event_id', 200);
  msg := _report_message(transport.source, transport.received_at, transport.trace_id,
                         coalesce(event_id, transport.message_key, transport.body_key, _body_hash(body)),
                         event_id is not null or jsonb_array_length(items) > 1, envelope_at);
  for item in select value from jsonb_array_elements(items) loop
    outcomes := outcomes || _report_apply(item, msg);
  end loop;
  return outcomes;
end $$;

-- The row of the message's last report.
create or replace function apply_position_report(report jsonb) returns positions
  language plpgsql
  as $$
begin
  return _position_of(_apply_position_report(null, report) -> -1);
end $$;
