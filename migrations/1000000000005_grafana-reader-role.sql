-- Up Migration
-- Grafana's read-only role (SPEC.md §9). NOLOGIN here; the service grants LOGIN when
-- POSITION_MANAGER_GRAFANA_READER_PASSWORD is set. Roles are cluster-wide, so another
-- database on the same server may have created it already.
do $$
begin
  create role grafana_reader nologin;
exception when duplicate_object or unique_violation then
  null;
end $$;
revoke all on all tables in schema public from grafana_reader;
grant usage on schema public to grafana_reader;

-- Down Migration
revoke usage on schema public from grafana_reader;
