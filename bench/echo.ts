// The bare AMQP echo of bench/ingest.ts, in its own process as the service is: consumes a
// queue with the service's prefetch, republishes every message's body persistent on a confirm
// channel (default exchange, to a second queue) and acknowledges each delivery once the broker
// has confirmed its copy; no database. Acknowledgements of confirmed deliveries are sent
// together once per turn of the event loop (one ack with multiple = true), as the service acks
// a committed batch; confirms come back in publication order, which is delivery order.
//
//   node --import=./node_modules/@tapjs/typescript/dist/esm/import.mjs bench/echo.ts <amqp url> <in queue> <out queue> <prefetch>
//
// Prints "ready" on stdout once it consumes; stops on SIGTERM.
import amqp from 'amqplib';

const [url, inQueue, outQueue, prefetchArg] = process.argv.slice(2);
if (!url || !inQueue || !outQueue) throw new Error('usage: echo.ts <amqp url> <in queue> <out queue> <prefetch>');

const conn = await amqp.connect(url);
const inCh = await conn.createChannel();
const outCh = await conn.createConfirmChannel();
await inCh.prefetch(Number(prefetchArg) || 200);

let confirmed: amqp.ConsumeMessage | undefined;
let scheduled = false;
const flushAcks = () => {
  scheduled = false;
  if (confirmed) inCh.ack(confirmed, true);
  confirmed = undefined;
};

await inCh.consume(
  inQueue,
  (m) => {
    if (!m) return;
    outCh.sendToQueue(
      outQueue,
      m.content,
      { persistent: true, contentType: m.properties.contentType as string | undefined },
      (err) => {
        if (err) {
          // not stored: back to the queue (never happens in the benchmark; counted as missing)
          flushAcks();
          inCh.nack(m, false, true);
          return;
        }
        confirmed = m;
        if (!scheduled) {
          scheduled = true;
          setImmediate(flushAcks);
        }
      },
    );
  },
  { noAck: false },
);
process.stdout.write('ready\n');

process.once('SIGTERM', () => {
  void conn
    .close()
    .catch(() => undefined)
    .finally(() => process.exit(0));
});
