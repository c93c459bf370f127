// The outbox relay (SPEC.md §6.2, R-29). One active relay at a time (a session advisory lock;
// the others stand by), so events leave in outbox id order. Woken by NOTIFY, with polling as
// the guarantee. Each event is published persistent and mandatory on a confirm channel and
// marked sent only after the broker confirmed it; a nacked or returned event stays pending.
import type amqp from 'amqplib';
import type pg from 'pg';
import { listen, type Listener } from '../db/listen.js';
import { markSent, pendingEvents, recordFailures, takeRelayLock } from '../db/outbox.js';
import type { Logger } from '../log.js';
import { metrics } from '../metrics.js';
import type { Broker } from './broker.js';
import { publishConfirmed } from './confirm.js';

const BATCH = 500;
const POLL_MS = 1000;

export interface RelayOptions {
  databaseUrl: string;
  pool: pg.Pool;
  broker: Broker;
  exchange: string;
  log: Logger;
  /** How long a published batch may wait for the broker's confirms (tests shorten it). */
  confirmTimeoutMs?: number;
  /** How often the relay looks without being woken (tests lengthen it). */
  pollMs?: number;
}

export class OutboxRelay {
  private channel: amqp.ConfirmChannel | undefined;
  private returned = new Set<string>();
  private lockClient: pg.Client | undefined;
  private listener: Listener | undefined;
  private stopped = false;
  private wakeUp: (() => void) | undefined;
  /** A NOTIFY (or a new channel) arrived since the current pass began. */
  private woken = false;
  private loop: Promise<void> | undefined;

  constructor(private readonly o: RelayOptions) {}

  async start(): Promise<void> {
    this.listener = listen(this.o.databaseUrl, ['position_manager_outbox'], this.o.log);
    this.listener.on(() => this.wake());
    // A NOTIFY sent before LISTEN took effect (at start, or while reconnecting) is lost: a pass
    // once listening reads whatever committed meanwhile, and later commits notify.
    this.listener.onStateChange((listening) => listening && this.wake());
    await this.o.broker.onConnected(async (conn) => {
      const ch = await conn.createConfirmChannel();
      ch.on('error', (err: Error) => this.o.log.warn({ err: err.message }, 'relay channel error'));
      ch.on('close', () => {
        if (this.channel === ch) this.channel = undefined;
      });
      ch.on('return', (msg: amqp.Message) => {
        if (msg.properties.messageId) this.returned.add(String(msg.properties.messageId));
      });
      this.channel = ch;
      this.wake();
    });
    this.loop = this.run();
  }

  private wake(): void {
    this.woken = true;
    this.wakeUp?.();
  }

  // A wake-up that came while a pass was running (say, the commit of a second transaction
  // while the first one's events were being published) must not wait for the next poll.
  private idle(ms: number): Promise<void> {
    if (this.woken) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wakeUp = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** True while this process holds the relay lock (reacquired after a lost session). */
  private async holdLock(): Promise<boolean> {
    if (this.lockClient) return true;
    const c = await takeRelayLock(this.o.databaseUrl);
    if (!c) return false;
    c.on('end', () => {
      if (this.lockClient === c) this.lockClient = undefined;
    });
    this.lockClient = c;
    this.o.log.info('outbox relay active');
    return true;
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      let more = false;
      this.woken = false;
      try {
        if (this.channel && (await this.holdLock())) more = await this.drainOnce();
      } catch (err) {
        this.o.log.warn({ err: (err as Error).message }, 'outbox relay pass failed');
      }
      if (!more && !this.stopped) await this.idle(this.o.pollMs ?? POLL_MS);
    }
  }

  /** Publishes one batch; true when a full batch went out and more may be waiting. */
  private async drainOnce(): Promise<boolean> {
    const ch = this.channel!;
    const rows = await pendingEvents(this.o.pool, BATCH);
    if (!rows.length) return false;
    const confirmed = await publishConfirmed(
      ch,
      rows.map((row) => ({
        exchange: this.o.exchange,
        routingKey: row.routing_key,
        content: Buffer.from(row.payload),
        options: {
          persistent: true,
          mandatory: true,
          contentType: 'application/json',
          messageId: row.event_id,
          type: row.event_type,
          headers: { trace_id: row.trace_id ?? '' },
        },
      })),
      this.o.confirmTimeoutMs,
    );
    // basic.return arrives before the confirm of the same message.
    const results = confirmed.map(
      (error, i) => error ?? (this.returned.has(rows[i]!.event_id) ? 'returned: unroutable' : null),
    );
    for (const row of rows) this.returned.delete(row.event_id);
    // A confirmed event that follows a failed one with the same key is not marked sent: it goes
    // out again after the failed one (a duplicate, which consumers drop by event_id), so events
    // about one position never arrive out of order, while other positions' events flow on.
    const blocked = new Set<string>();
    const sent = rows.filter((row, i) => {
      if (results[i] !== null) blocked.add(row.order_key);
      return results[i] === null && !blocked.has(row.order_key);
    });
    const failed = rows.flatMap((row, i) => {
      const error = results[i];
      return typeof error === 'string' ? [{ id: row.id, error }] : [];
    });
    if (sent.length)
      await markSent(
        this.o.pool,
        sent.map((r) => r.id),
      );
    for (const r of sent) metrics.eventsPublished.inc({ event_type: r.event_type });
    if (failed.length) {
      await recordFailures(this.o.pool, failed);
      this.o.log.warn(
        { failed: failed.length, first_error: failed[0]!.error },
        'events not confirmed; they stay in the outbox',
      );
      return false;
    }
    return rows.length === BATCH;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake();
    await this.loop;
    await this.listener?.close();
    await this.lockClient?.end().catch(() => undefined);
    await this.channel?.close().catch(() => undefined);
  }
}
