// LISTEN/NOTIFY as a wake-up (DESIGN.md): pg-listen with infinite reconnection. pg-listen is
// unmaintained and gives up after 3 s by default, so every limit is lifted here, and a failed
// first connection is retried by recreating the subscriber. `connected` is false from the
// moment the connection is lost until it listens again, so callers can stop trusting
// notifications (the metrics cache bypasses itself) and fall back to polling.
import * as pgListen from 'pg-listen';
import type { Subscriber, Options } from 'pg-listen';
import type pg from 'pg';

// pg-listen is CommonJS with `exports.default`; under NodeNext its types see the namespace.
type CreateSubscriber = (config: pg.ClientConfig, options: Options) => Subscriber;
const createSubscriber: CreateSubscriber =
  (pgListen as unknown as { default: CreateSubscriber & { default?: CreateSubscriber } }).default.default ??
  (pgListen as unknown as { default: CreateSubscriber }).default;
import type { Logger } from '../log.js';

export type NotificationHandler = (channel: string, payload: unknown) => void;

export interface Listener {
  readonly connected: boolean;
  on(handler: NotificationHandler): void;
  onStateChange(handler: (connected: boolean) => void): void;
  close(): Promise<void>;
}

export function listen(connectionString: string, channels: string[], log: Logger): Listener {
  const handlers: NotificationHandler[] = [];
  const stateHandlers: ((connected: boolean) => void)[] = [];
  let connected = false;
  let closed = false;
  let subscriber: Subscriber | undefined;
  let retryTimer: NodeJS.Timeout | undefined;

  const setState = (value: boolean) => {
    if (connected === value) return;
    connected = value;
    log.info({ channels, connected: value }, value ? 'listening for notifications' : 'notification listener disconnected');
    for (const h of stateHandlers) h(value);
  };

  const start = async (attempt: number) => {
    if (closed) return;
    const sub = createSubscriber(
      { connectionString, application_name: 'position-manager-listen' },
      {
        retryLimit: Infinity,
        retryTimeout: 0, // 0 disables pg-listen's give-up timeout
        retryInterval: (n: number) => Math.min(250 * 2 ** n, 5000),
        paranoidChecking: 5000,
        parse: (text: string) => {
          try {
            return text ? JSON.parse(text) : null;
          } catch {
            return text;
          }
        },
      },
    );
    subscriber = sub;
    sub.events.on('notification', (n: { channel: string; payload?: unknown }) => {
      for (const h of handlers) h(n.channel, n.payload);
    });
    sub.events.on('reconnect', () => setState(false));
    sub.events.on('connected', () => setState(true));
    sub.events.on('error', (err: Error) => {
      // Only reached if pg-listen gave up despite the settings above: start over.
      log.warn({ err: err.message }, 'notification listener failed; restarting it');
      setState(false);
      void sub.close().catch(() => undefined);
      retryTimer = setTimeout(() => void start(attempt + 1), 1000);
    });
    try {
      await sub.connect();
      for (const c of channels) await sub.listenTo(c);
      setState(true);
    } catch (err) {
      setState(false);
      void sub.close().catch(() => undefined);
      if (closed) return;
      const delay = Math.min(250 * 2 ** attempt, 5000);
      log.debug({ err: (err as Error).message, delay }, 'notification listener cannot connect yet');
      retryTimer = setTimeout(() => void start(attempt + 1), delay);
    }
  };
  void start(0);

  return {
    get connected() {
      return connected;
    },
    on: (h) => void handlers.push(h),
    onStateChange: (h) => void stateHandlers.push(h),
    async close() {
      closed = true;
      if (retryTimer) clearTimeout(retryTimer);
      setState(false);
      await subscriber?.close().catch(() => undefined);
    },
  };
}
