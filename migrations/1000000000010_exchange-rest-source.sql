-- Up Migration
-- Reports read from the exchange's REST API by reconciliation (SPEC.md R-34) are audited under
-- their own source, so the audit trail says where a discrepancy was seen.
alter table position_events drop constraint if exists position_events_source_check;
alter table position_events add constraint position_events_source_check
  check (source in ('order_execution', 'websocket', 'validation', 'manual', 'exchange_rest'));

-- Down Migration
alter table position_events drop constraint if exists position_events_source_check;
alter table position_events add constraint position_events_source_check
  check (source in ('order_execution', 'websocket', 'validation', 'manual'));
