// X-API-Key on /api/v1 (SPEC.md §5, R-33), checked before any parameter validation. Every
// configured key is compared, each through SHA-256 digests of equal length with timingSafeEqual
// and without stopping at a match: neither which key matched, nor a key's length, nor the
// position of the first differing byte shows in the timing. The key's name (never the key)
// goes on: into the request's log lines, the `client` label and the audit rows it causes.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { RequestHandler } from 'express';
import type { ApiKey } from '../config.js';
import type { Logger } from '../log.js';
import { sendProblem } from './problem.js';

const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest();
const READ_METHODS = new Set(['GET', 'HEAD']);

/** The key the header names, comparing against all of them in constant time. */
export function matchKey(known: { digest: Buffer; key: ApiKey }[], given: string | undefined): ApiKey | undefined {
  const d = digest(given ?? '');
  let match: ApiKey | undefined;
  for (const k of known) if (timingSafeEqual(k.digest, d) && match === undefined) match = k.key;
  return given === undefined ? undefined : match;
}

/**
 * Sets res.locals.client to the key's name; answers 401 for a missing or wrong key (after
 * `limitFailures`, which answers 429 for an address that keeps failing) and 403 for a method
 * the key's scope does not allow.
 */
export function authenticate(keys: ApiKey[], log: Logger, limitFailures?: RequestHandler): RequestHandler {
  const known = keys.map((key) => ({ digest: digest(key.key), key }));
  return (req, res, next) => {
    const given = req.get('x-api-key');
    const key = matchKey(known, given);
    const rlog = (res.locals.log as Logger | undefined) ?? log;
    if (key === undefined) {
      const refuse = () => {
        rlog.warn({ client: req.ip, path: req.path, key_present: given !== undefined }, 'authentication failed');
        sendProblem(
          res,
          401,
          'unauthorized',
          given === undefined ? 'X-API-Key header is required' : 'X-API-Key is not valid',
        );
      };
      return limitFailures ? void limitFailures(req, res, refuse) : refuse();
    }
    res.locals.client = key.name;
    // the request's own child logger (app.ts) gains the name: no second child per request
    if (res.locals.log) rlog.setBindings({ client: key.name });
    if (key.scope === 'read' && !READ_METHODS.has(req.method)) {
      rlog.warn({ method: req.method, path: req.path }, 'forbidden: the key may only read');
      return sendProblem(
        res,
        403,
        'forbidden',
        `the key "${key.name}" has scope read: ${req.method} needs scope write`,
      );
    }
    next();
  };
}
