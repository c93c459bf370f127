// What every role of one process shares: configuration, logger, pool, and the live state
// that /health and /metrics report.
import type pg from 'pg';
import type { Config } from './config.js';
import type { Logger } from './log.js';

export interface BrokerState {
  /** False when this process does not use the broker (no AMQP configuration, or neither consumer nor relay role). */
  enabled: boolean;
  connected: boolean;
  /**
   * Queues whose consumer is not consuming although the connection may be up (cancelled by the
   * broker, channel closed): ingest has stopped there until it is attached again.
   */
  detachedConsumers: Set<string>;
}

export interface Runtime {
  config: Readonly<Config>;
  log: Logger;
  pool: pg.Pool;
  databaseUrl: string;
  /** The API key in force (configured, or generated in embedded mode). */
  apiKey: string | undefined;
  broker: BrokerState;
}

/** A started component; stop() finishes in-flight work and releases its resources. */
export interface Component {
  name: string;
  stop(): Promise<void>;
}
