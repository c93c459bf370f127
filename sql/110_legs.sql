-- Legs (SPEC.md §3.1, ACCOUNTING.md §2). A one-way row is one leg, 'net', whose size is signed;
-- a hedge row has two, 'long' and 'short', whose sizes are quantities (never negative), and the
-- row's totals follow from them. Only this file tells the legs apart: the operations read and
-- write a leg by its name.

create or replace function _legs(mode text) returns text[]
  language sql immutable parallel safe
  as $$ select case when mode = 'hedge' then array['long', 'short'] else array['net'] end $$;

-- Bybit's positionIdx of a leg (R-10): 0 one-way, 1 the long leg, 2 the short leg.
create or replace function _leg_position_idx(leg text) returns integer
  language sql immutable parallel safe
  as $$ select case leg when 'long' then 1 when 'short' then 2 else 0 end $$;

-- A leg's size with its direction: a short leg's quantity counts negative.
create or replace function _leg_signed(leg text, size numeric) returns numeric
  language sql immutable parallel safe
  as $$ select case when leg = 'short' then -size else size end $$;

-- One leg of a row, as stored.
create or replace function _leg(p positions, leg text,
  out size numeric, out avg_price numeric, out unrealized_pnl numeric, out realized_pnl numeric)
  language plpgsql immutable
  as $$
begin
  case leg
    when 'long' then
      size := p.long_size; avg_price := p.long_avg_price;
      unrealized_pnl := p.long_unrealized_pnl; realized_pnl := p.long_realized_pnl;
    when 'short' then
      size := p.short_size; avg_price := p.short_avg_price;
      unrealized_pnl := p.short_unrealized_pnl; realized_pnl := p.short_realized_pnl;
    else
      size := p.size; avg_price := p.average_entry_price;
      unrealized_pnl := p.unrealized_pnl; realized_pnl := p.realized_pnl;
  end case;
end $$;

-- The row with one leg replaced. A hedge row's totals are brought in line by _position_totals
-- once every leg is set.
create or replace function _with_leg(p positions, leg text, size numeric, avg_price numeric,
                                     unrealized_pnl numeric, realized_pnl numeric)
  returns positions
  language plpgsql immutable
  as $$
begin
  case leg
    when 'long' then
      p.long_size := size; p.long_avg_price := avg_price;
      p.long_unrealized_pnl := unrealized_pnl; p.long_realized_pnl := realized_pnl;
    when 'short' then
      p.short_size := size; p.short_avg_price := avg_price;
      p.short_unrealized_pnl := unrealized_pnl; p.short_realized_pnl := realized_pnl;
    else
      p.size := size; p.average_entry_price := avg_price;
      p.unrealized_pnl := unrealized_pnl; p.realized_pnl := realized_pnl;
  end case;
  return p;
end $$;

-- The columns that hold a leg's size and average (validation names them in its findings).
create or replace function _leg_columns(leg text, out size_column text, out avg_column text)
  language plpgsql immutable
  as $$
begin
  size_column := case leg when 'net' then 'size' else leg || '_size' end;
  avg_column := case leg when 'net' then 'average_entry_price' else leg || '_avg_price' end;
end $$;

-- A hedge row's totals are its legs' (SPEC.md §3.1 invariants); a one-way row is its leg.
create or replace function _position_totals(p positions) returns positions
  language plpgsql immutable
  as $$
begin
  if p.mode = 'hedge' then
    p.size := p.long_size - p.short_size;
    p.unrealized_pnl := coalesce(p.long_unrealized_pnl, 0) + coalesce(p.short_unrealized_pnl, 0);
    p.realized_pnl := coalesce(p.long_realized_pnl, 0) + coalesce(p.short_realized_pnl, 0);
    p.average_entry_price := case when p.size > 0 then p.long_avg_price when p.size < 0 then p.short_avg_price end;
  end if;
  return p;
end $$;

-- The gross quantity of a row held in a variable (the column gross_size is computed on save).
create or replace function _position_gross(p positions) returns numeric
  language sql immutable parallel safe
  as $$ select case when p.mode = 'hedge' then coalesce(p.long_size, 0) + coalesce(p.short_size, 0) else abs(p.size) end $$;

