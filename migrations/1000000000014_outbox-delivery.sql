-- Up Migration
-- The outbox splits in three (issue 23): the events themselves, written once and never updated
-- (outbox_events: the old table, renamed, so no payload is copied); what is pending, a narrow row
-- deleted when the broker confirmed the event (outbox_pending); and what was sent, a narrow row
-- inserted then (outbox_sent). Marking a window sent no longer writes a new ~1.5 KB version of
-- every event and its index entries. The relation `outbox` (SPEC.md §3) becomes a view over them
-- (sql/020_outbox.sql), so operators' `... from outbox where sent_at is null` reads as before.
-- Every event, pending or sent, keeps its id, attempts and last_error.
do $$
begin
  -- already converted (a migration re-run by hand, as tests do to simulate older databases)
  if to_regclass('public.outbox_events') is not null then return; end if;

  lock table outbox in access exclusive mode;

  alter table outbox rename to outbox_events;
  alter sequence outbox_id_seq rename to outbox_events_id_seq;
  alter index outbox_pkey rename to outbox_events_pkey;
  alter index outbox_event_id_key rename to outbox_events_event_id_key;
  drop index outbox_pending_idx, outbox_sent_at_idx;

  -- The order key (events with the same key leave in id order: a position's, or else one routing
  -- key's) is computed once at insert, so the relay reads no jsonb field of a pending event. No
  -- foreign keys: one statement of one function writes both tables, and a row trigger per event
  -- would cost about as much as the row itself.
  create table outbox_pending (
    id bigint primary key,
    order_key text not null,
    attempts integer not null default 0,
    last_error text
  );

  create table outbox_sent (
    id bigint primary key,
    sent_at timestamptz not null,
    attempts integer not null,
    last_error text
  );
  -- retention (prune_inbox_outbox) and the view's `sent_at is null` both find rows by sent_at
  create index outbox_sent_at_idx on outbox_sent (sent_at);

  insert into outbox_pending (id, order_key, attempts, last_error)
  select id, coalesce(payload ->> 'position_id', routing_key), attempts, last_error
    from outbox_events where sent_at is null;
  insert into outbox_sent (id, sent_at, attempts, last_error)
  select id, sent_at, attempts, last_error from outbox_events where sent_at is not null;

  -- Dropping columns rewrites nothing: old row versions keep the bytes until they are next written.
  alter table outbox_events drop column sent_at, drop column attempts, drop column last_error;
end $$;

-- Down Migration
drop view if exists outbox;
alter table outbox_events
  add column sent_at timestamptz,
  add column attempts integer not null default 0,
  add column last_error text;
update outbox_events e set sent_at = s.sent_at, attempts = s.attempts, last_error = s.last_error
  from outbox_sent s where s.id = e.id;
update outbox_events e set attempts = p.attempts, last_error = p.last_error
  from outbox_pending p where p.id = e.id;
drop table outbox_pending, outbox_sent;
alter index outbox_events_event_id_key rename to outbox_event_id_key;
alter index outbox_events_pkey rename to outbox_pkey;
alter sequence outbox_events_id_seq rename to outbox_id_seq;
alter table outbox_events rename to outbox;
create index outbox_pending_idx on outbox (id) where sent_at is null;
create index outbox_sent_at_idx on outbox (sent_at) where sent_at is not null;
