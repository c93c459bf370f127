-- Up Migration
-- The settings row is shared by every instance: `npm run migrate` writes it from its environment,
-- a start only while it has never been written (configured_at null, as on every database until
-- now). An instance whose environment differs logs the difference and keeps the row.
alter table position_manager_settings add column if not exists configured_at timestamptz;

-- Down Migration
alter table position_manager_settings drop column if exists configured_at;
