-- The position row (SPEC.md §3.1): finding it, locking it, a new one, saving it; the inbox that
-- makes a message count once (R-3); the validation a discrepancy schedules (R-15).

-- One writer of `positions` (SPEC.md R-32). Today's Order Manager still UPDATEs and INSERTs rows
-- itself; applied, those writes change a size without a version, a ledger row or an event. The
-- service's own functions open a window with own_positions_write(true) around their writes;
-- any other write is kept from the row (the statement succeeds, so the other writer does not
-- fail), audited as `foreign_write` and announced for the service's log and metric.
create or replace function own_positions_write(allowed boolean) returns void
  language sql
  as $$ select set_config('position_manager.writer', case when allowed then 'on' else '' end, true) $$;

create or replace function _guard_positions_writer() returns trigger
  language plpgsql
  as $$
declare
  held positions := case when tg_op = 'INSERT' then null else old end;
  attempted jsonb := case when tg_op = 'DELETE' then null else to_jsonb(new) end;
  writer jsonb := jsonb_build_object('user', current_user::text,
                                     'application_name', current_setting('application_name', true),
                                     'client_addr', inet_client_addr()::text);
begin
  if tg_op = 'INSERT' then
    -- an INSERT ... ON CONFLICT of a row we hold lands here before the conflict is seen
    select * into held from positions p where p.asset = new.asset and p.mode = new.mode;
  end if;
  insert into position_events (position_id, asset, mode, source, kind, before, changed_fields, details)
  values (held.id, coalesce(held.asset, new.asset), coalesce(held.mode, new.mode, 'one-way'), 'manual', 'foreign_write',
          -- a row variable that found no row is a row of nulls, not null: `before` is null then
          case when held.id is null then null else to_jsonb(held) end,
          (select coalesce(array_agg(a.key order by a.key), '{}') from jsonb_each(attempted) a
            where a.key not in ('gross_size') and (held.id is null or to_jsonb(held) -> a.key is distinct from a.value)),
          jsonb_build_object('operation', tg_op, 'attempted', attempted) || writer);
  perform pg_notify('position_manager_foreign_write',
    (writer || jsonb_build_object('operation', tg_op, 'asset', coalesce(held.asset, new.asset),
                                  'mode', coalesce(held.mode, new.mode)))::text);
  return null;
end $$;

-- The WHEN clause keeps the service's own writes from calling the function at all.
create or replace trigger _000_one_writer before insert or update or delete on positions
  for each row when (current_setting('position_manager.writer', true) is distinct from 'on')
  execute function _guard_positions_writer();

-- Which row a single-position request means (SPEC.md §2 convention 2): the given mode, or
-- without one the asset's open row (one-way first), else its most recently updated row. REST
-- and psql resolve it here, so both return the same row; no row is P0002 (HTTP 404).
create or replace function position_mode_for(asset text, mode text default null) returns text
  language plpgsql stable
  as $$
declare
  wanted text := _input_asset(asset);
  found_mode text;
begin
  if mode is not null then return _input_mode(mode); end if;
  select p.mode into found_mode from positions p where p.asset = wanted
   order by p.gross_size > 0 desc, (p.gross_size > 0 and p.mode = 'one-way') desc, p.last_updated desc limit 1;
  if found_mode is null then raise exception 'position_not_found' using errcode = 'P0002'; end if;
  return found_mode;
end $$;

-- The (asset, mode) row (without a mode: convention 2), or P0002 position_not_found (HTTP 404).
create or replace function _require_position(asset text, mode text default null) returns positions
  language plpgsql stable
  as $$
declare
  wanted text := _input_asset(asset);
  wanted_mode text := position_mode_for(wanted, mode);
  p positions;
begin
  select * into p from positions where positions.asset = wanted and positions.mode = wanted_mode;
  if found then return p; end if;
  raise exception 'position_not_found' using errcode = 'P0002';
end $$;

-- Locks the (asset, mode) row, or the key of a row not created yet, so that two first fills
-- cannot create two rows. Returns null when there is no row. Every writer of several rows
-- locks them in (asset, mode) order, so no two writers deadlock.
create or replace function _position_lock(wanted_asset text, wanted_mode text) returns positions
  language plpgsql
  as $$
declare
  p positions;
