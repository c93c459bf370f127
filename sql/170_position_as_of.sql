-- A position as it was at a past moment, from the audit trail's after-images (R-28).
-- The audit rows are partitioned by month (migration 17): the lateral LIMIT 1 makes each partition
-- up to `at` (the later ones are pruned when the plan starts) give at most its newest row of the
-- position from its (position_id, at, id) index, where ordering the joined rows read all of them.
create or replace function position_as_of(asset text, mode text, at timestamptz) returns jsonb
  language sql stable
  as $$
    select jsonb_set(position_json(jsonb_populate_record(null::positions, e.after), 0, position_as_of.at),
                     '{position_size_norm}', 'null')
      from positions p
     cross join lateral (
       select a.after from position_events a
        where a.position_id = p.id and a.after is not null and a.at <= position_as_of.at
        order by a.at desc, a.id desc
        limit 1) e
     where p.asset = upper(position_as_of.asset) and p.mode = lower(coalesce(position_as_of.mode, 'one-way'))
  $$;
