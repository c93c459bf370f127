// Environment → typed, frozen configuration (SPEC.md §8). A bad value stops the process at
// start with one line naming the variable, its (masked) value and what is allowed.
import { z } from 'zod';

const ROLES = ['api', 'consumer', 'relay', 'worker'] as const;
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

const optionalText = () =>
  z
    .string()
    .optional()
    .transform((s) => (s === '' ? undefined : s));

// Each Config field names the environment variable it is read from, once: the registry maps a
// field's schema to its variable, for reading the environment and for error messages.
const variables = z.registry<{ name: string }>();
const from = <T extends z.ZodType>(name: string, schema: T): T => {
  variables.add(schema, { name });
  return schema;
};

// Variables whose value is a Config field as it is.
const fields = z.object({
  port: from('POSITION_MANAGER_PORT', int(1, 65535, 4800)),
  apiKey: from('POSITION_MANAGER_API_KEY', optionalText()),
  logLevel: from(
    'POSITION_MANAGER_LOG_LEVEL',
    z
      .string()
      .trim()
      .toLowerCase()
      .default('info')
      .transform((s) => (s === 'warning' ? 'warn' : s))
      .refine((s) => (LOG_LEVELS as readonly string[]).includes(s), {
        message: `must be one of ${LOG_LEVELS.join(', ')}`,
      }),
  ),
  serviceName: from('POSITION_MANAGER_SERVICE_NAME', z.string().trim().min(1).default('position-manager')),
  dataDir: from('POSITION_MANAGER_DATA_DIR', z.string().trim().min(1).default('./data')),
  roles: from(
    'POSITION_MANAGER_ROLES',
    z
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
  ),
  orderEventsQueues: from(
    'POSITION_MANAGER_ORDER_EVENTS_QUEUE',
    z
      .string()
      .default('order-manager.order_executed,order-manager.order_events')
      .transform((s) =>
        s
          .split(',')
          .map((q) => q.trim())
          .filter(Boolean),
      )
      .refine((qs) => qs.length > 0, { message: 'must name at least one queue' }),
  ),
  positionEventsQueue: from(
    'POSITION_MANAGER_POSITION_EVENTS_QUEUE',
    z.string().trim().min(1).default('ws-gateway.position'),
  ),
  eventsExchange: from('POSITION_MANAGER_EVENTS_EXCHANGE', z.string().trim().min(1).default('position-manager.events')),
  snapshotIntervalSeconds: from('POSITION_MANAGER_SNAPSHOT_INTERVAL', int(1, 31_536_000, 3600)),
  validationIntervalSeconds: from('POSITION_MANAGER_VALIDATION_INTERVAL', int(1, 31_536_000, 1800)),
  sizeDiscrepancyGraceSeconds: from('POSITION_MANAGER_SIZE_DISCREPANCY_GRACE_SECONDS', int(0, 3600, 30)),
  metricsCacheTtlSeconds: from('POSITION_MANAGER_METRICS_CACHE_TTL', int(0, 86_400, 10)),
  useWsAvgPrice: from('POSITION_MANAGER_USE_WS_AVG_PRICE', bool(true)),
  /** Decimal strings: thresholds and limits never pass through a JS number. */
  avgPriceDiffThreshold: from('POSITION_MANAGER_AVG_PRICE_DIFF_THRESHOLD', decimal('0.001')),
  sizeValidationThreshold: from('POSITION_MANAGER_SIZE_VALIDATION_THRESHOLD', decimal('0.0001')),
  maxExposureUsdt: from(
    'POSITION_MANAGER_MAX_EXPOSURE_USDT',
    z
      .string()
      .trim()
      .optional()
      .transform((s) => (s === '' ? undefined : s))
      .refine((s) => s === undefined || DECIMAL.test(s), { message: 'must be a non-negative decimal or empty' }),
  ),
  portfolioEventIntervalMs: from('POSITION_MANAGER_PORTFOLIO_EVENT_INTERVAL_MS', int(100, 60_000, 1000)),
  metricsHistoryIntervalSeconds: from('POSITION_MANAGER_METRICS_HISTORY_INTERVAL', int(1, 86_400, 60)),
  matviewRefreshIntervalSeconds: from('POSITION_MANAGER_MATVIEW_REFRESH_INTERVAL', int(1, 86_400, 300)),
  snapshotRetentionDays: from('POSITION_MANAGER_SNAPSHOT_RETENTION_DAYS', int(0, 36_500, 90)),
  inboxRetentionDays: from('POSITION_MANAGER_INBOX_RETENTION_DAYS', int(1, 36_500, 7)),
  outboxRetentionHours: from('POSITION_MANAGER_OUTBOX_RETENTION_HOURS', int(1, 876_000, 24)),
  jobHistoryRetentionDays: from('POSITION_MANAGER_JOB_HISTORY_RETENTION_DAYS', int(1, 36_500, 30)),
  consumerPrefetch: from('POSITION_MANAGER_CONSUMER_PREFETCH', int(1, 10_000, 200)),
  maxDeliveryAttempts: from('POSITION_MANAGER_MAX_DELIVERY_ATTEMPTS', int(1, 1000, 5)),
  dbPoolSize: from('POSITION_MANAGER_DB_POOL_SIZE', int(1, 1000, 10)),
  workerConcurrency: from('POSITION_MANAGER_WORKER_CONCURRENCY', int(1, 100, 4)),
  priceStaleSeconds: from('POSITION_MANAGER_PRICE_STALE_SECONDS', int(0, 86_400, 60)),
  grafanaReaderPassword: from('POSITION_MANAGER_GRAFANA_READER_PASSWORD', optionalText()),
  shutdownTimeoutMs: from('POSITION_MANAGER_SHUTDOWN_TIMEOUT_MS', int(100, 600_000, 10_000)),
  // empty (as env.example leaves it) means the default, as for every other variable
  orderManagerUrl: from(
    'ORDER_MANAGER_URL',
    url(['http:', 'https:']).transform((s) => s ?? 'http://order-manager:4600'),
  ),
  wsGatewayUrl: from(
    'WS_GATEWAY_URL',
    url(['http:', 'https:']).transform((s) => s ?? 'http://ws-gateway:4400'),
  ),
  /** Undefined: no subscription at the Gateway. */
  wsGatewayApiKey: from('WS_GATEWAY_API_KEY', optionalText()),
  bybitEnvironment: from(
    'BYBIT_ENVIRONMENT',
    z
      .string()
      .trim()
      .toLowerCase()
      .default('mainnet')
      .refine((s) => ['mainnet', 'testnet'].includes(s), { message: 'must be mainnet or testnet' }),
  ),
  /** 0: mark prices are not refreshed. */
  priceRefreshIntervalSeconds: from('POSITION_MANAGER_PRICE_REFRESH_INTERVAL', int(0, 3600, 10)),
  priceApiTimeoutSeconds: from('POSITION_MANAGER_PRICE_API_TIMEOUT', int(1, 60, 5)),
  priceApiRetries: from('POSITION_MANAGER_PRICE_API_RETRIES', int(0, 10, 3)),
  /** Read-only exchange key for reconciliation; both unset: off. */
  bybitApiKey: from('BYBIT_API_KEY', optionalText()),
  bybitApiSecret: from('BYBIT_API_SECRET', optionalText()),
  /** `test`: every API response is checked against openapi.yaml (a response that breaks it is a 500). */
  nodeEnv: from('NODE_ENV', optionalText()),
});