begin
  select * into p from positions where asset = wanted_asset and mode = wanted_mode for update;
  if found then return p; end if;
  perform pg_advisory_xact_lock(hashtextextended('position:' || wanted_asset || ':' || wanted_mode, 0));
  select * into p from positions where asset = wanted_asset and mode = wanted_mode for update;
  return p;
end $$;

-- A flat row, not saved yet; a hedge row has both legs.
create or replace function _position_new(new_asset text, new_mode text) returns positions
  language plpgsql immutable
  as $$
declare n positions;
begin
  n.id := gen_random_uuid(); n.asset := new_asset; n.mode := new_mode; n.size := 0;
  n.unrealized_pnl := 0; n.realized_pnl := 0; n.total_fees := 0; n.version := 1;
  if new_mode = 'hedge' then
    n.long_size := 0; n.short_size := 0;
    n.long_unrealized_pnl := 0; n.short_unrealized_pnl := 0; n.long_realized_pnl := 0; n.short_realized_pnl := 0;
  end if;
  return n;
end $$;

-- Saves a position row built in a variable (insert when new), bumping version and last_updated.
create or replace function _position_save(n positions, is_new boolean) returns positions
  language plpgsql
  as $$
declare
  saved positions;
begin
  -- own_positions_write(true), written out: every fill passes here, and from PL/pgSQL a call of
  -- an SQL function that cannot be inlined is planned anew each time
  perform set_config('position_manager.writer', 'on', true);
  if is_new then
    insert into positions (id, asset, mode, size, long_size, short_size, long_avg_price, short_avg_price,
      long_unrealized_pnl, short_unrealized_pnl, long_realized_pnl, short_realized_pnl,
      average_entry_price, average_entry_price_source, current_price, current_price_at, current_price_source,
      unrealized_pnl, realized_pnl, total_fees, opened_at, closed_at, created_at, last_updated, version, exchange_state)
    values (n.id, n.asset, n.mode, n.size, n.long_size, n.short_size, n.long_avg_price, n.short_avg_price,
      n.long_unrealized_pnl, n.short_unrealized_pnl, n.long_realized_pnl, n.short_realized_pnl,
      n.average_entry_price, n.average_entry_price_source, n.current_price, n.current_price_at, n.current_price_source,
      n.unrealized_pnl, n.realized_pnl, n.total_fees, n.opened_at, n.closed_at, now(), now(), 1, n.exchange_state)
    returning * into saved;
  else
    update positions set
      size = n.size, long_size = n.long_size, short_size = n.short_size,
      long_avg_price = n.long_avg_price, short_avg_price = n.short_avg_price,
      long_unrealized_pnl = n.long_unrealized_pnl, short_unrealized_pnl = n.short_unrealized_pnl,
      long_realized_pnl = n.long_realized_pnl, short_realized_pnl = n.short_realized_pnl,
      average_entry_price = n.average_entry_price, average_entry_price_source = n.average_entry_price_source,
      current_price = n.current_price, current_price_at = n.current_price_at,
      current_price_source = n.current_price_source,
      unrealized_pnl = n.unrealized_pnl, realized_pnl = n.realized_pnl, total_fees = n.total_fees,
      opened_at = n.opened_at, closed_at = n.closed_at, exchange_state = n.exchange_state,
      last_updated = now(), version = positions.version + 1
    where id = n.id
    returning * into saved;
  end if;
  perform set_config('position_manager.writer', '', true);
  return saved;
end $$;

-- The message keys of a batch, locked for the rest of the transaction, before the batch reads
-- them from the inbox. The inbox is partitioned by week (migration 21), so (source, message_key)
-- has no unique index to stop a second claim: this lock does. Two transactions applying one
-- message already serialize on its position row (_batch_lock, taken first), and the second's
-- duplicate probe, a later statement, sees the first's committed key; but a message that names
-- no row (a no-op) takes no row lock, and a key reused for another message may name another row.
-- The key lock orders those too, so a key is claimed once whatever the message. Taken after the
-- row locks and in one order (of the hash), so two batches never wait on each other in a cycle.
create or replace function _inbox_lock_keys(sources text[], message_keys text[]) returns void
  language sql
  as $$
    select count(pg_advisory_xact_lock(k.h))
      from (select distinct hashtextextended('inbox ' || u.s || ' ' || u.k, 0) as h
              from unnest(sources, message_keys) u(s, k) order by 1) k
  $$;

