-- Ledger replay and validation (SPEC.md R-17, ACCOUNTING.md §4).

-- Replays one leg: from its latest `reset` row (or flat), every later fill in ledger id order,
-- with the same leg_fill arithmetic the fills used. Also returns the time of the last entry.
create or replace function replay_leg(pid uuid, leg_name text, out size numeric, out avg numeric, out last_entry_at timestamptz)
  language plpgsql stable
  as $$
declare
  base record;
  f record;
  r record;
  leg_dir integer := case leg_name when 'long' then 1 when 'short' then -1 else 0 end;
begin
  select id, reset_size, reset_avg_price, executed_at into base
    from position_fills where position_id = pid and leg = leg_name and kind = 'reset' order by id desc limit 1;
  size := coalesce(base.reset_size * case when leg_dir = -1 then -1 else 1 end, 0);
  avg := base.reset_avg_price;
  -- The latest entry that speaks about the size: every fill (also those before an average-only
  -- reset) and every reset except one that only adopted the exchange's average.
  select max(executed_at) into last_entry_at
    from position_fills
   where position_id = pid and leg = leg_name
     and (kind = 'fill' or reason is distinct from 'avg_price_from_report');
  for f in
    select side, quantity, price, fee, executed_at from position_fills
     where position_id = pid and leg = leg_name and kind = 'fill' and id > coalesce(base.id, 0) order by id
  loop
    r := leg_fill(size, avg, case f.side when 'Buy' then 1 else -1 end, f.quantity, f.price, f.fee, leg_dir);
    size := r.new_size; avg := r.new_avg;
  end loop;
  if leg_dir = -1 then size := -size; end if;
end $$;

-- trace_id: the job run's or request's (SPEC §6.2), carried into the ledger, audit rows and events;
-- client: the name of the API key that asked for it (R-33), kept in the audit row of a fix.
drop function if exists validate_position(text, text, boolean);
drop function if exists validate_position(text, text, boolean, text);
create or replace function validate_position(asset text, mode text default null, fix boolean default true,
                                             trace_id text default null, client text default null)
  returns jsonb
  language plpgsql
  as $$
declare
  a text := input_asset(asset);
  m text := position_mode_for(a, mode);
  settings position_manager_settings;
  p positions; n positions;
  leg_name text;
  rp record;
  st jsonb; tr timestamptz; rep_size numeric;
  stored_size numeric; stored_avg numeric;
  authority text; exp_size numeric; exp_avg numeric;
  discrepancies jsonb := '[]';
  field_size text; field_avg text;
  closed_leg boolean;
  trace text := coalesce(validate_position.trace_id, 'validation:' || gen_random_uuid()::text);
  fixed boolean := false;
  adopted text[] := '{}';
  upnl numeric;
