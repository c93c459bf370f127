// Issue 19, "/docs offline": GET /docs renders openapi.yaml from assets the service serves
// itself. The page and its assets reference no other host, answer with their content types and
// a strict Content-Security-Policy; and real headless Chromium, in which every host but
// 127.0.0.1 is unreachable (resolver rules, plus a dead proxy), renders every path of the
// contract — text that is not in the served HTML, so only the page's scripts can have put it
// there. Chromium's network log shows it asked for nothing but the service's own origin.
// Chromium is /usr/bin/chromium (Debian's package): .ci/run installs it when it is missing; a
// missing browser is a failure here, never a skip.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { OPENAPI_PATH } from '../../src/paths.js';
import { freshDatabase } from '../helpers/db.js';
import { freePort, startService } from '../helpers/service.js';

const CHROMIUM = '/usr/bin/chromium';
const CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'";
// The paths (two-space keys under `paths:`) and info.title, read from the contract's text.
const spec = readFileSync(OPENAPI_PATH, 'utf8');
const PATHS = [...spec.matchAll(/^ {2}(\/\S*):\s*$/gm)].map((m) => m[1]!);
const TITLE = /^info:\n(?:\s.*\n)*? {2}title:\s*(.+?)\s*$/m.exec(spec)?.[1] ?? '';
t.ok(PATHS.length >= 10 && TITLE, `${PATHS.length} paths and the title "${TITLE}" in openapi.yaml`);

const db = await freshDatabase(t);
const svc = await startService(t, { databaseUrl: db.url, env: { POSITION_MANAGER_ROLES: 'api' } });
const origin = new URL(svc.url).origin;

