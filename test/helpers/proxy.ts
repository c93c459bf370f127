// A TCP proxy in front of PostgreSQL or RabbitMQ, so a test can make the server unreachable for
// one process (cut every connection, refuse new ones) or stall it (connections stay open, no
// bytes move) without touching the shared server.
import { connect, createServer, type Socket } from 'node:net';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface Proxy {
  port: number;
  /** Drops every open connection and refuses new ones until restore(). */
  cut(): void;
  restore(): void;
  /** Stops moving bytes in both directions; connections stay open, like a stalled peer. */
  hold(): void;
  release(): void;
  /** The URL through the proxy for a database URL on the target. */
  url(databaseUrl: string): string;
}

export async function tcpProxy(t: Teardown, targetHost = '127.0.0.1', targetPort = 5432): Promise<Proxy> {
  const sockets = new Set<Socket>();
  let down = false;
  const server = createServer((client) => {
    if (down) return void client.destroy();
    const upstream = connect(targetPort, targetHost);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
    }
    client.pipe(upstream).pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const port = (server.address() as { port: number }).port;
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return {
    port,
    cut() {
      down = true;
      for (const s of sockets) s.destroy();
    },
    restore() {
      down = false;
    },
    hold() {
      for (const s of sockets) s.pause();
    },
    release() {
      for (const s of sockets) s.resume();
    },
    url(databaseUrl) {
      const u = new URL(databaseUrl);
      u.host = `127.0.0.1:${port}`;
      return u.toString();
    },
  };
}
