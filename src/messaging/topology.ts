// Queues and the exchange (SPEC.md §6). Other services' queues are checked passively and
// declared only when missing, with their owner's arguments: redeclaring a queue with other
// arguments fails the channel (406 PRECONDITION_FAILED). The dead-letter queue, which only this
// service declares, is a version 2 classic queue (the leaner index); one that already exists
// without that argument (an earlier version's) refuses the declaration the same way and is kept.
// The published queues stay plain durable queues: their consumers declare them too (Model
// Service: `declare_queue(name, durable=True)`), and any argument they do not repeat would fail
// their declaration. Operators convert those with a `queue-version` policy (README).
import type amqp from 'amqplib';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';

export const DEAD_LETTER_QUEUE = 'position-manager.dead_letter';
const PUBLISHED_QUEUES = [
  'position-manager.position_updated',
  'position-manager.portfolio_updated',
  'position-manager.position_snapshot_created',
  'position-manager.position_closed',
  'position-manager.portfolio_limit_exceeded',
] as const;

/** How the service declares its dead-letter queue. */
export const DEAD_LETTER_QUEUE_OPTIONS: amqp.Options.AssertQueue = {
  durable: true,
  arguments: { 'x-queue-version': 2 },
};

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

/** Queues already reported as kept with other arguments, so that each is logged once per process. */
const reportedKept = new Set<string>();

/**
 * Declares the dead-letter queue on `ch`, or, when it already exists with other
 * arguments (the declaration is refused, 406, which closes `ch`), keeps it as it is: checked
 * passively on a fresh channel, logged once. Returns the channel to go on with.
 */
async function declareDeadLetterQueue(
  connection: amqp.ChannelModel,
  ch: amqp.Channel,
  log: Logger | undefined,
): Promise<amqp.Channel> {
  const queue = DEAD_LETTER_QUEUE;
  try {
    await ch.assertQueue(queue, DEAD_LETTER_QUEUE_OPTIONS);
    return ch;
  } catch (err) {
    if ((err as { code?: number }).code !== 406) throw err;
    const next = await connection.createChannel();
    next.on('error', () => undefined);
    await next.checkQueue(queue); // it exists (a 404 here fails the start, as any broker error)
    if (!reportedKept.has(queue)) {
      reportedKept.add(queue);
      log?.warn(
        { queue, err: (err as Error).message },
        'queue exists with other arguments and is kept as declared; to make it a version 2 classic queue, ' +
          `apply a policy (rabbitmqctl set_policy --apply-to queues pm-queue-version '^${queue.replace(/\./g, '\\.')}$' ` +
          `'{"queue-version":2}') or delete it when empty and restart the service`,
      );
    }
    return next;
  }
}

export async function declareOwnTopology(connection: amqp.ChannelModel, config: Config, log?: Logger): Promise<void> {
  let ch = await connection.createChannel();
  // A refused declaration closes the channel with an error event; unheard, it would take the
  // connection down.
  ch.on('error', () => undefined);
  try {
    ch = await declareDeadLetterQueue(connection, ch, log);
    await ch.assertExchange(config.eventsExchange, 'topic', { durable: true });
    for (const q of PUBLISHED_QUEUES) {
      await ch.assertQueue(q, { durable: true });
      await ch.bindQueue(q, config.eventsExchange, q);
    }
  } finally {
    await ch.close().catch(() => undefined);
  }
}
