-- The portfolio totals maintained from every write of positions (migration 19 describes the
-- tables): what portfolio_metrics_view and _portfolio_total_exposure() read instead of summing
-- over every position (SPEC.md §11 "Aggregation cost (synthetic growth)").
--
-- Why a statement trigger: it sees every writer of positions, ours (_batch_write, mark prices,
-- snapshots, reconcile, resets) and anyone else's (a write let through own_positions_write, a
-- DELETE in psql, a restore with session_replication_role = replica: the triggers fire always),
-- so the totals cannot miss a writer the way code in one apply path could.
-- Why deltas appended per statement rather than per-asset rows updated in place: an UPDATE of an
-- aggregate row takes its lock until commit, and a transaction runs several statements on
-- positions, each of which would lock its assets' rows in turn: two transactions doing that in
-- a different order deadlock, and the totals row would serialize every fill. An insert into
-- portfolio_deltas waits for nobody; one compaction at a time folds the committed deltas into
-- the per-asset sums and the totals row (skipping when another is at it).

-- One position row's share of its asset's sums (an old row counts negative). Unrealized PnL
-- counts only while the row is open, as in portfolio_asset_totals_view; an exposure without a
-- value counts 0, as sum() skips it there.
create or replace function _portfolio_delta_rows(news positions[], olds positions[])
  returns setof portfolio_deltas
  language sql stable
  as $$
    select g.* from (
      select r.asset, sum(r.sign)::integer as n, sum(r.long_exposure) as l, sum(r.short_exposure) as s,
             sum(r.unrealized_pnl) as u, sum(r.realized_pnl) as rp, sum(r.total_fees) as f, sum(r.size) as z,
             sum(r.open)::integer as o, sum(r.long)::integer as lc, sum(r.short)::integer as sc
        from (select (x.p).asset, x.sign, x.sign * coalesce(_position_long_exposure(x.p), 0) as long_exposure,
                     x.sign * coalesce(_position_short_exposure(x.p), 0) as short_exposure,
                     x.sign * case when (x.p).gross_size > 0 then coalesce((x.p).unrealized_pnl, 0) else 0 end as unrealized_pnl,
                     x.sign * coalesce((x.p).realized_pnl, 0) as realized_pnl, x.sign * coalesce((x.p).total_fees, 0) as total_fees,
                     x.sign * (x.p).size as size,
                     x.sign * ((x.p).gross_size > 0)::integer as open, x.sign * ((x.p).size > 0)::integer as long,
                     x.sign * ((x.p).size < 0)::integer as short
                from (select n as p, 1 as sign from unnest(news) n
                      union all
                      select o as p, -1 as sign from unnest(olds) o) x) r
       group by r.asset) g
    -- a statement that moved nothing of an asset's figures (a snapshot's last_snapshot_at, a
    -- mark refresh at the same price) leaves no row
     where g.n <> 0 or g.l <> 0 or g.s <> 0 or g.u <> 0 or g.rp <> 0 or g.f <> 0 or g.z <> 0 or g.o <> 0 or g.lc <> 0 or g.sc <> 0
  $$;

-- An asset's by_asset member of portfolio_metrics() (SPEC.md R-20) as JSON text, from its
-- unrounded sums: kept with the folded sums, so that listing 1,500 assets does not format
-- 10,000 decimals on every call (issue 21). The key is a JSON string (to_json); dec_out gives
-- only digits, '-' and '.'. Each figure is rounded to 8 places before it is combined, as in
-- portfolio_asset_totals_view.
create or replace function _portfolio_asset_figures(asset text, long_exposure numeric, short_exposure numeric,
                                                    unrealized_pnl numeric, realized_pnl numeric, size numeric,
                                                    open_positions_count integer)
  returns text
  language sql immutable parallel safe
  as $$
    select format('%s:{"exposure_usdt":"%s","net_exposure_usdt":"%s","unrealized_pnl_usdt":"%s",'
                  '"realized_pnl_usdt":"%s","total_pnl_usdt":"%s","size":"%s","open_positions_count":%s}',
                  to_json(asset), dec_out(round(long_exposure, 8) + round(short_exposure, 8)),
                  dec_out(round(long_exposure, 8) - round(short_exposure, 8)), dec_out(unrealized_pnl),
                  dec_out(realized_pnl), dec_out(round(unrealized_pnl, 8) + round(realized_pnl, 8)), dec_out(size),
                  open_positions_count)
  $$;

