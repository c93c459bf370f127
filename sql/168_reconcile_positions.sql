-- Reconciliation with the exchange (SPEC.md R-34): the pages of Bybit V5's signed
-- /v5/position/list, applied in one transaction as reports of the source `exchange_rest`
-- through the rules of R-10..R-15. A leg open here that the exchange lists nowhere is reported
-- flat at the answer's time, so the validation after the grace period settles it like any
-- other discrepancy, with the ledger and the audit trail saying why.
create or replace function reconcile_positions(pages jsonb, trace_id text default null) returns jsonb
  language plpgsql
  as $$
declare
  answer_at timestamptz;
  items jsonb;
  absent jsonb;
  results jsonb;
  trace text := coalesce(reconcile_positions.trace_id, gen_random_uuid()::text);
begin
  if pages is null or jsonb_typeof(pages) <> 'array' or jsonb_array_length(pages) = 0 then
    perform _bad_input('pages', 'must be a non-empty array of answers');
  end if;
  if exists (select 1 from jsonb_array_elements(pages) pg
              where jsonb_typeof(pg) <> 'object' or jsonb_typeof(pg #> '{result,list}') is distinct from 'array') then
    perform _bad_input('result.list', 'must be an array in every page');
  end if;
  select max(_input_timestamp(pg, 'time')) into answer_at from jsonb_array_elements(pages) pg;
  answer_at := coalesce(answer_at, now());
  if answer_at > now() + interval '5 minutes' then perform _bad_input('time', 'is more than 5 minutes in the future'); end if;

  -- rows are locked in (asset, mode) order, as every multi-row writer locks them
  select coalesce(jsonb_agg(x order by upper(x ->> 'symbol'), case when x ->> 'positionIdx' in ('1', '2') then 'hedge' else 'one-way' end,
                                       x ->> 'positionIdx'), '[]')
    into items
    from jsonb_array_elements(pages) pg, jsonb_array_elements(pg #> '{result,list}') x;

  -- legs open here and listed nowhere (a listed leg of size 0 is a flat report of its own)
  select coalesce(jsonb_agg(jsonb_build_object('symbol', o.asset, 'size', '0', 'side', '', 'positionIdx', o.idx,
                                               'updatedTime', (extract(epoch from answer_at) * 1000)::bigint::text)
                            order by o.asset, o.mode, o.idx), '[]')
    into absent
    from (select p.asset, p.mode, _leg_position_idx(l.leg) as idx
            from positions p cross join unnest(_legs(p.mode)) l(leg)
           where p.gross_size > 0 and (_leg(p, l.leg)).size <> 0) o
   where not exists (select 1 from jsonb_array_elements(items) x
                      where upper(x ->> 'symbol') = o.asset and coalesce(x ->> 'positionIdx', '0') = o.idx::text);

  -- the exchange's own stamp keys the report: reading an unchanged position again is a duplicate
  select to_jsonb(_apply_report_items(array_agg(
           _report_read(x.item, 1, 'exchange_rest', now(), trace,
                        'rest:' || coalesce(x.item ->> 'updatedTime', '') || ':' || coalesce(x.item ->> 'seq', ''),
                        true, answer_at) order by x.i)))
    into results
    from (select value as item, ordinality as i from jsonb_array_elements(items) with ordinality
          union all
          select value, jsonb_array_length(items) + ordinality from jsonb_array_elements(absent) with ordinality) x;
  return jsonb_build_object(
    'listed', jsonb_array_length(items),
    'absent', jsonb_array_length(absent),
    'outcomes', (select coalesce(jsonb_object_agg(o, n), '{}') from (
                  select r ->> 'outcome' as o, count(*) as n from jsonb_array_elements(results) r group by 1) c),
    'adopted', (select count(*) from jsonb_array_elements(results) r where r ->> 'created' = 'true' or r ? 'leg_adopted'),
    'discrepancies', (select coalesce(jsonb_agg(jsonb_build_object('asset', r ->> 'asset', 'mode', r ->> 'mode')
                                                || (r -> 'size_discrepancy')), '[]')
                        from jsonb_array_elements(results) r where r ? 'size_discrepancy'),
    'time', ts_out(answer_at));
end $$;
