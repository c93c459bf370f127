-- Up Migration
-- Positions, the fill ledger, the audit trail, inbox and outbox (SPEC.md §3).
-- `positions` and `position_snapshots` may already exist in the shared trading database
-- (written by Order Manager): they are extended in place, never recreated.

create table if not exists positions (
  id uuid primary key default gen_random_uuid(),
  asset varchar(20) not null,
  size numeric not null default 0
);

alter table positions
  add column if not exists mode varchar(20) not null default 'one-way',
  add column if not exists long_size numeric,
  add column if not exists short_size numeric,
  add column if not exists long_avg_price numeric,
  add column if not exists short_avg_price numeric,
  add column if not exists long_unrealized_pnl numeric,
  add column if not exists short_unrealized_pnl numeric,
  add column if not exists long_realized_pnl numeric,
  add column if not exists short_realized_pnl numeric,
  add column if not exists average_entry_price numeric,
  add column if not exists average_entry_price_source text,
  add column if not exists current_price numeric,
  add column if not exists current_price_at timestamptz,
  add column if not exists unrealized_pnl numeric,
  add column if not exists realized_pnl numeric,
  add column if not exists total_fees numeric,
  add column if not exists opened_at timestamptz,
  add column if not exists closed_at timestamptz,
  add column if not exists created_at timestamptz,
  add column if not exists last_updated timestamptz,
  add column if not exists last_snapshot_at timestamptz,
  add column if not exists version bigint,
  add column if not exists exchange_state jsonb;

-- Older writers used `timestamp without time zone` holding UTC.
do $$
declare c record;
begin
  for c in
    select column_name from information_schema.columns
     where table_schema = current_schema() and table_name = 'positions'
       and data_type = 'timestamp without time zone'
  loop
    execute format('alter table positions alter column %I type timestamptz using %I at time zone ''UTC''',
                   c.column_name, c.column_name);
  end loop;
end $$;

update positions set
  mode = lower(coalesce(mode, 'one-way')),
  unrealized_pnl = coalesce(unrealized_pnl, 0),
  realized_pnl = coalesce(realized_pnl, 0),
  total_fees = coalesce(total_fees, 0),
  created_at = coalesce(created_at, last_updated, now()),
  last_updated = coalesce(last_updated, created_at, now()),
  version = coalesce(version, 1);
update positions set unrealized_pnl = 0, closed_at = coalesce(closed_at, last_updated)
 where size = 0 and coalesce(long_size, 0) + coalesce(short_size, 0) = 0;
update positions set closed_at = null
 where size <> 0 or coalesce(long_size, 0) + coalesce(short_size, 0) > 0;
update positions set opened_at = coalesce(opened_at, created_at) where closed_at is null;
-- Another writer's hedge rows may have no legs: the row is then one leg, in the direction of its
-- size, with the row's average and PnL; a hedge row's average is its direction leg's (§3.1).
-- A missing leg is what the other and the size leave; missing leg PnL likewise.
update positions set
  long_size = coalesce(long_size, short_size + size, greatest(size, 0)),
  short_size = coalesce(short_size, long_size - size, greatest(-size, 0)),
  long_avg_price = coalesce(long_avg_price, case when size > 0 then average_entry_price end),
  short_avg_price = coalesce(short_avg_price, case when size < 0 then average_entry_price end),
  long_unrealized_pnl = coalesce(long_unrealized_pnl, unrealized_pnl - short_unrealized_pnl,
                                 case when size >= 0 then unrealized_pnl else 0 end),
  short_unrealized_pnl = coalesce(short_unrealized_pnl, unrealized_pnl - long_unrealized_pnl,
                                  case when size < 0 then unrealized_pnl else 0 end),
  long_realized_pnl = coalesce(long_realized_pnl, realized_pnl - short_realized_pnl,
                               case when size >= 0 then realized_pnl else 0 end),
  short_realized_pnl = coalesce(short_realized_pnl, realized_pnl - long_realized_pnl,
                                case when size < 0 then realized_pnl else 0 end)
 where mode = 'hedge';
update positions set average_entry_price = case when size > 0 then long_avg_price when size < 0 then short_avg_price end
 where mode = 'hedge' and average_entry_price is null;
