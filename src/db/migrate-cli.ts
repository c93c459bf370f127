// `npm run migrate`: migrates the database named by DATABASE_URL (or POSTGRES_*) and exits.
import { ConfigError, loadConfig, redactUrl } from '../config.js';
import { migrate } from './migrate.js';

try {
  const config = loadConfig({ ...process.env, POSITION_MANAGER_ROLES: 'worker' });
  if (!config.databaseUrl) throw new ConfigError('DATABASE_URL (or POSTGRES_HOST) must be set for npm run migrate');
  const result = await migrate(config.databaseUrl, (m) => console.log(m));
  console.log(
    `${redactUrl(config.databaseUrl)}: ${result.migrationsApplied.length} migrations applied, definitions ${result.definitionsApplied ? 'applied' : 'unchanged'}`,
  );
} catch (err) {
  console.error(err instanceof ConfigError ? err.message : `migration failed: ${(err as Error).message}`);
  process.exit(1);
}
