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
const m = <T>(metric: T): T => metric;

export const metrics = {
  positionsOpen: m(
    new client.Gauge({
      name: `${PREFIX}positions_open`,
      help: 'Open positions',
      labelNames: ['mode'],
      registers: [registry],
      collect: collectFigures,
    }),
  ),
  positionUpdates: m(
    new client.Counter({
      name: `${PREFIX}position_updates_total`,
      help: 'Position changes applied',
      labelNames: ['source'],
      registers: [registry],
    }),
  ),
  httpDuration: m(
    new client.Histogram({
      name: `${PREFIX}http_request_duration_seconds`,
      help: 'HTTP request duration',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    }),
  ),
  httpRequests: m(
    new client.Counter({
      name: `${PREFIX}http_requests_total`,
      help: 'HTTP requests by the API key name that made them (R-33)',
      labelNames: ['method', 'route', 'status', 'client'],
      registers: [registry],
    }),
  ),
  cacheEntries: m(
    new client.Gauge({
      name: `${PREFIX}metrics_cache_entries`,
      help: 'Portfolio metrics cache entries',
      registers: [registry],
    }),
  ),
  cacheRequests: m(
    new client.Counter({
      name: `${PREFIX}metrics_cache_requests_total`,
      help: 'Portfolio metrics cache lookups',
      labelNames: ['result'],
      registers: [registry],
    }),
  ),
  validationDiscrepancies: m(
    new client.Counter({
      name: `${PREFIX}validation_discrepancies_total`,
      help: 'Discrepancies found by validation',
      labelNames: ['field'],
      registers: [registry],
    }),
  ),
  validationRuns: m(
    new client.Counter({
      name: `${PREFIX}validation_runs_total`,
      help: 'Validation runs',
      labelNames: ['trigger', 'outcome'],
      registers: [registry],
    }),
  ),
  messages: m(
    new client.Counter({
      name: `${PREFIX}messages_total`,
      help: 'Consumed messages by outcome',
      labelNames: ['queue', 'outcome'],
      registers: [registry],
    }),
  ),
  messageApplyDuration: m(
    new client.Histogram({
      name: `${PREFIX}message_apply_duration_seconds`,
      help: 'Time to apply a consumed message (or batch) in SQL',
      labelNames: ['queue'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers: [registry],
    }),
  ),
  outboxPending: m(
    new client.Gauge({
      name: `${PREFIX}outbox_pending`,
      help: 'Unsent outbox rows',
      registers: [registry],
      collect: collectFigures,
    }),
  ),
  outboxOldestAge: m(
    new client.Gauge({
      name: `${PREFIX}outbox_oldest_age_seconds`,
      help: 'Age of the oldest unsent outbox row',
      registers: [registry],
      collect: collectFigures,
    }),
  ),
  eventsPublished: m(
    new client.Counter({
      name: `${PREFIX}events_published_total`,
      help: 'Events confirmed by the broker',
      labelNames: ['event_type'],
      registers: [registry],
    }),
  ),
  jobRuns: m(
    new client.Counter({
      name: `${PREFIX}job_runs_total`,
      help: 'Job runs',
      labelNames: ['task', 'outcome'],
      registers: [registry],
    }),
  ),
  foreignWrites: m(
    new client.Counter({
      name: `${PREFIX}foreign_writes_total`,
      help: "Writes of other services to positions that were not applied (R-32; position_events kind 'foreign_write')",
      registers: [registry],
      collect: collectForeignWrites,
    }),
  ),
  priceRefreshes: m(
    new client.Counter({
      name: `${PREFIX}price_refresh_total`,
      help: 'Mark-price refreshes (R-31) by outcome',
      labelNames: ['outcome'],
      registers: [registry],
    }),
  ),
  markPricesSkipped: m(
    new client.Counter({
      name: `${PREFIX}mark_prices_skipped_total`,
      help: 'Ticker prices skipped as not a positive decimal',
      registers: [registry],
    }),
  ),
  reconcileRuns: m(
    new client.Counter({
      name: `${PREFIX}reconcile_runs_total`,
      help: 'Reconciliations with the exchange (R-34) by outcome',
      labelNames: ['outcome'],
      registers: [registry],
    }),
  ),
  reconcileDiscrepancies: m(
    new client.Counter({
      name: `${PREFIX}reconcile_discrepancies_total`,
      help: 'Positions whose size the exchange reported otherwise during reconciliation',
      registers: [registry],
    }),
  ),
  databaseUp: m(
    new client.Gauge({ name: `${PREFIX}database_up`, help: '1 when the database answers', registers: [registry] }),
  ),
  brokerUp: m(new client.Gauge({ name: BROKER_UP, help: '1 when connected to the broker', registers: [registry] })),
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
