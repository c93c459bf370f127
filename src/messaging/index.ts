// The messaging roles: consumers (fills, reports) and the outbox relay, over one
// self-reconnecting broker connection. Topology is (re)declared on every connection.
import type amqp from 'amqplib';
import type { Component, Runtime } from '../runtime.js';
import { startGatewaySubscription } from '../outside/gateway-subscription.js';
import { connectBroker } from './broker.js';
import { QueueConsumer } from './consumer.js';
import { OutboxRelay } from './relay.js';
import { declareConsumedQueues, declareOwnTopology } from './topology.js';

export async function startMessaging(rt: Runtime, roles: { consumer: boolean; relay: boolean }): Promise<Component[]> {
  const { config, log } = rt;
  const broker = connectBroker(config.amqpUrl!, rt.broker, log);
  const components: Component[] = [];
  let consumersComponent: Component | undefined;

  await broker.onConnected(async (conn) => {
    await declareOwnTopology(conn, config, log);
    if (roles.consumer) await declareConsumedQueues(conn, config);
  });

  if (roles.consumer) {
    let deadLetters: amqp.ConfirmChannel | undefined;
    const consumers = [
      ...config.orderEventsQueues.map((queue) => ({ queue, kind: 'fill' as const })),
      { queue: config.positionEventsQueue, kind: 'report' as const },
    ].map(
      ({ queue, kind }) =>
        new QueueConsumer({
          queue,
          kind,
          pool: rt.pool,
          log,
          maxBatch: Math.min(config.consumerPrefetch, 500),
          maxDeliveryAttempts: config.maxDeliveryAttempts,
          deadLetterChannel: () => deadLetters,
          detached: rt.broker.detachedConsumers,
        }),
    );
    await broker.onConnected(async (conn) => {
      const ch = await conn.createConfirmChannel();
      ch.on('error', (err: Error) => log.warn({ err: err.message }, 'dead-letter channel error'));
      deadLetters = ch;
      for (const c of consumers) await c.attach(conn, config.consumerPrefetch);
    });
    log.info({ queues: [...config.orderEventsQueues, config.positionEventsQueue] }, 'consumers started');
    // subscribed at start and after every reconnect; kick() does not wait for the Gateway,
    // so a slow or failing Gateway never holds up (or fails) the broker setup.
    const subscription = startGatewaySubscription(rt);
    await broker.onConnected(() => Promise.resolve(subscription.kick()));
    consumersComponent = {
      name: 'consumers',
      async stop() {
        subscription.stop();
        await Promise.all(consumers.map((c) => c.stop()));
      },
    };
  }

  if (roles.relay) {
    const relay = new OutboxRelay({
      databaseUrl: rt.databaseUrl,
      pool: rt.pool,
      broker,
      exchange: config.eventsExchange,
      log,
    });
    await relay.start();
    components.push({ name: 'relay', stop: () => relay.stop() });
  }

  // Stopped in reverse: consumers first (no new intake, the last batch committed and acked),
  // then the relay (which publishes that batch's events), then the connection.
  return [
    { name: 'broker', stop: () => broker.close() },
    ...components,
    ...(consumersComponent ? [consumersComponent] : []),
  ];
}
