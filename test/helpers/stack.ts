// The whole service for black-box tests: a fresh database, a RabbitMQ vhost of its own, the
// real service process with every role, collectors on every published queue. Cases drive it
// only through messages and HTTP and observe it only through HTTP, events and logs.
import { Decimal } from 'decimal.js';
import { freshBroker, type Collected, type TestBroker } from './amqp.js';
import { freshDatabase, type TestDb } from './db.js';
import { rolesStarted, startService, type RunningService } from './service.js';
import { waitFor } from './wait.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

const QUEUES = {
  fills: 'order-manager.order_executed',
  orderEvents: 'order-manager.order_events',
  reports: 'ws-gateway.position',
  updated: 'position-manager.position_updated',
  portfolio: 'position-manager.portfolio_updated',
  snapshots: 'position-manager.position_snapshot_created',
  closed: 'position-manager.position_closed',
  limit: 'position-manager.portfolio_limit_exceeded',
  dead: 'position-manager.dead_letter',
} as const;

export interface Stack {
  db: TestDb;
  broker: TestBroker;
  svc: RunningService;
  events: Record<'updated' | 'portfolio' | 'snapshots' | 'closed' | 'limit' | 'dead', Collected>;
  fill(body: object | string, options?: { messageId?: string }): Promise<void>;
  report(body: object | string, options?: { messageId?: string }): Promise<void>;
  get(path: string): Promise<{ status: number; headers: Headers; body: any }>;
  post(path: string): Promise<{ status: number; headers: Headers; body: any }>;
  /** Polls GET /api/v1/positions/{asset} until the predicate holds. */
  until(asset: string, pred: (p: any) => boolean, what: string, mode?: string, timeoutMs?: number): Promise<any>;
  /** Polls the service's log lines until one matches. */
  log(pred: (l: any) => boolean, what: string): Promise<any>;
}

/** A fresh database, a RabbitMQ vhost of its own, and the service process on both with `env`. */
export async function freshService(t: Teardown, env: Record<string, string>) {
  const db = await freshDatabase(t);
  const broker = await freshBroker(t);
  const svc = await startService(t, { databaseUrl: db.url, amqpUrl: broker.url, env });
  return { db, broker, svc };
}

export async function startStack(t: Teardown, env: Record<string, string> = {}): Promise<Stack> {
  const { db, broker, svc } = await freshService(t, {
    POSITION_MANAGER_SIZE_DISCREPANCY_GRACE_SECONDS: '1',
    POSITION_MANAGER_PORTFOLIO_EVENT_INTERVAL_MS: '200',
    ...env,
  });
  const roles = (env.POSITION_MANAGER_ROLES ?? 'api,consumer,relay,worker').split(',');
  await rolesStarted(svc, roles);
  const events = {
    updated: await broker.collect(QUEUES.updated),
    portfolio: await broker.collect(QUEUES.portfolio),
    snapshots: await broker.collect(QUEUES.snapshots),
    closed: await broker.collect(QUEUES.closed),
    limit: await broker.collect(QUEUES.limit),
    dead: await broker.collect(QUEUES.dead),
  };
  const stack: Stack = {
    db,
    broker,
    svc,
    events,
    fill: (body, o) => broker.publish(QUEUES.fills, body, o),
    report: (body, o) => broker.publish(QUEUES.reports, body, o),
    get: (path) => svc.request('GET', path),
    post: (path) => svc.request('POST', path),
    until: async (asset, pred, what, mode = 'one-way', timeoutMs = 15_000) => {
      let last: unknown;
      try {
        return await waitFor(
          async () => {
            const r = await svc.request('GET', `/api/v1/positions/${asset}?mode=${mode}`);
            last = r.body;
            return r.status === 200 && pred(r.body) ? r.body : undefined;
          },
          { what, timeoutMs },
        );
      } catch (err) {
        // Say what the position looked like and what the service logged about it.
        const lines = svc.logs.filter((l) => JSON.stringify(l).includes(asset)).slice(-10);
        throw new Error(`${(err as Error).message}; last: ${JSON.stringify(last)}; logs: ${JSON.stringify(lines)}`, {
          cause: err,
        });
      }
    },
    log: (pred, what) => waitFor(() => svc.logs.find(pred), { what, timeoutMs: 15_000 }),
  };
  return stack;
}

/**
 * Records each acceptance case's outcome and prints one summary line per file at the end:
 * `acceptance: TC-002 ok, TC-003 FAILED, ...`.
 */
export function acceptanceSummary(t: { comment(m: string): void; teardown(fn: () => unknown): void }) {
  const seen: string[] = [];
  t.teardown(() => t.comment(`acceptance: ${seen.join(', ')}`));
  return (title: string, results: { ok: boolean } | null | undefined) => {
    for (const id of title.match(/TC-\d{3}/g) ?? []) seen.push(`${id} ${results?.ok ? 'ok' : 'FAILED'}`);
  };
}

/**
 * The usual precondition: one buy fill of `quantity` at `price` on `asset`, awaited until the position's size is
 * that quantity (canonical: '1.0' is '1'). `extra` adds fields to the fill (executed_at, trace_id). Returns the position.
 */
export async function givenBuy(
  s: Stack,
  asset: string,
  executionId: string,
  quantity: string,
  price: string,
  what = 'given',
  extra: object = {},
): Promise<any> {
  await s.fill({
    execution_id: executionId,
    asset,
    side: 'Buy',
    execution_quantity: quantity,
    execution_price: price,
    ...extra,
  });
  const size = new Decimal(quantity).toString();
  return s.until(asset, (p) => p.size === size, what);
}
