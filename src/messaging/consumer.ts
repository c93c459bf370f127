// Consumers of fills and reports (SPEC.md R-1..R-4). Messages are collected into batches and
// applied by one call of ingest_messages() (one transaction; set-based, see sql/135_apply_batch.sql),
// acknowledged only after commit. Data errors are dead-lettered one by one; transient database
// errors are retried with back-off while unacked messages hold the prefetch window shut, so
// consumption pauses; other failures are retried a bounded number of times. A batch's settled
// deliveries are acknowledged together by one multiple ack (see flushAcks).
import type amqp from 'amqplib';
import type pg from 'pg';
import { backoffMs } from '../backoff.js';
import { isConflict, isDataError, isTransient } from '../db/errors.js';
import { ingestMessages, messageMeta, type IngestOutcome, type MessageKind, type MessageMeta } from '../db/ingest.js';
import type { Logger } from '../log.js';
import { metrics } from '../metrics.js';
import { publishDeadLetter } from './dead-letter.js';
import { checkBody, type Checked } from './schemas.js';
import { ensureForeignQueue } from './topology.js';

/** A check that throws (a bug) dead-letters the message with the reason, never kills the channel. */
function safeCheckBody(kind: MessageKind, raw: Buffer): Checked {
  try {
    return checkBody(kind, raw);
  } catch (err) {
    return { ok: false, reason: `body: cannot be checked (${(err as Error).message})`, traceId: undefined };
  }
}

interface Delivery {
  msg: amqp.ConsumeMessage;
  channel: amqp.Channel;
  /** The body as received: it goes to SQL as this text. */
  body: string;
  meta: MessageMeta;
  attempts: number;
  firstFailedAt?: Date;
  /** Fills only: the asset, which decides the lane (see PARALLEL_LANES). */
  asset?: string;
  /** The position row it locks, which orders its transaction (see lockOrder). */
  lockKey?: string;
}

// A batch of fills is split by asset into this many lanes, each applied in its own transaction
// on its own connection at the same time: one backend applying fills was the bottleneck of
// ingest while the second core sat half idle. Every fill of one asset is in one lane, in
// arrival order, and the next batch starts only when every lane has committed, so each
// position still sees its fills in order. Reports stay one transaction per batch: one report
// message may name several assets, and lanes sharing them could deadlock.
const PARALLEL_LANES = 2;

// Several consumers (other instances, the other fill queue) apply batches at the same time; rows
// locked in different orders deadlock them (each deadlock costs a second and a retry). Every
// transaction therefore takes its rows in (asset, mode) order, as snapshots and validation do.
// The sort is stable, so one position's messages keep their order; a batch with a message whose
// row is unknown (a report array) keeps arrival order.
export function lockOrder<T extends { lockKey?: string }>(batch: T[]): T[] {
  if (batch.some((d) => d.lockKey === undefined)) return batch;
  return [...batch].sort((a, b) => (a.lockKey! < b.lockKey! ? -1 : a.lockKey! > b.lockKey! ? 1 : 0));
}

export function lanes<T extends { asset?: string }>(batch: T[]): T[][] {
  if (batch.length < 2 || batch.some((d) => d.asset === undefined)) return [batch];
  const out: T[][] = Array.from({ length: PARALLEL_LANES }, () => []);
  for (const d of batch) {
    let h = 0;
    for (let i = 0; i < d.asset!.length; i++) h = (h * 31 + d.asset!.charCodeAt(i)) >>> 0;
    out[h % PARALLEL_LANES]!.push(d);
  }
  return out.filter((lane) => lane.length > 0);
}

export interface QueueConsumerOptions {
  queue: string;
  kind: MessageKind;
  pool: pg.Pool;
  log: Logger;
  maxBatch: number;
  maxDeliveryAttempts: number;
  deadLetterChannel: () => amqp.ConfirmChannel | undefined;
  /** Holds this consumer's queue while it is not consuming; /health reads it. */
  detached: Set<string>;
}

/**
 * Per channel (delivery tags count per channel, from 1 on each new one): the deliveries received
 * and not yet settled, in delivery-tag order, and those settled (committed, or dead-lettered)
 * but not yet acknowledged.
 */
interface AckBook {
  unsettled: Set<number>;
  settled: amqp.ConsumeMessage[];
}

// Retries of a batch and re-attachments wait 1 s, doubling to 30 s.
const retryDelayMs = (attempt: number) => backoffMs(attempt, 1000, 30_000);

