// the WS Gateway streams exchange position reports only to services that subscribed, so
// the consumer role subscribes at start and after every broker reconnect (the Gateway may have
// restarted with the broker), retrying with back-off for as long as the process runs.
import { backoffMs } from '../backoff.js';
import { redactUrl, type Config } from '../config.js';
import type { Logger } from '../log.js';
import type { Checks } from '../runtime.js';
import { describeFailure, httpRequest, type HttpAnswer } from './http.js';

export interface GatewaySubscription {
  /** Starts an attempt loop now; one already running is abandoned, with its back-off. */
  kick(): void;
  stop(): void;
}

export interface GatewaySubscriptionOptions {
  /** Per try; only tests shorten it. */
  timeoutMs?: number;
}

const SUCCESS = new Set([200, 201, 409]); // 409: the subscription exists already
const BACKOFF_BASE_MS = 1000;
const BACKOFF_MAX_MS = 60_000;

export function startGatewaySubscription(
  rt: { config: Pick<Config, 'wsGatewayUrl' | 'wsGatewayApiKey' | 'serviceName'>; log: Logger; checks: Checks },
  { timeoutMs = 10_000 }: GatewaySubscriptionOptions = {},
): GatewaySubscription {
  const { config, checks } = rt;
  const key = config.wsGatewayApiKey;
  const url = `${config.wsGatewayUrl.replace(/\/+$/, '')}/api/v1/subscriptions`;
  const log = rt.log.child({ gateway: redactUrl(url) });
  // Wanted but not yet done (the broker may still be down at start, so no attempt yet).
  checks.wsGatewaySubscription = key === undefined ? 'off' : 'pending';
  if (key === undefined) {
    log.info(
      'WS_GATEWAY_API_KEY is unset: no subscription at the WS Gateway; position reports arrive only if another service subscribed',
    );
    return { kick() {}, stop() {} };
  }
  const body = JSON.stringify({ channel_type: 'position', requesting_service: config.serviceName });

  // Each kick() starts a new generation; an older loop sees it has been superseded and ends,
  // even if its request was still in flight, so at most one loop ever schedules retries.
  let generation = 0;
  let timer: NodeJS.Timeout | undefined;

  const attempt = async (gen: number, n: number): Promise<void> => {
    let answer: HttpAnswer | undefined;
    let error: unknown;
    try {
      answer = await httpRequest(url, {
        method: 'POST',
        headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
        body,
        timeoutMs,
      });
    } catch (err) {
      error = err;
    }
    if (gen !== generation) return;
    if (answer && SUCCESS.has(answer.status)) {
      checks.wsGatewaySubscription = 'ok';
      log.info({ status: answer.status }, 'subscribed to position reports at the WS Gateway');
      return;
    }
    checks.wsGatewaySubscription = 'failing';
    const delay = backoffMs(n, BACKOFF_BASE_MS, BACKOFF_MAX_MS);
    const cause = (error as { cause?: { code?: string; message?: string } } | undefined)?.cause;
    log.warn(
      {
        status: answer?.status,
        // A Gateway may echo the request back: the key is cut out of whatever it answered.
        answer: describeFailure(answer ?? error)
          .split(key)
          .join('[redacted]'),
        ...(cause ? { cause: cause.code ?? cause.message } : {}),
        retry_in_ms: delay,
      },
      'subscription at the WS Gateway failed; retrying',
    );
    timer = setTimeout(() => void attempt(gen, n + 1), delay);
  };

  return {
    kick() {
      clearTimeout(timer);
      generation++;
      // A failure stays visible in /health until an attempt succeeds.
      if (checks.wsGatewaySubscription !== 'failing') checks.wsGatewaySubscription = 'pending';
      void attempt(generation, 0);
    },
    stop() {
      clearTimeout(timer);
      generation++;
    },
  };
}
