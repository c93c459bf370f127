// Compressed responses (issue 19): gzip when the client accepts it, identity otherwise, the same
// bytes either way once decompressed. The real service, read with node:http (fetch would
// decompress and hide Content-Encoding), once with response validation on (NODE_ENV=test: the
// middleware compresses what the validator passed) and once in production (the cached portfolio
// routes send the gzip copy made once per cache entry).
import { request } from 'node:http';
import { brotliDecompressSync, gunzipSync } from 'node:zlib';
import t from 'tap';
import { freshDatabase } from '../helpers/db.js';
import { startService, TEST_API_KEY, type RunningService } from '../helpers/service.js';

interface Raw {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  bytes: Buffer;
  /** The body as sent before any Content-Encoding. */
  body: Buffer;
}

function get(
  svc: RunningService,
  path: string,
  acceptEncoding?: string,
  key: string | null = TEST_API_KEY,
): Promise<Raw> {
  const headers: Record<string, string> = {};
  if (acceptEncoding !== undefined) headers['accept-encoding'] = acceptEncoding;
  if (key !== null) headers['x-api-key'] = key;
  return new Promise((resolve, reject) => {
    request({ host: '127.0.0.1', port: svc.port, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const bytes = Buffer.concat(chunks);
        const enc = res.headers['content-encoding'];
        const body = enc === 'gzip' ? gunzipSync(bytes) : enc === 'br' ? brotliDecompressSync(bytes) : bytes;
        resolve({ status: res.statusCode ?? 0, headers: res.headers, bytes, body });
      });
    })
      .on('error', reject)
      .end();
  });
}

const cacheHits = async (svc: RunningService) =>
  Number(
    /^position_manager_metrics_cache_requests_total\{result="hit"[^}]*\} (\d+)/m.exec(
      (await svc.request('GET', '/metrics', { key: null })).body,
    )?.[1] ?? 0,
  );

const db = await freshDatabase(t);
// 300 open positions: the portfolio with positions is ~250 KB, far above the 1 KB threshold.
const fills = Array.from({ length: 300 }, (_, i) => ({
  execution_id: `gz-${i}`,
  asset: `GZ${i}USDT`,
  side: i % 2 ? 'Sell' : 'Buy',
  execution_quantity: String(1 + (i % 7)),
  execution_price: String(100 + i),
}));
await db.query('select apply_order_fill(f) from jsonb_array_elements($1::jsonb) f', [JSON.stringify(fills)]);

