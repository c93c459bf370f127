-- Up Migration
-- The real trading stack (SPEC.md R-31, R-32, R-6.4): where a position's price came from, the
-- latest mark per symbol, audit rows for writes of another service that were not applied, and
-- the inbox outcome of a fill in the other shape of its order. Idempotent, like migration 8, so a
-- database whose migration table was repaired by hand can run it again.
alter table positions add column if not exists current_price_source text;
-- A price with an accepted report behind it came from a report; otherwise from the first fill.
update positions set current_price_source = case when exchange_state is not null then 'report' else 'fill' end
 where current_price is not null and current_price_source is null;
alter table positions drop constraint if exists positions_price_source_check;
alter table positions add constraint positions_price_source_check
  check (current_price_source in ('report', 'ticker', 'fill'));

create table if not exists mark_prices (
  symbol varchar(20) primary key check (symbol ~ '^[A-Z0-9]{2,20}$'),
  price numeric not null check (price > 0),
  at timestamptz not null,
  source text not null check (source in ('ticker', 'report')),
  updated_at timestamptz not null default now()
);

-- A foreign INSERT of an (asset, mode) we do not hold has no position to point at.
alter table position_events alter column position_id drop not null;
alter table position_events drop constraint if exists position_events_kind_check;
alter table position_events add constraint position_events_kind_check check (kind in (
  'created', 'fill', 'report', 'report_stale', 'size_discrepancy', 'validation_fix', 'closed', 'reopened',
  'avg_price_replaced', 'foreign_write'));
alter table position_events drop constraint if exists position_events_position_required;
alter table position_events add constraint position_events_position_required
  check (position_id is not null or kind = 'foreign_write');
create index if not exists position_events_foreign_write_idx on position_events (at) where kind = 'foreign_write';

alter table inbox drop constraint if exists inbox_outcome_check;
alter table inbox add constraint inbox_outcome_check check (outcome in ('applied', 'no_op', 'stale', 'other_shape'));

-- Down Migration
alter table inbox drop constraint inbox_outcome_check;
alter table inbox add constraint inbox_outcome_check check (outcome in ('applied', 'no_op', 'stale'));
drop index if exists position_events_foreign_write_idx;
alter table position_events drop constraint position_events_position_required;
alter table position_events drop constraint if exists position_events_kind_check;
alter table position_events add constraint position_events_kind_check check (kind in (
  'created', 'fill', 'report', 'report_stale', 'size_discrepancy', 'validation_fix', 'closed', 'reopened',
  'avg_price_replaced'));
drop table if exists mark_prices;
alter table positions drop constraint positions_price_source_check;
alter table positions drop column if exists current_price_source;
