// A publisher and a collector that survive the broker closing their connections (as
// `rabbitmqctl close_all_connections` does to every client of the vhost, the test's included).
// Publishing is at-least-once: an unconfirmed window is published again after reconnecting,
// so a message may reach the queue twice — with the same body and message id, which the
// service must turn into a no-op. Collecting acknowledges after storing; a redelivery
// after a lost acknowledgement is a duplicate of the same event_id (allowed).
import amqp from 'amqplib';
import { confirmed, queueOptions } from '../helpers/amqp.js';
import { waitFor } from '../helpers/wait.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

async function connectRetrying(url: string, timeoutMs = 30_000): Promise<amqp.ChannelModel> {
  return waitFor(
    async () => {
      const c = await amqp.connect(url);
      c.on('error', () => undefined);
      return c;
    },
    { what: `AMQP connection to ${url}`, timeoutMs, intervalMs: 200 },
  );
}

export interface ResilientPublisher {
  /** How many times a window had to be published again after a connection loss. */
  republishedWindows: number;
  /** Messages sent more than once because of that. */
  republishedMessages: number;
  publishAll(
    queue: string,
    bodies: { body: unknown; messageId?: string }[],
    opts?: { window?: number; onProgress?: (n: number) => void },
  ): Promise<void>;
  close(): Promise<void>;
}

export async function resilientPublisher(t: Teardown, url: string): Promise<ResilientPublisher> {
  let conn: amqp.ChannelModel | undefined;
  let ch: amqp.ConfirmChannel | undefined;
  let closed = false;
  const channel = async (): Promise<amqp.ConfirmChannel> => {
    if (ch) return ch;
    conn = await connectRetrying(url);
    const c = await conn.createConfirmChannel();
    c.on('error', () => undefined);
    c.on('close', () => {
      if (ch === c) ch = undefined;
    });
    conn.on('close', () => {
      if (ch === c) ch = undefined;
    });
    ch = c;
    return c;
  };
  const p: ResilientPublisher = {
    republishedWindows: 0,
    republishedMessages: 0,
    async publishAll(queue, bodies, { window = 50, onProgress } = {}) {
      for (let i = 0; i < bodies.length; i += window) {
        const chunk = bodies.slice(i, i + window);
        for (let attempt = 0; ; attempt++) {
          if (closed) throw new Error('publisher closed');
          try {
            const c = await channel();
            await Promise.all(
              chunk.map(
                ({ body, messageId }) =>
                  new Promise<void>((resolve, reject) => {
                    try {
                      c.sendToQueue(
                        queue,
                        Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)),
                        { persistent: true, ...(messageId ? { messageId } : {}) },
                        confirmed(resolve, reject),
                      );
                    } catch (err) {
                      reject(err instanceof Error ? err : new Error('publish failed', { cause: err }));
                    }
                  }),
              ),
            );
            break;
          } catch {
            ch = undefined;
            if (attempt > 50) throw new Error('publishing failed 50 times in a row');
            p.republishedWindows++;
            p.republishedMessages += chunk.length;
          }
        }
        onProgress?.(Math.min(i + window, bodies.length));
      }
    },
    async close() {
      closed = true;
      await conn?.close().catch(() => undefined);
    },
  };
  t.teardown(() => p.close());
  return p;
}

export interface ResilientCollector {
  messages: amqp.ConsumeMessage[];
  reconnects: number;
  close(): Promise<void>;
}

/** Consumes `queue` (declared durable if missing) and keeps consuming across connection losses. */
export async function resilientCollector(t: Teardown, url: string, queue: string): Promise<ResilientCollector> {
  let stopped = false;
  let conn: amqp.ChannelModel | undefined;
  const col: ResilientCollector = {
    messages: [],
    reconnects: 0,
    async close() {
      stopped = true;
      await conn?.close().catch(() => undefined);
    },
  };
  const attach = async (): Promise<void> => {
    const c = await connectRetrying(url, 120_000);
    conn = c;
    const ch = await c.createChannel();
    ch.on('error', () => undefined);
    await ch.assertQueue(queue, queueOptions(queue));
    await ch.prefetch(500);
    await ch.consume(queue, (m) => {
      if (!m) return;
      col.messages.push(m);
      try {
        ch.ack(m);
      } catch {
        /* channel gone: redelivered later */
      }
    });
    c.once('close', () => {
      if (stopped) return;
      col.reconnects++;
      const again = (): void => void attach().catch(() => setTimeout(again, 200));
      again();
    });
  };
  await attach();
  t.teardown(() => col.close());
  return col;
}
