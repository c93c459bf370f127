// The Bybit V5 client (src/outside/bybit.ts) against a local server that checks signatures the
// way Bybit does: signed requests, pagination by cursor, and every way the source can fail.
import t from 'tap';
import { loadConfig } from '../../src/config.js';
import { BybitError, fetchLinearPositions, signBybit } from '../../src/outside/bybit.js';
import { startFakeBybitAccount } from '../helpers/fake-bybit.js';

const credentials = { key: 'read-only-key-123', secret: 'the-secret-0123456789' };
const configFor = (url: string, retries = 0) =>
  loadConfig({
    POSITION_MANAGER_API_KEY: 'k'.repeat(16),
    POSITION_MANAGER_PRICE_API_URL: url,
    POSITION_MANAGER_PRICE_API_TIMEOUT: '1',
    POSITION_MANAGER_PRICE_API_RETRIES: String(retries),
    BYBIT_API_KEY: credentials.key,
    BYBIT_API_SECRET: credentials.secret,
  });
const position = (i: number) => ({
  symbol: `S${String(i).padStart(4, '0')}USDT`,
  positionIdx: 0,
  side: 'Buy',
  size: '1',
  avgPrice: '10',
  updatedTime: '1765000000000',
});

t.test('Bybit V5 signature: HMAC-SHA256 of timestamp + key + recv_window + query, hex', async (t) => {
  // computed independently: printf '%s' '1658384314791XXXXXXXXXX5000category=...' | openssl dgst -sha256 -hmac secret
  t.equal(
    signBybit('secret', '1658384314791', 'XXXXXXXXXX', '5000', 'category=option&symbol=BTC-29JUL22-25000-C'),
    '02e9182e346177050f199ce1e0703d738589e3763805ed71590ced65539a73a7',
  );
  t.match(signBybit('s', '1', 'k', '5000', 'a=b'), /^[0-9a-f]{64}$/);
  t.not(signBybit('s', '1', 'k', '5000', 'a=b'), signBybit('s', '1', 'k', '5000', 'a=c'), 'the query is signed');
});

t.test("every page of the account's positions, signed, by cursor", async (t) => {
  const list = Array.from({ length: 450 }, (_, i) => position(i));
  const fake = await startFakeBybitAccount(t, credentials, { kind: 'positions', list, pageSize: 200 });
  const pages = await fetchLinearPositions(configFor(fake.url), credentials);
  t.equal(pages.length, 3);
  t.same(
    pages.flatMap((p) => JSON.parse(p).result.list.map((x: any) => x.symbol)),
    list.map((x) => x.symbol),
    'every position once, in order',
  );
  t.same(
    fake.requests.map((r) => r.signed),
    ['ok', 'ok', 'ok'],
    'each page signed right',
  );
  t.same(
    fake.requests.map((r) => r.query.get('cursor')),
    [null, '200', '400'],
  );
  for (const r of fake.requests)
    t.match(Object.fromEntries(r.query), { category: 'linear', settleCoin: 'USDT', limit: '200' });
  const text = pages[0]!;
  t.ok(text.includes('"size":"1"'), 'the page is handed on as its own text');
});

t.test('an empty account is one page with an empty list', async (t) => {
  const fake = await startFakeBybitAccount(t, credentials, { kind: 'positions', list: [] });
  const pages = await fetchLinearPositions(configFor(fake.url), credentials);
  t.equal(pages.length, 1);
  t.same(JSON.parse(pages[0]!).result.list, []);
});

t.test('failures: wrong signature (10004), expired timestamp (10002), malformed JSON, 5xx, no answer', async (t) => {
  const fake = await startFakeBybitAccount(t, credentials, { kind: 'positions', list: [position(1)] });
  const fails = async (creds: typeof credentials, message: RegExp, retries = 0) => {
    const err = await fetchLinearPositions(configFor(fake.url, retries), creds).then(
      () => null,
      (e: unknown) => e,
    );
    t.ok(err instanceof BybitError, 'a BybitError');
    t.match((err as Error).message, message);
    t.notMatch((err as Error).message, new RegExp(`${creds.secret}|${creds.key}`), 'never the key or the secret');
  };
  await fails({ key: credentials.key, secret: 'a-wrong-secret' }, /retCode 10004: error sign/);
  t.equal(fake.requests.at(-1)!.signed, 'bad_sign');
  fake.skewMs = 60_000; // the server's clock is a minute ahead: our timestamp is outside recv_window
  await fails(credentials, /retCode 10002: invalid request, please check your server timestamp/);
  fake.skewMs = 0;
  fake.set({ kind: 'raw', body: '{"retCode":0,"result":{"list":[' });
  await fails(credentials, /the answer is not JSON/);
  fake.set({ kind: 'status', status: 502, body: 'bad gateway' });
  const before = fake.requests.length;
  await fails(credentials, /HTTP 502: bad gateway/, 1);
  t.equal(fake.requests.length - before, 2, 'one retry per POSITION_MANAGER_PRICE_API_RETRIES');
  fake.set({ kind: 'hang' });
  await fails(credentials, /no answer in time/);
});
