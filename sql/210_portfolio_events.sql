-- Portfolio events (R-22) and the exposure limit (R-23). Apply transactions only NOTIFY; the
-- worker turns notifications into one keyed publish_portfolio_update job per window, so no
-- lock is shared by the apply transactions. The state rows are locked by these jobs only.

-- The end of the last publication's window (null before the first publication).
create or replace function _portfolio_window_end() returns timestamptz
  language sql stable
  as $$
    select st.last_published_at + make_interval(secs => s.portfolio_event_interval_ms / 1000.0)
      from portfolio_publish_state st, position_manager_settings s
  $$;

-- The next publication: at once after a quiet window, else at the end of the current one.
-- preserve_run_at makes a burst schedule one run; a job already running gets a successor.
create or replace function schedule_portfolio_update() returns void
  language sql
  as $$
    select graphile_worker.add_job('publish_portfolio_update', '{}'::json,
      run_at => greatest(now(), _portfolio_window_end()),
      job_key => 'publish_portfolio_update', job_key_mode => 'preserve_run_at', max_attempts => 5)
  $$;

-- R-23: one portfolio_limit_exceeded per crossing, none while it stays above.
create or replace function _evaluate_portfolio_limits(total_exposure numeric, trace_id text default null)
  returns jsonb
  language plpgsql
  as $$
declare
  max_exposure numeric := (select max_exposure_usdt from position_manager_settings);
  limit_row portfolio_limit_state;
  transition text := null;
begin
  insert into portfolio_limit_state (limit_name, limit_value) values ('max_exposure_usdt', max_exposure)
  on conflict (limit_name) do nothing;
  select * into limit_row from portfolio_limit_state where limit_name = 'max_exposure_usdt' for update;
  if max_exposure is not null and total_exposure > max_exposure and not limit_row.exceeded then
    transition := 'exceeded';
    perform _enqueue_events('portfolio_limit_exceeded', coalesce(trace_id, gen_random_uuid()::text), array[
      jsonb_build_object('limit_name', 'max_exposure_usdt', 'limit_value', dec_out(max_exposure),
                         'current_value', dec_out(total_exposure), 'exceeded_at', ts_out(now()))]);
    raise warning 'portfolio exposure % exceeds max_exposure_usdt %', total_exposure, max_exposure;
  elsif limit_row.exceeded and (max_exposure is null or total_exposure <= max_exposure) then
    transition := 'cleared';
  end if;
  update portfolio_limit_state set
    limit_value = max_exposure,
    exceeded = case transition when 'exceeded' then true when 'cleared' then false else exceeded end,
    since = case when transition is not null then now() else since end,
    last_value = total_exposure, checked_at = now()
   where limit_name = 'max_exposure_usdt';
  return jsonb_build_object('limit_name', 'max_exposure_usdt', 'limit_value', dec_out(max_exposure),
                            'current_value', dec_out(total_exposure),
                            'exceeded', case transition when 'exceeded' then true when 'cleared' then false else limit_row.exceeded end,
                            'transition', transition);
end $$;

-- R-22: portfolio_updated at most once per window, and the limits (R-23) on every call.
-- only_if_changed: nothing is published when no position changed since the last publication
-- and the figures equal the last published ones (the worker's runs, so a reconnect or a stray
-- NOTIFY repeats nothing, while a change that leaves every figure as it was is still announced;
-- false forces one, for psql). Every change bumps a version, so their sum tells (rows are never
-- deleted).
-- Within the window of the last publication nothing is published now: the window's end gets
-- the run that publishes the trailing event. Checked here, under the state row's lock, because
-- two runs can follow each other (a job already running when the next was scheduled, or the
-- history sampler) and the schedule alone cannot see a publication not yet committed.
create or replace function publish_portfolio_update(only_if_changed boolean default false, trace_id text default null)
  returns jsonb
  language plpgsql
  as $$
declare
  metrics jsonb;
  payload jsonb;
  published_state portfolio_publish_state;
  outcome text;
  due timestamptz;
  trace text := coalesce(trace_id, gen_random_uuid()::text);
  versions numeric;
begin
  select * into published_state from portfolio_publish_state for update;
  -- runs after changes, once per window: folds the totals' deltas (sql/115) so they stay few
  perform _portfolio_compact();
  metrics := portfolio_metrics();
  select coalesce(sum(p.version), 0) into versions from positions p;
  payload := jsonb_build_object(
    'total_exposure_usdt', metrics -> 'total_exposure_usdt', 'total_unrealized_pnl_usdt', metrics -> 'total_unrealized_pnl_usdt',
    'total_realized_pnl_usdt', metrics -> 'total_realized_pnl_usdt', 'total_pnl_usdt', metrics -> 'total_pnl_usdt',
    'total_fees_usdt', metrics -> 'total_fees_usdt',
    'portfolio_value_usdt', metrics -> 'portfolio_value_usdt', 'net_exposure_usdt', metrics -> 'net_exposure_usdt',
    'long_exposure_usdt', metrics -> 'long_exposure_usdt', 'short_exposure_usdt', metrics -> 'short_exposure_usdt',
    'open_positions_count', metrics -> 'open_positions_count', 'long_positions_count', metrics -> 'long_positions_count',
    'short_positions_count', metrics -> 'short_positions_count');
  due := _portfolio_window_end();
  if only_if_changed and published_state.last_payload is not distinct from payload and published_state.last_versions is not distinct from versions then
    outcome := 'unchanged';
  -- now(), not clock_timestamp(): the event's timestamp and calculated_at are now(), and the
  -- window is measured between those stamps (a lock wait only makes it longer)
  elsif due > now() then
    outcome := 'deferred';
    perform schedule_portfolio_update(); -- at the end of the window
  else
    outcome := 'published';
    perform _enqueue_events('portfolio_updated', trace,
                            array[payload || jsonb_build_object('calculated_at', metrics -> 'calculated_at')]);
    update portfolio_publish_state set last_published_at = now(), last_payload = payload, last_versions = versions;
  end if;
  return jsonb_build_object('published', outcome = 'published', 'outcome', outcome,
                            'limit', _evaluate_portfolio_limits((metrics ->> 'total_exposure_usdt')::numeric, trace));
end $$;

-- R-22 history: one sample, and a portfolio_updated if a trailing one was lost.
create or replace function sample_portfolio_metrics(trace_id text default null) returns jsonb
  language plpgsql
  as $$
declare
  sample_id bigint;
begin
  insert into portfolio_metrics_history (calculated_at, total_exposure_usdt, long_exposure_usdt, short_exposure_usdt,
      net_exposure_usdt, portfolio_value_usdt, total_unrealized_pnl_usdt, total_realized_pnl_usdt, total_pnl_usdt,
      total_fees_usdt, open_positions_count, long_positions_count, short_positions_count)
  select calculated_at, total_exposure_usdt, long_exposure_usdt, short_exposure_usdt, net_exposure_usdt,
         portfolio_value_usdt, total_unrealized_pnl_usdt, total_realized_pnl_usdt, total_pnl_usdt, total_fees_usdt,
         open_positions_count, long_positions_count, short_positions_count
    from portfolio_metrics_view
  returning portfolio_metrics_history.id into sample_id;
  return jsonb_build_object('sample_id', sample_id) || publish_portfolio_update(true, trace_id);
end $$;
