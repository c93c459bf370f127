-- grafana_reader reads the views and materialized views, nothing else (SPEC.md §9). Views run
-- with their owner's rights on the tables they name, so no table grant is needed.
-- Skipped when the role does not exist (the service's user may lack CREATEROLE).
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'grafana_reader') then
    revoke all on all tables in schema public from grafana_reader;
    grant usage on schema public to grafana_reader;
    grant select on positions_view, portfolio_metrics_view, portfolio_by_asset_view, portfolio_asset_totals_view,
                    position_snapshots_view, portfolio_metrics_history_view, portfolio_pnl_hourly, position_pnl_hourly,
                    position_events_view, job_history_view, job_queue_view
       to grafana_reader;
  end if;
end $$;
