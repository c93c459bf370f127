-- Several consumed messages of one queue in one transaction (SPEC.md §6: a failing message must
-- neither block nor lose the others). The batch is applied as one (sql/135_apply_batch.sql); a
-- data error (class 22 or 23) in any message rolls the batch back, and its messages are then
-- applied one by one, each in its own subtransaction, so that only the bad one is returned as an
-- error, for the consumer to dead-letter. Any other error aborts the call, which the consumer retries.
--   kind:   'fill' or 'report' (a batch comes from one queue)
--   metas:  per message {source, message_key, body_key, received_at, trace_id}
--   bodies: per message, the body as received
--   returns one element per message: the ingest outcome, or {"outcome": "error", ...}
create or replace function _apply_batch(kind text, metas jsonb[], bodies jsonb[]) returns jsonb
  language plpgsql
  as $$
begin
  case kind
    when 'fill' then return _apply_fills(metas, bodies);
    when 'report' then return _apply_reports(metas, bodies);
    else perform _bad_input('kind', 'must be fill or report');
  end case;
  return null;
end $$;

create or replace function ingest_messages(kind text, metas jsonb[], bodies jsonb[]) returns jsonb
  language plpgsql
  as $$
declare
  outcomes jsonb := '[]';
  outcome jsonb;
  err_state text; err_msg text; err_col text;
begin
  if coalesce(cardinality(metas), 0) <> coalesce(cardinality(bodies), 0) then
    perform _bad_input('metas', 'must have one element per body');
  end if;
  if kind is null or kind not in ('fill', 'report') then perform _bad_input('kind', 'must be fill or report'); end if;
  if coalesce(cardinality(bodies), 0) > 1 then
    begin
      return _apply_batch(kind, metas, bodies);
    exception when data_exception or integrity_constraint_violation then
      get stacked diagnostics err_msg = message_text;
      raise log 'batch of % % messages: %; applying them one by one', cardinality(bodies), kind, err_msg;
    end;
  end if;
  for i in 1 .. coalesce(cardinality(bodies), 0) loop
    begin
      outcome := _apply_batch(kind, array[metas[i]], array[bodies[i]]) -> 0;
    exception when data_exception or integrity_constraint_violation then
      get stacked diagnostics err_state = returned_sqlstate, err_msg = message_text, err_col = column_name;
      outcome := jsonb_build_object('outcome', 'error', 'sqlstate', err_state, 'message', err_msg,
                                    'field', nullif(err_col, ''));
    end;
    outcomes := outcomes || jsonb_build_array(outcome);
  end loop;
  return outcomes;
end $$;
