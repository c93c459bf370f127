-- Up Migration
-- Grafana's read-only role (SPEC.md §9). NOLOGIN here; the service grants LOGIN when
-- POSITION_MANAGER_GRAFANA_READER_PASSWORD is set. Roles are cluster-wide, so another
-- database on the same server may have created it already.
-- The service's own database user needs no CREATEROLE: when it may not create the role, an
-- administrator creates it (`create role grafana_reader nologin`) and the grants follow on the
-- next start (sql/900_grafana_grants.sql).
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'grafana_reader') then
    create role grafana_reader nologin;
  end if;
exception when duplicate_object or unique_violation then
  null;
when insufficient_privilege then
  raise notice 'grafana_reader does not exist and this user may not create it; Grafana access is not set up';
end $$;
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'grafana_reader') then
    revoke all on all tables in schema public from grafana_reader;
    grant usage on schema public to grafana_reader;
  end if;
end $$;

-- Down Migration
revoke usage on schema public from grafana_reader;