begin
  select * into settings from position_manager_settings;
  if not pg_try_advisory_xact_lock(hashtextextended('validate:' || a || ':' || m, 0)) then
    raise exception 'validation_in_progress' using errcode = '55P03';
  end if;
  select * into p from positions where positions.asset = a and positions.mode = m for update;
  if not found then
    raise exception 'position_not_found' using errcode = 'P0002';
  end if;
  n := p;
  foreach leg_name in array case when m = 'hedge' then array['long', 'short'] else array['net'] end loop
    rp := replay_leg(p.id, leg_name);
    st := p.exchange_state -> leg_name;
    tr := coalesce((st ->> 'exchange_ts')::timestamptz, (st ->> 'received_at')::timestamptz);
    rep_size := (st ->> 'size')::numeric;
    if leg_name = 'net' then
      stored_size := p.size; stored_avg := p.average_entry_price; field_size := 'size'; field_avg := 'average_entry_price';
    elsif leg_name = 'long' then
      stored_size := p.long_size; stored_avg := p.long_avg_price; field_size := 'long_size'; field_avg := 'long_avg_price';
    else
      stored_size := p.short_size; stored_avg := p.short_avg_price; field_size := 'short_size'; field_avg := 'short_avg_price';
    end if;
    if st is not null and tr > coalesce(rp.last_entry_at, '-infinity')
       and rel_diff(rep_size, rp.size) > settings.size_validation_threshold then
      authority := 'exchange';
      exp_size := rep_size;
      exp_avg := coalesce((st ->> 'average_entry_price')::numeric, rp.avg, stored_avg);
    else
      authority := 'ledger';
      exp_size := rp.size;
      exp_avg := rp.avg;
    end if;
    if rel_diff(stored_size, exp_size) > settings.size_validation_threshold then
      discrepancies := discrepancies || jsonb_build_object('field', field_size, 'stored', dec_out(stored_size),
                                                           'expected', dec_out(exp_size), 'authority', authority);
    end if;
    if exp_size <> 0 and exp_avg is not null
       and (stored_avg is null or rel_diff(stored_avg, exp_avg) > settings.size_validation_threshold) then
      discrepancies := discrepancies || jsonb_build_object('field', field_avg, 'stored', dec_out(stored_avg),
                                                           'expected', dec_out(exp_avg), 'authority', authority);
    end if;
    if fix and (rel_diff(stored_size, exp_size) > settings.size_validation_threshold
                or (exp_size <> 0 and exp_avg is not null and (stored_avg is null or rel_diff(stored_avg, exp_avg) > settings.size_validation_threshold))) then
      fixed := true;
      if authority = 'exchange' then
        insert into position_fills (position_id, asset, mode, kind, leg, reset_size, reset_avg_price, executed_at, trace_id, reason)
        values (p.id, a, m, 'reset', leg_name, exp_size, exp_avg, tr, trace, 'validation');
        n.average_entry_price_source := 'exchange';
        adopted := adopted || leg_name;
      end if;
      -- a one-way size that changes sign passes through zero: that lifecycle ends too (R-17 step 6)
      closed_leg := stored_size <> 0 and sign(exp_size) <> sign(stored_size);
      if leg_name = 'net' then
        n.size := exp_size; n.average_entry_price := coalesce(exp_avg, n.average_entry_price);
      elsif leg_name = 'long' then
        n.long_size := exp_size; n.long_avg_price := coalesce(exp_avg, n.long_avg_price);
      else
        n.short_size := exp_size; n.short_avg_price := coalesce(exp_avg, n.short_avg_price);
      end if;
      if closed_leg then
        perform enqueue_position_closed(n, leg_name, stored_size, stored_avg, null, 0, p.opened_at, now(), 'validation', trace);
      end if;
    end if;
  end loop;

  if fixed then
    if n.current_price is null then
      n.current_price := coalesce(n.average_entry_price, n.long_avg_price, n.short_avg_price);
      n.current_price_source := 'fill';
    end if;
    -- R-17 step 6: the position's unrealized PnL is recomputed as R-7/R-8 say, from the mark,
    -- except that a leg adopted from the exchange takes the PnL its report gave for exactly
    -- that state (R-13: reports own PnL; TC-002), the mark only when the report gave none.
    n := position_mark(n, p);
    foreach leg_name in array adopted loop
      upnl := (p.exchange_state -> leg_name ->> 'unrealized_pnl')::numeric;
      continue when upnl is null;
      if leg_name = 'net' then n.unrealized_pnl := case when n.size = 0 then 0 else upnl end;
      elsif leg_name = 'long' then n.long_unrealized_pnl := case when n.long_size = 0 then 0 else upnl end;
      else n.short_unrealized_pnl := case when n.short_size = 0 then 0 else upnl end; end if;
    end loop;
    if m = 'hedge' then n := position_hedge_totals(n); end if;
    if p.gross_size = 0 and (abs(n.size) > 0 or coalesce(n.long_size, 0) + coalesce(n.short_size, 0) > 0)
       or m = 'one-way' and sign(p.size) * sign(n.size) = -1 then
      n.opened_at := now(); n.closed_at := null;
    elsif p.gross_size > 0 and n.size = 0 and coalesce(n.long_size, 0) + coalesce(n.short_size, 0) = 0 then
      n.closed_at := now();
    end if;
    n := save_position(n, false);
    perform record_position_change(p, n, 'validation', 'validation_fix', null, trace,
                                   jsonb_build_object('discrepancies', discrepancies)
                                   || case when client is not null then jsonb_build_object('client', client) else '{}' end);
  end if;
  if jsonb_array_length(discrepancies) > 0 then
    raise warning 'validation of % %: %', a, m, discrepancies;
  end if;
  return jsonb_build_object(
    'is_valid', jsonb_array_length(discrepancies) = 0,
    'error_message', case when jsonb_array_length(discrepancies) > 0 then
      -- format() renders a null as '': an unknown value is written as null
      (select string_agg(format('%s %s differs from %s %s %s', d ->> 'field', coalesce(d ->> 'stored', 'null'),
                                case d ->> 'authority' when 'exchange' then 'exchange' else 'ledger' end,
                                replace(d ->> 'field', '_', ' '), coalesce(d ->> 'expected', 'null')), '; ')
         from jsonb_array_elements(discrepancies) d) end,
    'discrepancies', discrepancies,
    'updated_position', case when fixed then position_json(n) end,
    'checked_at', ts_out(now()));
end $$;
