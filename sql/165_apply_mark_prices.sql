-- Mark prices from the exchange's ticker (SPEC.md R-31): one answer of Bybit V5
-- /v5/market/tickers?category=linear applied set-based in one transaction. A mark refresh is
-- market data, not a position change: no audit row; a position whose price or unrealized PnL
-- moved gets a version and a position_updated event (update_source mark_price).

-- A ticker's markPrice as a positive decimal, else null (skipped and counted).
create or replace function ticker_price(raw jsonb) returns numeric
  language sql immutable parallel safe
  as $$
    select case when jsonb_typeof(raw) in ('string', 'number') and raw #>> '{}' ~ '^\d{1,20}(\.\d{1,20})?$'
                     and (raw #>> '{}')::numeric > 0
                then (raw #>> '{}')::numeric end
  $$;

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
  total numeric;
  trace text := coalesce(apply_mark_prices.trace_id, gen_random_uuid()::text);
begin
  if answer is null or jsonb_typeof(answer) <> 'object' then perform bad_input('body', 'must be a JSON object'); end if;
  if input_text(answer, 'retCode') is distinct from '0' and answer ? 'retCode' then
    perform bad_input('retCode', format('the price source answered %s: %s', left(answer ->> 'retCode', 20),
                                        left(coalesce(answer ->> 'retMsg', ''), 200)));
  end if;
  price_at := input_timestamp(answer, 'time');
  if price_at is null then perform bad_input('time', 'is required'); end if;
  if price_at > now() + interval '5 minutes' then perform bad_input('time', 'is more than 5 minutes in the future'); end if;
  items := answer #> '{result,list}';
  if jsonb_typeof(items) is distinct from 'array' then perform bad_input('result.list', 'must be an array'); end if;

  perform own_positions_write(true);
  with marks as materialized (
    select distinct on (t.symbol) t.symbol, t.price
      from (select x ->> 'symbol' as symbol, ticker_price(x -> 'markPrice') as price
              from jsonb_array_elements(items) x where jsonb_typeof(x) = 'object') t
     where t.symbol ~ '^[A-Z0-9]{2,20}$' and t.price is not null
     order by t.symbol
  ), kept as (
    insert into mark_prices as mp (symbol, price, at, source)
    select symbol, price, price_at, 'ticker' from marks
    on conflict (symbol) do update set price = excluded.price, at = excluded.at, source = 'ticker', updated_at = now()
     where mp.at < excluded.at
  ), due as (
    -- locked in (asset, mode) order, as every multi-row writer locks them
    select p.id, p.mode, mk.price, p.current_price, p.current_price_source, p.unrealized_pnl,
           p.long_unrealized_pnl as old_lu, p.short_unrealized_pnl as old_su,
           case when p.mode = 'hedge' then null
                when p.size = 0 then 0
                when p.average_entry_price is not null then (mk.price - p.average_entry_price) * p.size
                else p.unrealized_pnl end as u,
           case when p.long_size = 0 then 0 when p.long_avg_price is not null
                then (mk.price - p.long_avg_price) * p.long_size else p.long_unrealized_pnl end as lu,
           case when p.short_size = 0 then 0 when p.short_avg_price is not null
                then (p.short_avg_price - mk.price) * p.short_size else p.short_unrealized_pnl end as su
      from positions p join marks mk on mk.symbol = p.asset
     where p.gross_size > 0 and (p.current_price_at is null or p.current_price_at < price_at)
     order by p.asset, p.mode
       for update of p
  ), moves as (
    select d.*, coalesce(d.u, d.lu + d.su) as nu,
           -- a refresh that moved nothing is no change: only the price's time is renewed
           d.price is distinct from d.current_price or coalesce(d.u, d.lu + d.su) is distinct from d.unrealized_pnl as moved
      from due d
  ), marked as (
    update positions p set
      current_price = m.price, current_price_at = price_at, current_price_source = 'ticker',
      long_unrealized_pnl = case when m.mode = 'hedge' then m.lu end,
      short_unrealized_pnl = case when m.mode = 'hedge' then m.su end,
      unrealized_pnl = m.nu,
      version = p.version + m.moved::integer,
      last_updated = case when m.moved then now() else p.last_updated end
      from moves m
     where p.id = m.id
    returning p.id, m.moved,
      -- position_changed_fields' names, in its order; current_price_at changes every time
      array_remove(array[
        case when m.price is distinct from m.current_price then 'current_price' end, 'current_price_at',
        case when m.current_price_source is distinct from 'ticker' then 'current_price_source' end,
        case when m.mode = 'hedge' and m.lu is distinct from m.old_lu then 'long_unrealized_pnl' end,
        case when m.mode = 'hedge' and m.su is distinct from m.old_su then 'short_unrealized_pnl' end,
        case when m.nu is distinct from m.unrealized_pnl then 'unrealized_pnl' end], null) as changed
  )
  select (select count(*) from marks), count(*), jsonb_object_agg(id, changed) filter (where moved)
    into valid, touched, bumped from marked;
  skipped := jsonb_array_length(items) - valid;
  perform own_positions_write(false);

  if bumped is not null then
    total := portfolio_total_exposure();
    insert into outbox (event_id, routing_key, event_type, payload, trace_id)
    select e.id, 'position-manager.position_updated', 'position_updated',
           jsonb_build_object('event_id', e.id, 'event_type', 'position_updated', 'trace_id', trace,
                              'timestamp', ts_out(now()))
           || position_updated_fields(e.p, e.pos, 'mark_price', e.changed),
           trace
      from (select gen_random_uuid() as id, p, position_json(p, total, now()) as pos,
                   array(select jsonb_array_elements_text(b.value)) as changed
              from positions p join jsonb_each(bumped) b on b.key::uuid = p.id
             order by p.asset, p.mode offset 0) e;
    perform pg_notify('position_manager_outbox', '');
  end if;
  if touched > 0 then
    perform pg_notify('position_manager_changes', json_build_object('mark_prices', true)::text);
  end if;
  return jsonb_build_object('time', ts_out(price_at), 'symbols', valid, 'skipped_prices', skipped,
                            'positions_marked', touched, 'positions_updated', (select count(*) from jsonb_object_keys(coalesce(bumped, '{}'))));
end $$;
