// One AMQP connection per process that reconnects by itself (1 s doubling to 30 s) after a
// broker restart or a dropped connection. Components register a setup function that runs on
// every (re)connection, so channels, consumers and topology are recreated each time.
import amqp from 'amqplib';
import { backoffMs } from '../backoff.js';
import { redactUrl } from '../config.js';
import type { Logger } from '../log.js';
import { metrics } from '../metrics.js';
import type { BrokerState } from '../runtime.js';

type Setup = (connection: amqp.ChannelModel) => Promise<void>;

export interface Broker {
  readonly connection: amqp.ChannelModel | undefined;
  /** Runs now if connected, and again after every reconnection. */
  onConnected(setup: Setup): Promise<void>;
  close(): Promise<void>;
}

export function connectBroker(url: string, state: BrokerState, log: Logger): Broker {
  const setups: Setup[] = [];
  // The setups each connection has run: one registered while the first connection was being made
  // ran in its loop already and must not run twice.
  const ran = new WeakMap<amqp.ChannelModel, Set<Setup>>();
  let connection: amqp.ChannelModel | undefined;
  let closed = false;
  let timer: NodeJS.Timeout | undefined;
  let attempt = 0;

  const setConnected = (value: boolean) => {
    state.connected = value;
    metrics.brokerUp.set(value ? 1 : 0);
  };

  const scheduleReconnect = () => {
    if (closed || timer) return;
    const delay = backoffMs(attempt, 1000, 30_000);
    attempt++;
    timer = setTimeout(() => {
      timer = undefined;
      void connect();
    }, delay);
  };

  const connect = async () => {
    if (closed) return;
    let conn: amqp.ChannelModel;
    try {
      conn = await amqp.connect(url, { heartbeat: 10, clientProperties: { connection_name: 'position-manager' } });
    } catch (err) {
      log.warn({ err: (err as Error).message, broker: redactUrl(url) }, 'broker unreachable; retrying');
      scheduleReconnect();
      return;
    }
    conn.on('error', (err: Error) => log.warn({ err: err.message }, 'broker connection error'));
    conn.on('close', () => {
      if (connection === conn) connection = undefined;
      setConnected(false);
      if (!closed) {
        log.warn('broker connection closed; reconnecting');
        scheduleReconnect();
      }
    });
    const done = new Set<Setup>();
    ran.set(conn, done);
    try {
      for (const setup of setups) {
        await setup(conn);
        done.add(setup);
      }
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'broker setup failed; reconnecting');
      await conn.close().catch(() => undefined);
      scheduleReconnect();
      return;
    }
    if (closed) {
      await conn.close().catch(() => undefined);
      return;
    }
    connection = conn;
    attempt = 0;
    setConnected(true);
    log.info({ broker: redactUrl(url) }, 'connected to the broker');
  };

  setConnected(false);
  const started = connect();

  return {
    get connection() {
      return connection;
    },
    async onConnected(setup) {
      setups.push(setup);
      await started;
      if (connection && !ran.get(connection)?.has(setup)) await setup(connection);
    },
    async close() {
      closed = true;
      if (timer) clearTimeout(timer);
      const c = connection;
      connection = undefined;
      setConnected(false);
      await c?.close().catch(() => undefined);
    },
  };
}
