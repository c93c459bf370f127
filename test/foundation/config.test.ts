import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  checkApiKeys,
  CONFIG_VARIABLES,
  ConfigError,
  loadConfig,
  redactCredentials,
  redactUrl,
} from '../../src/config.js';
import { ROOT } from '../../src/paths.js';
import { safeError } from '../../src/log.js';

const base = { DATABASE_URL: 'postgres://u:secret@db:5432/x', POSITION_MANAGER_API_KEY: 'k'.repeat(32) };

function rejection(env: Record<string, string>): string {
  try {
    loadConfig({ ...base, ...env });
  } catch (err) {
    if (err instanceof ConfigError) return err.message;
    throw err;
  }
  throw new Error('configuration was accepted');
}

t.test('defaults follow SPEC.md §8', (t) => {
  const c = loadConfig(base);
  t.equal(c.port, 4800);
  t.same(c.roles, ['api', 'consumer', 'relay', 'worker']);
  t.same(c.orderEventsQueues, ['order-manager.order_executed', 'order-manager.order_events']);
  t.equal(c.positionEventsQueue, 'ws-gateway.position');
  t.equal(c.eventsExchange, 'position-manager.events');
  t.equal(c.avgPriceDiffThreshold, '0.001');
  t.equal(c.sizeValidationThreshold, '0.0001');
  t.equal(c.sizeDiscrepancyGraceSeconds, 30);
  t.equal(c.metricsCacheTtlSeconds, 10);
  t.equal(c.useWsAvgPrice, true);
  t.equal(c.maxExposureUsdt, undefined);
  t.equal(c.amqpUrl, undefined, 'no AMQP configuration means messaging disabled');
  t.ok(Object.isFrozen(c));
  t.end();
});

t.test('bad values are rejected with the variable, the value and what is allowed', (t) => {
  t.match(
    rejection({ POSITION_MANAGER_AVG_PRICE_DIFF_THRESHOLD: 'abc' }),
    /POSITION_MANAGER_AVG_PRICE_DIFF_THRESHOLD must be a non-negative decimal, got "abc"/,
  );
  t.match(
    rejection({ POSITION_MANAGER_PORT: '70000' }),
    /POSITION_MANAGER_PORT must be a whole number between 1 and 65535, got "70000"/,
  );
  t.match(rejection({ POSITION_MANAGER_PORT: 'http' }), /POSITION_MANAGER_PORT .*got "http"/);
  t.match(
    rejection({ POSITION_MANAGER_ROLES: 'api,cron' }),
    /POSITION_MANAGER_ROLES must be a comma-separated subset of api, consumer, relay, worker, got "api,cron"/,
  );
  t.match(rejection({ POSITION_MANAGER_LOG_LEVEL: 'loud' }), /POSITION_MANAGER_LOG_LEVEL must be one of/);
  t.match(
    rejection({ POSITION_MANAGER_USE_WS_AVG_PRICE: 'maybe' }),
    /POSITION_MANAGER_USE_WS_AVG_PRICE must be true or false/,
  );
  t.match(rejection({ POSITION_MANAGER_PORTFOLIO_EVENT_INTERVAL_MS: '50' }), /between 100 and 60000/);
  t.match(rejection({ AMQP_URL: 'http://rabbit' }), /AMQP_URL must be a URL with scheme amqp or amqps/);
  t.match(rejection({ DATABASE_URL: 'not a url' }), /DATABASE_URL must be a URL/);
  t.match(
    rejection({ POSITION_MANAGER_MAX_EXPOSURE_USDT: '-5' }),
    /POSITION_MANAGER_MAX_EXPOSURE_USDT must be a non-negative decimal/,
  );
  t.end();
});

t.test('SPEC §8: thresholds are any decimal ≥ 0 and the exposure limit has no digit cap', (t) => {
  const c = loadConfig({
    ...base,
    POSITION_MANAGER_AVG_PRICE_DIFF_THRESHOLD: '1.5',
    POSITION_MANAGER_SIZE_VALIDATION_THRESHOLD: '25',
    POSITION_MANAGER_MAX_EXPOSURE_USDT: '1234567890123456789.123456789',
  });
  t.equal(c.avgPriceDiffThreshold, '1.5');
  t.equal(c.sizeValidationThreshold, '25');
  t.equal(c.maxExposureUsdt, '1234567890123456789.123456789', 'kept as text, exactly');
  t.equal(loadConfig({ ...base, POSITION_MANAGER_SIZE_VALIDATION_THRESHOLD: '0' }).sizeValidationThreshold, '0');
  for (const bad of ['-0.1', '1e3', '.5', '1.', 'NaN', 'Infinity'])
    t.match(
      rejection({ POSITION_MANAGER_SIZE_VALIDATION_THRESHOLD: bad }),
      /POSITION_MANAGER_SIZE_VALIDATION_THRESHOLD must be a non-negative decimal/,
      bad,
    );
  t.end();
});

t.test('several bad values are all reported', (t) => {
  const msg = rejection({ POSITION_MANAGER_PORT: '0', POSITION_MANAGER_CONSUMER_PREFETCH: 'many' });
  t.match(msg, /POSITION_MANAGER_PORT/);
  t.match(msg, /POSITION_MANAGER_CONSUMER_PREFETCH/);
  t.end();
});

