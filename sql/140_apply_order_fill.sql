-- Applying an order fill (SPEC.md R-5..R-8): parse the message, resolve what of its order the
-- ledger still lacks (R-6), account for that on its leg and write position, ledger, audit, inbox
-- and events in the caller's transaction.

-- A fill message (SPEC.md §6.1: a flat execution, or an order statement {order: {...}}) as typed
-- values. quantity is this message's; cumulative_quantity the order's total so far (R-6).
-- no_op: the message fills nothing (an order created, modified or rejected, or one not filled
-- yet) and parsing stops there.
create or replace function _fill_parse(meta jsonb, body jsonb,
  out no_op boolean, out source text, out received_at timestamptz, out trace_id text, out message_key text,
  out asset text, out mode text, out side integer, out leg text, out order_id text, out execution_id text,
  out quantity numeric, out cumulative_quantity numeric, out price numeric, out fee numeric,
  out executed_at timestamptz)
  language plpgsql
  as $$
declare
  event_type text;
  is_statement boolean;
  fields jsonb; -- the order's fields: the body itself, or its `order` object
  transport record;
  position_idx integer;
  reduce_only boolean;
begin
  if body is null or jsonb_typeof(body) <> 'object' then perform _bad_input('body', 'must be a JSON object'); end if;
  event_type := lower(_input_text(body, 'event_type'));
  if event_type is not null and event_type not in ('order_executed', 'position_updated_from_order', 'filled',
                                                   'partially_filled', 'cancelled', 'created', 'modified', 'rejected') then
    perform _bad_input('event_type', format('unknown event type %s', left(event_type, 40)));
  end if;
  is_statement := coalesce(jsonb_typeof(body -> 'order') = 'object', false);
  fields := case when is_statement then body -> 'order' else body end;
  transport := _input_meta(meta, body);
  source := transport.source; received_at := transport.received_at; trace_id := transport.trace_id;
  execution_id := case when not is_statement then coalesce(_input_bounded_text(fields, 'execution_id', 100),
                                                           _input_bounded_text(fields, 'exec_id', 100)) end;
  -- R-3: the body's own id first, then the transport's (AMQP message_id), then the body's hash.
  message_key := coalesce(execution_id, _input_bounded_text(body, 'event_id', 200), transport.message_key,
                          transport.body_key, _body_hash(body));
  no_op := event_type is not null and event_type in ('created', 'modified', 'rejected');
  if no_op then return; end if;

  asset := _input_asset(coalesce(_input_text(fields, 'asset'), _input_text(fields, 'symbol')), 'asset');
  mode := _input_mode(_input_text(fields, 'mode'));
  side := _input_side(_input_text(fields, 'side'));
  order_id := _input_bounded_text(fields, 'order_id', 100);
  if is_statement then
    cumulative_quantity := _input_decimal(fields, 'filled_quantity', 8);
    -- an order's average fill price is computed, so it may have up to 30 places (§6.1)
    price := _input_decimal(fields, 'average_price', 30);
    fee := coalesce(_input_decimal(fields, 'fees'), 0);
    executed_at := coalesce(_input_timestamp(fields, 'executed_at'), _input_timestamp(body, 'timestamp'), received_at);
    if order_id is null then perform _bad_input('order.order_id', 'is required'); end if;
    -- nothing filled yet (e.g. cancelled before any execution)
    no_op := coalesce(cumulative_quantity, 0) = 0;
    if no_op then return; end if;
    if price is null then perform _bad_input('order.average_price', 'is required when filled_quantity > 0'); end if;
    quantity := cumulative_quantity;
  else
    quantity := coalesce(_input_decimal(fields, 'execution_quantity', 8), _input_decimal(fields, 'filled_quantity', 8));
    cumulative_quantity := coalesce(_input_decimal(fields, 'filled_quantity', 8), quantity);
    -- without an execution id but with an order id the price is the order's average (R-6.2)
    price := coalesce(
      _input_decimal(fields, 'execution_price', case when execution_id is null and order_id is not null then 30 else 8 end),
      _input_decimal(fields, 'price', case when execution_id is null and order_id is not null then 30 else 8 end));
    fee := coalesce(_input_decimal(fields, 'execution_fees'), _input_decimal(fields, 'fee'), 0);
    executed_at := coalesce(_input_timestamp(fields, 'executed_at'), received_at);
    if quantity is null then perform _bad_input('execution_quantity', 'is required'); end if;
    if price is null then perform _bad_input('execution_price', 'is required'); end if;
  end if;
  if quantity <= 0 then perform _bad_input('execution_quantity', 'must be greater than 0'); end if;
  if price <= 0 then perform _bad_input('execution_price', 'must be greater than 0'); end if;
  if fee < 0 then perform _bad_input('execution_fees', 'must not be negative'); end if;

  leg := 'net';
  if mode = 'hedge' then
    if _input_text(fields, 'position_idx') is not null then
      if _input_text(fields, 'position_idx') not in ('1', '2') then perform _bad_input('position_idx', 'must be 1 or 2'); end if;
      position_idx := _input_text(fields, 'position_idx')::integer;
    end if;
    reduce_only := coalesce(_input_bool(fields, 'reduce_only'), false);
    if reduce_only and position_idx = (case side when 1 then 1 else 2 end) then
      perform _bad_input('reduce_only', format('a reduce-only %s cannot act on the %s leg: it would add to it',
                                               case side when 1 then 'Buy' else 'Sell' end,
                                               case position_idx when 1 then 'long' else 'short' end));
    end if;
    leg := case when position_idx = 1 then 'long' when position_idx = 2 then 'short'
                when (side = 1) <> reduce_only then 'long' else 'short' end;
  end if;
