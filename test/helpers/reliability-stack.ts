// Starting the service for the reliability and outage scenarios: a fresh database and vhost
// (the database optionally behind a TCP proxy that can cut it), and a service process with the
// given roles, resolved once the roles that matter to the scenario have started.
import { freshBroker, type TestBroker } from './amqp.js';
import { freshDatabase, type TestDb } from './db.js';
import { tcpProxy, type Proxy } from './proxy.js';
import { rolesStarted, startService, type RunningService } from './service.js';

type Teardown = Parameters<typeof freshBroker>[0];

export interface WorkerOptions {
  /** POSITION_MANAGER_ROLES; default consumer and relay. */
  roles?: string;
  /** The roles to wait for; default consumer and relay. */
  started?: string[];
  env?: Record<string, string>;
  /** Where the service finds the database; default the test database itself. */
  databaseUrl?: string;
}

/** One service process on `db` and `broker`, resolved once its `started` roles run. */
export async function startWorker(
  t: Teardown,
  db: { url: string },
  broker: { url: string },
  { roles = 'consumer,relay', started = ['consumer', 'relay'], env = {}, databaseUrl = db.url }: WorkerOptions = {},
): Promise<RunningService> {
  const svc = await startService(t, {
    databaseUrl,
    amqpUrl: broker.url,
    env: { POSITION_MANAGER_ROLES: roles, ...env },
  });
  await rolesStarted(svc, started);
  return svc;
}

/** A fresh database, a fresh vhost, and a service on them (reaching the database through a proxy). */
export async function proxiedStack(
  t: Teardown,
  options: Omit<WorkerOptions, 'databaseUrl'> = {},
): Promise<{ db: TestDb; broker: TestBroker; proxy: Proxy; svc: RunningService }> {
  const db = await freshDatabase(t);
  const broker = await freshBroker(t);
  const proxy = await tcpProxy(t);
  const svc = await startWorker(t, db, broker, {
    roles: 'api,consumer,relay',
    ...options,
    databaseUrl: proxy.url(db.url),
  });
  return { db, broker, proxy, svc };
}
