-- The accounting of one fill on one leg (ACCOUNTING.md §2). Pure, so that applying a fill and
-- replaying the ledger in validation use exactly the same arithmetic.
--   s: the leg's signed size, a: its average, d: +1 Buy / -1 Sell, q/price/fee: the fill,
--   leg_dir: 0 for a one-way leg (may flip), +1/-1 for a hedge leg (never flips: an excess
--   reduction is capped and returned as `excess`; the whole fee is still charged).
create or replace function leg_fill(
  s numeric, a numeric, d integer, q numeric, price numeric, fee numeric, leg_dir integer,
  out new_size numeric, out new_avg numeric, out realized numeric, out closed_qty numeric,
  out opened boolean, out closed boolean, out excess numeric)
  language plpgsql immutable
  as $$
declare
  held numeric := abs(s);
  avg0 numeric := coalesce(a, price);
begin
  opened := false; closed := false; excess := 0; closed_qty := 0; realized := 0;
  if leg_dir <> 0 and d <> leg_dir then
    -- a reduction of a hedge leg
    closed_qty := least(q, held);
    excess := q - closed_qty;
    realized := (price - avg0) * closed_qty * leg_dir - fee;
    new_size := s - leg_dir * closed_qty;
    new_avg := a;
    closed := held > 0 and new_size = 0;
  elsif s = 0 then
    new_size := d * q; new_avg := price; opened := true;
  elsif sign(s) = d then
    new_size := s + d * q; new_avg := div10(held * avg0 + q * price, held + q);
  elsif q <= held then
    realized := (price - avg0) * q * sign(s) - fee;
    new_size := s + d * q; new_avg := a;
    if q = held then closed := true; closed_qty := q; end if;
  else
    -- one-way flip: close |s| with its share of the fee, open the rest at the fill price
    realized := (price - avg0) * held * sign(s) - div10(fee * held, q);
    closed_qty := held; closed := true; opened := true;
    new_size := d * (q - held); new_avg := price;
  end if;
end $$;