export class QueueConsumer {
  private pending: Delivery[] = [];
  private flushing: Promise<void> | undefined;
  private stopped = false;
  private wake: (() => void) | undefined;
  private channel: { channel: amqp.Channel; consumerTag: string } | undefined;
  /** The connection a lost consumer is attached to again; a new connection calls attach() itself. */
  private connection: amqp.ChannelModel | undefined;
  private prefetch = 1;
  private reattachTimer: NodeJS.Timeout | undefined;
  private readonly books = new Map<amqp.Channel, AckBook>();

  constructor(private readonly o: QueueConsumerOptions) {
    o.detached.add(o.queue);
  }

  /** Starts consuming on a fresh channel of this connection (called on every reconnection). */
  async attach(connection: amqp.ChannelModel, prefetch: number): Promise<void> {
    clearTimeout(this.reattachTimer);
    this.connection = connection;
    this.prefetch = prefetch;
    connection.once('close', () => {
      if (this.connection !== connection) return;
      this.connection = undefined;
      clearTimeout(this.reattachTimer);
      this.o.detached.add(this.o.queue);
    });
    await this.consume(connection);
  }

  private async consume(connection: amqp.ChannelModel): Promise<void> {
    const channel = await connection.createChannel();
    this.books.set(channel, { unsettled: new Set(), settled: [] });
    channel.on('close', () => this.books.delete(channel));
    channel.on('error', (err: Error) =>
      this.o.log.warn({ err: err.message, queue: this.o.queue }, 'consumer channel error'),
    );
    channel.on('close', () => this.lost(channel, 'consumer channel closed'));
    await channel.prefetch(this.prefetch);
    // A null message is the broker cancelling the consumer: the queue was deleted, or its node failed over.
    const { consumerTag } = await channel.consume(
      this.o.queue,
      (msg) => (msg ? this.receive(channel, msg) : this.lost(channel, 'consumer cancelled by the broker')),
      { noAck: false },
    );
    if (this.stopped) {
      await channel.close().catch(() => undefined);
      return;
    }
    this.channel = { channel, consumerTag };
    this.o.detached.delete(this.o.queue);
  }

  /**
   * The consumer stopped while its connection may live on, which no reconnection would repair:
   * consume again on that connection, with back-off, until it works or the connection goes.
   */
  private lost(channel: amqp.Channel, why: string): void {
    if (this.stopped || this.channel?.channel !== channel) return;
    this.channel = undefined;
    this.o.detached.add(this.o.queue);
    this.o.log.warn({ queue: this.o.queue }, `${why}; consuming again`);
    // Deliveries already taken from this channel are applied and acked on it before it closes.
    const release = async () => {
      await this.flushing;
      await channel.close();
    };
    release().catch(() => undefined);
    if (this.connection) this.reattach(this.connection, 0);
  }

  private reattach(connection: amqp.ChannelModel, attempt: number): void {
    clearTimeout(this.reattachTimer);
    this.reattachTimer = setTimeout(() => void this.attachAgain(connection, attempt), retryDelayMs(attempt));
  }

  private async attachAgain(connection: amqp.ChannelModel, attempt: number): Promise<void> {
    if (this.stopped || this.connection !== connection) return;
    try {
      // As at start: a queue deleted by its owner is declared again with the owner's arguments.
      await ensureForeignQueue(connection, this.o.queue);
      await this.consume(connection);
      this.o.log.info({ queue: this.o.queue }, 'consumer attached again');
    } catch (err) {
      if (this.stopped || this.connection !== connection) return;
      this.o.log.warn(
        { err: (err as Error).message, queue: this.o.queue, retry_in_ms: retryDelayMs(attempt + 1) },
        'cannot consume yet; retrying',
      );
      this.reattach(connection, attempt + 1);
    }
  }

  private receive(channel: amqp.Channel, msg: amqp.ConsumeMessage): void {
    this.books.get(channel)?.unsettled.add(msg.fields.deliveryTag);
    const headerTrace: unknown = msg.properties.headers?.trace_id;
    const checked = safeCheckBody(this.o.kind, msg.content);
    const d: Delivery = {
      msg,
      channel,
      body: msg.content.toString('utf8'),
      meta: messageMeta({
        source: this.o.queue,
        messageId: msg.properties.messageId as string | undefined,
        bodyKey: checked.ok ? checked.bodyKey : undefined,
        traceId: checked.traceId ?? (typeof headerTrace === 'string' ? headerTrace : undefined),
      }),
      attempts: 0,
      ...(checked.ok && checked.asset ? { asset: checked.asset } : {}),
      ...(checked.ok && checked.lockKey ? { lockKey: checked.lockKey } : {}),
    };
    if (!checked.ok) {
      void this.deadLetter(d, checked.reason);
      return;
    }
    this.pending.push(d);
    this.flushing ??= this.flush().finally(() => (this.flushing = undefined));
  }

