-- Applying exchange position reports (SPEC.md R-10..R-16). Reports own PnL and the mark
-- price; they never write the size (a discrepancy schedules validation instead). A batch at a
-- time, as fills are (sql/140_apply_order_fill.sql): every report read first, the rows locked
-- and the inbox keys read together, each report accounted for in memory in arrival order, and
-- everything written at the end (sql/135_apply_batch.sql).

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

-- One report with what its message shares: the source, the time, the trace and the key. Each
-- report is keyed key_base:asset:leg when key_per_leg (several reports in one message, or an
-- event_id naming the message), else key_base.
create or replace function _report_read(item jsonb, msg integer, source text, received_at timestamptz, trace_id text,
                                        key_base text, key_per_leg boolean, envelope_at timestamptz)
  returns _report_message
  language plpgsql
  as $$
declare
  p record := _report_parse(item, envelope_at);
  r _report_message;
begin
  r.msg := msg; r.item := item; r.source := source; r.received_at := received_at; r.trace_id := trace_id;
  -- reconciliation's reports (R-34) are audited under their own source
  r.audit_source := case when source = 'exchange_rest' then 'exchange_rest' else 'websocket' end;
  r.message_key := key_base || case when key_per_leg then ':' || p.asset || ':' || p.leg else '' end;
  r.asset := p.asset; r.mode := p.mode; r.leg := p.leg; r.side := p.side; r.quantity := p.quantity;
  r.avg_price := p.avg_price; r.mark_price := p.mark_price; r.unrealized_pnl := p.unrealized_pnl;
  r.realized_pnl := p.realized_pnl; r.exchange_at := p.exchange_at; r.opened_at := p.opened_at; r.seq := p.seq;
  return r;
end $$;

-- The reports of report messages with the transport's meta: each an envelope {event_type,
-- event_id, timestamp, trace_id, payload|data} whose payload is one report or an array of up to
-- 100 (applied together), or a bare report object (psql). `msg` says whose report it is.
create or replace function _report_messages(metas jsonb[], bodies jsonb[]) returns _report_message[]
  language plpgsql
  as $$
declare
  body jsonb;
  items jsonb;
  envelope_at timestamptz;
  transport record;
  event_id text;
  item jsonb;
  reports _report_message[] := '{}';
begin
  for i in 1 .. coalesce(cardinality(bodies), 0) loop
    body := bodies[i]; envelope_at := null;
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
    transport := _input_meta(metas[i], body);
    event_id := _input_bounded_text(body, 'event_id', 200);
    for item in select value from jsonb_array_elements(items) loop
      reports := reports || _report_read(item, i, transport.source, transport.received_at, transport.trace_id,
                                         coalesce(event_id, transport.message_key, transport.body_key, _body_hash(body)),
                                         event_id is not null or jsonb_array_length(items) > 1, envelope_at);
    end loop;
  end loop;
  return reports;
end $$;

-- A ledger reset row for a leg (R-12 adoption, R-14 average replacement).
create or replace function _report_reset(p positions, r _report_message, size numeric, avg_price numeric,
                                         at timestamptz, reason text)
  returns position_fills
  language plpgsql stable
  as $$
declare
  l position_fills;
begin
  l.position_id := p.id; l.asset := p.asset; l.mode := p.mode; l.kind := 'reset'; l.leg := r.leg;
  l.reset_size := size; l.reset_avg_price := avg_price; l.executed_at := at; l.message_key := r.message_key;
  l.trace_id := r.trace_id; l.reason := reason;
  return l;
end $$;

-- R-12: the exchange knows a position we do not: adopt it, and record it in the ledger. The row
-- is returned unsaved (see _position_saved), with its reset row.
create or replace function _report_create(r _report_message, out n positions, out ledger position_fills)
  language plpgsql
  as $$
declare
  reported numeric := _leg_reported_size(r.leg, r.quantity, r.side, 0);
begin
  n := _position_totals(_with_leg(_position_new(r.asset, r.mode), r.leg, reported, r.avg_price,
                                  coalesce(r.unrealized_pnl, 0), coalesce(r.realized_pnl, 0)));
  n.average_entry_price_source := 'exchange';
  n.current_price := r.mark_price;
  n.current_price_at := case when r.mark_price is not null then coalesce(r.exchange_at, r.received_at) end;
  n.current_price_source := case when r.mark_price is not null then 'report' end;
  n.opened_at := coalesce(r.opened_at, r.exchange_at, r.received_at);
  n.exchange_state := jsonb_build_object(r.leg, _report_state(r, r.received_at, r.message_key, reported));
  ledger := _report_reset(n, r, reported, r.avg_price, coalesce(r.exchange_at, r.received_at), 'report_created');
