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
  for (const s of [
    'postgres',
    'rabbitmq',
    'grafana',
    'position-manager',
    'position-manager-api',
    'position-manager-ingest',
    'position-manager-worker',
  ])
    t.ok(compose.services[s], `service ${s}`);
  t.same(compose.services['position-manager'].depends_on.postgres, { condition: 'service_healthy' }, 'health-gated');
  const roles = ['position-manager-api', 'position-manager-ingest', 'position-manager-worker'].map(
    (s) => compose.services[s].environment.POSITION_MANAGER_ROLES,
  );
  t.same(roles, ['api', 'consumer,relay', 'worker']);
  const pmEnv = Object.keys(compose.services['position-manager'].environment);
  t.same(
    pmEnv.filter((k) => !CONFIG_VARIABLES.includes(k)),
    [],
    'every variable is one the config reads',
  );
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
  // The default start (no DATABASE_URL) writes ./data (the embedded database, the API key) as `node`.
  const chown = /^RUN .*mkdir -p \/app\/data.*&& chown node:node \/app\/data$/m.exec(dockerfile);
  t.ok(chown, 'the data folder is created and owned by node');
  t.match(dockerfile, /^VOLUME \/app\/data$/m, 'and kept in a volume');
  t.ok(
    chown && chown.index < dockerfile.search(/^VOLUME /m) && chown.index < dockerfile.search(/^USER node$/m),
    'owned before the volume is declared and the user switched',
  );
  t.match(dockerfile, /^WORKDIR \/app$/m, './data is /app/data');
  const pkg = JSON.parse(read('package.json'));
  t.match(pkg.scripts.start, /node dist\/src\/main\.js/, 'npm start runs the same entry point');
});

t.test(
  'the postgres password comes from .env (POSTGRES_PASSWORD) everywhere, as README and env.example say',
  async (t) => {
    const text = read('docker-compose.yml');
    const compose = parse(text, { merge: true });
    const password = '${POSTGRES_PASSWORD:-ytrader}';
    t.equal(compose.services.postgres.environment.POSTGRES_PASSWORD, password, 'the postgres service');
    for (const s of [
      'position-manager',
      'position-manager-api',
      'position-manager-ingest',
      'position-manager-worker',
    ]) {
      const url = new URL(compose.services[s].environment.DATABASE_URL.replace(password, 'PLACEHOLDER'));
      t.equal(url.password, 'PLACEHOLDER', `${s}: DATABASE_URL uses the same password`);
      t.equal(url.username, compose.services.postgres.environment.POSTGRES_USER);
      t.equal(url.pathname, `/${compose.services.postgres.environment.POSTGRES_DB}`);
    }
    t.notMatch(text.replace(/#.*$/gm, ''), /:ytrader@|POSTGRES_PASSWORD: ytrader/, 'no hard-coded password left');
    t.match(read('README.md'), /`cp env\.example \.env`, set [^.]*`POSTGRES_PASSWORD`/, 'README: set it in .env');
    t.match(
      read('env.example'),
      /^# .*\.env.*\n(# .*\n)*POSTGRES_PASSWORD=/m,
      'env.example says where compose takes it from',
    );
  },
);

t.test('compose: .env overrides env.example in every service container; the scaled form can run alone', async (t) => {
  const compose = parse(read('docker-compose.yml'), { merge: true });
  for (const s of ['position-manager', 'position-manager-api', 'position-manager-ingest', 'position-manager-worker'])
    t.same(
      compose.services[s].env_file,
      ['env.example', { path: '.env', required: false }],
      `${s}: env.example, then .env`,
    );
  t.notOk(
    'position-manager' in (compose.services.grafana.depends_on ?? {}),
    'Grafana does not need the all-in-one service',
  );
  t.match(
    read('README.md'),
    /--profile\s+scaled up --scale position-manager=0/,
    'README: how to run the scaled form alone',
  );
  t.match(read('env.example'), /^GRAFANA_READER_PASSWORD=$/m, 'the compose-only password is listed');
});