-- Records the message key; false when it was applied before (a duplicate).
create or replace function _inbox_claim(claim_source text, claim_key text, claim_outcome text default 'applied')
  returns boolean
  language plpgsql
  as $$
begin
  perform _inbox_lock_keys(array[claim_source], array[claim_key]);
  if exists (select 1 from inbox b where b.source = claim_source and b.message_key = claim_key) then
    return false;
  end if;
  insert into inbox (source, message_key, outcome) values (claim_source, claim_key, claim_outcome);
  return true;
end $$;

-- What a claimed message came to, and the row it concerns.
create or replace function _inbox_settle(claim_source text, claim_key text, settled_position uuid,
                                         settled_outcome text default 'applied')
  returns void
  language plpgsql
  as $$
begin
  update inbox set outcome = settled_outcome, position_id = settled_position
   where source = claim_source and message_key = claim_key;
end $$;

-- What a message came to (docs/CONTRACTS.md), for the consumer's logs and metrics.
create or replace function _message_outcome(outcome text, message_key text, asset text, mode text, p positions)
  returns jsonb
  language sql stable
  as $$
    select jsonb_build_object('outcome', outcome, 'message_key', message_key, 'asset', asset, 'mode', mode,
                              'position_id', p.id, 'version', p.version)
  $$;

-- The row an outcome names, as it is now (psql's entries return the row, DESIGN.md).
create or replace function _position_of(outcome jsonb) returns positions
  language plpgsql
  as $$
declare
  p positions;
begin
  select * into p from positions where asset = outcome ->> 'asset' and mode = outcome ->> 'mode';
  return p;
end $$;

-- R-15: one validation per position after the grace period, however many discrepancies.
create or replace function _schedule_validation(asset text, mode text) returns void
  language sql
  as $$
    select graphile_worker.add_job('validate_position', json_build_object('asset', asset, 'mode', mode),
      run_at => now() + make_interval(secs => (select size_discrepancy_grace_seconds from position_manager_settings)),
      job_key => 'validate:' || asset || ':' || mode, job_key_mode => 'preserve_run_at', max_attempts => 5);
  $$;

-- The rows of a batch's (asset, mode) pairs, locked in (asset, mode) order as every writer of
-- several rows locks them. When every row exists (the usual batch) one statement locks them all;
-- otherwise each key is locked in turn as _position_lock does (a row, or the key of a row not
-- created yet): locking the existing ones first and the others after would take them out of
-- order and deadlock with a batch that sees them all. `slots` maps 'asset mode' to the row's
-- index in `held`; a key without a row holds a row of nulls there.
create or replace function _batch_lock(assets text[], modes text[], out slots jsonb, out held positions[])
  language plpgsql
  as $$
declare
  p positions;
  k record;
  i integer := 0;
  names text[] := '{}';
  keys integer;
  existing integer;
begin
  held := '{}';
  select count(*), count(r.id) into keys, existing
    from (select distinct a, m from unnest(assets, modes) u(a, m)) wanted
    left join positions r on r.asset = wanted.a and r.mode = wanted.m;
  if existing = keys then
    for p in
      select r.* from (select distinct a, m from unnest(assets, modes) u(a, m)) wanted
        join positions r on r.asset = wanted.a and r.mode = wanted.m
       order by r.asset, r.mode for update of r
    loop
      i := i + 1; held[i] := p; names[i] := p.asset || ' ' || p.mode;
    end loop;
  else
    for k in select distinct a, m from unnest(assets, modes) u(a, m) order by a, m loop
      i := i + 1; held[i] := _position_lock(k.a, k.m); names[i] := k.a || ' ' || k.m;
    end loop;
  end if;
  slots := (select coalesce(jsonb_object_agg(u.name, u.i), '{}') from unnest(names) with ordinality u(name, i));
end $$;

-- A row as _position_save would store it (version, times, gross size), without writing it: a
-- batch writes each of its rows once, at the end.
create or replace function _position_saved(n positions, held positions) returns positions
  language plpgsql stable
  as $$
begin
  n.version := coalesce(held.version, 0) + 1;
  n.last_updated := now();
  n.created_at := coalesce(held.created_at, now());
  n.gross_size := _position_gross(n);
  return n;
end $$;
