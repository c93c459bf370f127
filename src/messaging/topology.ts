// Queues and the exchange (SPEC.md §6). Other services' queues are checked passively and
// declared only when missing, with their owner's arguments: redeclaring a queue with other
// arguments fails the channel (406 PRECONDITION_FAILED).
import type amqp from 'amqplib';
import type { Config } from '../config.js';

export const DEAD_LETTER_QUEUE = 'position-manager.dead_letter';
const PUBLISHED_QUEUES = [
  'position-manager.position_updated',
  'position-manager.portfolio_updated',
  'position-manager.position_snapshot_created',
  'position-manager.position_closed',
  'position-manager.portfolio_limit_exceeded',
] as const;

const OWNER_ARGUMENTS: Record<string, amqp.Options.AssertQueue> = {
  'ws-gateway.position': {
    durable: true,
    arguments: { 'x-message-ttl': 86_400_000, 'x-max-length': 100_000, 'x-overflow': 'drop-head' },
  },
};

/** Checks a queue someone else owns; declares it with its owner's arguments when missing. */
export async function ensureForeignQueue(connection: amqp.ChannelModel, queue: string): Promise<void> {
  const probe = await connection.createChannel();
  probe.on('error', () => undefined); // a 404 closes the probe channel; that is the answer
  try {
    await probe.checkQueue(queue);
    await probe.close();
    return;
  } catch {
    // missing: fall through and declare it
  }
  const ch = await connection.createChannel();
  // The rejected assertQueue carries a refusal; unheard, amqplib's 'error' event would take the
  // whole connection down with it.
  ch.on('error', () => undefined);
  try {
    await ch.assertQueue(queue, OWNER_ARGUMENTS[queue] ?? { durable: true });
  } finally {
    await ch.close().catch(() => undefined);
  }
}

export async function declareConsumedQueues(connection: amqp.ChannelModel, config: Config): Promise<void> {
  for (const q of [...config.orderEventsQueues, config.positionEventsQueue]) await ensureForeignQueue(connection, q);
}

export async function declareOwnTopology(connection: amqp.ChannelModel, config: Config): Promise<void> {
  const ch = await connection.createChannel();
  try {
    await ch.assertQueue(DEAD_LETTER_QUEUE, { durable: true });
    await ch.assertExchange(config.eventsExchange, 'topic', { durable: true });
    for (const q of PUBLISHED_QUEUES) {
      await ch.assertQueue(q, { durable: true });
      await ch.bindQueue(q, config.eventsExchange, q);
    }
  } finally {
    await ch.close().catch(() => undefined);
  }
}
