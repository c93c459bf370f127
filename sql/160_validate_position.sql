-- Ledger replay and validation (SPEC.md R-17, ACCOUNTING.md §4).

-- Replays one leg on from `since`, the replay as it stood at since.ledger_id (a checkpoint; a row
-- of nulls: from the start): from the latest `reset` row after it (else from its state), every
-- later fill in ledger id order, with the same _leg_fill arithmetic the fills used. Returns the
-- replay at the leg's last ledger row, as a checkpoint would hold it. Replaying on from a
-- checkpoint gives what a replay from the start gives: a reset sets size and average whole, and
-- the rest is one fold in id order.
create or replace function _leg_replay(replayed_position uuid, replayed_leg text, since position_checkpoints)
  returns position_checkpoints
  language plpgsql stable
  as $$
declare
  after_id bigint := coalesce(since.ledger_id, 0);
  state position_checkpoints;
  base record;
  newest record;
  f record;
  step record;
begin
  state.position_id := replayed_position; state.leg := replayed_leg;
  select id, reset_size, reset_avg_price into base
    from position_fills
   where position_id = replayed_position and leg = replayed_leg and kind = 'reset' and id > after_id
   order by id desc limit 1;
  if found then
    state.size := base.reset_size; state.avg_price := base.reset_avg_price;
  else
    state.size := coalesce(since.size, 0); state.avg_price := since.avg_price;
  end if;
  -- The latest entry that speaks about the size: every fill (also those before an average-only
  -- reset) and every reset except one that only adopted the exchange's average.
  select max(id) as last_id,
         max(executed_at) filter (where kind = 'fill' or reason is distinct from 'avg_price_from_report') as last_at
    into newest
    from position_fills
   where position_id = replayed_position and leg = replayed_leg and id > after_id;
  state.ledger_id := coalesce(newest.last_id, after_id);
  state.last_entry_at := greatest(since.last_entry_at, newest.last_at);
  for f in
    select side, quantity, price, fee from position_fills
     where position_id = replayed_position and leg = replayed_leg and kind = 'fill'
       and id > coalesce(base.id, after_id)
     order by id
  loop
    step := _leg_fill(replayed_leg, state.size, state.avg_price, case f.side when 'Buy' then 1 else -1 end,
                      f.quantity, f.price, f.fee);
    state.size := step.new_size; state.avg_price := step.new_avg;
  end loop;
  return state;
end $$;

-- A leg's replay, on from its checkpoint (or, `full`, from the start: an audit that trusts no
-- checkpoint), which it then moves to the leg's last ledger row. The caller holds the position's
-- row lock, which every writer of its ledger holds from taking an id until commit, and the id
-- sequence (cache 1) hands ids out in time order: no row can appear later below the new
-- checkpoint. It commits or rolls back with the validation, so it never covers a row that does
-- not stay. A full replay rewrites the checkpoint even when no row
-- was added, so an audit also repairs one.
create or replace function _leg_replay_checkpointed(replayed_position uuid, replayed_leg text, full boolean)
  returns position_checkpoints
  language plpgsql
  as $$
declare
  since position_checkpoints;
  state position_checkpoints;
begin
  if not _leg_replay_checkpointed.full then
    select * into since from position_checkpoints c where c.position_id = replayed_position and c.leg = replayed_leg;
  end if;
  state := _leg_replay(replayed_position, replayed_leg, since);
  if state.ledger_id > coalesce(since.ledger_id, 0) then
    insert into position_checkpoints (position_id, leg, ledger_id, size, avg_price, last_entry_at)
    values (replayed_position, replayed_leg, state.ledger_id, state.size, state.avg_price, state.last_entry_at)
    on conflict (position_id, leg) do update
      set ledger_id = excluded.ledger_id, size = excluded.size, avg_price = excluded.avg_price,
          last_entry_at = excluded.last_entry_at, written_at = now();
  end if;
  return state;
end $$;

-- What a leg should hold (R-17): its ledger's replay, or the exchange's last accepted report when
-- that is newer than every ledger entry and disagrees with the replay.
create or replace function _leg_expected(p positions, leg text, threshold numeric, replayed position_checkpoints,
  out authority text, out size numeric, out avg_price numeric, out reported_at timestamptz)
  language plpgsql stable
  as $$
