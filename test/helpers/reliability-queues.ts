// What RabbitMQ itself says about the queues of a vhost (rabbitmqctl list_queues), for the tests
// that check how the service declared queues it does not own.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

export interface ListedQueue {
  name: string;
  arguments: [string, string, unknown][];
}

/** Every queue of `vhost` with its declared arguments. */
export async function listQueues(vhost: string): Promise<ListedQueue[]> {
  const { stdout } = await promisify(execFile)('rabbitmqctl', [
    '-q',
    'list_queues',
    '-p',
    vhost,
    'name',
    'arguments',
    '--formatter',
    'json',
  ]);
  return JSON.parse(stdout) as ListedQueue[];
}

/** The declared arguments of the queue `name` among `queues` as an object (argument name → value). */
export function queueArguments(queues: ListedQueue[], name: string): Record<string, unknown> {
  const found = queues.find((q) => q.name === name)!;
  return Object.fromEntries(found.arguments.map(([k, , v]) => [k, v]));
}
