// The /api/v1 routes (SPEC.md §5.1): parse, one SQL call, map. The SQL functions own every
// figure; parameters arrive already checked against openapi.yaml (contract.ts), integers as
// decimal digits within their bounds.
import { Router, type Request, type Response } from 'express';
import type pg from 'pg';
import type { Logger } from '../log.js';
import { countValidation, type ValidationOutcome } from '../metrics.js';
import type { MetricsCache } from './cache.js';
import { queryOne as one } from './query.js';

const str = (v: unknown): string | null => (v === undefined || v === null ? null : String(v));
const bool = (v: unknown, fallback: boolean): boolean => (v === undefined ? fallback : v === true || v === 'true');
// Absent: lists cover both modes, a single position is resolved in SQL (SPEC.md §2 convention 2).
const mode = (req: Request): string | null => str(req.query.mode)?.toLowerCase() ?? null;

export function apiRoutes(pool: pg.Pool, cache: MetricsCache, validateResponses: boolean): Router {
  const r = Router();
  const serialized = new WeakMap<object, string>();

  r.get('/positions', async (req, res) => {
    const q = req.query;
    res.json(await one(pool, 'select list_positions($1, $2, $3, $4, $5, $6, $7) as r', [
      str(q.asset), mode(req), str(q.size_min), str(q.size_max), bool(q.include_closed, false),
      Number(q.limit ?? 1000), Number(q.offset ?? 0),
    ]));
  });

  r.get('/positions/:asset', async (req, res) => {
    res.json(await one(pool, 'select get_position($1, $2) as r', [req.params.asset, mode(req)]));
  });

  r.post('/positions/:asset/validate', async (req, res) => {
    const log = res.locals.log as Logger;
    const result = (await one(pool, 'select validate_position($1, $2, $3, $4) as r', [
      req.params.asset, mode(req), bool(req.query.fix_discrepancies, true), res.locals.traceId,
    ])) as ValidationOutcome & { error_message: string | null };
    countValidation('api', result);
    if (!result.is_valid)
      log.warn({ asset: String(req.params.asset).toUpperCase(), mode: mode(req), discrepancies: result.discrepancies },
        `validation: ${result.error_message}`);
    res.json(result);
  });

  r.post('/positions/:asset/snapshot', async (req, res) => {
    const snapshot = (await one(pool, "select snapshot_json(s) as r from create_position_snapshot($1, $2, 'manual', $3) s", [
      req.params.asset, mode(req), res.locals.traceId,
    ])) as { asset: string; mode: string };
    res.status(201)
      .location(`/api/v1/positions/${snapshot.asset}/snapshots?mode=${snapshot.mode}`)
      .json(snapshot);
  });

  r.get('/positions/:asset/snapshots', async (req, res) => {
    res.json(await one(pool, 'select list_position_snapshots($1, $2, $3, $4) as r', [
      req.params.asset, mode(req), Number(req.query.limit ?? 100), Number(req.query.offset ?? 0),
    ]));
  });

  const cached = (fn: string, req: Request, ...extra: unknown[]) => {
    const asset = str(req.query.asset)?.toUpperCase() ?? null;
    return cache.get(`${fn}:${asset ?? '*'}:${extra.join(':')}`, () =>
      one(pool, `select ${fn}(${['$1', ...extra.map((_, i) => `$${i + 2}`)].join(', ')}) as r`, [asset, ...extra]));
  };
  // A cache hit sends the JSON text serialized once for that entry, not the object again (a
  // 1,000-position portfolio is ~200 KB). With response validation on (tests), res.json lets
  // the validator see the object.
  const sendCached = (res: Response, value: unknown) => {
    if (validateResponses || typeof value !== 'object' || value === null) return void res.json(value);
    let text = serialized.get(value);
    if (text === undefined) serialized.set(value, (text = JSON.stringify(value)));
    res.type('application/json').send(text);
  };
  r.get('/portfolio', async (req, res) => {
    sendCached(res, await cached('portfolio_json', req, bool(req.query.include_positions, false)));
  });
  r.get('/portfolio/exposure', async (req, res) => {
    sendCached(res, await cached('portfolio_exposure_json', req));
  });
  r.get('/portfolio/pnl', async (req, res) => {
    sendCached(res, await cached('portfolio_pnl_json', req));
  });
  return r;
}
