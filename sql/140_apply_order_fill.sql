-- Applying order fills (SPEC.md R-5..R-8), a batch at a time: parse every message, lock their
-- rows and read their inbox keys and ledger rows together, then per message in arrival order
-- resolve what of its order the ledger still lacks (R-6) and account for that on its leg in
-- memory; the batch's rows, ledger, audit, inbox and events are written at the end
-- (sql/135_apply_batch.sql), in the caller's transaction. One message is a batch of one.

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

-- Accounts for `quantity` at `price` (what the resolution left of the fill) on the fill's leg
-- of the row `held` (a row of nulls: none yet). Returns the row as it is to be saved, with its
-- ledger row, what the change was (see _write_position_changes), its note, its position_closed
-- event and its outcome; `total` is the portfolio's exposure before it.
create or replace function _fill_step(fill _fill_message, held positions, quantity numeric, price numeric,
  fee numeric, total numeric,
  out after positions, out ledger position_fills, out change position_events, out note position_events,
  out closed jsonb, out outcome jsonb, out total_after numeric)
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
  after := _position_saved(_position_mark(n, held), held);

  ledger.position_id := after.id; ledger.asset := fill.asset; ledger.mode := fill.mode; ledger.kind := 'fill';
  ledger.leg := fill.leg; ledger.side := side_name; ledger.quantity := quantity; ledger.price := price;
  ledger.fee := fee; ledger.order_id := fill.order_id; ledger.execution_id := fill.execution_id;
  ledger.executed_at := fill.executed_at; ledger.message_key := fill.message_key; ledger.trace_id := fill.trace_id;
  total_after := total + _position_exposure(after) - coalesce(_position_exposure(held), 0);
  change := _change_info(null, 'order_execution',
    case when is_new then 'created' when gross_before = 0 and gross_after > 0 then 'reopened'
         when gross_before > 0 and gross_after = 0 then 'closed' else 'fill' end,
    fill.message_key, fill.trace_id,
    jsonb_build_object('side', side_name, 'quantity', quantity, 'price', price, 'fee', fee,
                       'leg', fill.leg, 'order_id', fill.order_id, 'execution_id', fill.execution_id));
  if done.closed then
    -- closed_size is the leg's size before closing, as stored (signed for the one-way leg: SPEC.md's glossary)
    closed := _position_closed_payload(after, fill.leg, leg_before.size, leg_before.avg_price, price, done.realized,
                                       held.opened_at, fill.executed_at, case when done.opened then 'flip' else 'fill' end);
  end if;
  outcome := _message_outcome('applied', fill.message_key, fill.asset, fill.mode, after);
  if done.excess > 0 then
    -- R-8: a hedge leg never crosses zero; the excess means the ledger misses something.
    note := _position_note(after, 'order_execution', 'size_discrepancy', fill.message_key, fill.trace_id,
      jsonb_build_object('leg', fill.leg, 'requested', quantity, 'applied', done.closed_qty, 'excess', done.excess));
    raise warning 'position % %: reduction of % on the % leg exceeds it by %', fill.asset, fill.mode, quantity, fill.leg, done.excess;
    outcome := outcome || jsonb_build_object('size_discrepancy', jsonb_build_object(
      'leg', fill.leg, 'requested', dec_out(quantity), 'applied', dec_out(done.closed_qty), 'excess', dec_out(done.excess)));
  end if;
end $$;

-- The fills of one queue's batch (ingest_messages), or of one message; one outcome per message,
-- in order. A data error in any message raises (ingest_messages then applies them one by one).
create or replace function _apply_fills(metas jsonb[], bodies jsonb[]) returns jsonb
  language plpgsql
  as $$
declare
  msgs _fill_message[] := '{}';
  f _fill_message;
  assets text[] := '{}';
  modes text[] := '{}';
  lock record;
  locked positions[]; -- each row as locked (a row of nulls: none yet)
  rows positions[];   -- each row as the batch has left it so far
  slot integer;
  h positions;
  duplicate boolean[];
  exec_again boolean[];
  order_again boolean[];
  executed jsonb;      -- execution ids in the ledger
  orders jsonb;        -- per order_id, asset and mode: the shapes and sums in the ledger (R-6)
  order_key text;
  ord jsonb;
  todo_quantity numeric; todo_price numeric; todo_fee numeric; applied_quantity numeric;
  step record;
  total numeric;
  outcomes jsonb[] := '{}';
  key inbox;
  seq bigint := 0; -- each change, note and other event's place in the batch
  change position_events;
  note position_events;
  keys inbox[] := '{}';
  ledger position_fills[] := '{}';
  befores positions[] := '{}'; afters positions[] := '{}'; changes position_events[] := '{}'; totals numeric[] := '{}';
  notes position_events[] := '{}';
  event_seqs bigint[] := '{}'; event_types text[] := '{}'; trace_ids text[] := '{}'; payloads jsonb[] := '{}';
  to_validate text[] := '{}';