-- The size a report gives a leg, as stored: a hedge leg's quantity; the one-way size signed by
-- the report's side, without a side by the size held (R-10), else long.
create or replace function _leg_reported_size(leg text, quantity numeric, side integer, held_size numeric)
  returns numeric
  language sql immutable parallel safe
  as $$
    select case when leg <> 'net' then quantity
                else quantity * case when side = 0 then coalesce(nullif(sign(held_size), 0), 1) else side end end
  $$;

-- How far two sizes differ, relative to the larger (R-15, R-17).
create or replace function _rel_diff(a numeric, b numeric) returns numeric
  language sql immutable parallel safe
  as $$ select case when a = b then 0 else div10(abs(a - b), greatest(abs(a), abs(b))) end $$;

-- The exchange's PnL figure for size `from_size`, carried over to `to_size` (same direction).
create or replace function _scaled_pnl(pnl numeric, from_size numeric, to_size numeric) returns numeric
  language sql immutable parallel safe
  as $$
    select case when from_size is null or from_size = 0 or from_size = to_size then coalesce(pnl, 0)
                else div10(coalesce(pnl, 0) * to_size, from_size) end
  $$;

-- A leg's unrealized PnL at the mark (R-7, R-8); 0 when flat. A leg whose average the exchange
-- never gave (R-12 without avgPrice) has only the exchange's figure `held_pnl` for `held_size`:
-- it is scaled with the leg's size (a reduction keeps the PnL per contract).
create or replace function _leg_unrealized_pnl(leg text, size numeric, avg_price numeric, mark numeric,
                                               held_pnl numeric, held_size numeric)
  returns numeric
  language sql immutable parallel safe
  as $$
    select case when size = 0 then 0
                when avg_price is not null then (mark - avg_price) * _leg_signed(leg, size)
                else _scaled_pnl(held_pnl, held_size, size) end
  $$;

-- Every leg marked to the row's current price, then the totals. `before` is the row as it was
-- (its leg sizes scale a PnL the exchange gave).
-- no default for `before`: a default of a table's row type stops ALTER TABLE on that table
create or replace function _position_mark(n positions, before positions) returns positions
  language plpgsql immutable
  as $$
begin
  if n.mode = 'hedge' then
    n.long_unrealized_pnl := _leg_unrealized_pnl('long', n.long_size, n.long_avg_price, n.current_price,
                                                 n.long_unrealized_pnl, before.long_size);
    n.short_unrealized_pnl := _leg_unrealized_pnl('short', n.short_size, n.short_avg_price, n.current_price,
                                                  n.short_unrealized_pnl, before.short_size);
  else
    n.unrealized_pnl := _leg_unrealized_pnl('net', n.size, n.average_entry_price, n.current_price,
                                            n.unrealized_pnl, before.size);
  end if;
  return _position_totals(n);
end $$;

-- A new mark on a row whose legs the exchange reports one by one (R-13): every open leg with an
-- average is marked to the row's price, except `keep_leg`, whose PnL the exchange just gave.
create or replace function _position_remark(n positions, keep_leg text) returns positions
  language plpgsql immutable
  as $$
declare
  leg text;
  held record;
begin
  foreach leg in array _legs(n.mode) loop
    continue when leg = keep_leg;
    held := _leg(n, leg);
    if held.size > 0 and held.avg_price is not null then
      n := _with_leg(n, leg, held.size, held.avg_price,
                     _leg_unrealized_pnl(leg, held.size, held.avg_price, n.current_price, held.unrealized_pnl, held.size),
                     held.realized_pnl);
    end if;
  end loop;
  return _position_totals(n);
end $$;

-- The accounting of one fill on one leg (ACCOUNTING.md §2). Pure, so that applying a fill and
-- replaying the ledger in validation use exactly the same arithmetic.
--   size, avg_price: the leg as stored; side: +1 Buy, -1 Sell; quantity, price, fee: the fill.
-- A hedge leg never crosses zero: a reduction beyond it is capped and the rest returned as
-- `excess` (the whole fee is still charged); the one-way leg flips. new_size is as stored;
-- `added`: the fill opened the leg or added to it, so its average is the fills'.
create or replace function _leg_fill(
  leg text, size numeric, avg_price numeric, side integer, quantity numeric, price numeric, fee numeric,
  out new_size numeric, out new_avg numeric, out realized numeric, out closed_qty numeric,
  out opened boolean, out closed boolean, out added boolean, out excess numeric)
  language plpgsql immutable
  as $$
