// The LISTEN connection (src/db/listen.ts): sync() brings in every notification committed before
// it, and a stalled connection (open, no bytes moving) is replaced within seconds instead of
// leaving callers waiting until TCP gives up.
import t from 'tap';
import pino from 'pino';
import { listen, SYNC_TIMEOUT_MS } from '../../src/db/listen.js';
import { MetricsCache } from '../../src/api/cache.js';
import { freshDatabase } from '../helpers/db.js';
import { tcpProxy } from '../helpers/proxy.js';
import { waitFor } from '../helpers/wait.js';

const db = await freshDatabase(t);
const lines: any[] = [];
const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });

t.test('sync(): a notification committed before the call has reached the handlers when it resolves', async (t) => {
  const l = listen(db.url, ['pm_listen_test'], log);
  t.teardown(() => l.close());
  await waitFor(() => l.connected, { what: 'listening' });
  const seen: unknown[] = [];
  l.on((_c, p) => seen.push(p));
  for (let i = 0; i < 50; i++) {
    await db.query(`select pg_notify('pm_listen_test', '${i}')`);
    await l.sync();
    t.equal(seen.at(-1), i, `notification ${i} in before sync() resolved`);
  }
  const together = await Promise.all(Array.from({ length: 20 }, () => l.sync()));
  t.equal(together.length, 20, 'concurrent callers all resolve');
});

t.test(
  'a stalled connection: sync() fails within the timeout, the cache computes, and the listener comes back',
  async (t) => {
    const proxy = await tcpProxy(t);
    const l = listen(proxy.url(db.url), ['pm_listen_test'], log);
    t.teardown(() => l.close());
    await waitFor(() => l.connected, { what: 'listening' });
    const cache = new MetricsCache(60_000, l);
    let computed = 0;
    const compute = async () => ++computed;
    t.equal(await cache.get('k', compute), 1);
    t.equal(await cache.get('k', compute), 1, 'a hit');

    proxy.hold();
    const started = Date.now();
    t.equal(await cache.get('k', compute), 2, 'computed instead of waiting on the stalled connection');
    const waited = Date.now() - started;
    t.ok(waited < SYNC_TIMEOUT_MS + 1000, `answered after ${waited} ms`);
    t.ok(
      lines.some((x) => x.msg === 'notification listener not answering; reconnecting'),
      'logged',
    );

    // a new connection through the same proxy works: the listener replaces the stalled one
    await waitFor(() => l.connected, { what: 'listening again', timeoutMs: 10_000 });
    const seen: unknown[] = [];
    l.on((_c, p) => seen.push(p));
    await db.query("select pg_notify('pm_listen_test', 'after')");
    await l.sync();
    t.same(seen, ['after'], 'notifications flow on the new connection');
    proxy.release();
  },
);
