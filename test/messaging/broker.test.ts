// The process's one AMQP connection: a setup registered before the first connection is made runs
// once on it (the connect loop runs it; onConnected must not run it again), and again after a
// reconnection.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import pino from 'pino';
import t from 'tap';
import { connectBroker } from '../../src/messaging/broker.js';
import type { BrokerState } from '../../src/runtime.js';
import { freshBroker } from '../helpers/amqp.js';
import { waitFor } from '../helpers/wait.js';

const run = promisify(execFile);

t.test('a setup registered at start runs once per connection', async (t) => {
  const test = await freshBroker(t);
  const state: BrokerState = { enabled: true, connected: false, detachedConsumers: new Set() };
  const broker = connectBroker(test.url, state, pino({ level: 'silent' }));
  t.teardown(() => broker.close());
  let runs = 0;
  await broker.onConnected(() => Promise.resolve(void runs++));
  t.equal(runs, 1, 'ran once on the first connection');
  t.ok(state.connected, 'connected');

  // The broker drops every client of the vhost: the setup runs again on the new connection.
  await run('rabbitmqctl', ['-q', 'close_all_connections', '-p', test.vhost, 'test'], { timeout: 30_000 });
  await waitFor(() => runs === 2 && state.connected, { what: 'the setup on the reconnection', timeoutMs: 30_000 });
  t.equal(runs, 2, 'once more after the reconnection');
});
