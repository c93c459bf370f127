-- The outbox (SPEC.md R-29): the one function that writes events, and the statement trigger that
-- wakes the relay. It needs nothing but the formats, so every operation below can use it.

-- Events in the given order, element i of the arrays being one event: its type, its trace id and
-- its payload, each in the envelope every event carries (event_id, event_type, trace_id,
-- timestamp); the routing key is the event's queue name (§6).
create or replace function _enqueue_events(event_types text[], trace_ids text[], payloads jsonb[]) returns void
  language plpgsql
  as $$
begin
  -- no statement without rows: its trigger would wake the relay for nothing
  if coalesce(cardinality(payloads), 0) = 0 then return; end if;
  insert into outbox (event_id, routing_key, event_type, payload, trace_id)
  select e.id, 'position-manager.' || e.event_type, e.event_type,
         jsonb_build_object('event_id', e.id, 'event_type', e.event_type,
                            'trace_id', e.trace_id, 'timestamp', ts_out(now())) || e.payload,
         e.trace_id
    -- offset 0: one event_id per row, however often the outer query names it
    from (select gen_random_uuid() as id, p.event_type, p.trace_id, p.payload
            from unnest(event_types, trace_ids, payloads) with ordinality p(event_type, trace_id, payload, i)
           order by p.i offset 0) e;
end $$;

-- Events of one type and one trace.
create or replace function _enqueue_events(event_type text, trace_id text, payloads jsonb[]) returns void
  language plpgsql
  as $$
begin
  if coalesce(cardinality(payloads), 0) = 0 then return; end if;
  perform _enqueue_events(array_fill(event_type, array[cardinality(payloads)]),
                          array_fill(trace_id, array[cardinality(payloads)]), payloads);
end $$;

-- A wake-up, not a guarantee: the relay also polls (DESIGN.md). Identical notifications of one
-- transaction are delivered once, at commit.
create or replace function _outbox_notify() returns trigger
  language plpgsql
  as $$
begin
  perform pg_notify('position_manager_outbox', '');
  return null;
end $$;

create or replace trigger _900_notify_outbox after insert on outbox
  for each statement execute function _outbox_notify();
