-- Applying an order fill (SPEC.md R-5..R-8): parse with aliases, de-duplicate (R-3), resolve
-- cumulative order statements (R-6), account (leg_fill), and write position, ledger, audit,
-- inbox and outbox in the caller's transaction.

create or replace function input_bool(j jsonb, field text) returns boolean
  language plpgsql immutable
  as $$
declare raw text := lower(input_text(j, field));
begin
  if raw is null then return null; end if;
  if raw in ('true', 'false') then return raw::boolean; end if;
  perform bad_input(field, 'must be true or false');
  return null;
end $$;

create or replace function input_bounded_text(j jsonb, field text, max_len integer) returns text
  language plpgsql immutable
  as $$
declare raw text := input_text(j, field);
begin
  if raw is not null and length(raw) > max_len then
    perform bad_input(field, format('at most %s characters', max_len));
  end if;
  return raw;
end $$;

-- Records the message key; false when it was applied before (a duplicate).
create or replace function inbox_claim(src text, mkey text, outcome text default 'applied') returns boolean
  language plpgsql
  as $$
begin
  insert into inbox (source, message_key, outcome) values (src, mkey, outcome) on conflict do nothing;
  return found;
end $$;

create or replace function new_position(a text, m text) returns positions
  language plpgsql immutable
  as $$
declare n positions;
begin
  n.id := gen_random_uuid(); n.asset := a; n.mode := m; n.size := 0;
  n.unrealized_pnl := 0; n.realized_pnl := 0; n.total_fees := 0; n.version := 1;
  if m = 'hedge' then
    n.long_size := 0; n.short_size := 0;
    n.long_unrealized_pnl := 0; n.short_unrealized_pnl := 0; n.long_realized_pnl := 0; n.short_realized_pnl := 0;
  end if;
  return n;
end $$;

-- A hedge row's totals are its legs' (SPEC.md §3.1 invariants).
create or replace function position_hedge_totals(n positions) returns positions
  language plpgsql immutable
  as $$
begin
  n.size := n.long_size - n.short_size;
  n.unrealized_pnl := coalesce(n.long_unrealized_pnl, 0) + coalesce(n.short_unrealized_pnl, 0);
  n.realized_pnl := coalesce(n.long_realized_pnl, 0) + coalesce(n.short_realized_pnl, 0);
  n.average_entry_price := case when n.size > 0 then n.long_avg_price when n.size < 0 then n.short_avg_price end;
  return n;
end $$;

-- The exchange's PnL figure for size `from_size`, carried over to `to_size` (same direction).
create or replace function scaled_pnl(pnl numeric, from_size numeric, to_size numeric) returns numeric
  language sql immutable parallel safe
  as $$
    select case when from_size is null or from_size = 0 or from_size = to_size then coalesce(pnl, 0)
                else div10(coalesce(pnl, 0) * to_size, from_size) end
  $$;

-- Unrealized PnL from the mark price (R-7, R-8); 0 when flat. A leg whose average the exchange
-- never gave (R-12 without avgPrice) has only the exchange's figure: it is scaled with the
-- leg's size (a reduction keeps the PnL per contract), as `before` had it.
-- no default for `before`: a default of a table's row type stops ALTER TABLE on that table
drop function if exists position_mark(positions);
drop function if exists position_mark(positions, positions);
create or replace function position_mark(n positions, before positions) returns positions
  language plpgsql immutable
  as $$
begin
  if n.mode = 'hedge' then
    n.long_unrealized_pnl := case when n.long_size = 0 then 0
      when n.long_avg_price is not null then (n.current_price - n.long_avg_price) * n.long_size
      else scaled_pnl(n.long_unrealized_pnl, before.long_size, n.long_size) end;
    n.short_unrealized_pnl := case when n.short_size = 0 then 0
      when n.short_avg_price is not null then (n.short_avg_price - n.current_price) * n.short_size
      else scaled_pnl(n.short_unrealized_pnl, before.short_size, n.short_size) end;
    n := position_hedge_totals(n);
  else
    n.unrealized_pnl := case when n.size = 0 then 0
      when n.average_entry_price is not null then (n.current_price - n.average_entry_price) * n.size
      else scaled_pnl(n.unrealized_pnl, before.size, n.size) end;
  end if;
  return n;
end $$;

create or replace function ingest_order_fill(fill jsonb) returns jsonb
  language plpgsql
  as $$
