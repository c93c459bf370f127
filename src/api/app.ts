// The HTTP server every process runs: /health and /metrics always; /api/v1, /openapi.yaml and
// /docs with the api role. Order matters: trace id, then auth (before any validation), then
// the contract checks (contract.ts), the routes, and one error mapper.
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import express, { type Request, type RequestHandler } from 'express';
import { listen, type Listener } from '../db/listen.js';
import { createMonitor } from '../db/monitor.js';
import { BROKER_UP, metrics, readFiguresAtScrape, registry } from '../metrics.js';
import { OPENAPI_PATH } from '../paths.js';
import type { Component, Runtime } from '../runtime.js';
import { authenticate } from './auth.js';
import { MetricsCache } from './cache.js';
import { contractChecks } from './contract.js';
import { docsRoutes } from './docs.js';
import { healthHandler, probeDependencies } from './health.js';
import { errorMapper, notFound } from './problem.js';
import { failedAuthLimiter, keyLimiter } from './rate-limits.js';
import { apiRoutes, responseCompression } from './routes.js';

const TRACE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

// The route label is a template, never the path a client sent (anonymous junk paths would
// make unbounded series): the validator's match for /api/v1 (set even when it rejects the
// parameters; req.baseUrl is gone by 'finish' when a routed request failed), else the app-level
// route, else one fixed label (401 before any matching, unknown paths, methods not served).
function routeLabel(req: Request): string {
  const api = (req as Request & { openapi?: { expressRoute?: string } }).openapi?.expressRoute;
  return api ?? (req.route as { path?: string } | undefined)?.path ?? 'unmatched';
}

function traceAndTiming(rt: Runtime): RequestHandler {
  return (req, res, next) => {
    const given = req.get('x-trace-id');
    const traceId = given && TRACE_ID.test(given) ? given : randomUUID();
    res.locals.traceId = traceId;
    res.locals.log = rt.log.child({ trace_id: traceId });
    res.setHeader('X-Trace-Id', traceId);
    const started = process.hrtime.bigint();
    res.on('finish', () => {
      const route = routeLabel(req);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      metrics.httpDuration.observe({ method: req.method, route, status: String(res.statusCode) }, seconds);
      metrics.httpRequests.inc({
        method: req.method,
        route,
        status: String(res.statusCode),
        client: (res.locals.client as string) ?? 'anonymous',
      });
      (res.locals.log as Runtime['log']).debug(
        { method: req.method, route, status: res.statusCode, ms: seconds * 1000 },
        'request',
      );
    });
    next();
  };
}

export interface HttpApp {
  app: express.Express;
  components: Component[];
}

export function createApp(rt: Runtime, options: { api: boolean }): HttpApp {
  const app = express();
  app.disable('x-powered-by');
  // Responses are Cache-Control: no-store and the contract has no 304: no ETag, and no request
  // is ever "fresh" (res.send answers 304 when it is, and `If-None-Match: *` is even without an ETag).
  app.set('etag', false);
  Object.defineProperty(app.request, 'fresh', { configurable: true, get: () => false });
  app.set('query parser', 'simple');
  app.use(traceAndTiming(rt));
  app.use(responseCompression());
  const dependencies = probeDependencies(rt);
  const components: Component[] = [{ name: 'dependency probe', stop: () => Promise.resolve(dependencies.stop()) }];

  const monitor = createMonitor(rt.databaseUrl, rt.config.serviceName);
  components.push({ name: 'database monitor', stop: () => monitor.close() });
  readFiguresAtScrape(() => monitor.figures());
  registry.setDefaultLabels({ service: rt.config.serviceName });
  // A process that uses no broker has none to report: a 0 there would read as an outage.
  if (!rt.broker.enabled) registry.removeSingleMetric(BROKER_UP);

  app.get('/health', healthHandler(rt, monitor, dependencies.state));
  app.get('/metrics', async (_req, res) => {
    metrics.databaseUp.set((await monitor.ping()) ? 1 : 0);
    res.type(registry.contentType).send(await registry.metrics());
  });

  if (options.api) {
    const spec = readFileSync(OPENAPI_PATH, 'utf8');
    app.get('/openapi.yaml', (_req, res) => void res.type('application/yaml').send(spec));
    app.use(docsRoutes());
    let listener: Listener | undefined;
    if (rt.config.metricsCacheTtlSeconds > 0) {
      listener = listen(rt.databaseUrl, ['position_manager_changes'], rt.log);
      components.push({ name: 'cache listener', stop: () => listener!.close() });
    }
    // Tests run the service with NODE_ENV=test: every response is checked against the contract.
    const validateResponses = rt.config.nodeEnv === 'test';
    const cache = new MetricsCache(rt.config.metricsCacheTtlSeconds * 1000, listener);
    app.use('/api/v1', (_req, res, next) => {
      res.setHeader('Cache-Control', 'no-store');
      next();
    });
    const limits = rt.config.rateLimit;
    app.use('/api/v1', authenticate(rt.apiKeys, rt.log, limits ? failedAuthLimiter(rt.log) : undefined));
    if (limits) app.use('/api/v1', keyLimiter(limits, rt.log));
    app.use(contractChecks(validateResponses));
    app.use('/api/v1', apiRoutes(rt.pool, cache, validateResponses));
  }
  app.use(notFound);
  app.use(errorMapper(rt.log));
  return { app, components };
}