declare
  accepted jsonb := p.exchange_state -> leg;
  reported_size numeric := (accepted ->> 'size')::numeric;
begin
  reported_at := coalesce((accepted ->> 'exchange_ts')::timestamptz, (accepted ->> 'received_at')::timestamptz);
  if accepted is not null and reported_at > coalesce(replayed.last_entry_at, '-infinity')
     and _rel_diff(reported_size, replayed.size) > threshold then
    authority := 'exchange';
    size := reported_size;
    avg_price := coalesce((accepted ->> 'average_entry_price')::numeric, replayed.avg_price, (_leg(p, leg)).avg_price);
  else
    authority := 'ledger';
    size := replayed.size;
    avg_price := replayed.avg_price;
  end if;
end $$;

-- trace_id: the job run's or request's (SPEC §6.2), carried into the ledger, audit rows and events;
-- client: the name of the API key that asked for it (R-33), kept in the audit row of a fix.
-- full: replay every leg from the start of its ledger, ignoring the checkpoints (an audit; the
-- result is the same unless a ledger row under a checkpoint was changed behind the service's back).
-- Besides a fix, the only write is the checkpoints, which change no result.
create or replace function validate_position(asset text, mode text default null, fix boolean default true,
                                             trace_id text default null, client text default null,
                                             full boolean default false)
  returns jsonb
  language plpgsql
  as $$
declare
  wanted text := _input_asset(asset);
  wanted_mode text := position_mode_for(wanted, mode);
  settings position_manager_settings;
  p positions;
  n positions;
  leg text;
  held_leg record;
  field_names record;
  expected record;
  size_off boolean;
  avg_off boolean;
  discrepancies jsonb := '[]';
  trace text := coalesce(validate_position.trace_id, 'validation:' || gen_random_uuid()::text);
  fixed boolean := false;
  flipped boolean := false;
  adopted text[] := '{}';
  adopted_pnl numeric;
begin
  select * into settings from position_manager_settings;
  if not pg_try_advisory_xact_lock(hashtextextended('validate:' || wanted || ':' || wanted_mode, 0)) then
    raise exception 'validation_in_progress' using errcode = '55P03';
  end if;
  select * into p from positions where positions.asset = wanted and positions.mode = wanted_mode for update;
  if not found then
    raise exception 'position_not_found' using errcode = 'P0002';
  end if;
  n := p;
  foreach leg in array _legs(wanted_mode) loop
    held_leg := _leg(p, leg);
    field_names := _leg_columns(leg);
    expected := _leg_expected(p, leg, settings.size_validation_threshold,
                              _leg_replay_checkpointed(p.id, leg, validate_position.full));
    size_off := _rel_diff(held_leg.size, expected.size) > settings.size_validation_threshold;
    avg_off := expected.size <> 0 and expected.avg_price is not null
               and (held_leg.avg_price is null
                    or _rel_diff(held_leg.avg_price, expected.avg_price) > settings.size_validation_threshold);
    if size_off then
      discrepancies := discrepancies || jsonb_build_object('field', field_names.size_column, 'stored', dec_out(held_leg.size),
                                                           'expected', dec_out(expected.size), 'authority', expected.authority);
    end if;
    if avg_off then
      discrepancies := discrepancies || jsonb_build_object('field', field_names.avg_column, 'stored', dec_out(held_leg.avg_price),
                                                           'expected', dec_out(expected.avg_price), 'authority', expected.authority);
    end if;
    if fix and (size_off or avg_off) then
      fixed := true;
      if expected.authority = 'exchange' then
        insert into position_fills (position_id, asset, mode, kind, leg, reset_size, reset_avg_price, executed_at, trace_id, reason)
        values (p.id, wanted, wanted_mode, 'reset', leg, expected.size, expected.avg_price, expected.reported_at, trace,
                'validation');
        -- so that after a validation every leg's checkpoint is at its last ledger row
        perform _leg_replay_checkpointed(p.id, leg, false);
        n.average_entry_price_source := 'exchange';
        adopted := adopted || leg;
      end if;
      n := _with_leg(n, leg, expected.size, coalesce(expected.avg_price, held_leg.avg_price),
                     held_leg.unrealized_pnl, held_leg.realized_pnl);
      -- a one-way size that changes sign passes through zero: that lifecycle ends too (R-17 step 6)
      if held_leg.size <> 0 and sign(expected.size) <> sign(held_leg.size) then
        perform _enqueue_position_closed(n, leg, held_leg.size, held_leg.avg_price, null, 0, p.opened_at, now(),
                                         'validation', trace);
      end if;
      flipped := flipped or sign(held_leg.size) * sign(expected.size) = -1;
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
    n := _position_mark(n, p);
    foreach leg in array adopted loop
      adopted_pnl := (p.exchange_state -> leg ->> 'unrealized_pnl')::numeric;
      continue when adopted_pnl is null;
      held_leg := _leg(n, leg);
      n := _with_leg(n, leg, held_leg.size, held_leg.avg_price, case when held_leg.size = 0 then 0 else adopted_pnl end,
                     held_leg.realized_pnl);
    end loop;
    n := _position_totals(n);
    if p.gross_size = 0 and _position_gross(n) > 0 or flipped then
      n.opened_at := now(); n.closed_at := null;
    elsif p.gross_size > 0 and _position_gross(n) = 0 then
      n.closed_at := now();
    end if;
    n := _position_save(n, false);
    perform _record_position_change(p, n, 'validation', 'validation_fix', null, trace,
                                    jsonb_build_object('discrepancies', discrepancies)
                                    || case when client is not null then jsonb_build_object('client', client) else '{}' end);
  end if;
  if jsonb_array_length(discrepancies) > 0 then
    raise warning 'validation of % %: %', wanted, wanted_mode, discrepancies;
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

-- R-18 (a): every open position and every position changed since the previous run, fixed.
-- One call, committing after every chunk of positions (keyset order by asset, mode): each
-- validation holds an advisory lock until commit, so one transaction over 100,000 positions
-- would run out of lock memory. A position whose validation is running elsewhere is skipped.
-- A procedure so that it can commit: `call validate_all_positions(since, trace_id)`, outside an
-- explicit transaction; the counts come back in `result`.
create or replace procedure validate_all_positions(since timestamptz default null, trace_id text default null,
                                                   chunk_size integer default 200, inout result jsonb default null)
  language plpgsql
  as $$
declare
  target record;
  checked jsonb;
  -- assets are never empty, so ('', '') sorts before every position
  after_asset text := ''; after_mode text := '';
  in_chunk integer;
  validated integer := 0; invalid integer := 0; fixed integer := 0; busy integer := 0; chunks integer := 0;
  findings jsonb := '[]';
begin
  if chunk_size is null or chunk_size < 1 then
    raise exception 'chunk_size must be at least 1' using errcode = '22023';
  end if;
  loop
    in_chunk := 0;
    for target in select p.asset, p.mode from positions p
                   where (p.asset, p.mode) > (after_asset, after_mode)
                     and (p.gross_size > 0 or (validate_all_positions.since is not null and p.last_updated > validate_all_positions.since))
                   order by p.asset, p.mode
                   limit validate_all_positions.chunk_size loop
      in_chunk := in_chunk + 1;
      after_asset := target.asset; after_mode := target.mode;
      begin
        checked := validate_position(target.asset, target.mode, true, validate_all_positions.trace_id);
        validated := validated + 1;
        if not (checked ->> 'is_valid')::boolean then
          invalid := invalid + 1;
          if checked -> 'updated_position' <> 'null' then fixed := fixed + 1; end if;
          findings := findings || jsonb_build_object('asset', target.asset, 'mode', target.mode,
                                                     'discrepancies', checked -> 'discrepancies');
        end if;
      exception when sqlstate '55P03' then
        busy := busy + 1;
      end;
    end loop;
    exit when in_chunk = 0;
    chunks := chunks + 1;
    commit;
    exit when in_chunk < chunk_size;
  end loop;
  result := jsonb_build_object('validated', validated, 'invalid', invalid, 'fixed', fixed, 'skipped_busy', busy,
                               'chunks', chunks, 'discrepancies', findings);
end $$;
