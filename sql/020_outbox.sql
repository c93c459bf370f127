-- The outbox (SPEC.md R-29, §6.2): the functions that write events, the statement trigger
-- that wakes the relay, and `outbox` as SPEC.md §3 names it. It needs nothing but the formats, so
-- every operation below can use it. Events are immutable rows of outbox_events; delivery is
-- recorded beside them (migration 14): a row of outbox_pending until the broker confirmed the
-- event, then a row of outbox_sent.

-- Events whose payloads carry their envelope already (event_id, event_type, trace_id,
-- timestamp): a writer of many large payloads builds each in one go, since adding keys to a
-- built jsonb rewrites all of it. Outbox ids follow the array order; the routing key is the
-- event's queue name (§6). The order key is computed here, once, so that the relay never reads
-- into a pending payload.
create or replace function _outbox_insert(event_types text[], trace_ids text[], payloads jsonb[]) returns void
  language plpgsql
  as $$
begin
  -- PL/pgSQL, not SQL: its plan is kept for the session, where an SQL function's is made per call
  with event as (
    insert into outbox_events (event_id, routing_key, event_type, payload, trace_id)
    select (p.body ->> 'event_id')::uuid, 'position-manager.' || p.type, p.type, p.body, p.trace
      from unnest(event_types, trace_ids, payloads) with ordinality p(type, trace, body, i)
     order by p.i
    returning id, coalesce(payload ->> 'position_id', routing_key) as order_key)
  insert into outbox_pending (id, order_key) select event.id, event.order_key from event;
end $$;

-- Element i of the arrays is one event: its type, its trace id, its payload, which gets the
-- envelope every event carries.
create or replace function _enqueue_events(event_types text[], trace_ids text[], payloads jsonb[]) returns void
  language plpgsql
  as $$
declare
  stamp text := ts_out(now());
begin
  -- no statement without rows: its trigger would wake the relay for nothing
  if coalesce(cardinality(payloads), 0) = 0 then return; end if;
  if cardinality(event_types) is distinct from cardinality(payloads)
     or cardinality(trace_ids) is distinct from cardinality(payloads) then
    raise exception '_enqueue_events: % event types and % trace ids for % payloads',
      coalesce(cardinality(event_types), 0), coalesce(cardinality(trace_ids), 0), cardinality(payloads);
  end if;
  perform _outbox_insert(event_types, trace_ids,
    array(select jsonb_build_object('event_id', gen_random_uuid(), 'event_type', p.type, 'trace_id', p.trace,
                                    'timestamp', stamp) || p.body
            from unnest(event_types, trace_ids, payloads) with ordinality p(type, trace, body, i)
           order by p.i));
end $$;

-- Events of one type and one trace, in the given order.
create or replace function _enqueue_events(event_type text, trace_id text, payloads jsonb[]) returns void
  language sql
  as $$
  select _enqueue_events(array_fill(event_type, array[coalesce(cardinality(payloads), 0)]),
                         array_fill(trace_id, array[coalesce(cardinality(payloads), 0)]), payloads)
$$;

-- A wake-up, not a guarantee: the relay also polls (DESIGN.md). Identical notifications of one
-- transaction are delivered once, at commit.
create or replace function _outbox_notify() returns trigger
  language plpgsql
  as $$
begin
  perform pg_notify('position_manager_outbox', '');
  return null;
end $$;

create or replace trigger _900_notify_outbox after insert on outbox_events
  for each statement execute function _outbox_notify();

-- The outbox as it read when it was one table: operators, /health and tests keep their queries.
-- A union rather than outer joins, so that `where sent_at is null` reads outbox_pending and
-- probes outbox_sent_at_idx instead of joining every event kept for retention.
create view outbox as
  select e.id, e.event_id, e.routing_key, e.event_type, e.payload, e.trace_id, e.created_at,
         null::timestamptz as sent_at, p.attempts, p.last_error
    from outbox_events e join outbox_pending p on p.id = e.id
  union all
  select e.id, e.event_id, e.routing_key, e.event_type, e.payload, e.trace_id, e.created_at,
         s.sent_at, s.attempts, s.last_error
    from outbox_events e join outbox_sent s on s.id = e.id;
