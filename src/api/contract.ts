// The openapi.yaml checks every /api/v1 request passes (after the API key, before the routes):
// express-openapi-validator, framed by the checks it cannot make (params.ts).
import type { ErrorRequestHandler, RequestHandler } from 'express';
import * as OpenApiValidator from 'express-openapi-validator';
import { OPENAPI_PATH } from '../paths.js';
import { checkAssetEncoding, checkQuery } from './params.js';

// The contract lists GET only, and Express answers HEAD with the GET route minus the body; the
// validator would reject HEAD as a method the path does not serve, so it is shown a GET. Node
// decided at parse time that a HEAD response has no body, whatever req.method says later.
const headAsGet: RequestHandler = (req, res, next) => {
  if (req.method === 'HEAD') {
    res.locals.head = true;
    req.method = 'GET';
  }
  next();
};
const restoreHead: RequestHandler = (req, res, next) => {
  if (res.locals.head === true) req.method = 'HEAD';
  next();
};
const restoreHeadOnError: ErrorRequestHandler = (err, req, res, next) => restoreHead(req, res, () => next(err));

export function contractChecks(validateResponses: boolean): (RequestHandler | ErrorRequestHandler)[] {
  const validator = OpenApiValidator.middleware({
    apiSpec: OPENAPI_PATH,
    // Parameters dereferenced in req.openapi: params.ts reads their names and bounds there.
    $refParser: { mode: 'dereference' },
    // Every bad field in one 400 (SPEC.md §5): ajv collects all errors, and unknown query
    // parameters are named by params.ts, since the validator would stop at the first one.
    // The schemas are our own and the input is a bounded URL, so allErrors costs little.
    validateRequests: { allErrors: true, allowUnknownQueryParameters: true, coerceTypes: true },
    validateResponses,
    validateSecurity: false,
    ignoreUndocumented: false,
    ignorePaths: /^\/(health|metrics|docs)$/,
  }) as RequestHandler[];
  return [checkAssetEncoding, headAsGet, ...validator, restoreHead, restoreHeadOnError, checkQuery];
}
