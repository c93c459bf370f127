-- Up Migration
-- Issue 21: a snapshot run tells a closed position changed since its last snapshot by the
-- version that snapshot holds. Reading it from the latest snapshot of each closed row probed
-- every day partition of position_snapshots (2-6 s per run at 10,000 closed positions), so the
-- row keeps it beside last_snapshot_at, written by the same statement. Only the snapshot writer
-- sets it: the other writers of positions list their columns and leave it alone. Null (no
-- snapshot, or one without a version written by another service) says nothing, as before:
-- last_snapshot_at decides then.
do $$
begin
  if to_regclass('public.positions') is null then return; end if;
  alter table positions add column if not exists last_snapshot_version bigint;
  if to_regclass('public.position_snapshots') is null then return; end if;
  -- the service's own write (R-32: migrate() opens it for its session, this for any other
  -- caller). The service's latest snapshot of a row is the one at its last_snapshot_at: the
  -- bound lets each probe skip the older day partitions.
  perform set_config('position_manager.writer', 'on', true);
  update positions p set last_snapshot_version = v.version
    from (select q.id, (select (s.snapshot_data ->> 'version')::bigint from position_snapshots s
                         where s.position_id = q.id and s.snapshot_timestamp >= q.last_snapshot_at
                         order by s.snapshot_timestamp desc, s.id desc limit 1) as version
            from positions q where q.last_snapshot_at is not null and q.last_snapshot_version is null) v
   where p.id = v.id and v.version is not null;
end $$;

-- Down Migration
alter table positions drop column if exists last_snapshot_version;
