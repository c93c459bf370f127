// What every role of one process shares: configuration, logger, pool, and the live state
// that /health and /metrics report.
import type pg from 'pg';
import type { Config } from './config.js';
import type { Logger } from './log.js';

export interface BrokerState {
  /** False when no AMQP configuration is given (messaging disabled). */
  enabled: boolean;
  connected: boolean;
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