t.test('secrets are masked in rejection messages', (t) => {
  const msg = rejection({
    POSITION_MANAGER_GRAFANA_READER_PASSWORD: 'x',
    POSITION_MANAGER_PORT: 'bad',
    DATABASE_URL: 'ftp://u:hunter2@h/db',
  });
  t.notMatch(msg, /hunter2/);
  t.equal(redactUrl('postgres://u:hunter2@h:5432/db'), 'postgres://u:***@h:5432/db');
  t.end();
});

t.test('a URL that does not parse is still shown without its password', (t) => {
  const db = rejection({ DATABASE_URL: 'postgres//u:hunter2@h/db' });
  t.match(db, /^DATABASE_URL must be a URL/);
  t.match(db, /got "postgres\/\/u:\*\*\*@h\/db"/);
  const mq = rejection({ AMQP_URL: 'amqp://u:hunter2@h:abc/v' });
  t.match(mq, /^AMQP_URL must be a URL/);
  t.match(mq, /got "amqp:\/\/u:\*\*\*@h:abc\/v"/);
  t.notMatch(rejection({ ORDER_MANAGER_URL: 'http://u:p@ss@h:x/' }), /p@ss/, 'a password with @ is hidden whole');
  t.notMatch(rejection({ DATABASE_URL: 'postgres//u:pa/ss@h/db' }), /pa\/ss/, 'a password with / is hidden whole');
  t.equal(redactUrl('amqp://u:hunter2@h:abc/v'), 'amqp://u:***@h:abc/v');
  t.equal(
    redactCredentials('connect to postgres://u:pw@h:1/db failed; see x:y'),
    'connect to postgres://u:***@h:1/db failed; see x:y',
  );
  t.equal(
    redactCredentials('connect ECONNREFUSED 127.0.0.1:5432'),
    'connect ECONNREFUSED 127.0.0.1:5432',
    'nothing to hide',
  );
  t.end();
});

t.test('errors logged at start carry no password, and keep their type and code', (t) => {
  class DriverError extends Error {}
  const err = Object.assign(new DriverError('cannot reach postgres://u:hunter2@db/x'), {
    code: '28P01',
    cause: new Error('via amqp://u:hunter2@mq'),
    errors: [new Error('u:hunter2@h')],
  });
  const safe = safeError(err) as DriverError & { code: string; cause: Error; errors: Error[] };
  t.ok(safe instanceof DriverError, 'the type is kept');
  t.equal(safe.code, '28P01');
  t.equal(safe.message, 'cannot reach postgres://u:***@db/x');
  t.notMatch(String(safe.stack), /hunter2/);
  t.equal(safe.cause.message, 'via amqp://u:***@mq');
  t.equal(safe.errors[0]!.message, 'u:***@h');
  t.equal(err.message, 'cannot reach postgres://u:hunter2@db/x', 'the original is untouched');
  t.equal(safeError('u:hunter2@h').message, 'u:***@h');
  t.end();
});

t.test('the api role with a configured database needs a key; other roles and migrate do not', (t) => {
  const check = (env: Record<string, string>) => () => checkApiKeys(loadConfig(env));
  t.throws(check({ DATABASE_URL: base.DATABASE_URL }), /POSITION_MANAGER_API_KEY is required with the api role/);
  t.doesNotThrow(check({}), 'embedded mode generates a key');
  t.doesNotThrow(check({ DATABASE_URL: base.DATABASE_URL, POSITION_MANAGER_ROLES: 'worker' }));
  t.doesNotThrow(() => loadConfig({ DATABASE_URL: base.DATABASE_URL }), 'the configuration itself is valid');
  t.end();
});

t.test('NODE_ENV is read through the configuration', (t) => {
  t.equal(loadConfig(base).nodeEnv, undefined);
  t.equal(loadConfig({ ...base, NODE_ENV: 'test' }).nodeEnv, 'test');
  t.end();
});

t.test('the seed variables build the URLs', (t) => {
  const seeds = { POSTGRES_HOST: 'pg', POSTGRES_PASSWORD: 'pw', RABBITMQ_HOST: 'mq' };
  const c = loadConfig({ ...seeds, POSITION_MANAGER_API_KEY: base.POSITION_MANAGER_API_KEY });
  t.equal(c.databaseUrl, 'postgresql://ytrader:pw@pg:5432/ytrader');
  t.equal(c.amqpUrl, 'amqp://guest:guest@mq:5672');
  t.equal(loadConfig({ ...base, POSITION_MANAGER_LOG_LEVEL: 'WARNING' }).logLevel, 'warn');
  t.end();
});

t.test('env.example lists exactly the variables of the config schema, and what docker compose alone reads', (t) => {
  const documented = readFileSync(join(ROOT, 'env.example'), 'utf8')
    .split('\n')
    .map((l) => /^([A-Z][A-Z0-9_]+)=/.exec(l)?.[1])
    .filter((v): v is string => v !== undefined);
  t.same([...documented].sort(), [...CONFIG_VARIABLES, 'GRAFANA_READER_PASSWORD'].sort());
  t.end();
});
t.test('an empty dependency URL means its default, not a URL that is always down', (t) => {
  const c = loadConfig({ POSITION_MANAGER_API_KEY: 'k'.repeat(16), WS_GATEWAY_URL: '', ORDER_MANAGER_URL: ' ' });
  t.equal(c.wsGatewayUrl, 'http://ws-gateway:4400');
  t.equal(c.orderManagerUrl, 'http://order-manager:4600');
  t.end();
});
