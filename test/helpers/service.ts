// Starts the real service (the built dist/src/main.js, as `npm start` runs it) as a child
// process on a free port, and waits for /health with a deadline.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { freePort } from '../../src/db/embedded.js';
import { ROOT } from '../../src/paths.js';
import { waitFor } from './wait.js';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export const TEST_API_KEY = 'test-api-key-0123456789abcdef';

export interface RunningService {
  url: string;
  port: number;
  apiKey: string;
  child: ChildProcess;
  /** Every JSON log line so far (stdout), parsed. */
  logs: any[];
  stderr: string[];
  /** GET/POST with the API key; returns status, headers and parsed body. */
  request(
    method: string,
    path: string,
    init?: { headers?: Record<string, string>; key?: string | null },
  ): Promise<{ status: number; headers: Headers; body: any }>;
  /** Sends a signal and waits for the process to exit; resolves to the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export { freePort };

export async function startService(
  t: Teardown,
  options: {
    databaseUrl?: string;
    amqpUrl?: string;
    env?: Record<string, string>;
    waitHealthy?: boolean;
    timeoutMs?: number;
  },
): Promise<RunningService> {
  const port = await freePort();
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? '/tmp',
    POSITION_MANAGER_PORT: String(port),
    POSITION_MANAGER_API_KEY: TEST_API_KEY,
    POSITION_MANAGER_LOG_LEVEL: 'debug',
    NODE_ENV: 'test',
    // nothing in the tests reaches the internet: a test that wants prices points at a local Bybit
    POSITION_MANAGER_PRICE_REFRESH_INTERVAL: '0',
    ...(options.databaseUrl ? { DATABASE_URL: options.databaseUrl } : {}),
    ...(options.amqpUrl ? { AMQP_URL: options.amqpUrl } : {}),
    ...options.env,
  };
  const child = spawn(process.execPath, [join(ROOT, 'dist/src/main.js')], {
    env,
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: any[] = [];
  const stderr: string[] = [];
  let buffer = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    buffer += chunk;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      try {
        logs.push(JSON.parse(line));
      } catch {
        logs.push({ raw: line });
      }
    }
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => stderr.push(chunk));
  const exited = new Promise<number | null>((ok) => child.once('exit', (code) => ok(code)));
  const url = `http://127.0.0.1:${port}`;
  const svc: RunningService = {
    url,
    port,
    apiKey: env.POSITION_MANAGER_API_KEY ?? TEST_API_KEY,
    child,
    logs,
    stderr,
    async request(method, path, init = {}) {
      const headers: Record<string, string> = { ...init.headers };
      const key = init.key === undefined ? svc.apiKey : init.key;
      if (key !== null) headers['x-api-key'] = key;
      const res = await fetch(url + path, { method, headers });
      const text = await res.text();
      let body: any = text;
      try {
        body = JSON.parse(text);
      } catch {
        /* not JSON */
      }
      return { status: res.status, headers: res.headers, body };
    },
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill(signal);
      return exited;
    },
  };
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  if (options.waitHealthy !== false) {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`service exited with ${child.exitCode}: ${stderr.join('')}`);
        const res = await fetch(`${url}/health`).catch(() => undefined);
        return res !== undefined && (res.status === 200 || res.status === 503);
      },
      { timeoutMs: options.timeoutMs ?? 60_000, what: 'service /health' },
    );
  }
  return svc;
}

const STARTED: Record<string, string> = {
  consumer: 'consumers started',
  relay: 'outbox relay active',
  worker: 'worker started',
};

/** Waits until each of these roles has logged that it runs (the api role is up once /health answers). */
export async function rolesStarted(svc: RunningService, roles: string[], timeoutMs = 30_000): Promise<void> {
  const expected = roles.map((r) => STARTED[r]).filter((m): m is string => m !== undefined);
  await waitFor(() => expected.every((m) => svc.logs.some((l) => l.msg === m)), {
    what: `roles started: ${roles.join(',')}`,
    timeoutMs,
  });
}
