// What every role of one process shares: configuration, logger, pool, and the live state
// that /health and /metrics report.
import type pg from 'pg';
import type { ApiKey, Config } from './config.js';
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

/** the Gateway subscription as the consumer role last saw it ('off' in other processes). */
type SubscriptionState = 'ok' | 'pending' | 'failing' | 'off';

/** An outside source a job of this process reads (R-31 prices, R-34 the exchange's positions). */
export interface SourceState {
  state: 'ok' | 'failing' | 'off';
  lastSuccessAt: string | null;
}

/** The outside services whose state /health shows in `checks` (SPEC.md §5.2). */
export interface Checks {
  wsGatewaySubscription: SubscriptionState;
  prices: SourceState;
  exchangeReconcile: SourceState;
}

export function initialChecks(): Checks {
  return {
    wsGatewaySubscription: 'off',
    prices: { state: 'off', lastSuccessAt: null },
    exchangeReconcile: { state: 'off', lastSuccessAt: null },
  };
}

export interface Runtime {
  config: Readonly<Config>;
  log: Logger;
  pool: pg.Pool;
  databaseUrl: string;
  /** The API keys in force (configured, or one generated in embedded mode). */
  apiKeys: ApiKey[];
  broker: BrokerState;
  checks: Checks;
}

/** A started component; stop() finishes in-flight work and releases its resources. */
export interface Component {
  name: string;
  stop(): Promise<void>;
}
