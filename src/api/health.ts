// GET /health (SPEC.md §5.2): the truth about the database (SELECT 1 within 1 s) and the
// broker on every call; dependencies are probed in the background and never change status.
import type { RequestHandler } from 'express';
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

interface DatabaseState {
  positions: number;
  pending: number;
  age: number;
}

async function readDatabase(rt: Runtime): Promise<DatabaseState | undefined> {
  try {
    const client = await rt.pool.connect();
    const ignore = () => undefined; // a connection lost between our queries must not be an uncaught 'error'
    client.on('error', ignore);
    try {
      await client.query("set statement_timeout = '1s'");
      const r = await client.query<{ positions: string; pending: string; age: string | null }>(
        `select (select count(*) from positions where gross_size > 0) as positions,
                (select count(*) from outbox where sent_at is null) as pending,
                (select extract(epoch from now() - min(created_at))::text from outbox where sent_at is null) as age`,
      );
      const row = r.rows[0]!;
      return { positions: Number(row.positions), pending: Number(row.pending), age: row.age === null ? 0 : Math.floor(Number(row.age)) };
    } finally {
      await client.query('reset statement_timeout').catch(() => undefined);
      client.off('error', ignore);
      client.release();
    }
  } catch {
    return undefined;
  }
}

export function healthHandler(rt: Runtime, dependencies: Record<string, Dependency>): RequestHandler {
  return async (_req, res) => {
    const db = await Promise.race([readDatabase(rt), new Promise<undefined>((r) => setTimeout(r, 1000))]);
    metrics.databaseUp.set(db ? 1 : 0);
    // Without messaging the outbox cannot drain by design; its age only matters with a broker.
    const brokerOk = !rt.broker.enabled || (rt.broker.connected && (db?.age ?? 0) <= 60);
    const status = !db ? 'unhealthy' : brokerOk ? 'healthy' : 'degraded';
    res.status(db ? 200 : 503).json({
      status,
      service: rt.config.serviceName,
      database_connected: db !== undefined,
      queue_connected: rt.broker.enabled && rt.broker.connected,
      messaging: rt.broker.enabled ? 'enabled' : 'disabled',
      positions_count: db ? db.positions : null,
      roles: rt.config.roles,
      outbox_pending: db ? db.pending : null,
      oldest_outbox_age_seconds: db ? db.age : null,
      timestamp: new Date().toISOString(),
      dependencies,
    });
  };
}