-- The deltas not yet folded, per asset.
create view portfolio_deltas_by_asset_view as
  select f.asset, sum(f.positions_count) as positions_count, sum(f.long_exposure) as long_exposure,
         sum(f.short_exposure) as short_exposure, sum(f.unrealized_pnl) as unrealized_pnl,
         sum(f.realized_pnl) as realized_pnl, sum(f.total_fees) as total_fees, sum(f.size) as size,
         sum(f.open_positions_count) as open_positions_count, sum(f.long_positions_count) as long_positions_count,
         sum(f.short_positions_count) as short_positions_count
    from portfolio_deltas f group by f.asset;

-- Folds the committed deltas (and the caller's own) into the per-asset sums and the totals row.
-- Returns false, doing nothing, when another transaction holds the totals row (it is compacting,
-- or rebuilding): nothing ever waits here. Each asset's change of its rounded figures (R-20) is
-- added to the totals, so they stay the sums of what portfolio_asset_totals_view would show.
create or replace function _portfolio_compact() returns boolean
  language plpgsql
  as $$
begin
  perform 1 from portfolio_totals for update skip locked;
  if not found then return false; end if;
  -- One snapshot for the whole statement: the rows the view groups are the rows deleted.
  with folded as (
    delete from portfolio_deltas
  ), d as (
    select * from portfolio_deltas_by_asset_view
  ), n as (
    select d.asset, coalesce(a.positions_count, 0) + d.positions_count as positions_count,
           coalesce(a.long_exposure, 0) as old_long, coalesce(a.long_exposure, 0) + d.long_exposure as long_exposure,
           coalesce(a.short_exposure, 0) as old_short, coalesce(a.short_exposure, 0) + d.short_exposure as short_exposure,
           coalesce(a.unrealized_pnl, 0) as old_unrealized, coalesce(a.unrealized_pnl, 0) + d.unrealized_pnl as unrealized_pnl,
           coalesce(a.realized_pnl, 0) as old_realized, coalesce(a.realized_pnl, 0) + d.realized_pnl as realized_pnl,
           coalesce(a.total_fees, 0) as old_fees, coalesce(a.total_fees, 0) + d.total_fees as total_fees,
           coalesce(a.size, 0) + d.size as size,
           coalesce(a.open_positions_count, 0) + d.open_positions_count as open_positions_count,
           coalesce(a.long_positions_count, 0) + d.long_positions_count as long_positions_count,
           coalesce(a.short_positions_count, 0) + d.short_positions_count as short_positions_count,
           d.positions_count as d_positions, d.long_exposure + d.short_exposure as d_exposure,
           d.open_positions_count as d_open, d.long_positions_count as d_long, d.short_positions_count as d_short
      from d left join portfolio_asset_sums a on a.asset = d.asset
  ), gone as (
    delete from portfolio_asset_sums a using n where a.asset = n.asset and n.positions_count = 0
  ), kept as (
    insert into portfolio_asset_sums as a (asset, positions_count, long_exposure, short_exposure, unrealized_pnl,
                                           realized_pnl, total_fees, size, open_positions_count, long_positions_count,
                                           short_positions_count, figures)
    select n.asset, n.positions_count, n.long_exposure, n.short_exposure, n.unrealized_pnl, n.realized_pnl,
           n.total_fees, n.size, n.open_positions_count, n.long_positions_count, n.short_positions_count,
           _portfolio_asset_figures(n.asset, n.long_exposure, n.short_exposure, n.unrealized_pnl, n.realized_pnl,
                                    n.size, n.open_positions_count::integer)
      from n where n.positions_count <> 0
    on conflict (asset) do update set
      positions_count = excluded.positions_count, long_exposure = excluded.long_exposure,
      short_exposure = excluded.short_exposure, unrealized_pnl = excluded.unrealized_pnl,
      realized_pnl = excluded.realized_pnl, total_fees = excluded.total_fees, size = excluded.size,
      open_positions_count = excluded.open_positions_count, long_positions_count = excluded.long_positions_count,
      short_positions_count = excluded.short_positions_count, figures = excluded.figures
  )
  update portfolio_totals t set
    positions_count = t.positions_count + s.d_positions,
    long_exposure = t.long_exposure + s.d_long_exposure, short_exposure = t.short_exposure + s.d_short_exposure,
    unrealized_pnl = t.unrealized_pnl + s.d_unrealized, realized_pnl = t.realized_pnl + s.d_realized,
    total_fees = t.total_fees + s.d_fees, open_positions_count = t.open_positions_count + s.d_open,
    long_positions_count = t.long_positions_count + s.d_long, short_positions_count = t.short_positions_count + s.d_short,
    raw_exposure = t.raw_exposure + s.d_exposure, compacted_at = now()
    from (select sum(n.d_positions) as d_positions,
                 sum(round(n.long_exposure, 8) - round(n.old_long, 8)) as d_long_exposure,
                 sum(round(n.short_exposure, 8) - round(n.old_short, 8)) as d_short_exposure,
                 sum(round(n.unrealized_pnl, 8) - round(n.old_unrealized, 8)) as d_unrealized,
                 sum(round(n.realized_pnl, 8) - round(n.old_realized, 8)) as d_realized,
                 sum(round(n.total_fees, 8) - round(n.old_fees, 8)) as d_fees,
                 sum(n.d_open) as d_open, sum(n.d_long) as d_long, sum(n.d_short) as d_short,
                 sum(n.d_exposure) as d_exposure
            from n) s
   where s.d_positions is not null;
  return true;
end $$;

-- Recomputes everything from positions (the first apply of this file, a TRUNCATE of positions,
-- a data-only restore made with triggers disabled, or an operator who doubts the totals:
-- `select portfolio_totals_rebuild()`). Waits for the
-- writers of positions to finish and holds them off until commit, so no delta is in flight.
create or replace function portfolio_totals_rebuild() returns void
  language plpgsql
  as $$
begin
  lock table positions in share mode;
  lock table portfolio_totals, portfolio_asset_sums, portfolio_deltas in exclusive mode;
  delete from portfolio_deltas;
  delete from portfolio_asset_sums;
  insert into portfolio_asset_sums (asset, positions_count, long_exposure, short_exposure, unrealized_pnl, realized_pnl,
                                    total_fees, size, open_positions_count, long_positions_count, short_positions_count,
                                    figures)
  select d.asset, d.positions_count, d.long_exposure, d.short_exposure, d.unrealized_pnl, d.realized_pnl, d.total_fees,
         d.size, d.open_positions_count, d.long_positions_count, d.short_positions_count,
         _portfolio_asset_figures(d.asset, d.long_exposure, d.short_exposure, d.unrealized_pnl, d.realized_pnl, d.size,
                                  d.open_positions_count)
    from _portfolio_delta_rows(array(select p from positions p), '{}') d;
  insert into portfolio_totals (singleton, positions_count, long_exposure, short_exposure, unrealized_pnl, realized_pnl,
                                total_fees, open_positions_count, long_positions_count, short_positions_count,
                                raw_exposure, compacted_at)
  select true, coalesce(sum(a.positions_count), 0), coalesce(sum(round(a.long_exposure, 8)), 0),
         coalesce(sum(round(a.short_exposure, 8)), 0), coalesce(sum(round(a.unrealized_pnl, 8)), 0),
         coalesce(sum(round(a.realized_pnl, 8)), 0), coalesce(sum(round(a.total_fees, 8)), 0),
         coalesce(sum(a.open_positions_count), 0), coalesce(sum(a.long_positions_count), 0),
         coalesce(sum(a.short_positions_count), 0), coalesce(sum(a.long_exposure + a.short_exposure), 0), now()
    from portfolio_asset_sums a
  on conflict (singleton) do update set
    positions_count = excluded.positions_count, long_exposure = excluded.long_exposure,
    short_exposure = excluded.short_exposure, unrealized_pnl = excluded.unrealized_pnl,
    realized_pnl = excluded.realized_pnl, total_fees = excluded.total_fees,
    open_positions_count = excluded.open_positions_count, long_positions_count = excluded.long_positions_count,
    short_positions_count = excluded.short_positions_count, raw_exposure = excluded.raw_exposure,
    compacted_at = excluded.compacted_at;
end $$;

-- The statement triggers' function: the statement's deltas, appended.
create or replace function _portfolio_totals_changed() returns trigger
  language plpgsql
  as $$
declare
  appended integer;
begin
  if tg_op = 'TRUNCATE' then
    perform portfolio_totals_rebuild();
    return null;
  end if;
  -- An UPDATE of nothing the figures read (a snapshot's last_snapshot_at, a validation that
  -- found nothing to fix) is told by comparing those columns, without building the rows' figures.
  -- The columns are those _portfolio_delta_rows reads (through _position_long_exposure and
  -- _position_short_exposure too). A full join, so that a row whose id changed counts as changed.
  if tg_op = 'UPDATE' then
    if not exists (
         select from new_rows n full join old_rows o on o.id = n.id
          where n.id is null or o.id is null
             or (n.asset, n.mode, n.size, n.long_size, n.short_size, n.long_avg_price, n.short_avg_price,
                 n.average_entry_price, n.current_price, n.unrealized_pnl, n.realized_pnl, n.total_fees)
                is distinct from
                (o.asset, o.mode, o.size, o.long_size, o.short_size, o.long_avg_price, o.short_avg_price,
                 o.average_entry_price, o.current_price, o.unrealized_pnl, o.realized_pnl, o.total_fees)) then
      return null;
    end if;
  end if;
  -- three statements: a query naming a transition table the trigger lacks does not parse
  if tg_op = 'INSERT' then
    insert into portfolio_deltas select * from _portfolio_delta_rows(array(select n::positions from new_rows n), '{}');
  elsif tg_op = 'DELETE' then
    insert into portfolio_deltas select * from _portfolio_delta_rows('{}', array(select o::positions from old_rows o));
  else
    insert into portfolio_deltas
    select * from _portfolio_delta_rows(array(select n::positions from new_rows n), array(select o::positions from old_rows o));
  end if;
  get diagnostics appended = row_count;
  -- A large statement folds at once. Otherwise the portfolio job folds after every change window
  -- (sql/210); should it not run, one statement in about 5,000 appended rows folds them here, so
  -- the deltas stay few (each row is folded once: the cost per row stays the same).
  if appended >= 10000 or random() < appended / 5000.0 then perform _portfolio_compact(); end if;
  return null;
end $$;

-- After the guard of R-32 (_000_one_writer), which keeps a foreign write from the row: only
-- what was written is counted.
create or replace trigger _900_portfolio_totals_insert after insert on positions
  referencing new table as new_rows for each statement execute function _portfolio_totals_changed();
create or replace trigger _900_portfolio_totals_update after update on positions
  referencing old table as old_rows new table as new_rows for each statement execute function _portfolio_totals_changed();
create or replace trigger _900_portfolio_totals_delete after delete on positions
  referencing old table as old_rows for each statement execute function _portfolio_totals_changed();
create or replace trigger _900_portfolio_totals_truncate after truncate on positions
  for each statement execute function _portfolio_totals_changed();
alter table positions enable always trigger _900_portfolio_totals_insert;
alter table positions enable always trigger _900_portfolio_totals_update;
alter table positions enable always trigger _900_portfolio_totals_delete;
alter table positions enable always trigger _900_portfolio_totals_truncate;

-- The first apply fills the tables, in the transaction that created the triggers.
do $$
begin
  if not exists (select from portfolio_totals) then perform portfolio_totals_rebuild(); end if;
end $$;

-- The totals as of now: the folded ones plus, for each asset with deltas not yet folded, the
-- change of its rounded figures. The money columns are sums of per-asset figures rounded to 8
-- places (R-20); raw_exposure is the unrounded total exposure (R-19's position_size_norm).
create view portfolio_totals_view as
  with adj as (
    select coalesce(sum(d.positions_count), 0) as positions_count,
           coalesce(sum(round(coalesce(a.long_exposure, 0) + d.long_exposure, 8) - round(coalesce(a.long_exposure, 0), 8)), 0) as long_exposure,
           coalesce(sum(round(coalesce(a.short_exposure, 0) + d.short_exposure, 8) - round(coalesce(a.short_exposure, 0), 8)), 0) as short_exposure,
           coalesce(sum(round(coalesce(a.unrealized_pnl, 0) + d.unrealized_pnl, 8) - round(coalesce(a.unrealized_pnl, 0), 8)), 0) as unrealized_pnl,
           coalesce(sum(round(coalesce(a.realized_pnl, 0) + d.realized_pnl, 8) - round(coalesce(a.realized_pnl, 0), 8)), 0) as realized_pnl,
           coalesce(sum(round(coalesce(a.total_fees, 0) + d.total_fees, 8) - round(coalesce(a.total_fees, 0), 8)), 0) as total_fees,
           coalesce(sum(d.open_positions_count), 0) as open_positions_count,
           coalesce(sum(d.long_positions_count), 0) as long_positions_count,
           coalesce(sum(d.short_positions_count), 0) as short_positions_count,
           coalesce(sum(d.long_exposure + d.short_exposure), 0) as raw_exposure
      from portfolio_deltas_by_asset_view d left join portfolio_asset_sums a on a.asset = d.asset
  )
  select t.positions_count + adj.positions_count as positions_count,
         t.long_exposure + adj.long_exposure as long_exposure, t.short_exposure + adj.short_exposure as short_exposure,
         t.unrealized_pnl + adj.unrealized_pnl as unrealized_pnl, t.realized_pnl + adj.realized_pnl as realized_pnl,
         t.total_fees + adj.total_fees as total_fees,
         t.open_positions_count + adj.open_positions_count as open_positions_count,
         t.long_positions_count + adj.long_positions_count as long_positions_count,
         t.short_positions_count + adj.short_positions_count as short_positions_count,
         t.raw_exposure + adj.raw_exposure as raw_exposure
    from portfolio_totals t, adj;

-- Each asset's figures as portfolio_asset_totals_view shows them (the same rounding, R-20), from
-- the folded sums and the deltas not yet folded instead of from its positions, and its by_asset
-- member: what portfolio_metrics() lists without reading every position.
create view portfolio_asset_sums_view as
  with s as (
    select coalesce(a.asset, d.asset) as asset,
           coalesce(a.positions_count, 0) + coalesce(d.positions_count, 0) as positions_count,
           round(coalesce(a.long_exposure, 0) + coalesce(d.long_exposure, 0), 8) as long_exposure_usdt,
           round(coalesce(a.short_exposure, 0) + coalesce(d.short_exposure, 0), 8) as short_exposure_usdt,
           round(coalesce(a.unrealized_pnl, 0) + coalesce(d.unrealized_pnl, 0), 8) as unrealized_pnl_usdt,
           round(coalesce(a.realized_pnl, 0) + coalesce(d.realized_pnl, 0), 8) as realized_pnl_usdt,
           round(coalesce(a.total_fees, 0) + coalesce(d.total_fees, 0), 8) as total_fees_usdt,
           round(coalesce(a.size, 0) + coalesce(d.size, 0), 8) as size,
           (coalesce(a.open_positions_count, 0) + coalesce(d.open_positions_count, 0))::integer as open_positions_count,
           (coalesce(a.long_positions_count, 0) + coalesce(d.long_positions_count, 0))::integer as long_positions_count,
           (coalesce(a.short_positions_count, 0) + coalesce(d.short_positions_count, 0))::integer as short_positions_count,
           case when d.asset is null then a.figures
                else _portfolio_asset_figures(coalesce(a.asset, d.asset),
                                              coalesce(a.long_exposure, 0) + d.long_exposure,
                                              coalesce(a.short_exposure, 0) + d.short_exposure,
                                              coalesce(a.unrealized_pnl, 0) + d.unrealized_pnl,
                                              coalesce(a.realized_pnl, 0) + d.realized_pnl, coalesce(a.size, 0) + d.size,
                                              (coalesce(a.open_positions_count, 0) + d.open_positions_count)::integer) end
             as figures
      from portfolio_asset_sums a full join portfolio_deltas_by_asset_view d on d.asset = a.asset
  )
  select s.asset, s.long_exposure_usdt + s.short_exposure_usdt as exposure_usdt, s.long_exposure_usdt,
         s.short_exposure_usdt, s.long_exposure_usdt - s.short_exposure_usdt as net_exposure_usdt,
         s.unrealized_pnl_usdt, s.realized_pnl_usdt, s.total_fees_usdt, s.size, s.open_positions_count,
         s.long_positions_count, s.short_positions_count, s.figures
    from s
   where s.positions_count > 0;
