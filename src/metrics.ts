// Prometheus metrics (SPEC.md §10), one registry per process, served at GET /metrics.
import client from 'prom-client';
import type { Figures } from './db/monitor.js';

export const registry = new client.Registry();
// prom-client's default names already start with process_ or nodejs_: the service prefix alone
// gives position_manager_process_cpu_seconds_total, in line with every other metric here.
client.collectDefaultMetrics({ register: registry, prefix: 'position_manager_' });

let readFigures: (() => Promise<Figures | undefined>) | undefined;

/**
 * Makes the database gauges (open positions, outbox backlog) read at every scrape, so that every
 * process serving /metrics reports them, not only the one that happens to write them.
 */
export function readFiguresAtScrape(read: () => Promise<Figures | undefined>): void {
  readFigures = read;
}

// Each gauge calls this; the reader shares one query among them. An unanswered read keeps the
// last values: a slow database is not an empty outbox.
async function collectFigures(): Promise<void> {
  const f = await readFigures?.();
  if (!f) return;
  for (const mode of ['one-way', 'hedge'] as const) metrics.positionsOpen.set({ mode }, f.open[mode]);
  metrics.outboxPending.set(f.outboxPending);
  metrics.outboxOldestAge.set(f.outboxOldestAgeSeconds);
}

// The audit rows of R-32 count every foreign write, whichever process heard of it, so every
// process reports the same total (aggregate with max(), not sum()). A counter: it only rises
// by what the database has added since the last scrape.
let foreignWritesSeen = 0;
async function collectForeignWrites(this: client.Counter): Promise<void> {
  const f = await readFigures?.();
  if (!f || f.foreignWrites <= foreignWritesSeen) return;
  this.inc(f.foreignWrites - foreignWritesSeen);
  foreignWritesSeen = f.foreignWrites;
}

const PREFIX = 'position_manager_';
export const BROKER_UP = `${PREFIX}broker_up`;

// Every metric lives in this process's registry under the service prefix.
const named = (name: string) => (name.startsWith(PREFIX) ? name : `${PREFIX}${name}`);
const counter = (name: string, help: string, o: Partial<client.CounterConfiguration<string>> = {}) =>
  new client.Counter({ ...o, name: named(name), help, registers: [registry] });
const gauge = (name: string, help: string, o: Partial<client.GaugeConfiguration<string>> = {}) =>
  new client.Gauge({ ...o, name: named(name), help, registers: [registry] });
const histogram = (name: string, help: string, o: Partial<client.HistogramConfiguration<string>>) =>
  new client.Histogram({ ...o, name: named(name), help, registers: [registry] });

export const metrics = {
  positionsOpen: gauge('positions_open', 'Open positions', { labelNames: ['mode'], collect: collectFigures }),
  positionUpdates: counter('position_updates_total', 'Position changes applied', { labelNames: ['source'] }),
  httpDuration: histogram('http_request_duration_seconds', 'HTTP request duration', {
    labelNames: ['method', 'route', 'status'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
  }),
  httpRequests: counter('http_requests_total', 'HTTP requests by the API key name that made them (R-33)', {
    labelNames: ['method', 'route', 'status', 'client'],
  }),
  cacheEntries: gauge('metrics_cache_entries', 'Portfolio metrics cache entries'),
  cacheRequests: counter('metrics_cache_requests_total', 'Portfolio metrics cache lookups', { labelNames: ['result'] }),
  validationDiscrepancies: counter('validation_discrepancies_total', 'Discrepancies found by validation', {
    labelNames: ['field'],
  }),
  validationRuns: counter('validation_runs_total', 'Validation runs', { labelNames: ['trigger', 'outcome'] }),
  messages: counter('messages_total', 'Consumed messages by outcome', { labelNames: ['queue', 'outcome'] }),
  messageApplyDuration: histogram(
    'message_apply_duration_seconds',
    'Time to apply a consumed message (or batch) in SQL',
    { labelNames: ['queue'], buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1] },
  ),
  outboxPending: gauge('outbox_pending', 'Unsent outbox rows', { collect: collectFigures }),
  outboxOldestAge: gauge('outbox_oldest_age_seconds', 'Age of the oldest unsent outbox row', {
    collect: collectFigures,
  }),
  eventsPublished: counter('events_published_total', 'Events confirmed by the broker', { labelNames: ['event_type'] }),
  jobRuns: counter('job_runs_total', 'Job runs', { labelNames: ['task', 'outcome'] }),
  foreignWrites: counter(
    'foreign_writes_total',
    "Writes of other services to positions that were not applied (R-32; position_events kind 'foreign_write')",
    { collect: collectForeignWrites },
  ),
  priceRefreshes: counter('price_refresh_total', 'Mark-price refreshes (R-31) by outcome', { labelNames: ['outcome'] }),
  markPricesSkipped: counter('mark_prices_skipped_total', 'Ticker prices skipped as not a positive decimal'),
  reconcileRuns: counter('reconcile_runs_total', 'Reconciliations with the exchange (R-34) by outcome', {
    labelNames: ['outcome'],
  }),
  reconcileDiscrepancies: counter(
    'reconcile_discrepancies_total',
    'Positions whose size the exchange reported otherwise during reconciliation',
  ),
  databaseUp: gauge('database_up', '1 when the database answers'),
  brokerUp: gauge(BROKER_UP, '1 when connected to the broker'),
};

export interface ValidationOutcome {
  is_valid: boolean;
  discrepancies: { field: string }[];
  /** Set only when the validation fixed the position (SPEC.md R-17 step 7). */
  updated_position: unknown;
}

/** Counts one validation: its run, its discrepancies, and the change it made when it fixed one. */
export function countValidation(trigger: 'api' | 'discrepancy', r: ValidationOutcome): void {
  metrics.validationRuns.inc({ trigger, outcome: r.is_valid ? 'valid' : 'discrepancy' });
  for (const d of r.discrepancies) metrics.validationDiscrepancies.inc({ field: d.field });
  if (r.updated_position) metrics.positionUpdates.inc({ source: 'validation' });
}
