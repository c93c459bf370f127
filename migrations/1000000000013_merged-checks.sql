-- Up Migration
-- Issue 23: every statement that writes a row of these tables reads each CHECK constraint's
-- stored expression tree back from its text and plans it again before evaluating it (PostgreSQL
-- 15, ExecRelCheck); in a loop of fill-like UPDATEs of `positions` that was 46 % of the
-- backend's CPU. The cost follows the size of the stored trees, not how many constraints hold
-- them, so the rules are rewritten to refuse exactly the rows they refused before with fewer
-- nodes, and gathered by subject so that an error still names what was wrong:
--   * A CHECK refuses only a false, never a null: in a conjunction `x > 0` already lets a null x
--     through, `x is null or x > 0` says it twice; where a null must be refused it is made false.
--   * 0.0 is a numeric constant; 0 compared with a numeric column is stored with a cast around it.
--   * least() skips nulls, so one comparison covers the four prices.
--   * `x = any ('{a,b}')` is stored as one array constant; `x in ('a', 'b')` as an array built from
--     a constant per element, every time.
--   * The mode's branch already knows which columns make the gross quantity.
-- test/sql/constraints.test.ts holds the rules as migrations 1, 9 and 10 wrote them and checks these
-- against them. `positions` may be another service's table: the old names are dropped if there.
alter table positions
  drop constraint if exists positions_asset_format, drop constraint if exists positions_mode_check,
  drop constraint if exists positions_legs_shape, drop constraint if exists positions_hedge_pnl_sums,
  drop constraint if exists positions_avg_positive, drop constraint if exists positions_leg_avg_positive,
  drop constraint if exists positions_price_positive, drop constraint if exists positions_fees_nonnegative,
  drop constraint if exists positions_closed_iff_flat, drop constraint if exists positions_flat_no_unrealized,
  drop constraint if exists positions_avg_source_check, drop constraint if exists positions_price_source_check,
  drop constraint if exists positions_version_positive,
  drop constraint if exists positions_shape, drop constraint if exists positions_lifecycle,
  drop constraint if exists positions_values,
  -- a hedge row has both legs, neither negative, netting to its size, and their PnL sums to its
  -- own; a one-way row has no leg columns at all
  add constraint positions_shape check (
    case mode
      when 'hedge' then coalesce(long_size >= 0.0 and short_size >= 0.0 and size = long_size - short_size, false)
        and unrealized_pnl = coalesce(long_unrealized_pnl, 0.0) + coalesce(short_unrealized_pnl, 0.0)
        and realized_pnl = coalesce(long_realized_pnl, 0.0) + coalesce(short_realized_pnl, 0.0)
      when 'one-way' then coalesce(long_size, short_size, long_avg_price, short_avg_price, long_unrealized_pnl,
                                   short_unrealized_pnl, long_realized_pnl, short_realized_pnl) is null
      else false
    end),
  -- closed exactly when flat (no gross quantity), and a closed row has no unrealized PnL
  add constraint positions_lifecycle check (
    (closed_at is null) = case mode when 'hedge' then long_size + short_size > 0.0 else size <> 0.0 end
    and (closed_at is null or unrealized_pnl = 0.0)),
  add constraint positions_values check (
    asset ~ '^[A-Z0-9]{2,20}$'
    and least(average_entry_price, long_avg_price, short_avg_price, current_price) > 0.0
    and total_fees >= 0.0 and version >= 1
    and average_entry_price_source = any ('{fills,exchange}') and current_price_source = any ('{report,ticker,fill}'));

alter table position_fills
  drop constraint if exists position_fills_kind_check, drop constraint if exists position_fills_leg_check,
  drop constraint if exists position_fills_side_check, drop constraint if exists position_fills_fee_check,
  drop constraint if exists position_fills_leg_mode, drop constraint if exists position_fills_shape,
  drop constraint if exists position_fills_row,
  add constraint position_fills_row check (
    case kind
      when 'fill' then side is not null and least(quantity, price) > 0.0
      when 'reset' then reset_size is not null and reset_avg_price > 0.0 and (leg = 'net' or reset_size >= 0.0)
      else false
    end
    and side = any ('{Buy,Sell}') and fee >= 0.0
    and leg = any ('{net,long,short}') and (mode = 'hedge') = (leg <> 'net'));

alter table position_events
  drop constraint if exists position_events_kind_check, drop constraint if exists position_events_source_check,
  drop constraint if exists position_events_position_required,
  drop constraint if exists position_events_row,
  add constraint position_events_row check (
    source = any ('{order_execution,websocket,validation,manual,exchange_rest}')
    and kind = any ('{created,fill,report,report_stale,size_discrepancy,validation_fix,closed,reopened,avg_price_replaced,foreign_write}')
    and (position_id is not null or kind = 'foreign_write'));

alter table inbox
  drop constraint if exists inbox_outcome_check,
  add constraint inbox_outcome_check check (outcome = any ('{applied,no_op,stale,other_shape}'));

-- An UPDATE is HOT (no new index entries, the old version pruned in place) only when it changes
-- no indexed column and the new version fits in the same page. Every write of a position sets
-- last_updated, and nothing reads positions by it (position_mode_for and the Grafana lookup go by
-- asset; validate_all_positions walks (asset, mode)), so its index goes and the writes that keep
-- the gross quantity (mark prices, snapshot marks) become HOT. A fill changes gross_size, which
-- positions_open_idx must keep for the exposure sums (without it a sum reads every closed row
-- too: 3.5 times as long with 100 of 1,000 positions open, 27 times with 1,000 of 100,000), so
-- a fill stays a non-HOT update, of three indexes instead of four. The free tenth of each page
-- is room for the HOT versions; pages written before this get it as their rows move.
drop index if exists positions_last_updated_idx;
alter table positions set (fillfactor = 90);

-- Down Migration
alter table positions reset (fillfactor);
create index if not exists positions_last_updated_idx on positions (last_updated);

alter table inbox
  drop constraint if exists inbox_outcome_check,
  add constraint inbox_outcome_check check (outcome in ('applied', 'no_op', 'stale', 'other_shape'));

alter table position_events
  drop constraint if exists position_events_row,
  add constraint position_events_source_check
    check (source in ('order_execution', 'websocket', 'validation', 'manual', 'exchange_rest')),
  add constraint position_events_kind_check check (kind in (
    'created', 'fill', 'report', 'report_stale', 'size_discrepancy', 'validation_fix', 'closed', 'reopened',
    'avg_price_replaced', 'foreign_write')),
  add constraint position_events_position_required check (position_id is not null or kind = 'foreign_write');

alter table position_fills
  drop constraint if exists position_fills_row,
  add constraint position_fills_kind_check check (kind in ('fill', 'reset')),
  add constraint position_fills_leg_check check (leg in ('net', 'long', 'short')),
  add constraint position_fills_side_check check (side in ('Buy', 'Sell')),
  add constraint position_fills_fee_check check (fee >= 0),
  add constraint position_fills_leg_mode check ((mode = 'hedge') = (leg <> 'net')),
  add constraint position_fills_shape check (
    case kind
      when 'fill' then side is not null and quantity > 0 and price > 0
      else reset_size is not null and (reset_avg_price is null or reset_avg_price > 0)
           and (leg = 'net' or reset_size >= 0)
    end);

alter table positions
  drop constraint if exists positions_shape, drop constraint if exists positions_lifecycle,
  drop constraint if exists positions_values,
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
  add constraint positions_price_source_check check (current_price_source in ('report', 'ticker', 'fill')),
  add constraint positions_version_positive check (version >= 1);