end $$;

-- R-6: what of the fill the ledger still lacks, with the row locked. `outcome` says why nothing
-- is applied: 'duplicate' (the execution is in the ledger), 'other_shape' (R-6.4: the order is
-- counted in the other shape) or 'no_op' (the order's cumulative quantity is applied already).
create or replace function _fill_resolve(fill record, held positions,
  out outcome text, out quantity numeric, out price numeric, out fee numeric, out warning text)
  language plpgsql
  as $$
declare
  applied_quantity numeric;
  applied_notional numeric;
  applied_fees numeric;
  this_shape text := case when fill.execution_id is null then 'cumulative statement' else 'execution' end;
  counted_as text := case when fill.execution_id is null then 'executions' else 'cumulative statements' end;
begin
  quantity := fill.quantity; price := fill.price; fee := fill.fee;
  if fill.execution_id is not null
     and exists (select 1 from position_fills f where f.execution_id = fill.execution_id) then
    outcome := 'duplicate';
    perform _inbox_settle(fill.source, fill.message_key, held.id, 'no_op');
    return;
  end if;
  if fill.order_id is null then return; end if;

  if exists (select 1 from position_fills f
              where f.order_id = fill.order_id and f.asset = fill.asset and f.mode = fill.mode and f.kind = 'fill'
                and (f.execution_id is null) <> (fill.execution_id is null)) then
    -- the order is counted in the shape first applied for it; the exchange settles the rest
    outcome := 'other_shape';
    perform _inbox_settle(fill.source, fill.message_key, held.id, 'other_shape');
    raise warning 'order % of % %: a % arrived for an order counted as %: not applied, validation scheduled',
      fill.order_id, fill.asset, fill.mode, this_shape || coalesce(' ' || fill.execution_id, ''), counted_as;
    perform _schedule_validation(fill.asset, fill.mode);
    warning := format('order %s is counted as %s; this %s was not applied', fill.order_id, counted_as, this_shape);
    return;
  end if;
  if fill.execution_id is not null then return; end if;

  -- R-6 (2): a cumulative statement about the order; apply what the ledger lacks.
  select coalesce(sum(f.quantity), 0), coalesce(sum(f.quantity * f.price), 0), coalesce(sum(f.fee), 0)
    into applied_quantity, applied_notional, applied_fees
    from position_fills f
   where f.order_id = fill.order_id and f.asset = fill.asset and f.mode = fill.mode and f.kind = 'fill';
  if fill.cumulative_quantity - applied_quantity <= 0 then
    outcome := 'no_op';
    perform _inbox_settle(fill.source, fill.message_key, held.id, 'no_op');
    raise log 'order % of %: cumulative quantity % already applied (%): no-op',
      fill.order_id, fill.asset, fill.cumulative_quantity, applied_quantity;
    return;
  end if;
  if applied_quantity > 0 then
    price := div10(fill.cumulative_quantity * fill.price - applied_notional, fill.cumulative_quantity - applied_quantity);
    if price <= 0 then
      perform _bad_input('execution_price', 'cumulative average price is inconsistent with the fills already applied');
    end if;
    fee := greatest(fill.fee - applied_fees, 0);
  end if;
  quantity := fill.cumulative_quantity - applied_quantity;
end $$;

-- Accounts for `quantity` at `price` (what _fill_resolve left of the fill) on the fill's leg of
-- the locked row `held` (null: none yet), and writes the row, the ledger, the audit and events.
create or replace function _fill_apply(fill record, held positions, quantity numeric, price numeric, fee numeric)
  returns jsonb
  language plpgsql
  as $$
declare
  is_new boolean := held.id is null;
  n positions := case when is_new then _position_new(fill.asset, fill.mode) else held end;
  leg_before record := _leg(n, fill.leg);
  done record := _leg_fill(fill.leg, leg_before.size, leg_before.avg_price, fill.side, quantity, price, fee);
  side_name text := case fill.side when 1 then 'Buy' else 'Sell' end;
  gross_before numeric := coalesce(held.gross_size, 0);
  gross_after numeric;
begin
  n := _with_leg(n, fill.leg, done.new_size, done.new_avg, leg_before.unrealized_pnl,
                 coalesce(leg_before.realized_pnl, 0) + done.realized);
  gross_after := _position_gross(n);
  if done.added then n.average_entry_price_source := 'fills'; end if;
  n.total_fees := n.total_fees + fee;
  if n.current_price is null then
    n.current_price := price; n.current_price_at := fill.executed_at; n.current_price_source := 'fill';
  end if;
  -- a row that opens, or a one-way flip (closed and opened at once), starts a lifecycle
  if gross_before = 0 and gross_after > 0 or done.opened and done.closed then
    n.opened_at := fill.executed_at; n.closed_at := null;
  end if;
  -- A hedge reduction that arrived before its leg opened (R-8) creates the row flat: the fee was
  -- paid and the ledger keeps the fill; the validation it schedules settles the size.
  if gross_before > 0 and gross_after = 0 or is_new and gross_after = 0 then n.closed_at := fill.executed_at; end if;
  n := _position_mark(n, held);
  n := _position_save(n, is_new);

  insert into position_fills (position_id, asset, mode, kind, leg, side, quantity, price, fee, order_id, execution_id,
                              executed_at, message_key, trace_id)
  values (n.id, fill.asset, fill.mode, 'fill', fill.leg, side_name, quantity, price, fee, fill.order_id,
          fill.execution_id, fill.executed_at, fill.message_key, fill.trace_id);
  perform _inbox_settle(fill.source, fill.message_key, n.id);
  perform _record_position_change(case when is_new then null else held end, n, 'order_execution',
    case when is_new then 'created' when gross_before = 0 and gross_after > 0 then 'reopened'
         when gross_before > 0 and gross_after = 0 then 'closed' else 'fill' end,
    fill.message_key, fill.trace_id,
    jsonb_build_object('side', side_name, 'quantity', quantity, 'price', price, 'fee', fee,
                       'leg', fill.leg, 'order_id', fill.order_id, 'execution_id', fill.execution_id));
  if done.closed then
    -- closed_size is the leg's size before closing, as stored (signed for the one-way leg: SPEC.md's glossary)
    perform _enqueue_position_closed(n, fill.leg, leg_before.size, leg_before.avg_price, price, done.realized,
                                     held.opened_at, fill.executed_at, case when done.opened then 'flip' else 'fill' end,
                                     fill.trace_id);
  end if;
  if done.excess > 0 then
    -- R-8: a hedge leg never crosses zero; the excess means the ledger misses something.
    perform _record_position_note(n, 'order_execution', 'size_discrepancy', fill.message_key, fill.trace_id,
      jsonb_build_object('leg', fill.leg, 'requested', quantity, 'applied', done.closed_qty, 'excess', done.excess));
    raise warning 'position % %: reduction of % on the % leg exceeds it by %', fill.asset, fill.mode, quantity, fill.leg, done.excess;
    perform _schedule_validation(fill.asset, fill.mode);
  end if;
  return _message_outcome('applied', fill.message_key, fill.asset, fill.mode, n)
         || case when done.excess > 0 then jsonb_build_object('size_discrepancy', jsonb_build_object(
              'leg', fill.leg, 'requested', dec_out(quantity), 'applied', dec_out(done.closed_qty),
              'excess', dec_out(done.excess)))
            else '{}' end;