-- Bybit reports 0 for "no price" (a flat position); here that is null.
update positions set
  average_entry_price = nullif(average_entry_price, 0),
  current_price = nullif(current_price, 0),
  long_avg_price = nullif(long_avg_price, 0),
  short_avg_price = nullif(short_avg_price, 0)
 where 0 in (average_entry_price, current_price, long_avg_price, short_avg_price);
update positions set average_entry_price_source = 'exchange'
 where average_entry_price_source is null and average_entry_price is not null;

alter table positions
  alter column asset type varchar(20),
  alter column size set not null,
  alter column size set default 0,
  alter column mode set not null,
  alter column mode set default 'one-way',
  alter column unrealized_pnl set not null,
  alter column unrealized_pnl set default 0,
  alter column realized_pnl set not null,
  alter column realized_pnl set default 0,
  alter column total_fees set not null,
  alter column total_fees set default 0,
  alter column created_at set not null,
  alter column created_at set default now(),
  alter column last_updated set not null,
  alter column last_updated set default now(),
  alter column version set not null,
  alter column version set default 1,
  -- gross quantity, derived so that no writer can get it wrong; indexed for exposure scans
  add column if not exists gross_size numeric generated always as (
    case when mode = 'hedge' then coalesce(long_size, 0) + coalesce(short_size, 0) else abs(size) end
  ) stored,
  add constraint positions_asset_format check (asset ~ '^[A-Z0-9]{2,20}$'),
  add constraint positions_mode_check check (mode in ('one-way', 'hedge')),
  add constraint positions_legs_shape check (
    case when mode = 'hedge'
      then long_size is not null and short_size is not null and long_size >= 0 and short_size >= 0
           and size = long_size - short_size
      else long_size is null and short_size is null and long_avg_price is null and short_avg_price is null
           and long_unrealized_pnl is null and short_unrealized_pnl is null
           and long_realized_pnl is null and short_realized_pnl is null
    end),
  add constraint positions_hedge_pnl_sums check (
    mode <> 'hedge' or (
      unrealized_pnl = coalesce(long_unrealized_pnl, 0) + coalesce(short_unrealized_pnl, 0)
      and realized_pnl = coalesce(long_realized_pnl, 0) + coalesce(short_realized_pnl, 0))),
  add constraint positions_avg_positive check (average_entry_price is null or average_entry_price > 0),
  add constraint positions_leg_avg_positive check (
    (long_avg_price is null or long_avg_price > 0) and (short_avg_price is null or short_avg_price > 0)),
  add constraint positions_price_positive check (current_price is null or current_price > 0),
  add constraint positions_fees_nonnegative check (total_fees >= 0),
  add constraint positions_closed_iff_flat check (
    (closed_at is null) = (case when mode = 'hedge' then coalesce(long_size, 0) + coalesce(short_size, 0) else abs(size) end > 0)),
  add constraint positions_flat_no_unrealized check (closed_at is null or unrealized_pnl = 0),
  add constraint positions_avg_source_check check (average_entry_price_source in ('fills', 'exchange')),
  add constraint positions_version_positive check (version >= 1);

-- Another writer's table may already be unique on (asset, mode), under any name.
do $$
begin
  if not exists (
    select 1 from pg_index i
     where i.indrelid = 'positions'::regclass and i.indisunique and i.indpred is null
       and (select array_agg(a.attname::text order by k.ord)
              from unnest(i.indkey) with ordinality k(attnum, ord)
              join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum) = array['asset', 'mode']) then
    alter table positions add constraint positions_asset_mode_key unique (asset, mode);
  end if;
end $$;

create index if not exists positions_open_idx on positions (asset, mode) include (gross_size) where gross_size > 0;
create index if not exists positions_last_updated_idx on positions (last_updated);

