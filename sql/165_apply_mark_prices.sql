-- Mark prices from the exchange's ticker (SPEC.md R-31): one answer of Bybit V5
-- /v5/market/tickers?category=linear applied set-based in one transaction. A mark refresh is
-- market data, not a position change: no audit row; a position whose price or unrealized PnL
-- moved gets a version and a position_updated event (update_source mark_price).

-- A ticker's markPrice as a positive decimal, else null (skipped and counted).
create or replace function _ticker_price(raw jsonb) returns numeric
  language sql immutable parallel safe
  as $$
    select case when jsonb_typeof(raw) in ('string', 'number') and raw #>> '{}' ~ '^\d{1,20}(\.\d{1,20})?$'
                     and (raw #>> '{}')::numeric > 0
                then (raw #>> '{}')::numeric end
  $$;

-- The row at a ticker's price: the price, its time and source, and every leg marked to it.
create or replace function _position_marked(p positions, price numeric, price_at timestamptz) returns positions
  language plpgsql immutable
  as $$
begin
  p.current_price := price; p.current_price_at := price_at; p.current_price_source := 'ticker';
  return _position_mark(p, p);
end $$;

create or replace function apply_mark_prices(answer jsonb, trace_id text default null) returns jsonb
  language plpgsql
  as $$
declare
  price_at timestamptz;
  items jsonb;
  valid integer;
  skipped integer;
  touched integer;
  bumped jsonb;
  updates jsonb[];
  total numeric;
  trace text := coalesce(apply_mark_prices.trace_id, gen_random_uuid()::text);
begin
  if answer is null or jsonb_typeof(answer) <> 'object' then perform _bad_input('body', 'must be a JSON object'); end if;
  if _input_text(answer, 'retCode') is distinct from '0' and answer ? 'retCode' then
    perform _bad_input('retCode', format('the price source answered %s: %s', left(answer ->> 'retCode', 20),
                                         left(coalesce(answer ->> 'retMsg', ''), 200)));
  end if;
  price_at := _input_timestamp(answer, 'time');
  if price_at is null then perform _bad_input('time', 'is required'); end if;
  if price_at > now() + interval '5 minutes' then perform _bad_input('time', 'is more than 5 minutes in the future'); end if;
  items := answer #> '{result,list}';
  if jsonb_typeof(items) is distinct from 'array' then perform _bad_input('result.list', 'must be an array'); end if;

  perform own_positions_write(true);
  with marks as materialized (
    select distinct on (t.symbol) t.symbol, t.price
      from (select x ->> 'symbol' as symbol, _ticker_price(x -> 'markPrice') as price
              from jsonb_array_elements(items) x where jsonb_typeof(x) = 'object') t
     where t.symbol ~ '^[A-Z0-9]{2,20}$' and t.price is not null
     order by t.symbol
  ), kept as (
    insert into mark_prices as mp (symbol, price, at, source)
    select symbol, price, price_at, 'ticker' from marks
    on conflict (symbol) do update set price = excluded.price, at = excluded.at, source = 'ticker', updated_at = now()
     where mp.at < excluded.at
  ), due as materialized (
    -- locked in (asset, mode) order, as every multi-row writer locks them
    select p as before, _position_marked(p, mk.price, price_at) as after
      from positions p join marks mk on mk.symbol = p.asset
     where p.gross_size > 0 and (p.current_price_at is null or p.current_price_at < price_at)
     order by p.asset, p.mode
       for update of p
  ), moves as (
    -- a refresh that moved nothing is no change: only the price's time is renewed
    select d.before, d.after,
           (d.after).current_price is distinct from (d.before).current_price
           or (d.after).unrealized_pnl is distinct from (d.before).unrealized_pnl as moved
      from due d
  ), marked as (
    update positions p set
      current_price = (m.after).current_price, current_price_at = (m.after).current_price_at,
      current_price_source = (m.after).current_price_source,
      long_unrealized_pnl = (m.after).long_unrealized_pnl, short_unrealized_pnl = (m.after).short_unrealized_pnl,
      unrealized_pnl = (m.after).unrealized_pnl,
      version = p.version + m.moved::integer,
      last_updated = case when m.moved then now() else p.last_updated end
      from moves m
     where p.id = (m.before).id
    -- the columns this update writes, compared here: the generic changed-fields function runs a
    -- query of its own for every row
    returning p.id, m.moved, case when m.moved then array_remove(array[
      case when (m.before).current_price is distinct from p.current_price then 'current_price' end,
      case when (m.before).current_price_at is distinct from p.current_price_at then 'current_price_at' end,
      case when (m.before).current_price_source is distinct from p.current_price_source then 'current_price_source' end,
      case when (m.before).long_unrealized_pnl is distinct from p.long_unrealized_pnl then 'long_unrealized_pnl' end,
      case when (m.before).short_unrealized_pnl is distinct from p.short_unrealized_pnl then 'short_unrealized_pnl' end,
      case when (m.before).unrealized_pnl is distinct from p.unrealized_pnl then 'unrealized_pnl' end], null) end as changed
  )
  select (select count(*) from marks), count(*), jsonb_object_agg(id, changed) filter (where moved)
    into valid, touched, bumped from marked;
  skipped := jsonb_array_length(items) - valid;
  perform own_positions_write(false);

  if bumped is not null then
    total := _portfolio_total_exposure();
    select array_agg(_position_updated_fields(e.p, e.pos, 'mark_price', e.changed) order by (e.p).asset, (e.p).mode)
      into updates
      from (select p, position_json(p, total, now()) as pos, array(select jsonb_array_elements_text(b.value)) as changed
              from positions p join jsonb_each(bumped) b on b.key::uuid = p.id
            offset 0) e;
    perform _enqueue_events('position_updated', trace, updates);
  end if;
  if touched > 0 then
    perform _notify_position_changes(json_build_object('mark_prices', true));
  end if;
  return jsonb_build_object('time', ts_out(price_at), 'symbols', valid, 'skipped_prices', skipped,
                            'positions_marked', touched, 'positions_updated', (select count(*) from jsonb_object_keys(coalesce(bumped, '{}'))));
end $$;
