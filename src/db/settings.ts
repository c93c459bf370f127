// The configuration the SQL functions read (position_manager_settings, one row), so that a psql
// caller gets the same thresholds as the service; and Grafana's login, if asked. The row is
// shared by every instance: `npm run migrate` writes it, a start only while it was never written,
// so that with several instances none silently overrides another.
import type pg from 'pg';
import { variableFor, type Config, type VariableField } from '../config.js';
import type { Logger } from '../log.js';

// Each column, its type and the Config field it holds.
const SETTINGS = [
  ['use_ws_avg_price', 'boolean', 'useWsAvgPrice'],
  ['avg_price_diff_threshold', 'numeric', 'avgPriceDiffThreshold'],
  ['size_validation_threshold', 'numeric', 'sizeValidationThreshold'],
  ['size_discrepancy_grace_seconds', 'integer', 'sizeDiscrepancyGraceSeconds'],
  ['max_exposure_usdt', 'numeric', 'maxExposureUsdt'],
  ['portfolio_event_interval_ms', 'integer', 'portfolioEventIntervalMs'],
  ['price_stale_seconds', 'integer', 'priceStaleSeconds'],
] as const satisfies readonly (readonly [string, string, VariableField])[];

const values = (config: Config) => SETTINGS.map(([, , field]) => config[field] ?? null);

const UPDATE = `update position_manager_settings set
  ${SETTINGS.map(([column, type], i) => `${column} = $${i + 1}::${type}`).join(', ')},
  configured_at = now(), updated_at = now()`;

// Each setting as text beside whether this environment's value differs from it.
const COMPARE = `select ${SETTINGS.map(
  ([column, type], i) => `${column}::text as v${i}, ${column} is distinct from $${i + 1}::${type} as d${i}`,
).join(', ')} from position_manager_settings`;

const text = (value: string | number | boolean | undefined) => (value === undefined ? null : String(value));

async function grafanaLogin(db: pg.Pool | pg.ClientBase, config: Config): Promise<void> {
  if (config.grafanaReaderPassword === undefined) return;
  const literal = (await db.query<{ q: string }>('select quote_literal($1) as q', [config.grafanaReaderPassword]))
    .rows[0]!.q;
  await db.query(`alter role grafana_reader login password ${literal}`);
}

/** `npm run migrate`: writes the row from this environment. */
export async function writeSettings(db: pg.Pool | pg.ClientBase, config: Config): Promise<void> {
  await db.query(UPDATE, values(config));
  await grafanaLogin(db, config);
}

/**
 * At start: writes the row if it was never written (or `own`: the embedded database, which only
 * this process uses); otherwise keeps it, and logs at warn each setting this environment differs on.
 */
export async function settleSettings(pool: pg.Pool, config: Config, log: Logger, own: boolean): Promise<void> {
  const first = await pool.query(`${UPDATE}${own ? '' : ' where configured_at is null'}`, values(config));
  if (first.rowCount) log.info('settings written to position_manager_settings from this environment');
  else {
    const row = (await pool.query<Record<string, string | boolean | null>>(COMPARE, values(config))).rows[0]!;
    const differences = Object.fromEntries(
      SETTINGS.flatMap(([, , field], i) =>
        row[`d${i}`] ? [[variableFor(field), { environment: text(config[field]), settings_row: row[`v${i}`] }]] : [],
      ),
    );
    const named = Object.entries(differences).map(
      ([v, d]) => `${v} ${d.environment} here, ${d.settings_row} in the row`,
    );
    if (named.length)
      log.warn(
        { differences },
        'this environment differs from position_manager_settings, whose values apply ' +
          `(npm run migrate writes them): ${named.join('; ')}`,
      );
  }
  await grafanaLogin(pool, config);
}