end $$;

-- A report about a row we hold (R-12 per leg, R-13..R-15). Returns the row as the report leaves
-- it (unsaved), the ledger resets it needs, and what the outcome tells about it (`details`);
-- `discrepancy` is the size_discrepancy note when the sizes disagree beyond the threshold.
create or replace function _report_update(r _report_message, held positions, settings position_manager_settings,
  out n positions, out resets position_fills[], out discrepancy position_events, out details jsonb,
  out mark_taken boolean)
  language plpgsql
  as $$
declare
  at_price timestamptz := coalesce(r.exchange_at, r.received_at);
  adopt boolean;
  this_leg record;
  reported numeric;
  new_avg numeric;
  drift numeric;
begin
  n := held; resets := '{}'; details := '{}'; mark_taken := false;
  -- a hedge leg without a ledger row or an accepted report (R-12 per leg): the exchange's to
  -- give, at once (the Gateway sends the two legs of one update as two messages)
  adopt := r.mode = 'hedge' and r.quantity > 0 and not coalesce(held.exchange_state ? r.leg, false)
           and not exists (select 1 from position_fills f where f.position_id = held.id and f.leg = r.leg);
  if adopt then
    this_leg := _leg(held, r.leg);
    n := _with_leg(n, r.leg, r.quantity, r.avg_price, this_leg.unrealized_pnl, this_leg.realized_pnl);
    n.average_entry_price_source := 'exchange';
    if held.gross_size = 0 then
      n.opened_at := coalesce(r.opened_at, r.exchange_at, r.received_at); n.closed_at := null;
    end if;
    resets := resets || _report_reset(n, r, r.quantity, r.avg_price, coalesce(r.exchange_at, r.received_at),
                                      'report_created');
    details := details || jsonb_build_object('leg_adopted', r.leg);
  end if;
  -- R-13: PnL and mark price from the exchange (a flat leg keeps unrealized 0); a mark older than
  -- the one held (a ticker's, R-31) is not taken.
  if r.mark_price is not null and (n.current_price_at is null or at_price >= n.current_price_at) then
    n.current_price := r.mark_price; n.current_price_at := at_price; n.current_price_source := 'report';
    mark_taken := true;
  end if;
  this_leg := _leg(n, r.leg);
  -- R-10: without a side the stored sign applies, also to what validation later adopts.
  reported := _leg_reported_size(r.leg, r.quantity, r.side, this_leg.size);

  -- R-14: the exchange's average replaces ours only beyond the threshold (strictly).
  new_avg := this_leg.avg_price;
  if not adopt and r.avg_price is not null and this_leg.size <> 0 and (
       this_leg.avg_price is null
       or (settings.use_ws_avg_price
           and div10(abs(r.avg_price - this_leg.avg_price), this_leg.avg_price) > settings.avg_price_diff_threshold)) then
    new_avg := r.avg_price;
    n.average_entry_price_source := 'exchange';
    resets := resets || _report_reset(n, r, this_leg.size, r.avg_price, at_price, 'avg_price_from_report');
    raise log 'average entry price of % % (%) replaced by the exchange''s: % -> %',
      r.asset, r.mode, r.leg, this_leg.avg_price, r.avg_price;
    details := details || jsonb_build_object('avg_price_replaced', jsonb_build_object(
      'old', dec_out(this_leg.avg_price), 'new', dec_out(r.avg_price)));
  elsif r.avg_price is not null and not adopt then
    details := details || jsonb_build_object('avg_price_kept', jsonb_build_object(
      'stored', dec_out(this_leg.avg_price), 'reported', dec_out(r.avg_price)));
  end if;
  n := _with_leg(n, r.leg, this_leg.size, new_avg,
                 case when r.unrealized_pnl is not null and this_leg.size <> 0 then r.unrealized_pnl
                      else this_leg.unrealized_pnl end,
                 coalesce(r.realized_pnl, this_leg.realized_pnl));
  -- R-13: the mark belongs to the row; in a hedge row a leg the report gave no PnL for is marked
  -- to it too, so the row's unrealized PnL is never a mix of two prices (a one-way row's PnL is
  -- the exchange's alone).
  if r.mode = 'hedge' and (n.current_price is not null and n.current_price is distinct from held.current_price or adopt) then
    n := _position_remark(n, case when r.unrealized_pnl is not null then r.leg end);
  end if;
  n := _position_totals(n);
  n.exchange_state := coalesce(n.exchange_state, '{}')
                      || jsonb_build_object(r.leg, _report_state(r, r.received_at, r.message_key, reported));

  -- R-15: a size that disagrees beyond the threshold is audited and checked by validation after
  -- the grace period.
  drift := _rel_diff(this_leg.size, reported);
  if drift > settings.size_validation_threshold then
    discrepancy := _position_note(n, r.audit_source, 'size_discrepancy', r.message_key, r.trace_id,
      jsonb_build_object('leg', r.leg, 'stored', this_leg.size, 'reported', reported,
                         'relative_difference', round(drift, 10)));
    raise warning 'size discrepancy on % % (%): stored %, exchange reports %', r.asset, r.mode, r.leg,
      this_leg.size, reported;
    details := details || jsonb_build_object('size_discrepancy', jsonb_build_object(
      'leg', r.leg, 'stored', dec_out(this_leg.size), 'reported', dec_out(reported), 'relative_difference', dec_out(drift)));
  end if;
  if adopt and held.gross_size = 0 then details := details || jsonb_build_object('reopened', true); end if;
end $$;

-- Reports in arrival order, each claimed under its own key, then a new position, a stale report
-- or an update of the row; one outcome per report.
create or replace function _apply_report_items(reports _report_message[]) returns jsonb[]
  language plpgsql
  as $$
declare
  settings position_manager_settings;
  r _report_message;
  lock record;
  locked positions[];
  rows positions[];
  slot integer;
  h positions;
  duplicate boolean[];
  made record;
  upd record;
  after positions;
  note position_events;
  probe positions;
  total numeric;
  key inbox;
  -- what the batch writes at the end, in report order (seq: each change and note's place)
  outcomes jsonb[] := '{}';
  ledger position_fills[] := '{}';
  keys inbox[] := '{}';
  seq bigint := 0;
  befores positions[] := '{}'; afters positions[] := '{}'; changes position_events[] := '{}'; totals numeric[] := '{}';
  notes position_events[] := '{}';
  to_validate text[] := '{}';
  marks_symbol text[] := '{}'; marks_price numeric[] := '{}'; marks_at timestamptz[] := '{}';
begin
  select * into settings from position_manager_settings;
  lock := _batch_lock(array(select x.asset from unnest(reports) x), array(select x.mode from unnest(reports) x));
  locked := lock.held; rows := lock.held;
  perform _inbox_lock_keys(array(select x.source from unnest(reports) x), array(select x.message_key from unnest(reports) x));
  -- per report: its key was applied before, or earlier in the batch
  select array_agg(x.duplicate order by x.i) into duplicate
    from (select m.ordinality as i,
                 row_number() over (partition by m.source, m.message_key order by m.ordinality) > 1
                 or exists (select 1 from inbox b where b.source = m.source and b.message_key = m.message_key) as duplicate
            from unnest(reports) with ordinality m) x;

  for i in 1 .. coalesce(cardinality(reports), 0) loop
    r := reports[i];
    slot := (lock.slots ->> (r.asset || ' ' || r.mode))::integer;
    h := rows[slot];
    key := row(r.source, r.message_key, 'applied', h.id, now());
    if duplicate[i] then
      outcomes[i] := _message_outcome('duplicate', r.message_key, r.asset, r.mode, h);
      continue;
    end if;
    if total is null then
      total := coalesce(nullif(current_setting('position_manager.total_exposure', true), '')::numeric,
                        _portfolio_total_exposure());
    end if;

    if h.id is null and r.quantity = 0 then
      key.outcome := 'no_op'; keys := keys || key;
      outcomes[i] := jsonb_build_object('outcome', 'no_op', 'message_key', r.message_key, 'asset', r.asset, 'mode', r.mode);
    elsif h.id is null then
      made := _report_create(r);
      after := _position_saved(made.n, h);
      ledger := ledger || made.ledger;
      total := total + _position_exposure(after);
      seq := seq + 1; befores := befores || h; afters := afters || after; totals := totals || total;
      changes := changes || _change_info(seq, r.audit_source, 'created', r.message_key, r.trace_id,
                                         jsonb_build_object('report', r.item));
      rows[slot] := after;
      key.position_id := after.id; keys := keys || key;
      outcomes[i] := _message_outcome('applied', r.message_key, r.asset, r.mode, after) || jsonb_build_object('created', true);
    elsif _report_is_stale(h.exchange_state -> r.leg, r.seq, r.exchange_at) then
      key.outcome := 'stale'; keys := keys || key;
      note := _position_note(h, r.audit_source, 'report_stale', r.message_key, r.trace_id,
        jsonb_build_object('leg', r.leg, 'seq', r.seq, 'exchange_ts', r.exchange_at,
                           'last_accepted', h.exchange_state -> r.leg));
      seq := seq + 1; note.id := seq; notes := notes || note;
      raise log 'stale report for % % (%): ignored', r.asset, r.mode, r.leg;
      outcomes[i] := _message_outcome('stale', r.message_key, r.asset, r.mode, h);
    else
      upd := _report_update(r, h, settings);
      ledger := ledger || upd.resets;
      if upd.mark_taken then
        marks_symbol := marks_symbol || r.asset; marks_price := marks_price || r.mark_price;
        marks_at := marks_at || coalesce(r.exchange_at, r.received_at);
      end if;
      if (upd.discrepancy).kind is not null then
        seq := seq + 1; note := upd.discrepancy; note.id := seq; notes := notes || note;
        to_validate := to_validate || (r.asset || ' ' || r.mode);
      end if;
      keys := keys || key;
      probe := upd.n; probe.exchange_state := h.exchange_state;
      if probe is not distinct from h then
        -- only what the exchange last said changed: no new version, no event
        h.exchange_state := (upd.n).exchange_state;
        rows[slot] := h;
        outcomes[i] := _message_outcome('applied', r.message_key, r.asset, r.mode, h)
                       || jsonb_build_object('changed', false) || (upd.details - 'reopened');
      else
        after := _position_saved(upd.n, h);
        total := total + _position_exposure(after) - _position_exposure(h);
        seq := seq + 1; befores := befores || h; afters := afters || after; totals := totals || total;
        changes := changes || _change_info(seq, r.audit_source,
                                           case when upd.details ? 'reopened' then 'reopened' else 'report' end,
                                           r.message_key, r.trace_id,
                                           (upd.details - 'reopened') || jsonb_build_object('leg', r.leg));
        rows[slot] := after;
        outcomes[i] := _message_outcome('applied', r.message_key, r.asset, r.mode, after)
                       || jsonb_build_object('changed', true) || (upd.details - 'reopened');
      end if;
    end if;
  end loop;

  perform _batch_write(locked, rows, ledger, keys, befores, afters, changes, totals, notes, '{}', '{}', '{}', '{}',
                       to_validate);
  -- the latest mark of each symbol (R-31: never an older one over a newer)
  if cardinality(marks_symbol) > 0 then
    insert into mark_prices as mp (symbol, price, at, source)
    select distinct on (m.symbol) m.symbol, m.price, m.at, 'report'
      from unnest(marks_symbol, marks_price, marks_at) with ordinality m(symbol, price, at, i)
     order by m.symbol, m.at desc, m.i desc
    on conflict (symbol) do update set price = excluded.price, at = excluded.at, source = excluded.source, updated_at = now()
     where mp.at <= excluded.at;
  end if;
  if total is not null then perform set_config('position_manager.total_exposure', total::text, true); end if;
  return outcomes;
end $$;

-- The reports of one queue's batch (ingest_messages), or of one message; per message
-- {"reports": [one outcome per report]}.
create or replace function _apply_reports(metas jsonb[], bodies jsonb[]) returns jsonb
  language plpgsql
  as $$
declare
  reports _report_message[] := _report_messages(metas, bodies);
  outcomes jsonb[] := _apply_report_items(reports);
begin
  return (select coalesce(jsonb_agg(jsonb_build_object('reports', o.reports) order by o.msg), '[]')
            from (select x.msg, jsonb_agg(outcomes[x.ordinality] order by x.ordinality) as reports
                    from unnest(reports) with ordinality x group by x.msg) o);
end $$;

-- One report message with the transport's meta; one outcome per report.
create or replace function _apply_position_report(meta jsonb, body jsonb) returns jsonb
  language plpgsql
  as $$
begin
  return _apply_reports(array[meta], array[body]) -> 0 -> 'reports';
end $$;

-- The row of the message's last report.
create or replace function apply_position_report(report jsonb) returns positions
  language plpgsql
  as $$
begin
  return _position_of(_apply_position_report(null, report) -> -1);
end $$;
