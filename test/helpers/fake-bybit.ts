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
export function tickersAnswer(list: Record<string, unknown>[], time = Date.now()): string {
  return JSON.stringify({ retCode: 0, retMsg: 'OK', result: { category: 'linear', list }, retExtInfo: {}, time });
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
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  t.teardown(
    () =>
      new Promise<void>((ok) => {
        for (const res of hanging) res.destroy();
        server.closeAllConnections();
        server.close(() => ok());
      }),
  );
  const { port } = server.address() as { port: number };
  return { url: `http://127.0.0.1:${port}`, requests, set: (b) => (behaviour = b) };
}
