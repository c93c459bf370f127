// Environment → typed, frozen configuration (SPEC.md §8). A bad value stops the process at
// start with one line naming the variable, its (masked) value and what is allowed.
import { z } from 'zod';

export const ROLES = ['api', 'consumer', 'relay', 'worker'] as const;
export type Role = (typeof ROLES)[number];

/** A client's key (SPEC.md R-33): `read` may GET, `write` may do everything. */
export interface ApiKey {
  name: string;
  key: string;
  scope: 'read' | 'write';
}

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;
// SPEC §8 bounds thresholds and the exposure limit only below (≥ 0); PostgreSQL's numeric
// takes any size, so the text goes to the settings table as it is.
const DECIMAL = /^\d+(\.\d+)?$/;

const int = (min: number, max: number, def: number) =>
  z
    .string()
    .trim()
    .default(String(def))
    .refine((s) => /^\d+$/.test(s) && Number(s) >= min && Number(s) <= max, {
      message: `must be a whole number between ${min} and ${max}`,
    })
    .transform(Number);

const decimal = (def: string) =>
  z
    .string()
    .trim()
    .default(def)
    .refine((s) => DECIMAL.test(s), { message: 'must be a non-negative decimal' });

const bool = (def: boolean) =>
  z
    .string()
    .trim()
    .toLowerCase()
    .default(String(def))
    .refine((s) => ['true', 'false', '1', '0', 'yes', 'no'].includes(s), { message: 'must be true or false' })
    .transform((s) => ['true', '1', 'yes'].includes(s));

const url = (protocols: string[]) =>
  z
    .string()
    .trim()
    .optional()
    .transform((s) => (s === '' ? undefined : s))
    .refine(
      (s) => {
        if (s === undefined) return true;
        try {
          return protocols.includes(new URL(s).protocol);
        } catch {
          return false;
        }
      },
      { message: `must be a URL with scheme ${protocols.map((p) => p.replace(':', '')).join(' or ')}` },
    );

const optionalText = z
  .string()
  .optional()
  .transform((s) => (s === '' ? undefined : s));

