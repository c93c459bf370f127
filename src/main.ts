// Starts the roles named in POSITION_MANAGER_ROLES (api, consumer, relay, worker) in one
// process, and stops them cleanly on SIGTERM/SIGINT within the shutdown timeout.
import type { Server } from 'node:http';
import type pg from 'pg';
import { checkApiKeys, ConfigError, loadConfig, redactUrl, type Role } from './config.js';
import { createLogger, safeError } from './log.js';
import { createPool } from './db/pool.js';
import { isConnectionError } from './db/errors.js';
import { migrate } from './db/migrate.js';
import { settleSettings } from './db/settings.js';
import { persistentSecret, startEmbedded, type EmbeddedDatabase } from './db/embedded.js';
import { createApp, type HttpApp } from './api/app.js';
import { answerClientErrors } from './api/problem.js';
import { startMessaging } from './messaging/index.js';
import { startWorker } from './jobs/index.js';
import { initialChecks, type Component, type Runtime } from './runtime.js';

async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig();
    checkApiKeys(config);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`position-manager: invalid configuration\n${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
  const log = createLogger({ level: config.logLevel, service: config.serviceName, role: config.roles.join(',') });
  const has = (role: Role) => config.roles.includes(role);

  // What has been started so far; stop() releases it newest first, on a signal (exit 0) or
  // on a failed start (exit 1).
  const components: Component[] = [];
  let embedded: EmbeddedDatabase | undefined;
  let pool: pg.Pool | undefined;
  let server: Server | undefined;
  let stopping = false;
  const stop = async (exitCode: number, signal?: string) => {
    if (stopping) return;
    stopping = true;
    const timer = setTimeout(() => {
      log.error('shutdown timed out');
      process.exit(1);
    }, config.shutdownTimeoutMs);
    timer.unref();
    log.info({ exit_code: exitCode, ...(signal ? { signal } : {}) }, 'shutting down');
    await closeHttp(server, config.shutdownTimeoutMs / 2);
    for (const c of [...components].reverse()) {
      try {
        await c.stop();
      } catch (err) {
        log.error({ err, component: c.name }, 'error while stopping');
      }
    }
    await pool?.end().catch(() => undefined);
    if (embedded) await embedded.stop().catch(() => undefined);
    log.info('stopped');
    process.exit(exitCode);
  };

  let http: HttpApp;
  try {
    let databaseUrl = config.databaseUrl;
    let apiKeys = config.apiKeys;
    if (databaseUrl === undefined) {
      embedded = await startEmbedded(config.dataDir, log);
      databaseUrl = embedded.url;
      if (apiKeys.length === 0 && has('api')) {
        const key = persistentSecret(config.dataDir, 'api-key');
        apiKeys = [{ name: 'default', key: key.value, scope: 'write' }];
        log.info({ api_key_file: key.path }, 'generated API key stored in the data folder');
      }
    }
    if (config.apiKey !== undefined && config.apiKey.length < 16)
      log.warn('POSITION_MANAGER_API_KEY is shorter than 16 characters');

    await migrate(databaseUrl, { log: (m) => log.info(m) });
    pool = createPool(databaseUrl, config.dbPoolSize, config.serviceName);
    await settleSettings(pool, config, log, embedded !== undefined);
    // Only the consumer and relay roles use the broker: an api or worker process with AMQP_URL
    // set has no connection to keep, so its health must not hinge on one.
    const messaging = config.amqpUrl !== undefined && (has('consumer') || has('relay'));
    log.info(
      { database: redactUrl(databaseUrl), roles: config.roles, messaging: messaging ? 'enabled' : 'disabled' },
      'starting',
    );

    const rt: Runtime = {
      config,
      log,
      pool,
      databaseUrl,
      apiKeys,
      broker: { enabled: messaging, connected: false, detachedConsumers: new Set() },
      checks: initialChecks(),
    };
    if (config.amqpUrl === undefined)
      log.warn('no AMQP configuration: consumers and relay are off, events wait in the outbox');

    if (messaging) components.push(...(await startMessaging(rt, { consumer: has('consumer'), relay: has('relay') })));
    if (has('worker')) components.push(...(await startWorker(rt)));

    http = createApp(rt, { api: has('api') });
    components.push(...http.components);
  } catch (err) {
    log.fatal({ err: safeError(err) }, 'failed to start');
    return stop(1);
  }

  // Express 5 hands a bind error (EADDRINUSE, EACCES) to the listen callback instead of
  // throwing: without a socket the process is useless, so it stops and exits non-zero.
  try {
    server = await new Promise<Server>((ok, fail) => {
      const s = http.app.listen(config.port, (err?: Error) => (err ? fail(err) : ok(s)));
    });
  } catch (err) {
    log.fatal({ err, port: config.port }, 'cannot listen');
    return stop(1);
  }
  answerClientErrors(server);
  log.info({ port: config.port }, 'listening');

  const shutdown = (signal: string) => void stop(0, signal);
  // A connection that drops while no query is waiting on it surfaces as a stray 'error' event;
  // every component reconnects by itself, so that is logged, not fatal. Anything else is a bug:
  // exit non-zero and let the supervisor restart a clean process (nothing is acked uncommitted).
  const onStray = (err: unknown) => {
    if (isConnectionError(err)) return log.error({ err: (err as Error).message }, 'connection lost outside a request');
    log.fatal({ err }, 'uncaught error');
    process.exit(1);
  };
  process.on('uncaughtException', onStray);
  process.on('unhandledRejection', onStray);
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

// Only for a failure before the logger exists; everything later is logged as JSON.
main().catch((err) => {
  const e = safeError(err);
  process.stderr.write(`position-manager: failed to start: ${e.stack ?? e.message}\n`);
  process.exit(1);
});

// Stops accepting connections and closes idle ones; requests in flight finish and get their
// answer (a write may have committed: the client must learn it), for at most graceMs.
async function closeHttp(server: Server | undefined, graceMs: number): Promise<void> {
  if (!server) return;
  const closed = new Promise<void>((ok) => server.close(() => ok()));
  server.closeIdleConnections();
  const cut = setTimeout(() => server.closeAllConnections(), graceMs);
  await closed;
  clearTimeout(cut);
}
