-- Up Migration
-- Event payloads (1.9-2.2 KB: a snapshot event carries the Snapshot and Position objects) are
-- just over the size at which PostgreSQL compresses a row, so nearly every event is compressed
-- when written and decompressed when the relay reads it. lz4 instead of pglz (BENCHMARKS.md,
-- issue 21: 40,000 snapshot events, 3 rounds) took 29 % less backend CPU per written event (75
-- against 106 µs) and 16 % less to read one back, for 5 % more bytes. Only values written from
-- now on use it; older ones stay readable as they are. A server built without lz4 keeps pglz.
-- The unique index on event_id stays: nothing reads by it, but it costs ~3.5 µs and ~40 bytes
-- per event (3-5 %), and it is how an operator finds the event a consumer names.
do $$
begin
  if to_regclass('public.outbox_events') is null then return; end if;
  alter table outbox_events alter column payload set compression lz4;
exception when feature_not_supported then
  raise notice 'this server has no lz4: outbox payloads stay compressed with pglz';
end $$;

-- Down Migration
alter table outbox_events alter column payload set compression default;
