// The /api/v1 routes (SPEC.md §5.1): parse, one call of src/db, map. The SQL functions own
// every figure; parameters arrive already checked against openapi.yaml (contract.ts), integers
// as decimal digits within their bounds.
import { constants, gzipSync } from 'node:zlib';
import compression from 'compression';
import { Router, type Request, type RequestHandler, type Response } from 'express';
import type pg from 'pg';
import { portfolio, portfolioExposure, portfolioPnl } from '../db/portfolio.js';
import { createManualSnapshot, getPosition, listPositions, listSnapshots, validatePosition } from '../db/positions.js';
import { retryingConflicts, type JsonObject } from '../db/query.js';
import type { Logger } from '../log.js';
import { countValidation } from '../metrics.js';
import type { MetricsCache } from './cache.js';

// The contract checked every parameter's type: a query value here is a string or absent.
const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const bool = (v: unknown, fallback: boolean): boolean => (v === undefined ? fallback : v === true || v === 'true');
// Absent: lists cover both modes, a single position is resolved in SQL (SPEC.md §2 convention 2).
const mode = (req: Request): string | null => str(req.query.mode)?.toLowerCase() ?? null;

// The fastest level: higher ones buy few bytes for much CPU, and small bodies are not worth
// compressing (BENCHMARKS.md, issue 19).
const GZIP_LEVEL = 1;
const THRESHOLD = 1024;

/** Every other response (app.ts). It leaves alone a body that already has a Content-Encoding
 *  (the cached gzip copies below); its list of compressible types lacks application/yaml. */
export function responseCompression(): RequestHandler {
  const compress = compression({
    level: GZIP_LEVEL,
    threshold: THRESHOLD,
    // clients that prefer br get it, at the same low cost
    brotli: { params: { [constants.BROTLI_PARAM_QUALITY]: 1 } },
    filter: (req, res) =>
      compression.filter(req, res) || /^application\/yaml\b/.test(String(res.getHeader('Content-Type'))),
  });
  // The middleware wraps every response's methods, which costs; a client that accepts no encoding
  // gets nothing from it, so it does not pay for it.
  return (req, res, next) => (req.headers['accept-encoding'] ? compress(req, res, next) : next());
}

export function apiRoutes(pool: pg.Pool, cache: MetricsCache, validateResponses: boolean): Router {
  const r = Router();
  const db = retryingConflicts(pool);
  // The bytes, not the string: res.send would encode the whole text to UTF-8 on every hit.
  const serialized = new WeakMap<object, { bytes: Buffer; gzip?: Buffer }>();

  r.get('/positions', async (req, res) => {
    const q = req.query;
    res.json(
      await listPositions(db, {
        asset: str(q.asset),
        mode: mode(req),
        sizeMin: str(q.size_min),
        sizeMax: str(q.size_max),
        includeClosed: bool(q.include_closed, false),
        limit: Number(q.limit ?? 1000),
        offset: Number(q.offset ?? 0),
      }),
    );
  });

  r.get('/positions/:asset', async (req, res) => {
    res.json(await getPosition(db, req.params.asset, mode(req)));
  });

  r.post('/positions/:asset/validate', async (req, res) => {
    const log = res.locals.log as Logger;
    const result = await validatePosition(db, {
      asset: req.params.asset,
      mode: mode(req),
      fix: bool(req.query.fix_discrepancies, true),
      traceId: res.locals.traceId as string,
      client: res.locals.client as string | undefined,
    });
    countValidation('api', result);
    if (!result.is_valid)
      log.warn(
        { asset: String(req.params.asset).toUpperCase(), mode: mode(req), discrepancies: result.discrepancies },
        `validation: ${result.error_message}`,
      );
    res.json(result);
  });

  r.post('/positions/:asset/snapshot', async (req, res) => {
    const snapshot = await createManualSnapshot(db, req.params.asset, mode(req), res.locals.traceId as string);
    res.status(201).location(`/api/v1/positions/${snapshot.asset}/snapshots?mode=${snapshot.mode}`).json(snapshot);
  });

  r.get('/positions/:asset/snapshots', async (req, res) => {
    res.json(
      await listSnapshots(
        db,
        req.params.asset,
        mode(req),
        Number(req.query.limit ?? 100),
        Number(req.query.offset ?? 0),
      ),
    );
  });

  // One entry per endpoint, options and asset (upper case: the SQL functions read it so).
  const cached = (req: Request, key: string, compute: (asset: string | null) => Promise<JsonObject>) => {
    const asset = str(req.query.asset)?.toUpperCase() ?? null;
    return cache.get(`${key}:${asset ?? '*'}`, () => compute(asset));
  };
  // A cache hit sends the JSON serialized (and, for gzip clients, compressed) once per entry, by
  // the first request that asks, so entries nobody reads gzipped never pay for compression. With
  // response validation on (tests), res.json lets the validator see the object.
  const sendCached = (req: Request, res: Response, value: unknown) => {
    res.vary('Accept-Encoding');
    if (validateResponses || typeof value !== 'object' || value === null) return void res.json(value);
    let body = serialized.get(value);
    if (body === undefined) serialized.set(value, (body = { bytes: Buffer.from(JSON.stringify(value)) }));
    res.type('application/json');
    if (body.bytes.length < THRESHOLD || !req.acceptsEncodings('gzip')) return void res.send(body.bytes);
    body.gzip ??= gzipSync(body.bytes, { level: GZIP_LEVEL });
    res.setHeader('Content-Encoding', 'gzip');
    res.send(body.gzip);
  };
  r.get('/portfolio', async (req, res) => {
    const include = bool(req.query.include_positions, false);
    sendCached(req, res, await cached(req, `portfolio:${include}`, (asset) => portfolio(db, asset, include)));
  });
  r.get('/portfolio/exposure', async (req, res) => {
    sendCached(req, res, await cached(req, 'exposure', (asset) => portfolioExposure(db, asset)));
  });
  r.get('/portfolio/pnl', async (req, res) => {
    sendCached(req, res, await cached(req, 'pnl', (asset) => portfolioPnl(db, asset)));
  });
  return r;
}
