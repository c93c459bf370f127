-- Up Migration
-- A hedge leg the exchange reports without an average (SPEC.md R-12: avgPrice is optional) is
-- stored with an unknown average, as a one-way position is; migration 1 no longer adds this.
alter table positions drop constraint if exists positions_open_leg_has_avg;

-- Down Migration
-- (nothing: rows written since may have an unknown leg average, which the old check forbids)