-- The ledger: every applied fill and every `reset` (state adopted from the exchange, R-9).
create table position_fills (
  id bigserial primary key,
  position_id uuid not null references positions (id),
  asset varchar(20) not null,
  mode varchar(20) not null,
  kind text not null check (kind in ('fill', 'reset')),
  leg text not null check (leg in ('net', 'long', 'short')),
  side text check (side in ('Buy', 'Sell')),
  quantity numeric,
  price numeric,
  fee numeric not null default 0 check (fee >= 0),
  order_id text,
  execution_id text unique,
  executed_at timestamptz not null default now(),
  applied_at timestamptz not null default now(),
  message_key text,
  trace_id text,
  reset_size numeric,
  reset_avg_price numeric,
  reason text,
  constraint position_fills_leg_mode check ((mode = 'hedge') = (leg <> 'net')),
  constraint position_fills_shape check (
    case kind
      when 'fill' then side is not null and quantity > 0 and price > 0
      else reset_size is not null and (reset_avg_price is null or reset_avg_price > 0)
           and (leg = 'net' or reset_size >= 0)
    end)
);
create index position_fills_position_idx on position_fills (position_id, leg, id);
create index position_fills_order_idx on position_fills (order_id, asset, mode) where order_id is not null;

-- Pre-existing positions (another writer's) become the ledger's starting point (R-9).
insert into position_fills (position_id, asset, mode, kind, leg, reset_size, reset_avg_price, executed_at, reason)
select p.id, p.asset, p.mode, 'reset', l.leg, l.size, l.avg, p.last_updated, 'migration'
  from positions p
 cross join lateral (
   select 'net' as leg, p.size as size, p.average_entry_price as avg where p.mode <> 'hedge'
   union all select 'long', p.long_size, p.long_avg_price where p.mode = 'hedge'
   union all select 'short', p.short_size, p.short_avg_price where p.mode = 'hedge'
 ) l;

-- The audit trail (R-28): before/after images of every change.
create table position_events (
  id bigserial primary key,
  position_id uuid not null references positions (id),
  asset varchar(20) not null,
  mode varchar(20) not null,
  at timestamptz not null default now(),
  source text not null check (source in ('order_execution', 'websocket', 'validation', 'manual')),
  kind text not null check (kind in ('created', 'fill', 'report', 'report_stale', 'size_discrepancy',
                                     'validation_fix', 'closed', 'reopened', 'avg_price_replaced')),
  before jsonb,
  after jsonb,
  changed_fields text[],
  message_key text,
  trace_id text,
  details jsonb
);
create index position_events_position_idx on position_events (position_id, at, id);
create index position_events_at_idx on position_events (at);

-- Applied message keys (R-3), scoped by source queue.
create table inbox (
  source text not null,
  message_key text not null,
  outcome text not null check (outcome in ('applied', 'no_op', 'stale')),
  position_id uuid,
  applied_at timestamptz not null default now(),
  primary key (source, message_key)
);
create index inbox_applied_at_idx on inbox (applied_at);

-- Events waiting for the relay (R-29), published in id order.
create table outbox (
  id bigserial primary key,
  event_id uuid not null unique default gen_random_uuid(),
  routing_key text not null,
  event_type text not null,
  payload jsonb not null,
  trace_id text,
  created_at timestamptz not null default now(),
  sent_at timestamptz,
  attempts integer not null default 0,
  last_error text
);
create index outbox_pending_idx on outbox (id) where sent_at is null;
create index outbox_sent_at_idx on outbox (sent_at) where sent_at is not null;

-- Configuration the SQL functions read, so that psql callers get exactly the service's behaviour.
-- The service writes its environment into this one row at start (src/db/settings.ts).
create table position_manager_settings (
  singleton boolean primary key default true check (singleton),
  use_ws_avg_price boolean not null default true,
  avg_price_diff_threshold numeric not null default 0.001 check (avg_price_diff_threshold >= 0),
  size_validation_threshold numeric not null default 0.0001 check (size_validation_threshold >= 0),
  size_discrepancy_grace_seconds integer not null default 30 check (size_discrepancy_grace_seconds between 0 and 3600),
  max_exposure_usdt numeric check (max_exposure_usdt is null or max_exposure_usdt >= 0),
  portfolio_event_interval_ms integer not null default 1000 check (portfolio_event_interval_ms between 100 and 60000),
  price_stale_seconds integer not null default 60 check (price_stale_seconds >= 0),
  updated_at timestamptz not null default now()
);
insert into position_manager_settings default values;

-- Down Migration
drop table if exists position_manager_settings, outbox, inbox, position_events, position_fills;
