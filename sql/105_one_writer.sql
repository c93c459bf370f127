-- One writer of `positions` (SPEC.md R-32). Today's Order Manager still UPDATEs and INSERTs rows
-- itself; applied, those writes change a size without a version, a ledger row or an event. The
-- service's own functions open a window with own_positions_write(true) around their writes;
-- any other write is kept from the row (the statement succeeds, so the other writer does not
-- fail), audited as `foreign_write` and announced for the service's log and metric.

create or replace function own_positions_write(allowed boolean) returns void
  language sql
  as $$ select set_config('position_manager.writer', case when allowed then 'on' else '' end, true) $$;

create or replace function guard_positions_writer() returns trigger
  language plpgsql
  as $$
declare
  held positions := case when tg_op = 'INSERT' then null else old end;
  attempted jsonb := case when tg_op = 'DELETE' then null else to_jsonb(new) end;
  writer jsonb := jsonb_build_object('user', current_user::text,
                                     'application_name', current_setting('application_name', true),
                                     'client_addr', inet_client_addr()::text);
begin
  if tg_op = 'INSERT' then
    -- an INSERT ... ON CONFLICT of a row we hold lands here before the conflict is seen
    select * into held from positions p where p.asset = new.asset and p.mode = new.mode;
  end if;
  insert into position_events (position_id, asset, mode, source, kind, before, changed_fields, details)
  values (held.id, coalesce(held.asset, new.asset), coalesce(held.mode, new.mode, 'one-way'), 'manual', 'foreign_write',
          -- a row variable that found no row is a row of nulls, not null: `before` is null then
          case when held.id is null then null else to_jsonb(held) end,
          (select coalesce(array_agg(a.key order by a.key), '{}') from jsonb_each(attempted) a
            where a.key not in ('gross_size') and (held.id is null or to_jsonb(held) -> a.key is distinct from a.value)),
          jsonb_build_object('operation', tg_op, 'attempted', attempted) || writer);
  perform pg_notify('position_manager_foreign_write',
    (writer || jsonb_build_object('operation', tg_op, 'asset', coalesce(held.asset, new.asset),
                                  'mode', coalesce(held.mode, new.mode)))::text);
  return null;
end $$;

drop trigger if exists _000_one_writer on positions;
-- The WHEN clause keeps the service's own writes from calling the function at all.
create trigger _000_one_writer before insert or update or delete on positions
  for each row when (current_setting('position_manager.writer', true) is distinct from 'on')
  execute function guard_positions_writer();
