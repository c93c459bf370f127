// The worker's periodic housekeeping: materialized views refreshed, old rows pruned by their
// retention settings.
import { queryValue, type JsonObject, type Queryable } from './query.js';

export function refreshMaterializedViews(db: Queryable): Promise<JsonObject> {
  return queryValue(db, 'select refresh_materialized_views()');
}

/** Snapshots older than the retention; how many were deleted. */
export function pruneSnapshots(db: Queryable, retentionDays: number): Promise<number> {
  return queryValue(db, 'select prune_snapshots($1)', [retentionDays]);
}

/** Processed inbox rows and sent outbox events past their retention; what was deleted. */
export function pruneInboxOutbox(db: Queryable, inboxDays: number, outboxHours: number): Promise<JsonObject> {
  return queryValue(db, 'select prune_inbox_outbox($1, $2)', [inboxDays, outboxHours]);
}

/** job_runs rows older than the retention; how many were deleted. */
export function pruneJobHistory(db: Queryable, retentionDays: number): Promise<number> {
  return queryValue(db, 'select prune_job_history($1)', [retentionDays]);
}
