// Publishing on a confirm channel without ever waiting forever. amqplib may drop a publish
// callback when the channel closes with confirms outstanding (amqplib#191: its close handler
// stops at the first already-settled slot), and a stalled broker never confirms at all. Either
// way a caller awaiting the callback would hang, and with it the relay or a consumer batch.
// So every outstanding publish is settled by the channel's close or by a deadline, whichever
// comes first; the caller keeps the message for another try (consumers dedupe by message id).
import type amqp from 'amqplib';

const CONFIRM_TIMEOUT_MS = 30_000;

export interface Outgoing {
  exchange: string;
  routingKey: string;
  content: Buffer;
  options: amqp.Options.Publish;
}

/** Per message, in order: null when the broker confirmed it, else why it may not have arrived. */
export async function publishConfirmed(
  ch: amqp.ConfirmChannel,
  messages: Outgoing[],
  timeoutMs = CONFIRM_TIMEOUT_MS,
): Promise<(string | null)[]> {
  let abort!: (reason: string) => void;
  const aborted = new Promise<string>((resolve) => (abort = resolve));
  const onClose = () => abort('channel closed before the broker confirmed');
  ch.once('close', onClose);
  const timer = setTimeout(() => abort(`no confirm within ${timeoutMs} ms`), timeoutMs);
  try {
    return await Promise.all(messages.map((m) => Promise.race([publishOne(ch, m), aborted])));
  } finally {
    clearTimeout(timer);
    ch.off('close', onClose);
  }
}

function publishOne(ch: amqp.ConfirmChannel, m: Outgoing): Promise<string | null> {
  return new Promise((resolve) => {
    try {
      ch.publish(m.exchange, m.routingKey, m.content, m.options, (err) =>
        resolve(err ? `not confirmed: ${String((err as Error).message ?? err)}` : null),
      );
    } catch (err) {
      resolve(`publish failed: ${(err as Error).message}`);
    }
  });
}
