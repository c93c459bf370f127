// `npm run migrate`: migrates the database named by DATABASE_URL (or POSTGRES_*), writes the
// shared settings row from this environment, and exits (1 on any failure).
import pg from 'pg';
import { ConfigError, loadConfig, redactUrl } from '../config.js';
import { migrate } from './migrate.js';
import { writeSettings } from './settings.js';

try {
  const config = loadConfig();
  if (!config.databaseUrl) throw new ConfigError('DATABASE_URL (or POSTGRES_HOST) must be set for npm run migrate');
  const result = await migrate(config.databaseUrl, { log: (m) => console.log(m) });
  const client = new pg.Client({ connectionString: config.databaseUrl, application_name: 'position-manager-migrate' });
  await client.connect();
  try {
    await writeSettings(client, config);
  } finally {
    await client.end();
  }
  const definitions = result.definitionsApplied ? 'applied' : 'unchanged';
  console.log(
    `${redactUrl(config.databaseUrl)}: ${result.migrationsApplied.length} migrations applied, ` +
      `definitions ${definitions}, settings written`,
  );
} catch (err) {
  console.error(err instanceof ConfigError ? err.message : `migration failed: ${(err as Error).message}`);
  process.exit(1);
}
