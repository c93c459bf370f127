// The outbox as the relay reads it (SPEC.md §6.2, R-29): pending events in id order, marked
// sent once the broker confirmed them, or left pending with their error. One relay at a time
// holds the relay lock, so events leave in outbox order.
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
    `select id, event_id, routing_key, event_type, payload::text as payload, trace_id,
            coalesce(payload ->> 'position_id', routing_key) as order_key
       from outbox where sent_at is null order by id limit $1`,
    [limit],
  );
  return r.rows;
}

export async function markSent(db: Queryable, ids: string[]): Promise<void> {
  await db.query('update outbox set sent_at = now(), attempts = attempts + 1 where id = any($1::bigint[])', [ids]);
}

/** Counts the attempt of events the broker did not confirm, each with why; they stay pending. */
export async function recordFailures(db: Queryable, failures: { id: string; error: string }[]): Promise<void> {
  await db.query(
    `update outbox o set attempts = o.attempts + 1, last_error = f.error
       from unnest($1::bigint[], $2::text[]) f(id, error) where o.id = f.id`,
    [failures.map((f) => f.id), failures.map((f) => f.error)],
  );
}
