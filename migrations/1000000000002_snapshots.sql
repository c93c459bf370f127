-- Up Migration
-- Position snapshots (SPEC.md §3.5); the table may pre-exist (Order Manager), so extend it in place.
create table if not exists position_snapshots (
  id uuid primary key default gen_random_uuid(),
  position_id uuid not null,
  asset varchar(20) not null,
  size numeric not null default 0
);

alter table position_snapshots
  add column if not exists mode varchar(20) not null default 'one-way',
  add column if not exists long_size numeric,
  add column if not exists short_size numeric,
  add column if not exists average_entry_price numeric,
  add column if not exists current_price numeric,
  add column if not exists unrealized_pnl numeric,
  add column if not exists realized_pnl numeric,
  add column if not exists total_fees numeric,
  add column if not exists unrealized_pnl_pct numeric,
  add column if not exists time_held_minutes integer,
  add column if not exists position_size_norm numeric,
  add column if not exists snapshot_data jsonb,
  add column if not exists snapshot_timestamp timestamptz,
  add column if not exists created_at timestamptz,
  add column if not exists trigger text,
  add column if not exists trace_id text;

do $$
declare c record;
begin
  for c in
    select column_name from information_schema.columns
     where table_schema = current_schema() and table_name = 'position_snapshots'
       and data_type = 'timestamp without time zone'
  loop
    execute format('alter table position_snapshots alter column %I type timestamptz using %I at time zone ''UTC''',
                   c.column_name, c.column_name);
  end loop;
end $$;

update position_snapshots set
  created_at = coalesce(created_at, snapshot_timestamp, now()),
  snapshot_timestamp = coalesce(snapshot_timestamp, created_at, now()),
  trigger = coalesce(trigger, 'scheduled'),
  snapshot_data = coalesce(snapshot_data, '{}'::jsonb);

alter table position_snapshots
  alter column created_at set not null,
  alter column created_at set default now(),
  alter column snapshot_timestamp set not null,
  alter column snapshot_timestamp set default now(),
  alter column trigger set not null,
  alter column snapshot_data set not null,
  add constraint position_snapshots_trigger_check check (trigger in ('scheduled', 'manual'));

create index if not exists position_snapshots_position_idx
  on position_snapshots (position_id, snapshot_timestamp desc, id desc);
create index if not exists position_snapshots_created_at_idx on position_snapshots (created_at);

-- Down Migration
drop table if exists position_snapshots;
