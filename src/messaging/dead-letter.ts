// a bad message is published unchanged to the dead-letter queue with the reason headers,
// on a confirm channel; only then is the original acknowledged. If that publish fails the
// original is rejected with requeue, never dropped.
import type amqp from 'amqplib';
import { publishConfirmed } from './confirm.js';
import { DEAD_LETTER_QUEUE } from './topology.js';

export async function publishDeadLetter(
  channel: amqp.ConfirmChannel,
  msg: amqp.ConsumeMessage,
  queue: string,
  reason: string,
  firstFailedAt: Date,
): Promise<void> {
  const p = msg.properties;
  const [error] = await publishConfirmed(channel, [
    {
      exchange: '',
      routingKey: DEAD_LETTER_QUEUE,
      content: msg.content,
      options: {
        persistent: true,
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
        },
      },
    },
  ]);
  if (error) throw new Error(`dead letter ${error}`);
}
