// The worker's periodic housekeeping: materialized views refreshed, old rows pruned by their
// retention settings.
import { queryValue, type JsonObject, type Queryable } from './query.js';

export function refreshMaterializedViews(db: Queryable): Promise<JsonObject> {
  return queryValue(db, 'select refresh_materialized_views()');
}

/**
 * Snapshots older than the retention: whole day partitions dropped, rows deleted where a partition
 * straddles the cutoff; what went.
 */
export function pruneSnapshots(db: Queryable, retentionDays: number): Promise<JsonObject> {
  return queryValue(db, 'select prune_snapshot_partitions($1)', [retentionDays]);
}

/** The history tables' partitions for the days ahead (sql/325); the ones made. */
export function ensureHistoryPartitions(db: Queryable): Promise<JsonObject> {
  return queryValue(db, 'select ensure_history_partitions()');
}

/** Processed inbox rows and sent outbox events past their retention; what was deleted. */
export function pruneInboxOutbox(db: Queryable, inboxDays: number, outboxHours: number): Promise<JsonObject> {
  return queryValue(db, 'select prune_inbox_outbox($1, $2)', [inboxDays, outboxHours]);
}

/** job_runs rows older than the retention; how many were deleted. */
export function pruneJobHistory(db: Queryable, retentionDays: number): Promise<number> {
  return queryValue(db, 'select prune_job_history($1)', [retentionDays]);
}