  private async flush(): Promise<void> {
    // Let the deliveries that arrived together join one batch.
    await new Promise((r) => setImmediate(r));
    while (this.pending.length && !this.stopped) {
      const batch = this.pending.splice(0, this.o.maxBatch);
      await Promise.all(lanes(batch).map((lane) => this.apply(lockOrder(lane))));
      this.flushAcks();
    }
  }

  private async apply(batch: Delivery[]): Promise<void> {
    let waits = 0;
    let conflicts = 0;
    for (;;) {
      const started = process.hrtime.bigint();
      try {
        const outcomes = await ingestMessages(this.o.pool, this.o.kind, batch);
        metrics.messageApplyDuration.observe({ queue: this.o.queue }, Number(process.hrtime.bigint() - started) / 1e9);
        await Promise.all(outcomes.map((outcome, i) => this.settle(batch[i]!, outcome)));
        return;
      } catch (err) {
        if (this.stopped) return;
        if (isConflict(err) && conflicts++ < 5) {
          // another transaction held rows this one needed (a deadlock or serialization
          // conflict): nothing was applied, and at once is the right time to retry
          metrics.messages.inc({ queue: this.o.queue, outcome: 'retried' }, batch.length);
          this.o.log.info(
            {
              err: (err as Error).message,
              queue: this.o.queue,
              messages: batch.length,
              trace_id: batch[0]!.meta.trace_id,
            },
            'transaction conflict; batch retried',
          );
          continue;
        }
        if (isTransient(err)) {
          const delay = retryDelayMs(waits++);
          metrics.messages.inc({ queue: this.o.queue, outcome: 'retried' }, batch.length);
          this.o.log.warn(
            {
              err: (err as Error).message,
              queue: this.o.queue,
              messages: batch.length,
              retry_in_ms: delay,
              trace_id: batch[0]!.meta.trace_id,
              trace_ids: batch.map((d) => d.meta.trace_id),
            },
            'database unavailable; messages stay unacknowledged and are retried',
          );
          await this.sleep(delay);
          continue;
        }
        if (batch.length > 1) {
          // Find the message that breaks the batch (e.g. a body PostgreSQL's jsonb rejects).
          for (const d of batch) await this.apply([d]);
          return;
        }
        const d = batch[0]!;
        d.firstFailedAt ??= new Date();
        if (isDataError(err) || ++d.attempts >= this.o.maxDeliveryAttempts) {
          await this.deadLetter(
            d,
            `${(err as Error).message}${isDataError(err) ? '' : ` (after ${d.attempts} attempts)`}`,
          );
          return;
        }
        metrics.messages.inc({ queue: this.o.queue, outcome: 'retried' });
        this.o.log.error(
          { err: (err as Error).message, queue: this.o.queue, trace_id: d.meta.trace_id, attempt: d.attempts },
          'message failed; retrying',
        );
        await this.sleep(retryDelayMs(waits++));
      }
    }
  }