declare
  -- +1 long, -1 short, 0 for the one-way leg (either side)
  direction integer := case leg when 'long' then 1 when 'short' then -1 else 0 end;
  held_signed numeric := _leg_signed(leg, size);
  held numeric := abs(held_signed);
  cost_price numeric := coalesce(avg_price, price);
  signed_after numeric;
begin
  opened := false; closed := false; excess := 0; closed_qty := 0; realized := 0;
  if direction <> 0 and side <> direction then
    -- a reduction of a hedge leg
    closed_qty := least(quantity, held);
    excess := quantity - closed_qty;
    realized := (price - cost_price) * closed_qty * direction - fee;
    signed_after := held_signed - direction * closed_qty;
    new_avg := avg_price;
    closed := held > 0 and signed_after = 0;
  elsif held_signed = 0 then
    signed_after := side * quantity; new_avg := price; opened := true;
  elsif sign(held_signed) = side then
    signed_after := held_signed + side * quantity;
    new_avg := div10(held * cost_price + quantity * price, held + quantity);
  elsif quantity <= held then
    realized := (price - cost_price) * quantity * sign(held_signed) - fee;
    signed_after := held_signed + side * quantity; new_avg := avg_price;
    if quantity = held then closed := true; closed_qty := quantity; end if;
  else
    -- one-way flip: close what is held with its share of the fee, open the rest at the fill price
    realized := (price - cost_price) * held * sign(held_signed) - div10(fee * held, quantity);
    closed_qty := held; closed := true; opened := true;
    signed_after := side * (quantity - held); new_avg := price;
  end if;
  new_size := _leg_signed(leg, signed_after);
  added := direction = side or direction = 0 and (opened or sign(signed_after) = side);
end $$;

-- A row's long and short exposure (SPEC.md §3.3): each quantity at the mark, else at its leg's
-- average, else 0. A one-way row is long or short by the sign of its size.
create or replace function _position_long_exposure(p positions) returns numeric
  language sql immutable parallel safe
  as $$
    select case when p.mode = 'hedge' then p.long_size * coalesce(p.current_price, p.long_avg_price, 0)
                else greatest(p.size, 0) * coalesce(p.current_price, p.average_entry_price, 0) end
  $$;

create or replace function _position_short_exposure(p positions) returns numeric
  language sql immutable parallel safe
  as $$
    select case when p.mode = 'hedge' then p.short_size * coalesce(p.current_price, p.short_avg_price, 0)
                else greatest(-p.size, 0) * coalesce(p.current_price, p.average_entry_price, 0) end
  $$;

-- What the open legs cost at their averages (the base of unrealized_pnl_pct); null while an open
-- leg's average is unknown or 0.
create or replace function _position_cost_basis(p positions) returns numeric
  language sql immutable parallel safe
  as $$
    select case
      when p.mode = 'hedge' then
        case when (p.long_size > 0 and coalesce(p.long_avg_price, 0) = 0)
                  or (p.short_size > 0 and coalesce(p.short_avg_price, 0) = 0) then null
             else nullif(case when p.long_size > 0 then p.long_size * p.long_avg_price else 0 end
                         + case when p.short_size > 0 then p.short_size * p.short_avg_price else 0 end, 0)
        end
      when coalesce(p.average_entry_price, 0) = 0 then null
      else abs(p.size) * p.average_entry_price
    end
  $$;

-- The Position object's `legs` (SPEC.md §3.2): null for a one-way row.
create or replace function _leg_json(size numeric, avg_price numeric, unrealized_pnl numeric, realized_pnl numeric)
  returns jsonb
  language sql stable parallel safe
  as $$
    select jsonb_build_object('size', dec_out(size), 'average_entry_price', dec_out(avg_price),
                              'unrealized_pnl', dec_out(coalesce(unrealized_pnl, 0)),
                              'realized_pnl', dec_out(coalesce(realized_pnl, 0)))
  $$;

create or replace function _position_legs_json(p positions) returns jsonb
  language sql stable parallel safe
  as $$
    select case when p.mode = 'hedge' then jsonb_build_object(
      'long', _leg_json(p.long_size, p.long_avg_price, p.long_unrealized_pnl, p.long_realized_pnl),
      'short', _leg_json(p.short_size, p.short_avg_price, p.short_unrealized_pnl, p.short_realized_pnl)) end
  $$;