// Variables that Config fields are built from (see loadConfig).
const inputs = z.object({
  databaseUrl: from('DATABASE_URL', url(['postgres:', 'postgresql:'])),
  postgresHost: from('POSTGRES_HOST', optionalText()),
  postgresPort: from('POSTGRES_PORT', int(1, 65535, 5432)),
  postgresDb: from('POSTGRES_DB', z.string().default('ytrader')),
  postgresUser: from('POSTGRES_USER', z.string().default('ytrader')),
  postgresPassword: from('POSTGRES_PASSWORD', optionalText()),
  amqpUrl: from('AMQP_URL', url(['amqp:', 'amqps:'])),
  rabbitmqHost: from('RABBITMQ_HOST', optionalText()),
  rabbitmqPort: from('RABBITMQ_PORT', int(1, 65535, 5672)),
  rabbitmqUser: from('RABBITMQ_USER', z.string().default('guest')),
  rabbitmqPassword: from('RABBITMQ_PASSWORD', z.string().default('guest')),
  // unset: Bybit's own, chosen by BYBIT_ENVIRONMENT
  priceApiUrl: from('POSITION_MANAGER_PRICE_API_URL', url(['http:', 'https:'])),
  apiKeyList: from('POSITION_MANAGER_API_KEYS', optionalText()),
  rateLimitEnabled: from('POSITION_MANAGER_RATE_LIMIT_ENABLED', bool(true)),
  rateLimitDefault: from('POSITION_MANAGER_RATE_LIMIT_DEFAULT', int(1, 1_000_000, 6000)),
  rateLimitOverrides: from('POSITION_MANAGER_RATE_LIMIT_OVERRIDES', optionalText()),
  reconcileInterval: from(
    'POSITION_MANAGER_RECONCILE_INTERVAL',
    int(0, 86_400, 300).refine((n) => n === 0 || n >= 10, {
      message: 'must be 0 (off) or a whole number between 10 and 86400',
    }),
  ),
});

