// X-API-Key on /api/v1 (SPEC.md §5), checked before any parameter validation. Both sides are
// hashed first so that timingSafeEqual compares equal lengths: neither the key's length nor
// the position of the first differing byte shows in the timing.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { RequestHandler } from 'express';
import type { Logger } from '../log.js';
import { sendProblem } from './problem.js';

const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest();

export function keyMatches(expected: Buffer, given: string | undefined): boolean {
  return timingSafeEqual(expected, digest(given ?? '')) && given !== undefined;
}

export function requireApiKey(apiKey: string, log: Logger): RequestHandler {
  const expected = digest(apiKey);
  return (req, res, next) => {
    const given = req.get('x-api-key');
    if (keyMatches(expected, given)) return next();
    ((res.locals.log as Logger | undefined) ?? log).warn(
      { client: req.ip, path: req.path, key_present: given !== undefined },
      'authentication failed',
    );
    sendProblem(res, 401, 'unauthorized', given === undefined ? 'X-API-Key header is required' : 'X-API-Key is not valid');
  };
}