const schema = z.object({
  POSITION_MANAGER_PORT: int(1, 65535, 4800),
  POSITION_MANAGER_API_KEY: optionalText,
  POSITION_MANAGER_LOG_LEVEL: z
    .string()
    .trim()
    .toLowerCase()
    .default('info')
    .transform((s) => (s === 'warning' ? 'warn' : s))
    .refine((s) => (LOG_LEVELS as readonly string[]).includes(s), {
      message: `must be one of ${LOG_LEVELS.join(', ')}`,
    }),
  POSITION_MANAGER_SERVICE_NAME: z.string().trim().min(1).default('position-manager'),
  DATABASE_URL: url(['postgres:', 'postgresql:']),
  POSTGRES_HOST: optionalText,
  POSTGRES_PORT: int(1, 65535, 5432),
  POSTGRES_DB: z.string().default('ytrader'),
  POSTGRES_USER: z.string().default('ytrader'),
  POSTGRES_PASSWORD: optionalText,
  POSITION_MANAGER_DATA_DIR: z.string().trim().min(1).default('./data'),
  AMQP_URL: url(['amqp:', 'amqps:']),
  RABBITMQ_HOST: optionalText,
  RABBITMQ_PORT: int(1, 65535, 5672),
  RABBITMQ_USER: z.string().default('guest'),
  RABBITMQ_PASSWORD: z.string().default('guest'),
  POSITION_MANAGER_ROLES: z
    .string()
    .trim()
    .default(ROLES.join(','))
    .transform((s) => [
      ...new Set(
        s
          .split(',')
          .map((r) => r.trim().toLowerCase())
          .filter(Boolean),
      ),
    ])
    .refine((rs) => rs.length > 0 && rs.every((r) => (ROLES as readonly string[]).includes(r)), {
      message: `must be a comma-separated subset of ${ROLES.join(', ')}`,
    })
    .transform((rs) => rs as Role[]),
  POSITION_MANAGER_ORDER_EVENTS_QUEUE: z
    .string()
    .default('order-manager.order_executed,order-manager.order_events')
    .transform((s) =>
      s
        .split(',')
        .map((q) => q.trim())
        .filter(Boolean),
    )
    .refine((qs) => qs.length > 0, { message: 'must name at least one queue' }),
  POSITION_MANAGER_POSITION_EVENTS_QUEUE: z.string().trim().min(1).default('ws-gateway.position'),
  POSITION_MANAGER_EVENTS_EXCHANGE: z.string().trim().min(1).default('position-manager.events'),
  POSITION_MANAGER_SNAPSHOT_INTERVAL: int(1, 31_536_000, 3600),
  POSITION_MANAGER_VALIDATION_INTERVAL: int(1, 31_536_000, 1800),
  POSITION_MANAGER_SIZE_DISCREPANCY_GRACE_SECONDS: int(0, 3600, 30),
  POSITION_MANAGER_METRICS_CACHE_TTL: int(0, 86_400, 10),
  POSITION_MANAGER_USE_WS_AVG_PRICE: bool(true),
  POSITION_MANAGER_AVG_PRICE_DIFF_THRESHOLD: decimal('0.001'),
  POSITION_MANAGER_SIZE_VALIDATION_THRESHOLD: decimal('0.0001'),
  POSITION_MANAGER_MAX_EXPOSURE_USDT: z
    .string()
    .trim()
    .optional()
    .transform((s) => (s === '' ? undefined : s))
    .refine((s) => s === undefined || DECIMAL.test(s), { message: 'must be a non-negative decimal or empty' }),
  POSITION_MANAGER_PORTFOLIO_EVENT_INTERVAL_MS: int(100, 60_000, 1000),
  POSITION_MANAGER_METRICS_HISTORY_INTERVAL: int(1, 86_400, 60),
  POSITION_MANAGER_MATVIEW_REFRESH_INTERVAL: int(1, 86_400, 300),
  POSITION_MANAGER_SNAPSHOT_RETENTION_DAYS: int(0, 36_500, 90),
  POSITION_MANAGER_INBOX_RETENTION_DAYS: int(1, 36_500, 7),
  POSITION_MANAGER_OUTBOX_RETENTION_HOURS: int(1, 876_000, 24),
  POSITION_MANAGER_JOB_HISTORY_RETENTION_DAYS: int(1, 36_500, 30),
  POSITION_MANAGER_CONSUMER_PREFETCH: int(1, 10_000, 200),
  POSITION_MANAGER_MAX_DELIVERY_ATTEMPTS: int(1, 1000, 5),
  POSITION_MANAGER_DB_POOL_SIZE: int(1, 1000, 10),
  POSITION_MANAGER_WORKER_CONCURRENCY: int(1, 100, 4),
  POSITION_MANAGER_PRICE_STALE_SECONDS: int(0, 86_400, 60),
  POSITION_MANAGER_GRAFANA_READER_PASSWORD: optionalText,
  POSITION_MANAGER_SHUTDOWN_TIMEOUT_MS: int(100, 600_000, 10_000),
  // empty (as env.example leaves it) means the default, as for every other variable
  ORDER_MANAGER_URL: url(['http:', 'https:']).transform((s) => s ?? 'http://order-manager:4600'),
  WS_GATEWAY_URL: url(['http:', 'https:']).transform((s) => s ?? 'http://ws-gateway:4400'),
  WS_GATEWAY_API_KEY: optionalText,
  BYBIT_ENVIRONMENT: z
    .string()
    .trim()
    .toLowerCase()
    .default('mainnet')
    .refine((s) => ['mainnet', 'testnet'].includes(s), { message: 'must be mainnet or testnet' }),
  // unset: Bybit's own, chosen by BYBIT_ENVIRONMENT (see priceApiUrl below)
  POSITION_MANAGER_PRICE_API_URL: url(['http:', 'https:']),
  POSITION_MANAGER_PRICE_REFRESH_INTERVAL: int(0, 3600, 10),
  POSITION_MANAGER_PRICE_API_TIMEOUT: int(1, 60, 5),
  POSITION_MANAGER_PRICE_API_RETRIES: int(0, 10, 3),
  BYBIT_API_KEY: optionalText,
  BYBIT_API_SECRET: optionalText,
  POSITION_MANAGER_API_KEYS: optionalText,
  POSITION_MANAGER_RATE_LIMIT_ENABLED: bool(true),
  POSITION_MANAGER_RATE_LIMIT_DEFAULT: int(1, 1_000_000, 6000),
  POSITION_MANAGER_RATE_LIMIT_OVERRIDES: optionalText,
  POSITION_MANAGER_RECONCILE_INTERVAL: int(0, 86_400, 300).refine((n) => n === 0 || n >= 10, {
    message: 'must be 0 (off) or a whole number between 10 and 86400',
  }),
});

type Env = z.infer<typeof schema>;

