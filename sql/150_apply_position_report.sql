-- Applying exchange position reports (SPEC.md R-10..R-16). Reports own PnL and the mark
-- price; they never write the size (a discrepancy schedules validation instead).

-- The first present value among the report's names, then the same names in its `raw` record.
create or replace function report_value(item jsonb, names text[]) returns jsonb
  language sql immutable parallel safe
  as $$
    select v from (
      select src.obj -> n.name as v, src.ord, n.ord as nord
        from (values (item, 1), (case when jsonb_typeof(item -> 'raw') = 'object' then item -> 'raw' end, 2)) src(obj, ord)
        cross join unnest(names) with ordinality n(name, ord)
       where src.obj is not null and jsonb_typeof(src.obj -> n.name) is not null
         and jsonb_typeof(src.obj -> n.name) <> 'null' and src.obj ->> n.name <> ''
    ) x order by ord, nord limit 1
  $$;

create or replace function report_decimal(item jsonb, names text[], max_scale integer default null) returns numeric
  language sql immutable
  as $$ select input_decimal(jsonb_build_object(names[1], report_value(item, names)), names[1], max_scale) $$;

create or replace function rel_diff(a numeric, b numeric) returns numeric
  language sql immutable parallel safe
  as $$ select case when a = b then 0 else div10(abs(a - b), greatest(abs(a), abs(b))) end $$;

create or replace function apply_one_report(
  item jsonb, src text, base_key text, event_id text, env_ts timestamptz, received timestamptz,
  trace text, multi boolean)
  returns jsonb
  language plpgsql
  as $$
declare
  settings position_manager_settings;
  a text; m text; side_dir integer; pidx_raw text; rsize numeric; avg_new numeric; mark numeric; upnl numeric; rpnl numeric;
  mode_v jsonb; pidx integer; leg text; side_raw text;
  exch_ts timestamptz; created_ts timestamptz; seq bigint;
  mkey text;
  p positions; n positions;
  st jsonb; reported numeric; stored numeric; old_avg numeric; diff numeric;
  changed text[]; details jsonb := '{}';
  avg_replaced boolean := false;
  adopt boolean;
  leg_name text;
  at_price timestamptz;
  -- reconciliation's reports (R-34) are audited under their own source
  audit_source text := case when src = 'exchange_rest' then 'exchange_rest' else 'websocket' end;
