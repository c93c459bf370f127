-- Up Migration
-- Portfolio history samples (R-22) and limit state (R-23).
create table portfolio_metrics_history (
  id bigserial primary key,
  calculated_at timestamptz not null default now(),
  total_exposure_usdt numeric not null,
  long_exposure_usdt numeric not null,
  short_exposure_usdt numeric not null,
  net_exposure_usdt numeric not null,
  portfolio_value_usdt numeric not null,
  total_unrealized_pnl_usdt numeric not null,
  total_realized_pnl_usdt numeric not null,
  total_pnl_usdt numeric not null,
  total_fees_usdt numeric not null,
  open_positions_count integer not null,
  long_positions_count integer not null,
  short_positions_count integer not null
);
create index portfolio_metrics_history_at_idx on portfolio_metrics_history (calculated_at);

create table portfolio_limit_state (
  limit_name text primary key,
  limit_value numeric,
  exceeded boolean not null default false,
  since timestamptz,
  last_value numeric,
  checked_at timestamptz not null default now()
);

-- The last published portfolio_updated payload and the throttle window (R-22).
create table portfolio_publish_state (
  singleton boolean primary key default true check (singleton),
  last_published_at timestamptz,
  last_payload jsonb
);
insert into portfolio_publish_state default values;

-- Down Migration
drop table if exists portfolio_publish_state, portfolio_limit_state, portfolio_metrics_history;
