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
  body jsonb;
  res jsonb := '[]';
  one jsonb;
  err_state text; err_msg text; err_col text;
begin
  if coalesce(cardinality(metas), 0) <> coalesce(cardinality(bodies), 0) then
    perform bad_input('metas', 'must have one element per body');
  end if;
  for i in 1 .. coalesce(cardinality(bodies), 0) loop
    begin
      body := bodies[i];
      if jsonb_typeof(body) = 'object' and jsonb_typeof(metas[i]) = 'object' then
        body := body || jsonb_build_object('_meta', metas[i]);
      end if;
      one := case ingest_messages.kind
               when 'fill' then ingest_order_fill(body)
               when 'report' then jsonb_build_object('reports', ingest_position_report(body))
             end;
      if one is null then perform bad_input('kind', 'must be fill or report'); end if;
    exception when data_exception or integrity_constraint_violation then
      get stacked diagnostics err_state = returned_sqlstate, err_msg = message_text, err_col = column_name;
      one := jsonb_build_object('outcome', 'error', 'sqlstate', err_state, 'message', err_msg,
                                'field', nullif(err_col, ''));
    end;
    res := res || jsonb_build_array(one);
  end loop;
  return res;
end $$;
