// The database as /health and /metrics see it, on a small pool of its own: a saturated
// application pool is not a dead database, and a count stuck behind a lock must not hold up
// the connectivity check (SPEC.md §5.2: `SELECT 1` within 1 s decides database_connected).
import pg from 'pg';

const PING_MS = 1000;
const FIGURES_MS = 1000;

export interface Figures {
  open: { 'one-way': number; hedge: number };
  outboxPending: number;
  outboxOldestAgeSeconds: number;
  /** Open positions whose mark price is older than POSITION_MANAGER_PRICE_STALE_SECONDS. */
  staleOpen: number;
  /** Writes of other services to `positions` that were not applied, ever (R-32: audit rows). */
  foreignWrites: number;
}

export interface Monitor {
  /** True when the database answered `SELECT 1` within 1 s. */
  ping(): Promise<boolean>;
  /** Open positions and the outbox backlog; undefined when not known in time (best effort). */
  figures(): Promise<Figures | undefined>;
  close(): Promise<void>;
}

/** The call in flight is shared by every caller, each of whom waits at most timeoutMs for it. */
function shared<T>(fn: () => Promise<T>, timeoutMs: number, fallback: T): () => Promise<T> {
  let inflight: Promise<T> | undefined;
  return () => {
    inflight ??= fn()
      .catch(() => fallback)
      .finally(() => (inflight = undefined));
    return new Promise<T>((resolve) => {
      const timer = setTimeout(() => resolve(fallback), timeoutMs);
      void inflight!.then((value) => {
        clearTimeout(timer);
        resolve(value);
      });
    });
  };
}

export function createMonitor(connectionString: string, applicationName: string): Monitor {
  // One ping and one figures query at most are in flight (shared), so two connections mean the
  // ping never waits for one. The server cancels a statement stuck on a lock after 1 s; a stalled
  // connection is dropped by the client-side timeout a little later.
  const pool = new pg.Pool({
    connectionString,
    max: 2,
    connectionTimeoutMillis: PING_MS,
    idleTimeoutMillis: 30_000,
    statement_timeout: FIGURES_MS,
    query_timeout: FIGURES_MS + 500,
    application_name: `${applicationName}-monitor`,
  });
  pool.on('error', () => undefined);

  const ping = shared(async () => (await pool.query('select 1'), true), PING_MS, false);
  const figures = shared<Figures | undefined>(
    async () => {
      const r = await pool.query<{
        one_way: string;
        hedge: string;
        stale: string;
        pending: string;
        age: string | null;
        foreign_writes: string;
      }>(
        `select p.one_way, p.hedge, p.stale, o.pending, o.age, f.foreign_writes
         from (select count(*) filter (where mode = 'one-way') as one_way, count(*) filter (where mode = 'hedge') as hedge,
                      count(*) filter (where current_price_at < now() - make_interval(secs => s.price_stale_seconds)) as stale
                 from positions, position_manager_settings s where gross_size > 0) p,
              (select count(*) as pending, extract(epoch from now() - min(e.created_at))::text as age
                 from outbox_pending p join outbox_events e on e.id = p.id) o,
              -- an index-only count on the partial index position_events_foreign_write_idx
              (select count(*) as foreign_writes from position_events where kind = 'foreign_write') f`,
      );
      const row = r.rows[0]!;
      return {
        open: { 'one-way': Number(row.one_way), hedge: Number(row.hedge) },
        staleOpen: Number(row.stale),
        outboxPending: Number(row.pending),
        outboxOldestAgeSeconds: row.age === null ? 0 : Number(row.age),
        foreignWrites: Number(row.foreign_writes),
      };
    },
    FIGURES_MS,
    undefined,
  );

  return { ping, figures, close: () => pool.end() };
}
