// a bad message is published unchanged to the dead-letter queue with the reason headers,
// on a confirm channel; only then is the original acknowledged. If that publish fails the
// original is rejected with requeue, never dropped. The publish is mandatory: the broker
// confirms an unroutable message too (after returning it), so without the flag a deleted
// dead-letter queue would swallow it.
import { randomUUID } from 'node:crypto';
import type amqp from 'amqplib';
import { publishConfirmed } from './confirm.js';
import { DEAD_LETTER_QUEUE, DEAD_LETTER_QUEUE_OPTIONS } from './topology.js';

export async function publishDeadLetter(
  channel: amqp.ConfirmChannel,
  msg: amqp.ConsumeMessage,
  queue: string,
  reason: string,
  firstFailedAt: Date,
): Promise<void> {
  // amqplib types these properties as any; they are what the publisher set, or undefined.
  const p = msg.properties as {
    contentType?: string;
    messageId?: string;
    correlationId?: string;
    type?: string;
    timestamp?: number;
    headers?: Record<string, unknown>;
  };
  const id = randomUUID();
  const publish = async () => {
    let returned = false;
    const onReturn = (m: amqp.Message) => {
      if (m.properties.headers?.['x-dead-letter-id'] === id) returned = true;
    };
    channel.on('return', onReturn);
    try {
      const [error] = await publishConfirmed(channel, [
        {
          exchange: '',
          routingKey: DEAD_LETTER_QUEUE,
          content: msg.content,
          options: {
            persistent: true,
            mandatory: true,
            contentType: p.contentType ?? 'application/json',
            messageId: p.messageId,
            correlationId: p.correlationId,
            type: p.type,
            timestamp: p.timestamp,
            headers: {
              ...(p.headers ?? {}),
              'x-dead-letter-reason': reason.slice(0, 1000),
              'x-original-queue': queue,
              'x-original-message-id': p.messageId ?? '',
              'x-first-failed-at': firstFailedAt.toISOString(),
              'x-dead-letter-id': id,
            },
          },
        },
      ]);
      if (error) throw new Error(`dead letter ${error}`);
      return !returned; // basic.return arrives before the confirm of the same message
    } finally {
      channel.off('return', onReturn);
    }
  };
  if (await publish()) return;
  // The queue is gone (deleted by hand?): declare it again, as at start, and try once more.
  await channel.assertQueue(DEAD_LETTER_QUEUE, DEAD_LETTER_QUEUE_OPTIONS);
  if (!(await publish())) throw new Error(`dead letter returned: ${DEAD_LETTER_QUEUE} is unroutable`);
}
