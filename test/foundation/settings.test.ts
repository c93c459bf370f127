// The settings row the SQL functions read is shared by every instance (issue 20): the first start
// on a database writes it, `npm run migrate` rewrites it, and an instance whose environment
// differs keeps the row and says so at warn.
import t from 'tap';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ROOT } from '../../src/paths.js';
import { freshDatabase } from '../helpers/db.js';
import { startService } from '../helpers/service.js';

const db = await freshDatabase(t);
const row = async () =>
  (
    await db.query(
      `select size_validation_threshold, max_exposure_usdt, configured_at is not null as written
         from position_manager_settings`,
    )
  ).rows[0];
const start = (env: Record<string, string>) =>
  startService(t, { databaseUrl: db.url, env: { POSITION_MANAGER_ROLES: 'api', ...env } });
const warning = (logs: any[]) => logs.find((l) => l.level === 'warn' && /position_manager_settings/.test(l.msg));

t.test('the first start on a database writes the row from its environment', async (t) => {
  t.same(await row(), { size_validation_threshold: '0.0001', max_exposure_usdt: null, written: false });
  const svc = await start({
    POSITION_MANAGER_SIZE_VALIDATION_THRESHOLD: '0.5',
    POSITION_MANAGER_MAX_EXPOSURE_USDT: '1000',
  });
  t.same(await row(), { size_validation_threshold: '0.5', max_exposure_usdt: '1000', written: true });
  t.ok(svc.logs.some((l) => l.msg === 'settings written to position_manager_settings from this environment'));
  t.equal(warning(svc.logs), undefined);
  await svc.stop();
});

t.test('a later start that differs keeps the row and names each difference at warn', async (t) => {
  const svc = await start({ POSITION_MANAGER_SIZE_VALIDATION_THRESHOLD: '0.7' });
  t.same(await row(), { size_validation_threshold: '0.5', max_exposure_usdt: '1000', written: true }, 'unchanged');
  const w = warning(svc.logs);
  t.same(w?.differences, {
    POSITION_MANAGER_SIZE_VALIDATION_THRESHOLD: { environment: '0.7', settings_row: '0.5' },
    POSITION_MANAGER_MAX_EXPOSURE_USDT: { environment: null, settings_row: '1000' },
  });
  t.match(w?.msg, /POSITION_MANAGER_SIZE_VALIDATION_THRESHOLD 0\.7 here, 0\.5 in the row/);
  await svc.stop();
  const same = await start({
    POSITION_MANAGER_SIZE_VALIDATION_THRESHOLD: '0.50',
    POSITION_MANAGER_MAX_EXPOSURE_USDT: '1000',
  });
  t.equal(warning(same.logs), undefined, 'the same values (0.50 is 0.5) say nothing');
  await same.stop();
});

t.test('npm run migrate writes the row from its environment', async (t) => {
  const { stdout } = await promisify(execFile)(process.execPath, ['dist/src/db/migrate-cli.js'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, DATABASE_URL: db.url, POSITION_MANAGER_SIZE_VALIDATION_THRESHOLD: '0.7' },
  });
  t.match(stdout, /settings written/);
  t.same(await row(), { size_validation_threshold: '0.7', max_exposure_usdt: null, written: true });
});