declare
  body jsonb;
  meta jsonb;
  o jsonb;
  enriched boolean;
  ev text;
  src text;
  trace text;
  mkey text;
  received timestamptz;
  a text; m text; d integer; q numeric; price numeric; fee numeric;
  cum_q numeric; exec_at timestamptz; v_order_id text; exec_id text;
  pidx integer; reduce_only boolean; leg text; leg_dir integer;
  q0 numeric; n0 numeric; f0 numeric;
  p positions; n positions; is_new boolean;
  r record;
  gross_before numeric; gross_after numeric;
  kind text;
begin
  if fill is null or jsonb_typeof(fill) <> 'object' then perform bad_input('body', 'must be a JSON object'); end if;
  body := fill - '_meta';
  meta := case when jsonb_typeof(fill -> '_meta') = 'object' then fill -> '_meta' else '{}' end;
  src := coalesce(meta ->> 'source', 'manual');
  received := coalesce((meta ->> 'received_at')::timestamptz, now());
  ev := lower(input_text(body, 'event_type'));
  if ev is not null and ev not in ('order_executed', 'position_updated_from_order', 'filled', 'partially_filled',
                                   'cancelled', 'created', 'modified', 'rejected') then
    perform bad_input('event_type', format('unknown event type %s', left(ev, 40)));
  end if;
  enriched := jsonb_typeof(body -> 'order') = 'object';
  o := case when enriched then body -> 'order' else body end;
  trace := coalesce(input_bounded_text(body, 'trace_id', 128), meta ->> 'trace_id', gen_random_uuid()::text);
  exec_id := case when enriched then null else coalesce(input_bounded_text(o, 'execution_id', 100), input_bounded_text(o, 'exec_id', 100)) end;
  -- R-3: the body's own id first, then the transport's (AMQP message_id), then the body's hash.
  mkey := coalesce(exec_id, input_bounded_text(body, 'event_id', 200), meta ->> 'message_key', body_key(fill));

  if ev in ('created', 'modified', 'rejected') then
    return jsonb_build_object('outcome', case when inbox_claim(src, mkey, 'no_op') then 'no_op' else 'duplicate' end,
                              'message_key', mkey);
  end if;

  a := input_asset(coalesce(input_text(o, 'asset'), input_text(o, 'symbol')), 'asset');
  m := input_mode(input_text(o, 'mode'));
  d := input_side(input_text(o, 'side'));
  v_order_id := input_bounded_text(o, 'order_id', 100);
  if enriched then
    cum_q := input_decimal(o, 'filled_quantity', 8);
    -- an order's average fill price is computed, so it may have up to 30 places (§6.1)
    price := input_decimal(o, 'average_price', 30);
    fee := coalesce(input_decimal(o, 'fees'), 0);
    exec_at := coalesce(input_timestamp(o, 'executed_at'), input_timestamp(body, 'timestamp'), received);
    if v_order_id is null then perform bad_input('order.order_id', 'is required'); end if;
    if coalesce(cum_q, 0) = 0 then
      -- nothing filled yet (e.g. cancelled before any execution)
      return jsonb_build_object('outcome', case when inbox_claim(src, mkey, 'no_op') then 'no_op' else 'duplicate' end,
                                'message_key', mkey, 'asset', a, 'mode', m);
    end if;
    if price is null then perform bad_input('order.average_price', 'is required when filled_quantity > 0'); end if;
    q := cum_q;
  else
    q := coalesce(input_decimal(o, 'execution_quantity', 8), input_decimal(o, 'filled_quantity', 8));
    cum_q := coalesce(input_decimal(o, 'filled_quantity', 8), q);
    -- without an execution id but with an order id the price is the order's average (R-6.2)
    price := coalesce(input_decimal(o, 'execution_price', case when exec_id is null and v_order_id is not null then 30 else 8 end),
                      input_decimal(o, 'price', case when exec_id is null and v_order_id is not null then 30 else 8 end));
    fee := coalesce(input_decimal(o, 'execution_fees'), input_decimal(o, 'fee'), 0);
    exec_at := coalesce(input_timestamp(o, 'executed_at'), received);
    if q is null then perform bad_input('execution_quantity', 'is required'); end if;
    if price is null then perform bad_input('execution_price', 'is required'); end if;
  end if;
  if q <= 0 then perform bad_input('execution_quantity', 'must be greater than 0'); end if;
  if price <= 0 then perform bad_input('execution_price', 'must be greater than 0'); end if;
  if fee < 0 then perform bad_input('execution_fees', 'must not be negative'); end if;
  if m = 'hedge' then
    if input_text(o, 'position_idx') is not null then
      if input_text(o, 'position_idx') not in ('1', '2') then perform bad_input('position_idx', 'must be 1 or 2'); end if;
      pidx := input_text(o, 'position_idx')::integer;
    end if;
    reduce_only := coalesce(input_bool(o, 'reduce_only'), false);
    if reduce_only and pidx = (case d when 1 then 1 else 2 end) then
      perform bad_input('reduce_only', format('a reduce-only %s cannot act on the %s leg: it would add to it',
                                              case d when 1 then 'Buy' else 'Sell' end, case pidx when 1 then 'long' else 'short' end));
    end if;
    leg := case when pidx = 1 then 'long' when pidx = 2 then 'short'
                when (d = 1) <> reduce_only then 'long' else 'short' end;
    leg_dir := case leg when 'long' then 1 else -1 end;
  else
    leg := 'net'; leg_dir := 0;
  end if;

  if not inbox_claim(src, mkey) then
    select * into p from positions where asset = a and mode = m;
    return jsonb_build_object('outcome', 'duplicate', 'message_key', mkey, 'asset', a, 'mode', m,
                              'position_id', p.id, 'version', p.version);
  end if;
  p := lock_position(a, m);
  if exec_id is not null and exists (select 1 from position_fills f where f.execution_id = exec_id) then
    update inbox set outcome = 'no_op', position_id = p.id where source = src and message_key = mkey;
    return jsonb_build_object('outcome', 'duplicate', 'message_key', mkey, 'asset', a, 'mode', m,
                              'position_id', p.id, 'version', p.version);
  end if;

  if v_order_id is not null and exists (
       select 1 from position_fills f
        where f.order_id = v_order_id and f.asset = a and f.mode = m and f.kind = 'fill'
          and (f.execution_id is null) <> (exec_id is null)) then
    -- R-6 (4): the order is counted in the shape first applied for it; the exchange settles the rest.
    update inbox set outcome = 'other_shape', position_id = p.id where source = src and message_key = mkey;
    raise warning 'order % of % %: a % arrived for an order counted as %: not applied, validation scheduled',
      v_order_id, a, m, case when exec_id is null then 'cumulative statement' else 'execution ' || exec_id end,
      case when exec_id is null then 'executions' else 'cumulative statements' end;
    perform schedule_validation(a, m);
    return jsonb_build_object('outcome', 'other_shape', 'message_key', mkey, 'asset', a, 'mode', m,
                              'position_id', p.id, 'version', p.version,
                              'warning', format('order %s is counted as %s; this %s was not applied', v_order_id,
                                                case when exec_id is null then 'executions' else 'cumulative statements' end,
                                                case when exec_id is null then 'cumulative statement' else 'execution' end));
  end if;

  if exec_id is null and v_order_id is not null then
    -- R-6 (2): a cumulative statement about the order; apply what the ledger lacks.
    select coalesce(sum(f.quantity), 0), coalesce(sum(f.quantity * f.price), 0), coalesce(sum(f.fee), 0)
      into q0, n0, f0
      from position_fills f
     where f.order_id = v_order_id and f.asset = a and f.mode = m and f.kind = 'fill';
    if cum_q - q0 <= 0 then
      update inbox set outcome = 'no_op', position_id = p.id where source = src and message_key = mkey;
      raise log 'order % of %: cumulative quantity % already applied (%): no-op', v_order_id, a, cum_q, q0;
      return jsonb_build_object('outcome', 'no_op', 'message_key', mkey, 'asset', a, 'mode', m,
                                'position_id', p.id, 'version', p.version);
    end if;
    if q0 > 0 then
      price := div10(cum_q * price - n0, cum_q - q0);
      if price <= 0 then
        perform bad_input('execution_price', 'cumulative average price is inconsistent with the fills already applied');
      end if;
      fee := greatest(fee - f0, 0);
    end if;
    q := cum_q - q0;
  end if;

  is_new := p.id is null;
  n := case when is_new then new_position(a, m) else p end;
  gross_before := case when is_new then 0 else p.gross_size end;

  if m = 'hedge' then
    if leg = 'long' then
      r := leg_fill(n.long_size, n.long_avg_price, d, q, price, fee, 1);
      n.long_size := r.new_size; n.long_avg_price := r.new_avg;
      n.long_realized_pnl := coalesce(n.long_realized_pnl, 0) + r.realized;
    else
      r := leg_fill(-n.short_size, n.short_avg_price, d, q, price, fee, -1);
      n.short_size := -r.new_size; n.short_avg_price := r.new_avg;
      n.short_realized_pnl := coalesce(n.short_realized_pnl, 0) + r.realized;
    end if;
    gross_after := n.long_size + n.short_size;
  else
    r := leg_fill(n.size, n.average_entry_price, d, q, price, fee, 0);
    n.size := r.new_size; n.average_entry_price := r.new_avg;
    n.realized_pnl := n.realized_pnl + r.realized;
    gross_after := abs(n.size);
  end if;
  if d = leg_dir or leg_dir = 0 and (r.opened or sign(r.new_size) = d) then
    n.average_entry_price_source := 'fills';
  end if;
  n.total_fees := n.total_fees + fee;
  if n.current_price is null then
    n.current_price := price; n.current_price_at := exec_at; n.current_price_source := 'fill';
  end if;
  if gross_before = 0 and gross_after > 0 or r.opened and leg_dir = 0 then
    n.opened_at := exec_at; n.closed_at := null;
  end if;
  -- A hedge reduction that arrived before its leg opened (R-8) creates the row flat: the fee was
  -- paid and the ledger keeps the fill; the validation it schedules settles the size.
  if gross_before > 0 and gross_after = 0 or is_new and gross_after = 0 then n.closed_at := exec_at; end if;
  n := position_mark(n, p);
  n := save_position(n, is_new);

  insert into position_fills (position_id, asset, mode, kind, leg, side, quantity, price, fee, order_id, execution_id,
                              executed_at, message_key, trace_id)
  values (n.id, a, m, 'fill', leg, case d when 1 then 'Buy' else 'Sell' end, q, price, fee, v_order_id, exec_id,
          exec_at, mkey, trace);
  update inbox set position_id = n.id where source = src and message_key = mkey;

  kind := case when is_new then 'created' when gross_before = 0 and gross_after > 0 then 'reopened'
               when gross_before > 0 and gross_after = 0 then 'closed' else 'fill' end;
  perform record_position_change(case when is_new then null else p end, n, 'order_execution', kind, mkey, trace,
    jsonb_build_object('side', case d when 1 then 'Buy' else 'Sell' end, 'quantity', q, 'price', price, 'fee', fee,
                       'leg', leg, 'order_id', v_order_id, 'execution_id', exec_id));
  if r.closed then
    -- closed_size is the size before closing (signed for the one-way leg: SPEC.md's glossary)
    perform enqueue_position_closed(n, leg, case when leg = 'net' then p.size else r.closed_qty end,
      case leg when 'long' then p.long_avg_price when 'short' then p.short_avg_price else p.average_entry_price end,
      price, r.realized, p.opened_at, exec_at, case when r.opened then 'flip' else 'fill' end, trace);
  end if;
  if r.excess > 0 then
    -- R-8: a hedge leg never crosses zero; the excess means the ledger misses something.
    perform record_position_note(n, 'order_execution', 'size_discrepancy', mkey, trace,
      jsonb_build_object('leg', leg, 'requested', q, 'applied', r.closed_qty, 'excess', r.excess));
    raise warning 'position % %: reduction of % on the % leg exceeds it by %', a, m, q, leg, r.excess;
    perform schedule_validation(a, m);
  end if;
  return jsonb_build_object('outcome', 'applied', 'message_key', mkey, 'asset', a, 'mode', m,
                            'position_id', n.id, 'version', n.version)
         || case when r.excess > 0 then jsonb_build_object('size_discrepancy', jsonb_build_object(
              'leg', leg, 'requested', dec_out(q), 'applied', dec_out(r.closed_qty), 'excess', dec_out(r.excess)))
            else '{}' end;
end $$;

create or replace function apply_order_fill(fill jsonb) returns positions
  language plpgsql
  as $$
declare
  res jsonb := ingest_order_fill(fill);
  p positions;
begin
  select * into p from positions where asset = res ->> 'asset' and mode = res ->> 'mode';
  return p;
end $$;

-- R-15: one validation per position after the grace period, however many discrepancies.
create or replace function schedule_validation(a text, m text) returns void
  language sql
  as $$
    select graphile_worker.add_job('validate_position', json_build_object('asset', a, 'mode', m),
      run_at => now() + make_interval(secs => (select size_discrepancy_grace_seconds from position_manager_settings)),
      job_key => 'validate:' || a || ':' || m, job_key_mode => 'preserve_run_at', max_attempts => 5);
  $$;
