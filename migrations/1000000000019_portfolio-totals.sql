-- Up Migration
-- The portfolio totals kept up to date (issue 21, SPEC.md §11 "Aggregation cost (synthetic
-- growth)"): reading them must not scan every position. sql/115_portfolio_totals.sql maintains
-- these tables from a statement trigger on positions and fills them the first time it is applied
-- (in the transaction that creates the trigger, so no write falls between the two).
--
-- Each published total is a sum of per-asset figures rounded to 8 places (R-20), and rounding
-- is not additive, so the exact state is kept per asset, unrounded:
--   portfolio_asset_sums: per asset, the sums over its rows as of the last compaction (and its
--     by_asset entry, written out)
--   portfolio_totals: one row, the totals of those per-asset sums (the money ones rounded per
--     asset as R-20 rounds them) and the unrounded total exposure
--   portfolio_deltas: what each statement on positions changed, per asset, appended without
--     taking a lock; folded into the two tables above by _portfolio_compact() (periodic jobs and
--     large writes), which only one transaction at a time does (it skips if the totals row is
--     locked)
-- The totals are then the totals row plus, for the assets named by the deltas not yet folded,
-- the change of their rounded figures: a handful of rows, however many positions there are.
create table if not exists portfolio_asset_sums (
  asset text primary key,
  positions_count integer not null default 0,
  long_exposure numeric not null default 0,
  short_exposure numeric not null default 0,
  unrealized_pnl numeric not null default 0,
  realized_pnl numeric not null default 0,
  total_fees numeric not null default 0,
  size numeric not null default 0,
  open_positions_count integer not null default 0,
  long_positions_count integer not null default 0,
  short_positions_count integer not null default 0,
  -- the asset's by_asset member of portfolio_metrics() as JSON text, written with the sums
  figures text
) with (fillfactor = 80);

create table if not exists portfolio_totals (
  singleton boolean primary key default true check (singleton),
  positions_count bigint not null,
  long_exposure numeric not null,
  short_exposure numeric not null,
  unrealized_pnl numeric not null,
  realized_pnl numeric not null,
  total_fees numeric not null,
  open_positions_count bigint not null,
  long_positions_count bigint not null,
  short_positions_count bigint not null,
  raw_exposure numeric not null,
  compacted_at timestamptz not null default now()
);

-- No index and no key: rows are only appended, read whole and deleted whole. Every row is
-- deleted soon after it is written, so autovacuum comes after a thousand dead rows instead of a
-- fraction of the table: the readers scan it whole, dead pages included.
create table if not exists portfolio_deltas (
  asset text not null,
  positions_count integer not null,
  long_exposure numeric not null,
  short_exposure numeric not null,
  unrealized_pnl numeric not null,
  realized_pnl numeric not null,
  total_fees numeric not null,
  size numeric not null,
  open_positions_count integer not null,
  long_positions_count integer not null,
  short_positions_count integer not null
) with (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 1000);

-- Down Migration
drop trigger if exists _900_portfolio_totals_insert on positions;
drop trigger if exists _900_portfolio_totals_update on positions;
drop trigger if exists _900_portfolio_totals_delete on positions;
drop trigger if exists _900_portfolio_totals_truncate on positions;
drop table if exists portfolio_deltas;
drop table if exists portfolio_totals;
drop table if exists portfolio_asset_sums;