end $$;

-- A fill with the transport's meta (ingest_messages); returns its outcome.
create or replace function _apply_order_fill(meta jsonb, body jsonb) returns jsonb
  language plpgsql
  as $$
declare
  fill record := _fill_parse(meta, body);
  held positions;
  todo record;
begin
  if fill.no_op then
    return jsonb_strip_nulls(jsonb_build_object(
      'outcome', case when _inbox_claim(fill.source, fill.message_key, 'no_op') then 'no_op' else 'duplicate' end,
      'message_key', fill.message_key, 'asset', fill.asset, 'mode', fill.mode));
  end if;
  if not _inbox_claim(fill.source, fill.message_key) then
    select * into held from positions where asset = fill.asset and mode = fill.mode;
    return _message_outcome('duplicate', fill.message_key, fill.asset, fill.mode, held);
  end if;
  held := _position_lock(fill.asset, fill.mode);
  todo := _fill_resolve(fill, held);
  if todo.outcome is not null then
    return _message_outcome(todo.outcome, fill.message_key, fill.asset, fill.mode, held)
           || jsonb_strip_nulls(jsonb_build_object('warning', todo.warning));
  end if;
  return _fill_apply(fill, held, todo.quantity, todo.price, todo.fee);
end $$;

create or replace function apply_order_fill(fill jsonb) returns positions
  language plpgsql
  as $$
begin
  return _position_of(_apply_order_fill(null, fill));
end $$;
