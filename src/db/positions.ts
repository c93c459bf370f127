// Positions as the API and the worker read, validate and snapshot them (SPEC.md §5.1, R-17,
// A null mode lets SQL resolve it (SPEC.md §2 convention 2); the SQL functions own
// every figure and raise P0002 for a position that does not exist.
import { queryValue, type JsonObject, type Queryable } from './query.js';

export interface PositionFilter {
  asset: string | null;
  mode: string | null;
  sizeMin: string | null;
  sizeMax: string | null;
  includeClosed: boolean;
  limit: number;
  offset: number;
}

/** openapi.yaml's PositionList. */
export function listPositions(db: Queryable, f: PositionFilter): Promise<JsonObject> {
  return queryValue(db, 'select list_positions($1, $2, $3, $4, $5, $6, $7)', [
    f.asset,
    f.mode,
    f.sizeMin,
    f.sizeMax,
    f.includeClosed,
    f.limit,
    f.offset,
  ]);
}

/** openapi.yaml's Position. */
export function getPosition(db: Queryable, asset: string, mode: string | null): Promise<JsonObject> {
  return queryValue(db, 'select get_position($1, $2)', [asset, mode]);
}

/** openapi.yaml's ValidationResult. */
export interface PositionValidation {
  is_valid: boolean;
  discrepancies: { field: string }[];
  /** Set only when the validation fixed the position (SPEC.md R-17 step 7). */
  updated_position: unknown;
  error_message: string | null;
}

/** Checks one position against its events and, with `fix`, repairs it. `client`: the API key's name, kept in the audit row of a fix. */
export function validatePosition(
  db: Queryable,
  v: { asset: string; mode: string | null; fix: boolean; traceId: string; client?: string | null },
): Promise<PositionValidation> {
  return queryValue(db, 'select validate_position($1, $2, $3, $4, $5)', [
    v.asset,
    v.mode,
    v.fix,
    v.traceId,
    v.client ?? null,
  ]);
}

/** What every periodic validation did (sql/330 validate_all_positions). */
export interface ValidationSweep {
  invalid: number;
  fixed: number;
  discrepancies: { asset: string; mode: string; discrepancies: { field: string }[] }[];
}

/** Validates (and fixes) every position changed since `since`; a procedure committing chunk by chunk. */
export function validateAllPositions(db: Queryable, since: string | null, traceId: string): Promise<ValidationSweep> {
  return queryValue(db, 'call validate_all_positions(since => $1, trace_id => $2, result => null)', [since, traceId]);
}

/** openapi.yaml's Snapshot. */
export interface PositionSnapshot extends JsonObject {
  asset: string;
  mode: string;
}

export function createManualSnapshot(
  db: Queryable,
  asset: string,
  mode: string | null,
  traceId: string,
): Promise<PositionSnapshot> {
  return queryValue(db, "select snapshot_json(s) from create_position_snapshot($1, $2, 'manual', $3) s", [
    asset,
    mode,
    traceId,
  ]);
}

/** openapi.yaml's SnapshotList. */
export function listSnapshots(
  db: Queryable,
  asset: string,
  mode: string | null,
  limit: number,
  offset: number,
): Promise<JsonObject> {
  return queryValue(db, 'select list_position_snapshots($1, $2, $3, $4)', [asset, mode, limit, offset]);
}

/** What a snapshot run did (sql/300 snapshot_all_positions_chunked); the exact figures a second worker would pass. */
export interface SnapshotRun {
  snapshots: number;
  chunks: number;
  snapshot_timestamp: string;
  total_exposure: string;
}

/**
 * Snapshots every due position; a procedure committing chunk by chunk, so row locks stay
 * brief. A retry of the job (same jobId) resumes the run its failed attempt began: the same
 * snapshot_timestamp and total exposure, the positions already snapshotted skipped.
 */
export async function snapshotAllPositions(db: Queryable, traceId: string, jobId: string): Promise<SnapshotRun> {
  const run = await queryValue<Pick<SnapshotRun, 'snapshot_timestamp' | 'total_exposure'>>(
    db,
    'select snapshot_run_of_job($1, $2)',
    [jobId, traceId],
  );
  return queryValue(
    db,
    'call snapshot_all_positions_chunked(trace_id => $1, snapshot_at => $2, total_exposure => $3, result => null)',
    [traceId, run.snapshot_timestamp, run.total_exposure],
  );
}

export function anyOpenPosition(db: Queryable): Promise<boolean> {
  return queryValue(db, 'select exists (select 1 from positions where gross_size > 0)');
}
