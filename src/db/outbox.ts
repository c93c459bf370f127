// The outbox as the relay reads it (SPEC.md §6.2, R-29): pending events in id order, marked
// sent once the broker confirmed them, or left pending with their error. One relay at a time
// holds the relay lock, so events leave in outbox order. The event rows are never written after
// their insert: delivery lives in the narrow outbox_pending and outbox_sent (sql/020_outbox.sql).
import pg from 'pg';
import { queryValue, type Queryable } from './query.js';

const RELAY_LOCK = 4800010;

export interface OutboxEvent {
  id: string;
  event_id: string;
  routing_key: string;
  event_type: string;
  payload: string;
  trace_id: string | null;
  /** Events with the same key must arrive in outbox order: a position's, or one routing key's. */
  order_key: string;
}

/**
 * A session of its own holding the relay lock (a session advisory lock, held while the session
 * lives); undefined when another relay holds it or the database cannot be reached.
 */
export async function takeRelayLock(connectionString: string): Promise<pg.Client | undefined> {
  const c = new pg.Client({
    connectionString,
    application_name: 'position-manager-relay',
    connectionTimeoutMillis: 3000,
  });
  c.on('error', () => undefined);
  try {
    await c.connect();
    if (await queryValue<boolean>(c, 'select pg_try_advisory_lock($1)', [RELAY_LOCK])) return c;
    await c.end();
  } catch {
    await c.end().catch(() => undefined);
  }
  return undefined;
}

/** The oldest `limit` events not sent yet, in outbox order. */
export async function pendingEvents(db: Queryable, limit: number): Promise<OutboxEvent[]> {
  const r = await db.query<OutboxEvent>(
    `select id, event_id, routing_key, event_type, payload::text as payload, trace_id, order_key
       from (select id, order_key from outbox_pending order by id limit $1) p
       join outbox_events using (id)
      order by id`,
    [limit],
  );
  return r.rows;
}

/** Records a window of confirmed events sent, in one statement: pending rows become sent rows. */
export async function markSent(db: Queryable, ids: string[]): Promise<void> {
  await db.query(
    `with done as (delete from outbox_pending where id = any($1::bigint[]) returning id, attempts, last_error)
     insert into outbox_sent (id, sent_at, attempts, last_error)
     select done.id, now(), done.attempts + 1, done.last_error from done`,
    [ids],
  );
}

/** Counts the attempt of events the broker did not confirm, each with why; they stay pending. */
export async function recordFailures(db: Queryable, failures: { id: string; error: string }[]): Promise<void> {
  await db.query(
    `update outbox_pending p set attempts = p.attempts + 1, last_error = f.error
       from unnest($1::bigint[], $2::text[]) f(id, error) where p.id = f.id`,
    [failures.map((f) => f.id), failures.map((f) => f.error)],
  );
}