/** Every absolute or protocol-relative URL in a text that points anywhere but the service. */
function foreignUrls(text: string): string[] {
  const absolute = [...text.matchAll(/https?:\/\/[^\s"'`<>()]+/gi)]
    .map((m) => m[0])
    .filter((u) => new URL(u).origin !== origin);
  const protocolRelative = [...text.matchAll(/["'(=]\s*(\/\/[^\s"'`<>()]+)/g)].map((m) => m[1]!);
  return [...absolute, ...protocolRelative];
}

// Swagger UI shows an operation's path in <span class="opblock-summary-path" data-path="...">,
// its text broken with <wbr> before each slash.
const visible = (dom: string) => dom.replace(/\u200b|&#8203;|<wbr\s*\/?>/g, '');
const renderedPath = (dom: string, path: string) =>
  dom.includes(`data-path="${path}"`) && visible(dom).includes(`>${path}<`);
const renderedTitle = (dom: string) =>
  new RegExp(`<h[12][^>]*class="title"[^>]*>\\s*${TITLE.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`).test(dom);

t.test('/docs and its assets: open, local, typed, under a strict CSP', async (t) => {
  const page = await fetch(`${svc.url}/docs`);
  const html = await page.text();
  t.equal(page.status, 200, '/docs without a key');
  t.match(page.headers.get('content-type'), /^text\/html/);
  t.equal(page.headers.get('content-security-policy'), CSP);
  t.same(foreignUrls(html), [], 'the HTML names no other host');
  t.notMatch(html, /<script(?![^>]*\ssrc=)[^>]*>/i, 'no inline script (the CSP would block it)');
  t.notMatch(html, /\son[a-z]+\s*=/i, 'no inline event handler');
  for (const path of PATHS) {
    t.notOk(renderedPath(html, path), `${path} is not rendered in the served HTML`);
    // /openapi.yaml is the <noscript> link; no other path of the contract is named at all
    if (path !== '/openapi.yaml') t.notOk(html.includes(path), `${path} is not in the served HTML`);
  }
  t.notOk(renderedTitle(html), 'nor the rendered title');

  const refs = [...html.matchAll(/\s(?:src|href)="([^"]+)"/g)].map((m) => m[1]!);
  t.ok(
    refs.some((r) => /\.css(\?|$)/.test(r)) && refs.filter((r) => /\.js(\?|$)/.test(r)).length >= 2,
    `a stylesheet and scripts: ${refs.join(' ')}`,
  );
  for (const ref of refs) {
    t.ok(ref.startsWith('/') && !ref.startsWith('//'), `${ref} is a path on the service`);
    const res = await fetch(new URL(ref, svc.url));
    const body = await res.text();
    t.equal(res.status, 200, `${ref} answers`);
    const type = res.headers.get('content-type') ?? '';
    if (/\.css(\?|$)/.test(ref)) t.match(type, /^text\/css/, `${ref} is CSS`);
    else if (/\.js(\?|$)/.test(ref)) t.match(type, /^(text|application)\/javascript/, `${ref} is JavaScript`);
    else if (ref === '/openapi.yaml') t.match(type, /^application\/yaml/, `${ref} is YAML`);
    else t.fail(`unexpected reference ${ref}`);
    t.ok(body.length > 0, `${ref} has a body`);
    if (ref.startsWith('/docs/assets/')) t.equal(res.headers.get('x-content-type-options'), 'nosniff');
    if (ref.startsWith('/docs/assets/init')) {
      t.same(foreignUrls(body), [], 'init.js names no other host');
      t.match(body, /url:\s*'\/openapi\.yaml'/, 'init.js loads the contract from the service');
    }
  }
  for (const path of [
    '/docs/assets/nope.js',
    '/docs/assets/package.json',
    '/docs/assets/..%2Fpackage.json',
    '/docs/assets/swagger-ui-bundle.js.map',
  ]) {
    t.equal((await fetch(`${svc.url}${path}`)).status, 404, `${path} is not served`);
  }
});

interface Rendered {
  dom: string;
  stderr: string;
  code: number | null;
  requested: string[];
}

/** One headless Chromium run: the DOM after the page settled, and every URL it asked for. */
async function render(url: string, budgetMs: number, deadProxyPort: number): Promise<Rendered> {
  const dir = mkdtempSync(join(tmpdir(), 'pm-docs-chromium-'));
  const netLog = join(dir, 'net-log.json');
  const args = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-dev-shm-usage',
    '--disable-quic',
    '--no-first-run',
    '--no-default-browser-check',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-extensions',
    '--disable-default-apps',
    `--user-data-dir=${join(dir, 'profile')}`,
    // Nothing but the service is reachable: names do not resolve, and what would go through a proxy meets a closed port.
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
    `--proxy-server=http://127.0.0.1:${deadProxyPort}`,
    '--proxy-bypass-list=127.0.0.1',
    `--log-net-log=${netLog}`,
    '--enable-logging=stderr',
    '--v=0',
    '--dump-dom',
    `--virtual-time-budget=${budgetMs}`,
    url,
  ];
  // A process group of its own: a hung run is killed with all its helper processes.
  const child = spawn(CHROMIUM, args, {
    env: { PATH: process.env.PATH ?? '', HOME: dir, XDG_CONFIG_HOME: dir, XDG_CACHE_HOME: dir },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const killAll = () => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      /* already gone */
    }
  };
  let dom = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => (dom += c));
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const killer = setTimeout(killAll, budgetMs + 120_000);
  try {
    const code = await new Promise<number | null>((ok, fail) => {
      child.once('error', fail);
      child.once('exit', (c) => ok(c));
    });
    let requested: string[] = [];
    try {
      // The page's requests (the document, its subresources, its fetches): the jobs whose network
      // isolation key is the page's site. The browser's own background requests (network time,
      // component updates, accounts) have another key, or none; they fail anyway, as nothing resolves.
      const log = JSON.parse(readFileSync(netLog, 'utf8')) as {
        constants: { logEventTypes: Record<string, number> };
        events: { type: number; params?: { url?: string; network_isolation_key?: string } }[];
      };
      const startJob = log.constants.logEventTypes.URL_REQUEST_START_JOB;
      const site = `${new URL(url).protocol}//${new URL(url).hostname}`;
      requested = [
        ...new Set(
          log.events
            .filter((e) => e.type === startJob && (e.params?.network_isolation_key ?? '').split(' ').includes(site))
            .map((e) => e.params!.url!),
        ),
      ];
    } catch (err) {
      stderr += `\n(net log unreadable: ${(err as Error).message})`;
    }
    return { dom, stderr, code, requested };
  } finally {
    clearTimeout(killer);
    killAll(); // helpers that outlived the browser
    rmSync(dir, { recursive: true, force: true });
  }
}

t.test('headless Chromium renders every path of the contract, with other hosts unreachable', async (t) => {
  if (!existsSync(CHROMIUM)) {
    t.fail(
      `${CHROMIUM} is missing: this test needs Debian's chromium. CI's .ci/run installs it when it is missing; locally run apt-get install -y chromium`,
    );
    return;
  }
  const deadProxyPort = await freePort(); // nothing listens there
  const deadline = Date.now() + 300_000;
  let budget = 15_000;
  let last: Rendered | undefined;
  let attempts = 0;
  for (;;) {
    attempts++;
    last = await render(`${svc.url}/docs`, budget, deadProxyPort);
    const done = PATHS.every((p) => renderedPath(last!.dom, p)) && renderedTitle(last.dom);
    if (done || Date.now() > deadline) break;
    t.comment(`attempt ${attempts}: not rendered yet (exit ${last.code}); again with a longer budget`);
    budget = Math.min(budget * 2, 60_000);
  }
  const r = last;
  const diagnostics = { exit: r.code, attempts, stderr: r.stderr.slice(-3000), dom: r.dom.slice(0, 2000) };
  t.ok(r.dom.includes('id="swagger-ui"'), 'Chromium dumped the page', diagnostics);
  for (const path of PATHS) t.ok(renderedPath(r.dom, path), `${path} rendered`, diagnostics);
  for (const path of ['/api/v1/positions', '/api/v1/portfolio/exposure', '/api/v1/positions/{asset}/validate'])
    t.ok(PATHS.includes(path), `${path} is in the contract`);
  t.ok(renderedTitle(r.dom), `the title "${TITLE}" rendered`, diagnostics);
  t.notMatch(
    r.stderr,
    /Refused to (load|execute|apply|connect)|Content Security Policy/i,
    'nothing blocked by the CSP',
  );
  t.ok(
    r.requested.some((u) => u.startsWith(`${origin}/docs/assets/`)) && r.requested.includes(`${origin}/openapi.yaml`),
    'the net log shows the page loading the assets and the contract',
    { requested: r.requested },
  );
  t.same(
    r.requested.filter((u) => new URL(u).origin !== origin),
    [],
    'and nothing from any other origin',
    { requested: r.requested },
  );
});
