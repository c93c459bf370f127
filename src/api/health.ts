// GET /health (SPEC.md §5.2): the truth about the database (SELECT 1 within 1 s) and the
// broker (connection and every consumer attached) on every call; dependencies are probed in
// the background and never change status.
import type { RequestHandler } from 'express';
import type { Monitor } from '../db/monitor.js';
import { metrics } from '../metrics.js';
import type { Runtime } from '../runtime.js';

type Dependency = 'up' | 'down' | 'unknown';

export function probeDependencies(rt: Runtime): { state: Record<string, Dependency>; stop(): void } {
  const state: Record<string, Dependency> = { order_manager: 'unknown', ws_gateway: 'unknown' };
  const targets = { order_manager: rt.config.orderManagerUrl, ws_gateway: rt.config.wsGatewayUrl };
  const probe = async () => {
    for (const [name, url] of Object.entries(targets)) {
      try {
        const res = await fetch(new URL('/health', url), { signal: AbortSignal.timeout(2000) });
        state[name] = res.ok ? 'up' : 'down';
      } catch {
        state[name] = 'down';
      }
    }
  };
  const timer = setInterval(() => void probe(), 30_000);
  timer.unref();
  void probe();
  return { state, stop: () => clearInterval(timer) };
}

export function healthHandler(rt: Runtime, monitor: Monitor, dependencies: Record<string, Dependency>): RequestHandler {
  return async (_req, res) => {
    // Connectivity alone decides "unhealthy"; the figures are best effort (null when the
    // database is too slow to count them), so a lock on positions or outbox is not an outage.
    const [up, counted] = await Promise.all([monitor.ping(), monitor.figures()]);
    metrics.databaseUp.set(up ? 1 : 0);
    const figures = up ? counted : undefined;
    const { broker } = rt;
    const queueConnected = broker.enabled && broker.connected && broker.detachedConsumers.size === 0;
    // Rows waiting over 60 s mean no relay is publishing, whichever process is asked; without any
    // AMQP configuration they cannot leave by design, so there it is no fault.
    const outboxStuck = rt.config.amqpUrl !== undefined && (figures?.outboxOldestAgeSeconds ?? 0) > 60;
    const { checks } = rt;
    // An outside service that keeps failing degrades the service; it never makes it unhealthy.
    const outsideFailing =
      checks.wsGatewaySubscription === 'failing' ||
      checks.prices.state === 'failing' ||
      checks.exchangeReconcile.state === 'failing';
    const status = !up
      ? 'unhealthy'
      : (broker.enabled && !queueConnected) || outboxStuck || outsideFailing
        ? 'degraded'
        : 'healthy';
    // SPEC.md §5.2: "disabled" means no AMQP configuration; a process whose roles use no broker
    // holds no connection, so it has no queue_connected to report.
    const brokerRoles = rt.config.roles.includes('consumer') || rt.config.roles.includes('relay');
    const messaging = rt.config.amqpUrl === undefined ? 'disabled' : brokerRoles ? 'enabled' : 'not_in_this_process';
    res.status(up ? 200 : 503).json({
      status,
      service: rt.config.serviceName,
      database_connected: up,
      ...(messaging === 'not_in_this_process' ? {} : { queue_connected: queueConnected }),
      messaging,
      positions_count: figures ? figures.open['one-way'] + figures.open.hedge : null,
      roles: rt.config.roles,
      outbox_pending: figures ? figures.outboxPending : null,
      oldest_outbox_age_seconds: figures ? Math.floor(figures.outboxOldestAgeSeconds) : null,
      timestamp: new Date().toISOString(),
      dependencies,
      checks: {
        ws_gateway_subscription: checks.wsGatewaySubscription,
        prices: {
          source: checks.prices.state,
          last_success_at: checks.prices.lastSuccessAt,
          stale_open_positions: figures ? figures.staleOpen : null,
        },
        exchange_reconcile: {
          state: checks.exchangeReconcile.state,
          last_success_at: checks.exchangeReconcile.lastSuccessAt,
        },
      },
    });
  };
}
