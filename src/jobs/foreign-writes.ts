// Writes of another service to `positions` that the guard of SPEC.md R-32 did not apply
// (sql/105_one_writer.sql announces each on position_manager_foreign_write): a `warn` line once
// per writer (user, application_name, client address) per minute. The ones in between are
// counted and reported in the writer's next line, at the end of its minute at the latest. The
// audit rows (position_events kind foreign_write) and the metric count every write; the log
// only points at the writer.
import type { Listener } from '../db/listen.js';
import type { Logger } from '../log.js';

export const FOREIGN_WRITE_CHANNEL = 'position_manager_foreign_write';
const INTERVAL_MS = 60_000;
const MAX_WRITERS = 1000; // writers remembered before the quiet ones are forgotten
const MESSAGE = 'another service wrote to positions; the write was not applied';

interface ForeignWrite {
  user: string | null;
  application_name: string | null;
  client_addr: string | null;
  operation: string | null;
  asset: string | null;
  mode: string | null;
}

interface Window {
  startedAt: number;
  /** Writes of this writer not logged since its last line. */
  suppressed: number;
  last: ForeignWrite;
  flush?: NodeJS.Timeout;
}

const text = (v: unknown): string | null =>
  typeof v === 'string' ? v : v == null ? null : typeof v === 'object' ? JSON.stringify(v) : `${v as number | boolean}`;

function parse(payload: unknown): ForeignWrite {
  const p = (payload !== null && typeof payload === 'object' ? payload : {}) as Record<string, unknown>;
  return {
    user: text(p.user),
    application_name: text(p.application_name),
    client_addr: text(p.client_addr),
    operation: text(p.operation),
    asset: text(p.asset),
    mode: text(p.mode),
  };
}

export interface ForeignWriteLog {
  record(payload: unknown): void;
  close(): void;
}

/** The throttled log; intervalMs is a parameter for the tests. */
export function foreignWriteLog(log: Logger, intervalMs = INTERVAL_MS): ForeignWriteLog {
  const windows = new Map<string, Window>();
  const line = (w: ForeignWrite, suppressed: number) =>
    log.warn({ ...w, suppressed, see: "position_events where kind = 'foreign_write'" }, MESSAGE);

  const flush = (key: string) => {
    const win = windows.get(key);
    if (!win) return;
    win.flush = undefined;
    if (win.suppressed === 0) return;
    line(win.last, win.suppressed);
    win.startedAt = Date.now();
    win.suppressed = 0;
  };

  return {
    record(payload) {
      const w = parse(payload);
      const key = JSON.stringify([w.user, w.application_name, w.client_addr]);
      const now = Date.now();
      const win = windows.get(key);
      if (!win || (!win.flush && now - win.startedAt >= intervalMs)) {
        line(w, 0);
        if (!win && windows.size >= MAX_WRITERS)
          for (const [k, v] of windows) if (!v.flush && now - v.startedAt >= intervalMs) windows.delete(k);
        windows.set(key, { startedAt: now, suppressed: 0, last: w });
        return;
      }
      win.suppressed++;
      win.last = w;
      if (!win.flush) {
        win.flush = setTimeout(() => flush(key), Math.max(0, win.startedAt + intervalMs - now));
        win.flush.unref();
      }
    },
    close() {
      for (const win of windows.values()) clearTimeout(win.flush);
      windows.clear();
    },
  };
}

/** Logs the foreign writes announced on the worker's listening connection. */
export function watchForeignWrites(listener: Listener, log: Logger, intervalMs = INTERVAL_MS): { stop(): void } {
  const writes = foreignWriteLog(log, intervalMs);
  listener.on((channel, payload) => channel === FOREIGN_WRITE_CHANNEL && writes.record(payload));
  return { stop: () => writes.close() };
}
