// There is no Docker engine here: check what can be checked without one.
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { ROOT } from '../../src/paths.js';
import { CONFIG_VARIABLES } from '../../src/config.js';

const read = (f: string) => readFileSync(join(ROOT, f), 'utf8');

t.test('docker-compose.yml has the stack and only known variables', async (t) => {
  const compose = parse(read('docker-compose.yml'), { merge: true });
  for (const s of ['postgres', 'rabbitmq', 'grafana', 'position-manager', 'position-manager-api', 'position-manager-ingest', 'position-manager-worker'])
    t.ok(compose.services[s], `service ${s}`);
  t.same(compose.services['position-manager'].depends_on.postgres, { condition: 'service_healthy' }, 'health-gated');
  const roles = ['position-manager-api', 'position-manager-ingest', 'position-manager-worker'].map(
    (s) => compose.services[s].environment.POSITION_MANAGER_ROLES,
  );
  t.same(roles, ['api', 'consumer,relay', 'worker']);
  const pmEnv = Object.keys(compose.services['position-manager'].environment);
  t.same(pmEnv.filter((k) => !CONFIG_VARIABLES.includes(k)), [], 'every variable is one the config reads');
  for (const v of compose.services.grafana.volumes as string[]) {
    const host = v.split(':')[0]!;
    t.ok(existsSync(join(ROOT, host)), `grafana mount ${host} exists`);
  }
});

t.test('the Dockerfile copies files that exist and starts what README documents', async (t) => {
  const dockerfile = read('Dockerfile');
  for (const m of dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm))
    for (const f of m[1]!.split(/\s+/)) t.ok(existsSync(join(ROOT, f)), `COPY source ${f} exists`);
  t.match(dockerfile, /CMD \["node", "dist\/src\/main.js"\]/);
  t.match(dockerfile, /^USER node$/m, 'runs as a non-root user');
  t.match(dockerfile, /^HEALTHCHECK [\s\S]*?\/health/m);
  t.match(dockerfile, /^EXPOSE 4800$/m);
  const pkg = JSON.parse(read('package.json'));
  t.match(pkg.scripts.start, /node dist\/src\/main\.js/, 'npm start runs the same entry point');
});