  private async settle(d: Delivery, o: IngestOutcome): Promise<void> {
    if (o.outcome === 'error') {
      await this.deadLetter(d, o.message ?? 'invalid input');
      return;
    }
    const entries = o.reports ?? [o];
    const outcome = entries.some((e) => e.outcome === 'applied')
      ? 'applied'
      : entries.every((e) => e.outcome === 'duplicate')
        ? 'duplicate'
        : entries.some((e) => e.outcome === 'stale')
          ? 'stale'
          : 'no_op';
    for (const e of entries) {
      // a report that changed nothing (same figures) is applied but is not a position update
      const updated = e.outcome === 'applied' && e.changed !== false;
      if (updated) metrics.positionUpdates.inc({ source: this.o.kind === 'fill' ? 'order_execution' : 'websocket' });
      const fields = {
        trace_id: d.meta.trace_id,
        queue: this.o.queue,
        outcome: e.outcome,
        asset: e.asset,
        mode: e.mode,
        message_key: e.message_key,
        position_id: e.position_id,
        version: e.version,
      };
      this.o.log.info(
        fields,
        updated
          ? 'position changed'
          : e.outcome === 'applied'
            ? 'report applied: nothing changed'
            : e.outcome === 'duplicate'
              ? 'duplicate message ignored'
              : `message ${e.outcome}`,
      );
      if (e.warning) this.o.log.warn(fields, e.warning);
      if (e.size_discrepancy)
        this.o.log.warn(
          { ...fields, ...e.size_discrepancy },
          'size discrepancy: validation scheduled after the grace period',
        );
      if (e.avg_price_replaced)
        this.o.log.warn(
          { ...fields, old_avg_price: e.avg_price_replaced.old, new_avg_price: e.avg_price_replaced.new },
          'average entry price replaced by the exchange',
        );
      if (e.avg_price_kept)
        this.o.log.info(
          { ...fields, stored_avg_price: e.avg_price_kept.stored, reported_avg_price: e.avg_price_kept.reported },
          'average entry price kept: the difference is within the threshold',
        );
    }
    metrics.messages.inc({ queue: this.o.queue, outcome });
    this.settled(d); // acknowledged with its batch, by flush()
  }

  private async deadLetter(d: Delivery, reason: string): Promise<void> {
    const channel = this.o.deadLetterChannel();
    try {
      if (!channel) throw new Error('no dead-letter channel');
      await publishDeadLetter(channel, d.msg, this.o.queue, reason, d.firstFailedAt ?? new Date());
      metrics.messages.inc({ queue: this.o.queue, outcome: 'dead_lettered' });
      this.o.log.warn(
        { trace_id: d.meta.trace_id, queue: this.o.queue, reason, message_id: d.msg.properties.messageId },
        'message dead-lettered',
      );
      this.settled(d);
      this.flushAcks();
    } catch (err) {
      this.o.log.error(
        { err: (err as Error).message, trace_id: d.meta.trace_id, queue: this.o.queue },
        'dead-lettering failed; message requeued',
      );
      try {
        d.channel.nack(d.msg, false, true);
      } catch {
        // channel gone: the broker requeues it anyway
      }
      // back with the broker: no longer holds back the acknowledgement of later deliveries
      this.books.get(d.channel)?.unsettled.delete(d.msg.fields.deliveryTag);
      this.flushAcks();
    }
  }

  /** Committed (or dead-lettered): to be acknowledged by the next flushAcks(). */
  private settled(d: Delivery): void {
    const book = this.books.get(d.channel);
    if (!book) return; // the channel closed after commit: the broker redelivers, the inbox makes it a no-op
    book.unsettled.delete(d.msg.fields.deliveryTag);
    book.settled.push(d.msg);
  }

  /**
   * Acknowledges every settled delivery. Those below the lowest delivery still unsettled on their
   * channel (being retried, dead-lettered, or waiting for the next batch) go with one multiple
   * ack, which covers every tag up to the highest of them and so never reaches an unsettled one;
   * any settled above it are acknowledged one by one.
   */
  private flushAcks(): void {
    for (const [channel, book] of this.books) {
      if (book.settled.length === 0) continue;
      const settled = book.settled.sort((a, b) => a.fields.deliveryTag - b.fields.deliveryTag);
      book.settled = [];
      // tags arrive in ascending order, so the first still in the set is the lowest
      const first = book.unsettled.values().next();
      const lowest = first.done ? Infinity : first.value;
      const below = settled.filter((m) => m.fields.deliveryTag < lowest);
      try {
        if (below.length) channel.ack(below[below.length - 1]!, below.length > 1);
        for (const m of settled.slice(below.length)) channel.ack(m);
      } catch {
        // The channel closed after commit: the broker redelivers and the inbox makes it a no-op.
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /**
   * Graceful stop: no new deliveries, the batch in its transaction finishes and is acked, then
   * the channel is closed, which flushes those acks (closing only the connection would drop
   * them) and hands every unapplied message back to the broker.
   */
  async stop(): Promise<void> {
    // First, so that neither a loss is repaired nor a re-attach under way starts consuming.
    this.stopped = true;
    clearTimeout(this.reattachTimer);
    const current = this.channel;
    if (current) await current.channel.cancel(current.consumerTag).catch(() => undefined);
    this.wake?.();
    await this.flushing;
    if (current) await current.channel.close().catch(() => undefined);
  }
}
