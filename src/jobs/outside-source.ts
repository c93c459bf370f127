// What a job that reads an outside source (Bybit's tickers, the exchange's positions) and applies
// its answer in SQL does with the outcome: /health shows the state, every run is counted, and
// while the source keeps failing one warn line a minute says so (with how many failures it
// stands for), so a dead source does not flood the log at every interval.
import type { Counter } from 'prom-client';
import { isInvalidParameterValue } from '../db/errors.js';
import type { Logger } from '../log.js';
import { BybitError } from '../outside/bybit.js';
import type { SourceState } from '../runtime.js';

const WARN_EVERY_MS = 60_000;

type Failure = { outcome: 'failure'; reason: string };

export interface SourceTracker {
  /**
   * Reads the source, then applies its answer in SQL. A source that fails or refuses, or an
   * answer SQL rejects as a whole (22023: no time, no list), is the source's failure, not the
   * database's: it is recorded and returned. Any other error fails the run.
   */
  readAndApply<A, R extends object>(
    traceId: string,
    read: () => Promise<A>,
    apply: (answer: A) => Promise<R>,
  ): Promise<({ outcome: 'ok' } & R) | Failure>;
}

export function trackSource(
  state: SourceState,
  log: Logger,
  runs: Counter<'outcome'>,
  messages: { failing: string; recovered: string },
): SourceTracker {
  let lastWarnAt = 0;
  let failuresSinceWarn = 0;
  state.state = 'ok';
  const failed = (reason: string, traceId: string): Failure => {
    state.state = 'failing';
    runs.inc({ outcome: 'failure' });
    failuresSinceWarn++;
    if (Date.now() - lastWarnAt >= WARN_EVERY_MS) {
      log.warn(
        { trace_id: traceId, failures: failuresSinceWarn, last_success_at: state.lastSuccessAt, reason },
        messages.failing,
      );
      lastWarnAt = Date.now();
      failuresSinceWarn = 0;
    }
    return { outcome: 'failure', reason };
  };
  const succeeded = (traceId: string) => {
    if (state.state === 'failing') log.info({ trace_id: traceId }, messages.recovered);
    state.state = 'ok';
    state.lastSuccessAt = new Date().toISOString();
    lastWarnAt = 0;
    failuresSinceWarn = 0;
    runs.inc({ outcome: 'ok' });
  };
  return {
    async readAndApply(traceId, read, apply) {
      let answer;
      try {
        answer = await read();
      } catch (err) {
        if (err instanceof BybitError) return failed(err.message, traceId);
        throw err;
      }
      let result;
      try {
        result = await apply(answer);
      } catch (err) {
        if (isInvalidParameterValue(err)) return failed(`the answer was rejected: ${(err as Error).message}`, traceId);
        throw err;
      }
      succeeded(traceId);
      return { outcome: 'ok', ...result };
    },
  };
}