export interface Config {
  port: number;
  apiKey: string | undefined;
  /** Every configured key: POSITION_MANAGER_API_KEY as `default` (write), then POSITION_MANAGER_API_KEYS. */
  apiKeys: ApiKey[];
  /** Requests per minute per key name; undefined when limits are off. */
  rateLimit: { perMinute: number; overrides: Record<string, number> } | undefined;
  logLevel: string;
  serviceName: string;
  /** Undefined means: run the embedded PostgreSQL in dataDir. */
  databaseUrl: string | undefined;
  dataDir: string;
  /** Undefined means messaging is disabled. */
  amqpUrl: string | undefined;
  roles: Role[];
  orderEventsQueues: string[];
  positionEventsQueue: string;
  eventsExchange: string;
  snapshotIntervalSeconds: number;
  validationIntervalSeconds: number;
  sizeDiscrepancyGraceSeconds: number;
  metricsCacheTtlSeconds: number;
  useWsAvgPrice: boolean;
  /** Decimal strings: thresholds and limits never pass through a JS number. */
  avgPriceDiffThreshold: string;
  sizeValidationThreshold: string;
  maxExposureUsdt: string | undefined;
  portfolioEventIntervalMs: number;
  metricsHistoryIntervalSeconds: number;
  matviewRefreshIntervalSeconds: number;
  snapshotRetentionDays: number;
  inboxRetentionDays: number;
  outboxRetentionHours: number;
  jobHistoryRetentionDays: number;
  consumerPrefetch: number;
  maxDeliveryAttempts: number;
  dbPoolSize: number;
  workerConcurrency: number;
  priceStaleSeconds: number;
  grafanaReaderPassword: string | undefined;
  shutdownTimeoutMs: number;
  orderManagerUrl: string;
  wsGatewayUrl: string;
  /** Undefined: no subscription at the Gateway. */
  wsGatewayApiKey: string | undefined;
  bybitEnvironment: string;
  priceApiUrl: string;
  /** 0: mark prices are not refreshed. */
  priceRefreshIntervalSeconds: number;
  priceApiTimeoutSeconds: number;
  priceApiRetries: number;
  /** Read-only exchange key for reconciliation; both unset: off. */
  bybitApiKey: string | undefined;
  bybitApiSecret: string | undefined;
  /** 0, or no Bybit key: no reconciliation. */
  reconcileIntervalSeconds: number;
}

export class ConfigError extends Error {}

const SECRET = /PASSWORD|API_KEY|SECRET/;

function masked(name: string, value: unknown): string {
  if (value === undefined) return '(unset)';
  const text = String(value);
  if (SECRET.test(name)) return '"***"';
  return JSON.stringify(redactUrl(text));
}

/** Hides the password of a URL, for logs and messages. */
export function redactUrl(text: string): string {
  try {
    const u = new URL(text);
    if (u.password) u.password = '***';
    return u.password || u.username ? u.toString() : text;
  } catch {
    return redactCredentials(text);
  }
}

