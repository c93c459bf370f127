// Rate limits (SPEC.md R-33) with express-rate-limit's in-memory store: per key name, and for
// failed authentications per client address (a key guesser is slowed down, a client with a
// good key is not). Limits are per process; /health and /metrics are never limited (they are
// not under /api/v1).
import type { Request, RequestHandler, Response } from 'express';
import { ipKeyGenerator, rateLimit } from 'express-rate-limit';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { sendProblem } from './problem.js';

const WINDOW_MS = 60_000;
const FAILED_AUTH_PER_MINUTE = 30;

function refused(log: Logger, what: (req: Request, res: Response) => string): RequestHandler {
  return (req, res) => {
    const detail = what(req, res);
    ((res.locals.log as Logger | undefined) ?? log).warn(
      { client: res.locals.client ?? req.ip, path: req.path },
      `rate limited: ${detail}`,
    );
    sendProblem(res, 429, 'rate_limited', detail);
  };
}

/** Counts each call as one failed authentication of the request's address; 429 beyond 30 a minute. */
export function failedAuthLimiter(log: Logger): RequestHandler {
  return rateLimit({
    windowMs: WINDOW_MS,
    limit: FAILED_AUTH_PER_MINUTE,
    standardHeaders: 'draft-7',
    legacyHeaders: false,
    keyGenerator: (req) => ipKeyGenerator(req.ip ?? ''),
    handler: refused(
      log,
      () => `more than ${FAILED_AUTH_PER_MINUTE} failed authentications a minute from this address`,
    ),
  });
}

/** Requests per minute per key name (after authenticate set res.locals.client). */
export function keyLimiter(limits: NonNullable<Config['rateLimit']>, log: Logger): RequestHandler {
  const limitOf = (res: Response) => limits.overrides[res.locals.client as string] ?? limits.perMinute;
  return rateLimit({
    windowMs: WINDOW_MS,
    limit: (_req, res) => limitOf(res),
    standardHeaders: 'draft-7',
    legacyHeaders: false,
    keyGenerator: (_req, res) => `key:${res.locals.client as string}`,
    handler: refused(
      log,
      (_req, res) => `more than ${limitOf(res)} requests a minute for the key "${res.locals.client as string}"`,
    ),
  });
}
