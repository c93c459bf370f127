// LISTEN/NOTIFY as a wake-up (DESIGN.md): pg-listen with infinite reconnection. pg-listen is
// unmaintained and gives up after 3 s by default, so every limit is lifted here, and a failed
// first connection is retried by recreating the subscriber. `connected` is false from the
// moment the connection is lost until it listens again, so callers can stop trusting
// notifications (the metrics cache bypasses itself) and fall back to polling.
//
// pg-listen's own liveness check queues behind any query on its connection, so a stalled peer
// (connection open, no bytes moving) went unnoticed until TCP gave up, about 15 minutes. Here
// every query on the connection is a timed round trip (sync), also every CHECK_INTERVAL_MS,
// and one without an answer in SYNC_TIMEOUT_MS replaces the subscriber.
import * as pgListen from 'pg-listen';
import type { Subscriber, Options } from 'pg-listen';
import type pg from 'pg';
import { backoffMs } from '../backoff.js';

// pg-listen is CommonJS with `exports.default`; under NodeNext its types see the namespace.
type CreateSubscriber = (config: pg.ClientConfig, options: Options) => Subscriber;
const createSubscriber: CreateSubscriber =
  (pgListen as unknown as { default: CreateSubscriber & { default?: CreateSubscriber } }).default.default ??
  (pgListen as unknown as { default: CreateSubscriber }).default;
import type { Logger } from '../log.js';

const SYNC_CHANNEL = 'position_manager_listener_sync';
export const SYNC_TIMEOUT_MS = 2000;
const CHECK_INTERVAL_MS = 5000;
// Reconnection attempts wait 250 ms, doubling to 5 s.
const retryDelayMs = (attempt: number) => backoffMs(attempt, 250, 5000);

type NotificationHandler = (channel: string, payload: unknown) => void;

export interface Listener {
  readonly connected: boolean;
  /**
   * Resolves after a round trip on the listening connection that started after this call, so
   * every notification committed before the call has reached the handlers by then (PostgreSQL
   * sends pending notifications before it reads the next query). Rejects when not listening or
   * when the round trip takes longer than SYNC_TIMEOUT_MS.
   */
  sync(): Promise<void>;
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
  let inFlight: Promise<void> | undefined;
  let next: Promise<void> | undefined;

  const setState = (value: boolean) => {
    if (connected === value) return;
    connected = value;
    log.info(
      { channels, connected: value },
      value ? 'listening for notifications' : 'notification listener disconnected',
    );
    for (const h of stateHandlers) h(value);
  };

  // Gives up on a subscriber (its socket may stay open until TCP times out: close is not awaited).
  const replace = (sub: Subscriber, delayMs: number) => {
    if (subscriber !== sub) return;
    subscriber = undefined;
    inFlight = next = undefined;
    setState(false);
    void sub.close().catch(() => undefined);
    if (closed) return;
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => void start(0), delayMs);
  };

  const start = async (attempt: number) => {
    if (closed) return;
    const sub = createSubscriber(
      { connectionString, application_name: 'position-manager-listen' },
      {
        retryLimit: Infinity,
        retryTimeout: 0, // 0 disables pg-listen's give-up timeout
        retryInterval: retryDelayMs,
        paranoidChecking: false, // replaced by the timed round trips below
        parse: (text: string) => {
          try {
            return text ? (JSON.parse(text) as unknown) : null;
          } catch {
            return text;
          }
        },
      },
    );
    subscriber = sub;
    let listening = false; // pg-listen reports `connected` before the first LISTEN is sent
    sub.events.on('notification', (n: { channel: string; payload?: unknown }) => {
      for (const h of handlers) h(n.channel, n.payload);
    });
    sub.events.on('reconnect', () => subscriber === sub && setState(false));
    sub.events.on('connected', () => subscriber === sub && listening && setState(true));
    sub.events.on('error', (err: Error) => {
      // Only reached if pg-listen gave up despite the settings above: start over.
      log.warn({ err: err.message }, 'notification listener failed; restarting it');
      replace(sub, 1000);
    });
    try {
      await sub.connect();
      for (const c of channels) await sub.listenTo(c);
      if (subscriber !== sub) return;
      listening = true;
      setState(true);
    } catch (err) {
      if (subscriber !== sub || closed) return;
      const delay = retryDelayMs(attempt);
      log.debug({ err: (err as Error).message, delay }, 'notification listener cannot connect yet');
      subscriber = undefined;
      setState(false);
      void sub.close().catch(() => undefined);
      retryTimer = setTimeout(() => void start(attempt + 1), delay);
    }
  };
  void start(0);

  // pg-listen gives no access to its connection; toggling LISTEN on a channel nobody notifies
  // is a query on it that writes nothing. Concurrent callers share one round trip: the one in
  // flight if it started after them, else the next one.
  const roundTrip = (): Promise<void> => {
    const sub = subscriber;
    if (!sub || !connected) return Promise.reject(new Error('not listening'));
    const q = sub.getSubscribedChannels().includes(SYNC_CHANNEL)
      ? sub.unlisten(SYNC_CHANNEL)
      : sub.listenTo(SYNC_CHANNEL);
    let timer: NodeJS.Timeout | undefined;
    const p = new Promise<void>((ok, fail) => {
      timer = setTimeout(() => {
        fail(new Error(`the listening connection did not answer within ${SYNC_TIMEOUT_MS} ms`));
        log.warn({ channels }, 'notification listener not answering; reconnecting');
        replace(sub, 0);
      }, SYNC_TIMEOUT_MS);
      Promise.resolve(q).then(() => ok(), fail);
    });
    inFlight = p;
    const done = () => {
      clearTimeout(timer);
      if (inFlight === p) inFlight = undefined;
    };
    p.then(done, done);
    return p;
  };
  const sync = (): Promise<void> => {
    if (!inFlight) return roundTrip();
    next ??= inFlight
      .then(
        () => undefined,
        () => undefined,
      )
      .then(() => {
        next = undefined;
        return roundTrip();
      });
    return next;
  };
  const check = setInterval(() => {
    if (connected) sync().catch(() => undefined);
  }, CHECK_INTERVAL_MS);
  check.unref();

  return {
    get connected() {
      return connected;
    },
    sync,
    on: (h) => void handlers.push(h),
    onStateChange: (h) => void stateHandlers.push(h),
    async close() {
      closed = true;
      clearInterval(check);
      clearTimeout(retryTimer);
      setState(false);
      const sub = subscriber;
      subscriber = undefined;
      await sub?.close().catch(() => undefined);
    },
  };
}
