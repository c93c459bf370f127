// RabbitMQ for tests: every test file gets a vhost of its own on the real broker
// (TEST_AMQP_URL), so queues with the service's fixed names never collide across files.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import amqp from 'amqplib';
import { DEAD_LETTER_QUEUE, DEAD_LETTER_QUEUE_OPTIONS } from '../../src/messaging/topology.js';

const run = promisify(execFile);
const TEST_AMQP_URL = process.env.TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';

interface Teardown {
  teardown(fn: () => unknown): void;
}

async function rabbitmqctl(...args: string[]): Promise<void> {
  await run('rabbitmqctl', ['-q', ...args], { timeout: 30_000 });
}

export interface TestBroker {
  url: string;
  vhost: string;
  connection: amqp.ChannelModel;
  channel: amqp.Channel;
  /** Publishes a body (object → JSON text, string → as is) to a queue via the default exchange. */
  publish(queue: string, body: unknown, options?: amqp.Options.Publish): Promise<void>;
  /** Collects every message arriving on a queue (declared durable if missing). */
  collect(queue: string): Promise<Collected>;
}

export interface Collected {
  messages: amqp.ConsumeMessage[];
  /** Date.now() when each message arrived, index for index with messages. */
  arrivals: number[];
  bodies(): any[];
}

/** A publisher-confirm callback that settles a promise; amqplib hands the reason over untyped. */
export function confirmed(resolve: () => void, reject: (err: Error) => void) {
  return (err: unknown) => (err ? reject(err instanceof Error ? err : new Error(JSON.stringify(err))) : resolve());
}

/** How a test declares a queue it reads: the dead-letter queue as the service declares it. */
export const queueOptions = (queue: string): amqp.Options.AssertQueue =>
  queue === DEAD_LETTER_QUEUE ? DEAD_LETTER_QUEUE_OPTIONS : { durable: true };

export async function freshBroker(t: Teardown): Promise<TestBroker> {
  const vhost = `pm_test_${randomBytes(6).toString('hex')}`;
  const user = new URL(TEST_AMQP_URL).username || 'guest';
  await rabbitmqctl('add_vhost', vhost);
  await rabbitmqctl('set_permissions', '-p', vhost, user, '.*', '.*', '.*');
  const u = new URL(TEST_AMQP_URL);
  u.pathname = `/${encodeURIComponent(vhost)}`;
  const url = u.toString();
  const connection = await amqp.connect(url);
  connection.on('error', () => undefined);
  const channel = await connection.createConfirmChannel();
  t.teardown(async () => {
    await connection.close().catch(() => undefined);
    await rabbitmqctl('delete_vhost', vhost).catch(() => undefined);
  });
  return {
    url,
    vhost,
    connection,
    channel,
    async publish(queue, body, options) {
      const text = typeof body === 'string' ? body : JSON.stringify(body);
      await new Promise<void>((resolve, reject) =>
        channel.sendToQueue(queue, Buffer.from(text), { persistent: true, ...options }, confirmed(resolve, reject)),
      );
    },
    async collect(queue) {
      const ch = await connection.createChannel();
      await ch.assertQueue(queue, queueOptions(queue));
      const messages: amqp.ConsumeMessage[] = [];
      const arrivals: number[] = [];
      await ch.consume(queue, (m) => {
        if (m) {
          messages.push(m);
          arrivals.push(Date.now());
          ch.ack(m);
        }
      });
      return { messages, arrivals, bodies: () => messages.map((m) => JSON.parse(m.content.toString('utf8'))) };
    },
  };
}