type Fields = z.output<typeof fields>;
type Inputs = z.output<typeof inputs>;

const variableOf = (schema: z.ZodType): string => variables.get(schema)!.name;

/** A Config field that one variable holds as it is. */
export type VariableField = keyof Fields;

/** The environment variable of such a field. */
export const variableFor = (field: VariableField): string => variableOf(fields.shape[field]);

/** Every environment variable the configuration reads. */
export const CONFIG_VARIABLES: readonly string[] = Object.freeze(
  [fields, inputs].flatMap((s) => Object.values(s.shape).map(variableOf)),
);

export class ConfigError extends Error {}

const SECRET = /PASSWORD|API_KEY|SECRET/;

function masked(name: string, value: string | undefined): string {
  if (value === undefined) return '(unset)';
  if (SECRET.test(name)) return '"***"';
  return JSON.stringify(redactUrl(value));
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
function apiKeys(f: Fields, i: Inputs): ApiKey[] {
  const keys: ApiKey[] = f.apiKey ? [{ name: 'default', key: f.apiKey, scope: 'write' }] : [];
  const bad = (what: string) => {
    throw new ConfigError(
      `POSITION_MANAGER_API_KEYS ${what}; expected name:key:scope,... ` +
        '(scope read or write, keys of 16 characters or more), got "***"',
    );
  };
  const entries = (i.apiKeyList ?? '')
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
function rateOverrides(i: Inputs, keys: ApiKey[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const entry of (i.rateLimitOverrides ?? '')
    .split(',')
    .map((e) => e.trim())
    .filter(Boolean)) {
    const [name = '', limit = '', ...rest] = entry.split(':').map((x) => x.trim());
    const fail = (what: string) => {
      throw new ConfigError(
        `POSITION_MANAGER_RATE_LIMIT_OVERRIDES ${what}; expected name:limit,... (limit 1-1000000 per minute), ` +
          `got ${JSON.stringify(i.rateLimitOverrides)}`,
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

/** A URL from its parts, for the deployments that set host, port, user… instead of one URL. */
function composedUrl(base: string, host: string, port: number, user: string, password?: string, path?: string) {
  const u = new URL(base);
  u.hostname = host;
  u.port = String(port);
  u.username = user;
  if (password) u.password = password;
  if (path !== undefined) u.pathname = `/${path}`;
  return u.toString();
}

function databaseUrl(i: Inputs): string | undefined {
  if (i.databaseUrl) return i.databaseUrl;
  if (!i.postgresHost) return undefined;
  return composedUrl(
    'postgresql://localhost',
    i.postgresHost,
    i.postgresPort,
    i.postgresUser,
    i.postgresPassword,
    i.postgresDb,
  );
}

function amqpUrl(i: Inputs): string | undefined {
  if (i.amqpUrl) return i.amqpUrl;
  if (!i.rabbitmqHost) return undefined;
  return composedUrl('amqp://localhost', i.rabbitmqHost, i.rabbitmqPort, i.rabbitmqUser, i.rabbitmqPassword);
}

// The Config fields that more than one variable decides.
function derived(f: Fields, i: Inputs) {
  if (Boolean(f.bybitApiKey) !== Boolean(f.bybitApiSecret)) {
    const [missing, given] = f.bybitApiKey
      ? ['BYBIT_API_SECRET', 'BYBIT_API_KEY']
      : ['BYBIT_API_KEY', 'BYBIT_API_SECRET'];
    throw new ConfigError(`${missing} is required with ${given} (reconciliation needs both), got (unset)`);
  }
  const keys = apiKeys(f, i);
  return {
    /** Every configured key: POSITION_MANAGER_API_KEY as `default` (write), then POSITION_MANAGER_API_KEYS. */
    apiKeys: keys,
    /** Requests per minute per key name; undefined when limits are off. */
    rateLimit: i.rateLimitEnabled ? { perMinute: i.rateLimitDefault, overrides: rateOverrides(i, keys) } : undefined,
    /** Undefined means: run the embedded PostgreSQL in dataDir. */
    databaseUrl: databaseUrl(i),
    /** Undefined means messaging is disabled. */
    amqpUrl: amqpUrl(i),
    priceApiUrl:
      i.priceApiUrl ?? (f.bybitEnvironment === 'testnet' ? 'https://api-testnet.bybit.com' : 'https://api.bybit.com'),
    /** 0, or no Bybit key: no reconciliation. */
    reconcileIntervalSeconds: f.bybitApiKey && f.bybitApiSecret ? i.reconcileInterval : 0,
  };
}

export type Config = Fields & ReturnType<typeof derived>;

// Reads each field of the schema from its variable; a bad value adds a line to `errors`.
function read<S extends z.ZodObject>(schema: S, source: NodeJS.ProcessEnv, errors: string[]): z.output<S> | undefined {
  const shape: Record<string, z.ZodType> = schema.shape;
  const parsed = schema.safeParse(
    Object.fromEntries(Object.entries(shape).map(([field, s]) => [field, source[variableOf(s)]])),
  );
  for (const issue of parsed.error?.issues ?? []) {
    const name = variableOf(shape[String(issue.path[0])]!);
    errors.push(`${name} ${issue.message}, got ${masked(name, source[name])}`);
  }
  return parsed.data;
}

/** Parses the environment; throws ConfigError with one line per bad variable. */
export function loadConfig(source: NodeJS.ProcessEnv = process.env): Readonly<Config> {
  const errors: string[] = [];
  const f = read(fields, source, errors);
  const i = read(inputs, source, errors);
  if (!f || !i) throw new ConfigError(errors.join('\n'));
  return Object.freeze({ ...f, ...derived(f, i) });
}

/**
 * The api role's rule: with a configured database it needs a key (embedded mode generates one).
 * Other roles and `npm run migrate` need none.
 */
export function checkApiKeys(config: Config): void {
  if (config.roles.includes('api') && config.databaseUrl !== undefined && config.apiKeys.length === 0)
    throw new ConfigError(
      'POSITION_MANAGER_API_KEY is required with the api role when a database is configured ' +
        '(or POSITION_MANAGER_API_KEYS), got (unset)',
    );
}
