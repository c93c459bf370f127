// What a job that reads an outside source (Bybit's tickers, the exchange's positions) does with
// the outcome: /health shows the state, every run is counted, and while the source keeps failing
// one warn line a minute says so (with how many failures it stands for), so a dead source does
// not flood the log at every interval.
import type { Counter } from 'prom-client';
import type { Logger } from '../log.js';
import type { SourceState } from '../runtime.js';

const WARN_EVERY_MS = 60_000;

export interface SourceTracker {
  failed(reason: string, traceId: string): { outcome: 'failure'; reason: string };
  succeeded(traceId: string): void;
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
  return {
    failed(reason, traceId) {
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
    },
    succeeded(traceId) {
      if (state.state === 'failing') log.info({ trace_id: traceId }, messages.recovered);
      state.state = 'ok';
      state.lastSuccessAt = new Date().toISOString();
      lastWarnAt = 0;
      failuresSinceWarn = 0;
      runs.inc({ outcome: 'ok' });
    },
  };
}
