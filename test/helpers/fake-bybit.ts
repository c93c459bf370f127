// A local HTTP server that answers like Bybit V5's public market API, so that no test reaches
// the internet: /v5/market/tickers?category=linear with whatever the test sets, or a failure.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export type TickerBehaviour =
  | { kind: 'prices'; list: Record<string, unknown>[]; time?: () => number }
  | { kind: 'status'; status: number; body: string }
  | { kind: 'raw'; body: string }
  | { kind: 'hang' };

export interface FakeBybit {
  url: string;
  /** Requests received so far (method and URL path with query). */
  requests: string[];
  set(behaviour: TickerBehaviour): void;
}

/** Bybit's answer shape for /v5/market/tickers?category=linear; `time` is epoch ms. */
function tickersAnswer(list: Record<string, unknown>[], time = Date.now()): string {
  return JSON.stringify({ retCode: 0, retMsg: 'OK', result: { category: 'linear', list }, retExtInfo: {}, time });
}

/** Listens on a free local port until the test ends (answers it never gave are cut then); returns the base URL. */
async function listen(t: Teardown, server: Server, hanging: Set<ServerResponse>): Promise<string> {
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  t.teardown(
    () =>
      new Promise<void>((ok) => {
        for (const res of hanging) res.destroy();
        server.closeAllConnections();
        server.close(() => ok());
      }),
  );
  return `http://127.0.0.1:${(server.address() as { port: number }).port}`;
}

export async function startFakeBybit(t: Teardown, initial: TickerBehaviour): Promise<FakeBybit> {
  let behaviour = initial;
  const requests: string[] = [];
  const hanging = new Set<ServerResponse>();
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    requests.push(`${req.method} ${req.url}`);
    if (req.url !== '/v5/market/tickers?category=linear') {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"retCode":10001,"retMsg":"not found"}');
      return;
    }
    const b = behaviour;
    if (b.kind === 'hang') return void hanging.add(res);
    if (b.kind === 'status') return void res.writeHead(b.status, { 'content-type': 'text/plain' }).end(b.body);
    const body = b.kind === 'raw' ? b.body : tickersAnswer(b.list, b.time?.() ?? Date.now());
    res.writeHead(200, { 'content-type': 'application/json' }).end(body);
  });
  return { url: await listen(t, server, hanging), requests, set: (b) => (behaviour = b) };
}

// ---------------------------------------------------------------------------------------------
// The signed position list: /v5/position/list checks the signature and the timestamp as Bybit
// does (retCode 10004 for a wrong signature, 10002 outside the receive window) and serves the
// positions in pages linked by nextPageCursor.

export type PositionsBehaviour =
  | { kind: 'positions'; list: Record<string, unknown>[]; pageSize?: number }
  | { kind: 'status'; status: number; body: string }
  | { kind: 'raw'; body: string }
  | { kind: 'hang' };

export interface FakeBybitAccount {
  url: string;
  /** Every request: its query and whether its signature was right. */
  requests: { query: URLSearchParams; signed: 'ok' | 'bad_sign' | 'expired' | 'missing' }[];
  set(behaviour: PositionsBehaviour): void;
  /** Milliseconds added to the server's clock (a client whose clock is off sees 10002). */
  skewMs: number;
}

export async function startFakeBybitAccount(
  t: Teardown,
  credentials: { key: string; secret: string },
  initial: PositionsBehaviour,
): Promise<FakeBybitAccount> {
  const { signBybit } = await import('../../src/outside/bybit.js');
  let behaviour = initial;
  const hanging = new Set<ServerResponse>();
  const account: FakeBybitAccount = {
    url: '',
    requests: [],
    set: (b) => (behaviour = b),
    skewMs: 0,
  };
  const answer = (res: ServerResponse, body: unknown) =>
    res
      .writeHead(200, { 'content-type': 'application/json' })
      .end(typeof body === 'string' ? body : JSON.stringify(body));
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://fake');
    if (url.pathname !== '/v5/position/list')
      return void res.writeHead(404).end('{"retCode":10001,"retMsg":"not found"}');
    const query = url.search.slice(1);
    const h = (name: string) => String(req.headers[name] ?? '');
    const [key, ts, recv, sign] = [
      h('x-bapi-api-key'),
      h('x-bapi-timestamp'),
      h('x-bapi-recv-window') || '5000',
      h('x-bapi-sign'),
    ];
    const now = Date.now() + account.skewMs;
    const signed =
      !key || !ts || !sign
        ? 'missing'
        : key !== credentials.key || sign !== signBybit(credentials.secret, ts, key, recv, query)
          ? 'bad_sign'
          : !(now - Number(recv) <= Number(ts) && Number(ts) < now + 1000)
            ? 'expired'
            : 'ok';
    account.requests.push({ query: url.searchParams, signed });
    if (signed === 'missing')
      return void answer(res, { retCode: 10003, retMsg: 'API key is invalid.', result: {}, time: now });
    if (signed === 'bad_sign')
      return void answer(res, { retCode: 10004, retMsg: 'error sign! origin_string[...]', result: {}, time: now });
    if (signed === 'expired')
      return void answer(res, {
        retCode: 10002,
        retMsg: 'invalid request, please check your server timestamp or recv_window param',
        result: {},
        time: now,
      });
    const b = behaviour;
    if (b.kind === 'hang') return void hanging.add(res);
    if (b.kind === 'status') return void res.writeHead(b.status, { 'content-type': 'text/plain' }).end(b.body);
    if (b.kind === 'raw') return void answer(res, b.body);
    const size = b.pageSize ?? 200;
    const from = Number(url.searchParams.get('cursor') || '0');
    const page = b.list.slice(from, from + size);
    const next = from + size < b.list.length ? String(from + size) : '';
    answer(res, {
      retCode: 0,
      retMsg: 'OK',
      result: { category: 'linear', list: page, nextPageCursor: next },
      retExtInfo: {},
      time: now,
    });
  });
  account.url = await listen(t, server, hanging);
  return account;
}