// `user:password@` where a URL parser gives up (a missing scheme, a bad port) or inside free
// text such as an error message. The password runs to the last `@` of its word, so one
// containing `@` or `/` is hidden whole; a password never starts with `//` (that is a scheme).
const USERINFO = /(^|\/\/|[\s"'=])([^\s:/@"']*):(?!\/\/)\S*@/g;

/** Hides every password that stands in a `user:password@` shape of this text. */
export function redactCredentials(text: string): string {
  return text.replace(USERINFO, '$1$2:***@');
}

const KEY_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

// `name:key:scope,...` beside the single key (named `default`, scope write). A bad entry stops the
// process naming the variable and the entry by its place and name, never by its key.
function apiKeys(env: Env): ApiKey[] {
  const keys: ApiKey[] = env.POSITION_MANAGER_API_KEY
    ? [{ name: 'default', key: env.POSITION_MANAGER_API_KEY, scope: 'write' }]
    : [];
  const bad = (what: string) => {
    throw new ConfigError(
      `POSITION_MANAGER_API_KEYS ${what}; expected name:key:scope,... (scope read or write, keys of 16 characters or more), got "***"`,
    );
  };
  const entries = (env.POSITION_MANAGER_API_KEYS ?? '')
    .split(',')
    .map((e) => e.trim())
    .filter(Boolean);
  entries.forEach((entry, i) => {
    const parts = entry.split(':');
    if (parts.length !== 3) bad(`entry ${i + 1} does not have three parts`);
    const [name, key, scope] = parts.map((x) => x.trim()) as [string, string, string];
    if (!KEY_NAME.test(name)) bad(`entry ${i + 1} has a name that is not 1-64 letters, digits, '_', '.' or '-'`);
    if (key.length < 16) bad(`key "${name}" is shorter than 16 characters`);
    if (scope !== 'read' && scope !== 'write') bad(`key "${name}" has scope "${scope.slice(0, 20)}"`);
    if (keys.some((k) => k.name === name))
      bad(`names "${name}" twice${name === 'default' ? ' (POSITION_MANAGER_API_KEY is "default")' : ''}`);
    if (keys.some((k) => k.key === key))
      bad(`gives key "${name}" the same key as "${keys.find((k) => k.key === key)!.name}"`);
    keys.push({ name, key, scope: scope as ApiKey['scope'] });
  });
  return keys;
}

// `name:limit,...`, each name one of the keys'.
function rateOverrides(env: Env, keys: ApiKey[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const entry of (env.POSITION_MANAGER_RATE_LIMIT_OVERRIDES ?? '')
    .split(',')
    .map((e) => e.trim())
    .filter(Boolean)) {
    const [name = '', limit = '', ...rest] = entry.split(':').map((x) => x.trim());
    const fail = (what: string) => {
      throw new ConfigError(
        `POSITION_MANAGER_RATE_LIMIT_OVERRIDES ${what}; expected name:limit,... (limit 1-1000000 per minute), got ${JSON.stringify(env.POSITION_MANAGER_RATE_LIMIT_OVERRIDES)}`,
      );
    };
    if (rest.length || !/^\d+$/.test(limit) || Number(limit) < 1 || Number(limit) > 1_000_000)
      fail(`entry "${entry.slice(0, 80)}" is not name:limit`);
    if (!keys.some((k) => k.name === name)) fail(`names "${name}", which is not a configured key`);
    if (name in out) fail(`names "${name}" twice`);
    out[name] = Number(limit);
  }
  return out;
}

function databaseUrl(env: Env): string | undefined {
  if (env.DATABASE_URL) return env.DATABASE_URL;
  if (!env.POSTGRES_HOST) return undefined;
  const u = new URL('postgresql://localhost');
  u.hostname = env.POSTGRES_HOST;
  u.port = String(env.POSTGRES_PORT);
  u.username = env.POSTGRES_USER;
  if (env.POSTGRES_PASSWORD) u.password = env.POSTGRES_PASSWORD;
  u.pathname = `/${env.POSTGRES_DB}`;
  return u.toString();
}

function amqpUrl(env: Env): string | undefined {
  if (env.AMQP_URL) return env.AMQP_URL;
  if (!env.RABBITMQ_HOST) return undefined;
  const u = new URL('amqp://localhost');
  u.hostname = env.RABBITMQ_HOST;
  u.port = String(env.RABBITMQ_PORT);
  u.username = env.RABBITMQ_USER;
  u.password = env.RABBITMQ_PASSWORD;
  return u.toString();
}

/** Parses the environment; throws ConfigError with one line per bad variable. */
export function loadConfig(source: NodeJS.ProcessEnv = process.env): Readonly<Config> {
  const parsed = schema.safeParse(source);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((issue) => {
      const name = String(issue.path[0]);
      return `${name} ${issue.message}, got ${masked(name, source[name])}`;
    });
    throw new ConfigError(lines.join('\n'));
  }
  const env = parsed.data;
  if (Boolean(env.BYBIT_API_KEY) !== Boolean(env.BYBIT_API_SECRET)) {
    const missing = env.BYBIT_API_KEY ? 'BYBIT_API_SECRET' : 'BYBIT_API_KEY';
    throw new ConfigError(
      `${missing} is required with ${missing === 'BYBIT_API_KEY' ? 'BYBIT_API_SECRET' : 'BYBIT_API_KEY'} (reconciliation needs both), got (unset)`,
    );
  }
  const dbUrl = databaseUrl(env);
  const keys = apiKeys(env);
  if (env.POSITION_MANAGER_ROLES.includes('api') && dbUrl !== undefined && keys.length === 0) {
    throw new ConfigError(
      'POSITION_MANAGER_API_KEY is required with the api role when a database is configured (or POSITION_MANAGER_API_KEYS), got (unset)',
    );
  }
  return Object.freeze({
    port: env.POSITION_MANAGER_PORT,
    apiKey: env.POSITION_MANAGER_API_KEY,
    apiKeys: keys,
    rateLimit: env.POSITION_MANAGER_RATE_LIMIT_ENABLED
      ? { perMinute: env.POSITION_MANAGER_RATE_LIMIT_DEFAULT, overrides: rateOverrides(env, keys) }
      : undefined,
    logLevel: env.POSITION_MANAGER_LOG_LEVEL,
    serviceName: env.POSITION_MANAGER_SERVICE_NAME,
    databaseUrl: dbUrl,
    dataDir: env.POSITION_MANAGER_DATA_DIR,
    amqpUrl: amqpUrl(env),
    roles: env.POSITION_MANAGER_ROLES,
    orderEventsQueues: env.POSITION_MANAGER_ORDER_EVENTS_QUEUE,
    positionEventsQueue: env.POSITION_MANAGER_POSITION_EVENTS_QUEUE,
    eventsExchange: env.POSITION_MANAGER_EVENTS_EXCHANGE,
    snapshotIntervalSeconds: env.POSITION_MANAGER_SNAPSHOT_INTERVAL,
    validationIntervalSeconds: env.POSITION_MANAGER_VALIDATION_INTERVAL,
    sizeDiscrepancyGraceSeconds: env.POSITION_MANAGER_SIZE_DISCREPANCY_GRACE_SECONDS,
    metricsCacheTtlSeconds: env.POSITION_MANAGER_METRICS_CACHE_TTL,
    useWsAvgPrice: env.POSITION_MANAGER_USE_WS_AVG_PRICE,
    avgPriceDiffThreshold: env.POSITION_MANAGER_AVG_PRICE_DIFF_THRESHOLD,
    sizeValidationThreshold: env.POSITION_MANAGER_SIZE_VALIDATION_THRESHOLD,
    maxExposureUsdt: env.POSITION_MANAGER_MAX_EXPOSURE_USDT,
    portfolioEventIntervalMs: env.POSITION_MANAGER_PORTFOLIO_EVENT_INTERVAL_MS,
    metricsHistoryIntervalSeconds: env.POSITION_MANAGER_METRICS_HISTORY_INTERVAL,
    matviewRefreshIntervalSeconds: env.POSITION_MANAGER_MATVIEW_REFRESH_INTERVAL,
    snapshotRetentionDays: env.POSITION_MANAGER_SNAPSHOT_RETENTION_DAYS,
    inboxRetentionDays: env.POSITION_MANAGER_INBOX_RETENTION_DAYS,
    outboxRetentionHours: env.POSITION_MANAGER_OUTBOX_RETENTION_HOURS,
    jobHistoryRetentionDays: env.POSITION_MANAGER_JOB_HISTORY_RETENTION_DAYS,
    consumerPrefetch: env.POSITION_MANAGER_CONSUMER_PREFETCH,
    maxDeliveryAttempts: env.POSITION_MANAGER_MAX_DELIVERY_ATTEMPTS,
    dbPoolSize: env.POSITION_MANAGER_DB_POOL_SIZE,
    workerConcurrency: env.POSITION_MANAGER_WORKER_CONCURRENCY,
    priceStaleSeconds: env.POSITION_MANAGER_PRICE_STALE_SECONDS,
    grafanaReaderPassword: env.POSITION_MANAGER_GRAFANA_READER_PASSWORD,
    shutdownTimeoutMs: env.POSITION_MANAGER_SHUTDOWN_TIMEOUT_MS,
    orderManagerUrl: env.ORDER_MANAGER_URL,
    wsGatewayUrl: env.WS_GATEWAY_URL,
    wsGatewayApiKey: env.WS_GATEWAY_API_KEY,
    bybitEnvironment: env.BYBIT_ENVIRONMENT,
    priceApiUrl:
      env.POSITION_MANAGER_PRICE_API_URL ??
      (env.BYBIT_ENVIRONMENT === 'testnet' ? 'https://api-testnet.bybit.com' : 'https://api.bybit.com'),
    priceRefreshIntervalSeconds: env.POSITION_MANAGER_PRICE_REFRESH_INTERVAL,
    priceApiTimeoutSeconds: env.POSITION_MANAGER_PRICE_API_TIMEOUT,
    priceApiRetries: env.POSITION_MANAGER_PRICE_API_RETRIES,
    bybitApiKey: env.BYBIT_API_KEY,
    bybitApiSecret: env.BYBIT_API_SECRET,
    reconcileIntervalSeconds: env.BYBIT_API_KEY && env.BYBIT_API_SECRET ? env.POSITION_MANAGER_RECONCILE_INTERVAL : 0,
  });
}
export const CONFIG_VARIABLES: readonly string[] = Object.freeze(Object.keys(schema.shape));
