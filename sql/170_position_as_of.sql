-- A position as it was at a past moment, from the audit trail's after-images (R-28).
create or replace function position_as_of(asset text, mode text, at timestamptz) returns jsonb
  language sql stable
  as $$
    select jsonb_set(position_json(jsonb_populate_record(null::positions, e.after), 0, position_as_of.at),
                     '{position_size_norm}', 'null')
      from position_events e
      join positions p on p.id = e.position_id
     where p.asset = upper(position_as_of.asset) and p.mode = lower(coalesce(position_as_of.mode, 'one-way'))
       and e.after is not null and e.at <= position_as_of.at
     order by e.at desc, e.id desc
     limit 1
  $$;