begin
  if coalesce(cardinality(metas), 0) <> coalesce(cardinality(bodies), 0) then
    perform _bad_input('metas', 'must have one element per body');
  end if;
  for i in 1 .. coalesce(cardinality(bodies), 0) loop
    f := _fill_parse(metas[i], bodies[i]);
    msgs[i] := f;
    if not f.no_op then assets := assets || f.asset; modes := modes || f.mode; end if;
  end loop;
  lock := _batch_lock(assets, modes);
  locked := lock.held; rows := lock.held;
  perform _inbox_lock_keys(array(select m.source from unnest(msgs) m), array(select m.message_key from unnest(msgs) m));
  -- Each lookup is driven by the batch's keys (one index probe per key, never a scan of a table
  -- that only grows). Per message: its key was applied before, or earlier in the batch; a later
  -- message names the same execution or order (only then is the batch's ledger state kept).
  select array_agg(x.duplicate order by x.i), array_agg(x.exec_again order by x.i), array_agg(x.order_again order by x.i)
    into duplicate, exec_again, order_again
    from (select m.ordinality as i,
                 row_number() over (partition by m.source, m.message_key order by m.ordinality) > 1
                 or exists (select 1 from inbox b where b.source = m.source and b.message_key = m.message_key) as duplicate,
                 m.execution_id is not null
                 and lead(m.ordinality) over (partition by m.execution_id order by m.ordinality) is not null as exec_again,
                 m.order_id is not null
                 and lead(m.ordinality) over (partition by m.order_id, m.asset, m.mode order by m.ordinality) is not null
                   as order_again
            from unnest(msgs) with ordinality m) x;
  select coalesce(jsonb_object_agg(m.execution_id, true), '{}') into executed
    from (select distinct m.execution_id from unnest(msgs) m where not m.no_op and m.execution_id is not null) m
    cross join lateral (select 1 from position_fills x where x.execution_id = m.execution_id limit 1) x;
  select coalesce(jsonb_object_agg(k.order_id || ' ' || k.asset || ' ' || k.mode, jsonb_build_object(
           'statement', o.statement, 'execution', o.execution, 'quantity', o.quantity, 'notional', o.notional,
           'fees', o.fees)), '{}') into orders
    from (select distinct m.order_id, m.asset, m.mode from unnest(msgs) m where not m.no_op and m.order_id is not null) k
    cross join lateral (
      select bool_or(x.execution_id is null) as statement, bool_or(x.execution_id is not null) as execution,
             sum(x.quantity) as quantity, sum(x.quantity * x.price) as notional, sum(x.fee) as fees, count(*) as n
        from position_fills x
       where x.order_id = k.order_id and x.asset = k.asset and x.mode = k.mode and x.kind = 'fill') o
   where o.n > 0;

  for i in 1 .. cardinality(msgs) loop
    f := msgs[i];
    -- a message that fills nothing concerns no row (even one another message of the batch locked)
    slot := case when not f.no_op then (lock.slots ->> (f.asset || ' ' || f.mode))::integer end;
    h := case when slot is not null then rows[slot] end;
    key := row(f.source, f.message_key, 'applied', h.id, now());
    if duplicate[i] then
      outcomes[i] := case when f.no_op
                       then jsonb_strip_nulls(jsonb_build_object('outcome', 'duplicate', 'message_key', f.message_key,
                                                                 'asset', f.asset, 'mode', f.mode))
                       else _message_outcome('duplicate', f.message_key, f.asset, f.mode, h) end;
      continue;
    end if;
    if f.no_op then
      key.outcome := 'no_op'; keys := keys || key;
      outcomes[i] := jsonb_strip_nulls(jsonb_build_object('outcome', 'no_op', 'message_key', f.message_key,
                                                          'asset', f.asset, 'mode', f.mode));
      continue;
    end if;

    -- R-6: what of the fill the ledger still lacks
    todo_quantity := f.quantity; todo_price := f.price; todo_fee := f.fee;
    if f.execution_id is not null and executed ? f.execution_id then
      key.outcome := 'no_op'; keys := keys || key;
      outcomes[i] := _message_outcome('duplicate', f.message_key, f.asset, f.mode, h);
      continue;
    end if;
    if f.order_id is not null then
      order_key := f.order_id || ' ' || f.asset || ' ' || f.mode;
      ord := orders -> order_key;
      if coalesce((ord ->> case when f.execution_id is null then 'execution' else 'statement' end)::boolean, false) then
        -- R-6.4: the order is counted in the shape first applied for it; the exchange settles the rest
        key.outcome := 'other_shape'; keys := keys || key;
        raise warning 'order % of % %: a % arrived for an order counted as %: not applied, validation scheduled',
          f.order_id, f.asset, f.mode,
          case when f.execution_id is null then 'cumulative statement' else 'execution ' || f.execution_id end,
          case when f.execution_id is null then 'executions' else 'cumulative statements' end;
        to_validate := to_validate || (f.asset || ' ' || f.mode);
        outcomes[i] := _message_outcome('other_shape', f.message_key, f.asset, f.mode, h)
          || jsonb_build_object('warning', format('order %s is counted as %s; this %s was not applied', f.order_id,
               case when f.execution_id is null then 'executions' else 'cumulative statements' end,
               case when f.execution_id is null then 'cumulative statement' else 'execution' end));
        continue;
      end if;
      if f.execution_id is null then
        -- R-6 (2): a cumulative statement about the order; apply what the ledger lacks
        applied_quantity := coalesce((ord ->> 'quantity')::numeric, 0);
        if f.cumulative_quantity - applied_quantity <= 0 then
          key.outcome := 'no_op'; keys := keys || key;
          raise log 'order % of %: cumulative quantity % already applied (%): no-op',
            f.order_id, f.asset, f.cumulative_quantity, applied_quantity;
          outcomes[i] := _message_outcome('no_op', f.message_key, f.asset, f.mode, h);
          continue;
        end if;
        if applied_quantity > 0 then
          todo_price := div10(f.cumulative_quantity * f.price - (ord ->> 'notional')::numeric,
                              f.cumulative_quantity - applied_quantity);
          if todo_price <= 0 then
            perform _bad_input('execution_price', 'cumulative average price is inconsistent with the fills already applied');
          end if;
          todo_fee := greatest(f.fee - (ord ->> 'fees')::numeric, 0);
        end if;
        todo_quantity := f.cumulative_quantity - applied_quantity;
      end if;
    end if;

    if total is null then
      total := coalesce(nullif(current_setting('position_manager.total_exposure', true), '')::numeric,
                        _portfolio_total_exposure());
    end if;
    step := _fill_step(f, h, todo_quantity, todo_price, todo_fee, total);
    total := step.total_after;
    rows[slot] := step.after;
    ledger := ledger || step.ledger;
    key.outcome := 'applied'; key.position_id := (step.after).id; keys := keys || key;
    seq := seq + 1; change := step.change; change.id := seq;
    befores := befores || h; afters := afters || step.after; changes := changes || change;
    totals := totals || total;
    if step.closed is not null then
      seq := seq + 1; event_seqs := event_seqs || seq; event_types := event_types || 'position_closed'::text;
      trace_ids := trace_ids || f.trace_id; payloads := payloads || step.closed;
    end if;
    if (step.note).kind is not null then
      seq := seq + 1; note := step.note; note.id := seq;
      notes := notes || note; to_validate := to_validate || (f.asset || ' ' || f.mode);
    end if;
    outcomes[i] := step.outcome;
    -- what the rest of the batch finds in the ledger
    if exec_again[i] then executed := executed || jsonb_build_object(f.execution_id, true); end if;
    if order_again[i] then
      ord := coalesce(ord, '{"statement": false, "execution": false, "quantity": 0, "notional": 0, "fees": 0}');
      orders := orders || jsonb_build_object(order_key, jsonb_build_object(
        'statement', (ord ->> 'statement')::boolean or f.execution_id is null,
        'execution', (ord ->> 'execution')::boolean or f.execution_id is not null,
        'quantity', (ord ->> 'quantity')::numeric + todo_quantity,
        'notional', (ord ->> 'notional')::numeric + todo_quantity * todo_price,
        'fees', (ord ->> 'fees')::numeric + todo_fee));
    end if;
  end loop;

  perform _batch_write(locked, rows, ledger, keys, befores, afters, changes, totals, notes,
                       event_seqs, event_types, trace_ids, payloads, to_validate);
  if total is not null then perform set_config('position_manager.total_exposure', total::text, true); end if;
  return to_jsonb(outcomes);
end $$;

-- One fill with the transport's meta; its outcome.
create or replace function _apply_order_fill(meta jsonb, body jsonb) returns jsonb
  language plpgsql
  as $$
begin
  return _apply_fills(array[meta], array[body]) -> 0;
end $$;

create or replace function apply_order_fill(fill jsonb) returns positions
  language plpgsql
  as $$
begin
  return _position_of(_apply_order_fill(null, fill));
end $$;
