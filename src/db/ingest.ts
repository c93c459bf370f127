// Ingest (SPEC.md R-1..R-4): a batch of messages of one kind applied by one call of
// ingest_messages(), one transaction: set-based as one batch, or message by message (each in a
// subtransaction) when a message of the batch carries bad data. Each message goes as its
// envelope (meta) and its body, the raw text as received: the body is never rewritten.
import { randomUUID } from 'node:crypto';
import { queryValue, type Queryable } from './query.js';

export type MessageKind = 'fill' | 'report';

/** What the service knows of a message besides its body; SQL takes source, time, key and trace id from it. */
export interface MessageMeta {
  /** The queue it came from. */
  source: string;
  /** The broker's message id, when the publisher set one. */
  message_key?: string;
  /** R-3's last-resort key, computed from the body (src/messaging/body-key.ts). */
  body_key?: string;
  received_at: string;
  trace_id: string;
}

/** The envelope of a message received now; without a trace id of its own it gets a new one. */
export function messageMeta(m: {
  source: string;
  messageId?: string;
  bodyKey?: string;
  traceId?: string;
}): MessageMeta {
  return {
    source: m.source,
    ...(m.messageId ? { message_key: m.messageId } : {}),
    ...(m.bodyKey !== undefined ? { body_key: m.bodyKey } : {}),
    received_at: new Date().toISOString(),
    trace_id: m.traceId ?? randomUUID(),
  };
}

/** One message's outcome (a report message lists one per position in `reports`). */
export interface IngestOutcome {
  outcome: string;
  message?: string;
  field?: string;
  sqlstate?: string;
  reports?: IngestOutcome[];
  asset?: string;
  mode?: string;
  version?: number;
  position_id?: string;
  message_key?: string;
  /** false for a report that left the position as it was */
  changed?: boolean;
  size_discrepancy?: Record<string, string>;
  /** Something an operator should look at although nothing failed. */
  warning?: string;
  avg_price_replaced?: { old: string | null; new: string };
  avg_price_kept?: { stored: string | null; reported: string };
}

/** Applies the messages in one transaction; their outcomes, in the same order. */
export function ingestMessages(
  db: Queryable,
  kind: MessageKind,
  messages: readonly { meta: MessageMeta; body: string }[],
): Promise<IngestOutcome[]> {
  return queryValue(db, 'select ingest_messages($1, $2::jsonb[], $3::jsonb[])', [
    kind,
    messages.map((m) => JSON.stringify(m.meta)),
    messages.map((m) => m.body),
  ]);
}