for (const nodeEnv of ['test', 'production']) {
  t.test(`NODE_ENV=${nodeEnv}`, async (t) => {
    const svc = await startService(t, {
      databaseUrl: db.url,
      env: { POSITION_MANAGER_ROLES: 'api', POSITION_MANAGER_METRICS_CACHE_TTL: '600', NODE_ENV: nodeEnv },
    });
    t.teardown(() => svc.stop());
    const validating = nodeEnv === 'test';

    t.test('the cached portfolio: gzip when asked, the same bytes as identity, from the cache', async (t) => {
      const path = '/api/v1/portfolio?include_positions=true';
      const plain = await get(svc, path);
      t.equal(plain.status, 200);
      t.equal(plain.headers['content-encoding'], undefined, 'no Accept-Encoding: identity');
      t.match(plain.headers.vary, /Accept-Encoding/i);
      const doc = JSON.parse(plain.bytes.toString('utf8'));
      t.equal(doc.positions.length, 300);
      t.ok(plain.bytes.length > 50_000, `${plain.bytes.length} bytes`);

      const hitsBefore = await cacheHits(svc);
      const gz = await get(svc, path, 'gzip');
      t.equal(gz.status, 200);
      t.equal(gz.headers['content-encoding'], 'gzip');
      t.match(gz.headers.vary, /Accept-Encoding/i);
      t.match(gz.headers['content-type'], /^application\/json/);
      t.ok(gz.bytes.length < plain.bytes.length / 3, `compressed to ${gz.bytes.length} bytes`);
      t.ok(gz.body.equals(plain.bytes), 'gunzipped bytes equal the identity response, byte for byte (same entry)');
      t.equal(JSON.parse(gz.body.toString('utf8')).calculated_at, doc.calculated_at, 'same calculated_at');
      if (validating)
        t.equal(gz.headers['content-length'], undefined, 'compressed by the middleware as the validator passed it');
      else
        t.equal(Number(gz.headers['content-length']), gz.bytes.length, "the entry's ready-made gzip copy, sent whole");

      const again = await get(svc, path, 'gzip, deflate, br');
      t.equal(
        again.headers['content-encoding'],
        validating ? 'br' : 'gzip',
        validating ? 'the middleware prefers br' : 'the cached copy is gzip, which the client accepts',
      );
      t.ok(again.body.equals(plain.bytes), 'a second read, still the same bytes');
      if (!validating) t.ok(again.bytes.equals(gz.bytes), 'the same compressed bytes');
      t.ok((await cacheHits(svc)) >= hitsBefore + 2, 'both were cache hits');

      for (const ae of ['gzip;q=0', 'identity', 'br;q=1, gzip;q=0, identity;q=0.5', '']) {
        const r = await get(svc, path, ae);
        t.not(r.headers['content-encoding'], 'gzip', `Accept-Encoding "${ae}": not gzip`);
        if (ae !== 'br;q=1, gzip;q=0, identity;q=0.5')
          t.equal(r.headers['content-encoding'], undefined, `"${ae}": identity`);
        t.ok(r.body.equals(plain.bytes), `"${ae}": same bytes`);
        t.match(r.headers.vary, /Accept-Encoding/i);
      }
    });

    t.test('exposure and pnl: Vary always, valid either way', async (t) => {
      for (const path of ['/api/v1/portfolio/exposure', '/api/v1/portfolio/pnl', '/api/v1/portfolio?asset=gz1usdt']) {
        const plain = await get(svc, path);
        const gz = await get(svc, path, 'gzip');
        t.equal(gz.status, 200, path);
        t.match(gz.headers.vary, /Accept-Encoding/i, `${path}: Vary`);
        t.match(plain.headers.vary, /Accept-Encoding/i, `${path}: Vary without Accept-Encoding too`);
        t.equal(plain.headers['content-encoding'], undefined);
        if (gz.body.length >= 1024)
          t.equal(gz.headers['content-encoding'], 'gzip', `${path}: ${gz.body.length} bytes, gzip`);
        else
          t.equal(gz.headers['content-encoding'], undefined, `${path}: ${gz.body.length} bytes, below the threshold`);
        t.ok(gz.body.equals(plain.bytes), `${path}: same bytes`);
      }
    });

    t.test('everything else: the middleware, above the threshold', async (t) => {
      for (const path of ['/api/v1/positions', '/openapi.yaml', '/metrics']) {
        const plain = await get(svc, path);
        const gz = await get(svc, path, 'gzip');
        t.equal(gz.status, 200, path);
        t.equal(gz.headers['content-encoding'], 'gzip', `${path}: gzip`);
        t.match(gz.headers.vary, /Accept-Encoding/i);
        t.equal(plain.headers['content-encoding'], undefined, `${path}: identity when not asked`);
        t.equal(
          (await get(svc, path, 'gzip;q=0')).headers['content-encoding'],
          undefined,
          `${path}: gzip;q=0 is honoured`,
        );
        if (path !== '/metrics') t.ok(gz.body.equals(plain.bytes), `${path}: same bytes`);
      }
      const positions = await get(svc, '/api/v1/positions', 'gzip');
      t.equal(JSON.parse(positions.body.toString('utf8')).positions.length, 300);
      t.match(positions.headers['cache-control'], 'no-store', 'the route headers survive');
      t.match(positions.headers['x-trace-id'], /\S/);

      const small = await get(svc, '/api/v1/positions/GZ1USDT', 'gzip');
      t.equal(small.status, 200);
      t.equal(small.headers['content-encoding'], undefined, `${small.bytes.length} bytes: below the threshold`);
      t.equal(JSON.parse(small.body.toString('utf8')).asset, 'GZ1USDT');
      const health = await get(svc, '/health', 'gzip', null);
      t.equal(health.status, 200);
      t.match(JSON.parse(health.body.toString('utf8')), { status: String });
      const docs = await get(svc, '/docs', 'gzip', null);
      t.equal(docs.status, 200);
      t.match(docs.body.toString('utf8'), /^<!doctype html>/i);
    });

    t.test('problem bodies are JSON problems once decompressed', async (t) => {
      const unauthorized = await get(svc, '/api/v1/portfolio', 'gzip', 'wrong-key');
      t.equal(unauthorized.status, 401);
      t.match(JSON.parse(unauthorized.body.toString('utf8')), { status: 401, code: 'unauthorized' });
      t.match(unauthorized.headers['content-type'], /application\/problem\+json/);
      // 40 unknown parameters, each named: a problem body above the threshold
      const query = Array.from({ length: 40 }, (_, i) => `unknown_parameter_${i}=1`).join('&');
      for (const path of [`/api/v1/positions?${query}`, `/api/v1/portfolio?include_positions=1&${query}`]) {
        const bad = await get(svc, path, 'gzip');
        t.equal(bad.status, 400, path.slice(0, 40));
        t.match(bad.headers['content-type'], /application\/problem\+json/);
        t.equal(
          bad.headers['content-encoding'],
          bad.body.length >= 1024 ? 'gzip' : undefined,
          `${bad.body.length} bytes`,
        );
        t.match(JSON.parse(bad.body.toString('utf8')), { status: 400, code: 'invalid_parameter', errors: Array });
      }
      const notFound = await get(svc, '/api/v1/positions/NOPEUSDT', 'gzip');
      t.equal(notFound.status, 404);
      t.match(JSON.parse(notFound.body.toString('utf8')), { status: 404, code: 'position_not_found' });
    });

    t.test('no errors logged', async (t) => {
      t.same(
        svc.logs.filter(
          (l) => l.level === 'error' || l.level === 'fatal' || (typeof l.level === 'number' && l.level >= 50),
        ),
        [],
      );
      t.equal(svc.stderr.join(''), '');
    });
  });
}