begin
  if jsonb_typeof(item) <> 'object' then perform bad_input('payload', 'each report must be a JSON object'); end if;
  select * into settings from position_manager_settings;
  a := input_asset((report_value(item, array['symbol'])) #>> '{}', 'symbol');
  rsize := report_decimal(item, array['size'], 8);
  if rsize is null then perform bad_input('size', 'is required'); end if;
  if rsize < 0 then perform bad_input('size', 'must not be negative'); end if;
  -- prices follow the fill queue's decimal rules (at most 8 places); PnL is taken as it is
  avg_new := nullif(report_decimal(item, array['avgPrice', 'avg_price', 'entryPrice', 'entry_price'], 8), 0);
  mark := nullif(report_decimal(item, array['markPrice', 'mark_price'], 8), 0);
  upnl := report_decimal(item, array['unrealisedPnl', 'unrealised_pnl', 'unrealizedPnl', 'unrealized_pnl']);
  rpnl := report_decimal(item, array['realisedPnl', 'realised_pnl', 'cumRealisedPnl', 'cum_realised_pnl']);
  if avg_new < 0 then perform bad_input('avgPrice', 'must be positive'); end if;
  if mark < 0 then perform bad_input('markPrice', 'must be positive'); end if;

  -- Not report_value: an empty side is a value here (flat, R-10), not an absent one.
  side_raw := coalesce(item ->> 'side', case when jsonb_typeof(item -> 'raw') = 'object' then item -> 'raw' ->> 'side' end);
  side_dir := case when side_raw is null or side_raw in ('', 'None') then 0
                   when lower(side_raw) = 'buy' then 1 when lower(side_raw) = 'sell' then -1 end;
  if side_dir is null then perform bad_input('side', format('must be Buy, Sell or empty, got %s', left(side_raw, 40))); end if;
  if side_raw in ('', 'None') then rsize := 0; end if;

  mode_v := item -> 'mode';
  -- the Gateway's integer mode is Bybit's positionIdx; both given, they must agree (R-10)
  pidx_raw := nullif(report_value(item, array['positionIdx', 'position_idx']) #>> '{}', '');
  if (jsonb_typeof(mode_v) = 'number' or mode_v #>> '{}' ~ '^\d$') then
    if pidx_raw ~ '^\d+(\.\d+)?$' and pidx_raw::numeric <> (mode_v #>> '{}')::numeric then
      perform bad_input('mode', 'contradicts positionIdx');
    end if;
    pidx_raw := coalesce(pidx_raw, mode_v #>> '{}');
  end if;
  if pidx_raw is not null and pidx_raw !~ '^[012]$' then
    perform bad_input('positionIdx', format('must be 0, 1 or 2, got %s', left(pidx_raw, 40)));
  end if;
  pidx := pidx_raw::integer;
  if jsonb_typeof(mode_v) = 'string' and mode_v #>> '{}' !~ '^\d$' then
    m := input_mode(mode_v #>> '{}');
    if (m = 'one-way' and pidx in (1, 2)) or (m = 'hedge' and pidx = 0) then
      perform bad_input('mode', 'contradicts positionIdx');
    end if;
  else
    m := case when pidx in (1, 2) then 'hedge' else 'one-way' end;
  end if;
  if m = 'hedge' then
    leg := case when pidx = 1 then 'long' when pidx = 2 then 'short'
                when side_dir = 1 then 'long' when side_dir = -1 then 'short' end;
    if leg is null then perform bad_input('positionIdx', 'is required for a flat hedge-mode report'); end if;
  else
    leg := 'net';
  end if;

  exch_ts := coalesce(input_timestamp(jsonb_build_object('updatedTime', report_value(item, array['updatedTime', 'updated_time'])), 'updatedTime'),
                      input_timestamp(jsonb_build_object('timestamp', item -> 'timestamp'), 'timestamp'),
                      env_ts);
  if exch_ts > now() + interval '5 minutes' then
    perform bad_input('updatedTime', 'is more than 5 minutes in the future');
  end if;
  created_ts := input_timestamp(jsonb_build_object('createdTime', report_value(item, array['createdTime', 'created_time'])), 'createdTime');
  if report_value(item, array['seq']) is not null then
    if report_value(item, array['seq']) #>> '{}' !~ '^-?\d{1,18}$' then perform bad_input('seq', 'must be an integer'); end if;
    seq := (report_value(item, array['seq']) #>> '{}')::bigint;
  end if;

  mkey := case when event_id is not null then event_id || ':' || a || ':' || leg
               when multi then base_key || ':' || a || ':' || leg else base_key end;
  if not inbox_claim(src, mkey) then
    select * into p from positions where asset = a and mode = m;
    return jsonb_build_object('outcome', 'duplicate', 'message_key', mkey, 'asset', a, 'mode', m,
                              'position_id', p.id, 'version', p.version);
  end if;
  p := lock_position(a, m);
  st := jsonb_build_object('size', case when leg = 'net' then rsize * case when side_dir = 0 then 1 else side_dir end else rsize end,
                           'average_entry_price', avg_new, 'exchange_ts', exch_ts, 'seq', seq,
                           'received_at', received, 'message_key', mkey);
  -- the exchange's PnL for exactly that size, for a validation that adopts it (R-17)
  if upnl is not null then st := st || jsonb_build_object('unrealized_pnl', upnl); end if;

  if p.id is null then
    if rsize = 0 then
      update inbox set outcome = 'no_op' where source = src and message_key = mkey;
      return jsonb_build_object('outcome', 'no_op', 'message_key', mkey, 'asset', a, 'mode', m);
    end if;
    -- R-12: the exchange knows a position we do not: adopt it, and record it in the ledger.
    n := new_position(a, m);
    if leg = 'net' then
      n.size := rsize * case when side_dir = -1 then -1 else 1 end;
      n.average_entry_price := avg_new;
      n.unrealized_pnl := coalesce(upnl, 0);
      n.realized_pnl := coalesce(rpnl, 0);
    elsif leg = 'long' then
      n.long_size := rsize; n.long_avg_price := avg_new;
      n.long_unrealized_pnl := coalesce(upnl, 0); n.long_realized_pnl := coalesce(rpnl, 0);
    else
      n.short_size := rsize; n.short_avg_price := avg_new;
      n.short_unrealized_pnl := coalesce(upnl, 0); n.short_realized_pnl := coalesce(rpnl, 0);
    end if;
    if m = 'hedge' then n := position_hedge_totals(n); end if;
    n.average_entry_price_source := 'exchange';
    n.current_price := mark;
    n.current_price_at := case when mark is not null then coalesce(exch_ts, received) end;
    n.current_price_source := case when mark is not null then 'report' end;
    n.opened_at := coalesce(created_ts, exch_ts, received);
    n.exchange_state := jsonb_build_object(leg, st);
    n := save_position(n, true);
    insert into position_fills (position_id, asset, mode, kind, leg, reset_size, reset_avg_price, executed_at,
                                message_key, trace_id, reason)
    values (n.id, a, m, 'reset', leg, (st ->> 'size')::numeric, avg_new, coalesce(exch_ts, received), mkey, trace, 'report_created');
    update inbox set position_id = n.id where source = src and message_key = mkey;
    perform record_position_change(null, n, audit_source, 'created', mkey, trace, jsonb_build_object('report', item));
    return jsonb_build_object('outcome', 'applied', 'message_key', mkey, 'asset', a, 'mode', m,
                              'position_id', n.id, 'version', n.version, 'created', true);
  end if;

  -- R-11: an older report than the last accepted one for this leg changes nothing.
  if p.exchange_state ? leg then
    if (seq is not null and (p.exchange_state -> leg ->> 'seq') is not null and seq < (p.exchange_state -> leg ->> 'seq')::bigint)
       or ((seq is null or (p.exchange_state -> leg ->> 'seq') is null)
           and exch_ts is not null and (p.exchange_state -> leg ->> 'exchange_ts') is not null
           and exch_ts < (p.exchange_state -> leg ->> 'exchange_ts')::timestamptz) then
      update inbox set outcome = 'stale', position_id = p.id where source = src and message_key = mkey;
      perform record_position_note(p, audit_source, 'report_stale', mkey, trace,
        jsonb_build_object('leg', leg, 'seq', seq, 'exchange_ts', exch_ts, 'last_accepted', p.exchange_state -> leg));
      raise log 'stale report for % % (%): ignored', a, m, leg;
      return jsonb_build_object('outcome', 'stale', 'message_key', mkey, 'asset', a, 'mode', m,
                                'position_id', p.id, 'version', p.version);
    end if;
  end if;

  n := p;
  -- R-12 per leg: a hedge leg that never held anything (no ledger row, no accepted report) is
  -- the exchange's to give, at once; the Gateway sends the two legs of one update as two messages.
  leg_name := leg;
  adopt := leg <> 'net' and rsize > 0 and not coalesce(p.exchange_state ? leg, false)
           and not exists (select 1 from position_fills f where f.position_id = p.id and f.leg = leg_name);
  if adopt then
    if leg = 'long' then n.long_size := rsize; n.long_avg_price := avg_new;
    else n.short_size := rsize; n.short_avg_price := avg_new; end if;
    n.average_entry_price_source := 'exchange';
    if p.gross_size = 0 then
      n.opened_at := coalesce(created_ts, exch_ts, received); n.closed_at := null;
    end if;
    insert into position_fills (position_id, asset, mode, kind, leg, reset_size, reset_avg_price, executed_at,
                                message_key, trace_id, reason)
    values (n.id, a, m, 'reset', leg, rsize, avg_new, coalesce(exch_ts, received), mkey, trace, 'report_created');
    details := details || jsonb_build_object('leg_adopted', leg);
  end if;
  -- R-13: PnL and mark price from the exchange (a flat row keeps unrealized 0); a mark older than
  -- the one held (a ticker's, R-31) is not taken.
  at_price := coalesce(exch_ts, received);
  if mark is not null and (n.current_price_at is null or at_price >= n.current_price_at) then
    n.current_price := mark; n.current_price_at := at_price; n.current_price_source := 'report';
    insert into mark_prices as mp (symbol, price, at, source) values (a, mark, at_price, 'report')
    on conflict (symbol) do update set price = excluded.price, at = excluded.at, source = excluded.source, updated_at = now()
     where mp.at <= excluded.at;
  end if;
  if leg = 'net' then
    if upnl is not null and n.gross_size > 0 then n.unrealized_pnl := upnl; end if;
    if rpnl is not null then n.realized_pnl := rpnl; end if;
    old_avg := n.average_entry_price;
    stored := n.size;
    reported := rsize * case when side_dir = 0 then coalesce(nullif(sign(n.size), 0), 1) else side_dir end;
    -- R-10: without a side the stored sign applies, also to what validation later adopts.
    st := st || jsonb_build_object('size', reported);
  elsif leg = 'long' then
    if upnl is not null and n.long_size > 0 then n.long_unrealized_pnl := upnl; end if;
    if rpnl is not null then n.long_realized_pnl := rpnl; end if;
    old_avg := n.long_avg_price; stored := n.long_size; reported := rsize;
  else
    if upnl is not null and n.short_size > 0 then n.short_unrealized_pnl := upnl; end if;
    if rpnl is not null then n.short_realized_pnl := rpnl; end if;
    old_avg := n.short_avg_price; stored := n.short_size; reported := rsize;
  end if;

  -- R-14: the exchange's average replaces ours only beyond the threshold (strictly).
  if not adopt and avg_new is not null and stored <> 0 and (
       (old_avg is null)
       or (settings.use_ws_avg_price and div10(abs(avg_new - old_avg), old_avg) > settings.avg_price_diff_threshold)) then
    avg_replaced := true;
    if leg = 'net' then n.average_entry_price := avg_new;
    elsif leg = 'long' then n.long_avg_price := avg_new;
    else n.short_avg_price := avg_new; end if;
    n.average_entry_price_source := 'exchange';
    insert into position_fills (position_id, asset, mode, kind, leg, reset_size, reset_avg_price, executed_at,
                                message_key, trace_id, reason)
    values (n.id, a, m, 'reset', leg, stored, avg_new, coalesce(exch_ts, received), mkey, trace, 'avg_price_from_report');
    raise log 'average entry price of % % (%) replaced by the exchange''s: % -> %', a, m, leg, old_avg, avg_new;
    details := details || jsonb_build_object('avg_price_replaced', jsonb_build_object('old', dec_out(old_avg), 'new', dec_out(avg_new)));
  elsif avg_new is not null and not adopt then
    details := details || jsonb_build_object('avg_price_kept', jsonb_build_object('stored', dec_out(old_avg), 'reported', dec_out(avg_new)));
  end if;
  if m = 'hedge' then
    -- R-13: the mark belongs to the row; a leg the report gave no PnL for is marked to it too, so
    -- the row's unrealized PnL is never a mix of two prices.
    if n.current_price is not null and n.current_price is distinct from p.current_price or adopt then
      if (leg <> 'long' or upnl is null) and n.long_size > 0 and n.long_avg_price is not null then
        n.long_unrealized_pnl := (n.current_price - n.long_avg_price) * n.long_size;
      end if;
      if (leg <> 'short' or upnl is null) and n.short_size > 0 and n.short_avg_price is not null then
        n.short_unrealized_pnl := (n.short_avg_price - n.current_price) * n.short_size;
      end if;
    end if;
    n := position_hedge_totals(n);
  end if;
  n.exchange_state := coalesce(n.exchange_state, '{}') || jsonb_build_object(leg, st);

  -- R-15: a size that disagrees is checked by validation after the grace period.
  diff := rel_diff(stored, reported);
  if diff > settings.size_validation_threshold then
    perform record_position_note(n, audit_source, 'size_discrepancy', mkey, trace,
      jsonb_build_object('leg', leg, 'stored', stored, 'reported', reported, 'relative_difference', round(diff, 10)));
    raise warning 'size discrepancy on % % (%): stored %, exchange reports %', a, m, leg, stored, reported;
    perform schedule_validation(a, m);
    details := details || jsonb_build_object('size_discrepancy', jsonb_build_object(
      'leg', leg, 'stored', dec_out(stored), 'reported', dec_out(reported), 'relative_difference', dec_out(diff)));
  end if;

  changed := position_changed_fields(p, n);
  if cardinality(changed) = 0 then
    perform own_positions_write(true);
    update positions set exchange_state = n.exchange_state where id = n.id;
    perform own_positions_write(false);
    update inbox set position_id = p.id where source = src and message_key = mkey;
    return jsonb_build_object('outcome', 'applied', 'message_key', mkey, 'asset', a, 'mode', m,
                              'position_id', p.id, 'version', p.version, 'changed', false)
           || (details - 'report');
  end if;
  n := save_position(n, false);
  update inbox set position_id = n.id where source = src and message_key = mkey;
  perform record_position_change(p, n, audit_source, case when adopt and p.gross_size = 0 then 'reopened' else 'report' end,
                                 mkey, trace, details || jsonb_build_object('leg', leg));
  return jsonb_build_object('outcome', 'applied', 'message_key', mkey, 'asset', a, 'mode', m,
                            'position_id', n.id, 'version', n.version, 'changed', true)
         || (details - 'report');
end $$;

-- An envelope {event_type, event_id, timestamp, trace_id, payload|data} whose payload is one
-- report or an array of up to 100 (applied together), or a bare report object (psql).
create or replace function ingest_position_report(report jsonb) returns jsonb
  language plpgsql
  as $$
declare
  body jsonb; meta jsonb; items jsonb; src text; received timestamptz; trace text; event_id text;
  env_ts timestamptz; base_key text; results jsonb := '[]'; item jsonb;
begin
  if report is null or jsonb_typeof(report) <> 'object' then perform bad_input('body', 'must be a JSON object'); end if;
  body := report - '_meta';
  meta := case when jsonb_typeof(report -> '_meta') = 'object' then report -> '_meta' else '{}' end;
  src := coalesce(meta ->> 'source', 'manual');
  received := coalesce((meta ->> 'received_at')::timestamptz, now());
  if body ? 'payload' or body ? 'data' then
    if input_text(body, 'event_type') is not null and input_text(body, 'event_type') <> 'position' then
      perform bad_input('event_type', 'must be position');
    end if;
    items := coalesce(body -> 'payload', body -> 'data');
    if jsonb_typeof(items) = 'object' then items := jsonb_build_array(items); end if;
    if jsonb_typeof(items) <> 'array' or jsonb_array_length(items) not between 1 and 100 then
      perform bad_input('payload', 'must be a report object or an array of 1 to 100 reports');
    end if;
    env_ts := input_timestamp(body, 'timestamp');
  elsif body ? 'symbol' then
    items := jsonb_build_array(body);
  else
    perform bad_input('payload', 'is required');
  end if;
  trace := coalesce(input_bounded_text(body, 'trace_id', 128), meta ->> 'trace_id', gen_random_uuid()::text);
  event_id := input_bounded_text(body, 'event_id', 200);
  base_key := coalesce(meta ->> 'message_key', body_key(report));
  for item in select value from jsonb_array_elements(items) loop
    results := results || apply_one_report(item, src, base_key, event_id, env_ts, received, trace, jsonb_array_length(items) > 1);
  end loop;
  return results;
end $$;

create or replace function apply_position_report(report jsonb) returns positions
  language plpgsql
  as $$
declare
  res jsonb := ingest_position_report(report);
  p positions;
begin
  select * into p from positions where asset = res -> -1 ->> 'asset' and mode = res -> -1 ->> 'mode';
  return p;
end $$;
