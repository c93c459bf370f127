-- Several consumed messages in one transaction (SPEC.md §6: a failing message must neither
-- block nor lose the others). Each message runs in its own subtransaction: a data error
-- (class 22 or 23) rolls back that message only and is returned as its outcome, for the
-- consumer to dead-letter; any other error aborts the batch, which the consumer retries.
--   kind:   'fill' or 'report' (a batch comes from one queue)
--   metas:  per message {source, message_key, body_key, received_at, trace_id}
--   bodies: per message, the body as received
--   returns one element per message: the ingest outcome, or {"outcome": "error", ...}
create or replace function ingest_messages(kind text, metas jsonb[], bodies jsonb[]) returns jsonb
  language plpgsql
  as $$
declare
  i integer;
  outcomes jsonb := '[]';
  outcome jsonb;
  err_state text; err_msg text; err_col text;
begin
  if coalesce(cardinality(metas), 0) <> coalesce(cardinality(bodies), 0) then
    perform _bad_input('metas', 'must have one element per body');
  end if;
  for i in 1 .. coalesce(cardinality(bodies), 0) loop
    begin
      outcome := case ingest_messages.kind
                   when 'fill' then _apply_order_fill(metas[i], bodies[i])
                   when 'report' then jsonb_build_object('reports', _apply_position_report(metas[i], bodies[i]))
                 end;
      if outcome is null then perform _bad_input('kind', 'must be fill or report'); end if;
    exception when data_exception or integrity_constraint_violation then
      get stacked diagnostics err_state = returned_sqlstate, err_msg = message_text, err_col = column_name;
      outcome := jsonb_build_object('outcome', 'error', 'sqlstate', err_state, 'message', err_msg,
                                    'field', nullif(err_col, ''));
    end;
    outcomes := outcomes || jsonb_build_array(outcome);
  end loop;
  return outcomes;
end $$;
