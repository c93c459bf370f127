-- Up Migration
-- A batch of messages is parsed whole before any row is locked (its rows are locked together,
-- its inbox keys and ledger rows read together), so the parsed messages are kept in an array,
-- which needs a named type. Functions in sql/ use them; changing a type takes a new migration.

-- (Guarded: a database may be migrated again from an earlier migration, see migrate.test.ts.)
do $$
begin
-- An order fill as typed values (sql/140_apply_order_fill.sql, _fill_parse).
if to_regtype('_fill_message') is null then
create type _fill_message as (
  no_op boolean, source text, received_at timestamptz, trace_id text, message_key text,
  asset text, mode text, side integer, leg text, order_id text, execution_id text,
  quantity numeric, cumulative_quantity numeric, price numeric, fee numeric, executed_at timestamptz);
end if;

-- One report of a position message, as typed values with what its message shares
-- (sql/150_apply_position_report.sql, _report_parse).
if to_regtype('_report_message') is null then
create type _report_message as (
  msg integer, item jsonb, source text, audit_source text, received_at timestamptz, trace_id text,
  message_key text, asset text, mode text, leg text, side integer, quantity numeric,
  avg_price numeric, mark_price numeric, unrealized_pnl numeric, realized_pnl numeric,
  exchange_at timestamptz, opened_at timestamptz, seq bigint);
end if;
end $$;

-- Down Migration
drop type if exists _report_message cascade;
drop type if exists _fill_message cascade;
