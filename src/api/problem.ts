// One error mapper for the API (SPEC.md §5): every failure becomes an RFC 9457 problem body
// with a stable `code`; bad input is 400 naming the field, never 500; a database that cannot
// be reached is 503 with Retry-After. No stack traces or SQL text ever reach a client.
import { randomUUID } from 'node:crypto';
import type { ErrorRequestHandler, Request, Response } from 'express';
import {
  isConflict,
  isConnectionError,
  isDataException,
  isLockNotAvailable,
  isNotFound,
  isStatementTimeout,
} from '../db/errors.js';
import type { Logger } from '../log.js';
import { BadRequest, queryErrors, type FieldError } from './params.js';

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  409: 'Conflict',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

export function sendProblem(res: Response, status: number, code: string, detail: string, errors?: FieldError[]): void {
  if (status === 503) res.setHeader('Retry-After', '5');
  res
    .status(status)
    .type('application/problem+json')
    .send(
      JSON.stringify({
        type: 'about:blank',
        title: TITLES[status] ?? 'Error',
        status,
        code,
        detail,
        ...(errors ? { errors } : {}),
        trace_id: res.locals.traceId as string,
      }),
    );
}

/** An unknown path, or a method the path does not serve (the contract has no 405). */
export function notFound(req: Request, res: Response): void {
  sendProblem(res, 404, 'not_found', `no such path or method: ${req.method} ${req.path}`);
}

interface ValidatorError {
  status?: number;
  errors?: { path?: string; message?: string }[];
}

function validatorFieldErrors(err: ValidatorError): FieldError[] {
  return (err.errors ?? []).map((e): FieldError => {
    const [, where = 'query', field = 'request'] = (e.path ?? '').split('/');
    const location = where === 'params' ? 'path' : where === 'headers' ? 'header' : 'query';
    return { location, field, message: e.message ?? 'is invalid' };
  });
}

const PATH_FIELDS = new Set(['asset']);

export function errorMapper(log: Logger): ErrorRequestHandler {
  return (err, req, res, _next) => {
    const e = err as ValidatorError & { code?: string; column?: string; message?: string; type?: string };
    const reqLog = (res.locals.log as Logger | undefined) ?? log;
    if (err instanceof BadRequest) return sendProblem(res, 400, 'invalid_parameter', err.message, err.errors);
    if (e.type === 'entity.parse.failed' || e.type === 'entity.too.large')
      return sendProblem(res, 400, 'invalid_parameter', 'the request body is ignored and must be small');
    if (e.status === 400 && e.errors) {
      // The validator stops before our own checks run: add theirs for the fields it did not name.
      const errors = validatorFieldErrors(e);
      const named = new Set(errors.map((x) => `${x.location}/${x.field}`));
      errors.push(...queryErrors(req).filter((x) => !named.has(`${x.location}/${x.field}`)));
      return sendProblem(
        res,
        400,
        'invalid_parameter',
        errors.map((x) => `${x.field}: ${x.message}`).join('; '),
        errors,
      );
    }
    if ((e.status === 404 || e.status === 405) && e.errors) return notFound(req, res);
    if (isNotFound(err)) return sendProblem(res, 404, 'position_not_found', 'no position for this asset and mode');
    if (isLockNotAvailable(err))
      return sendProblem(res, 409, 'validation_in_progress', 'a validation of this position is already running');
    if (isDataException(err)) {
      const field = e.column || 'request';
      const message = (e.message ?? '').replace(new RegExp(`^${field}: `), '');
      return sendProblem(res, 400, 'invalid_parameter', e.message ?? 'invalid parameter', [
        { location: PATH_FIELDS.has(field) && req.params?.asset !== undefined ? 'path' : 'query', field, message },
      ]);
    }
    if (isConnectionError(err) || isStatementTimeout(err)) {
      reqLog.error({ err: e.message }, 'database unavailable');
      return sendProblem(res, 503, 'database_unavailable', 'the database cannot be reached; retry later');
    }
    if (isConflict(err)) {
      // still conflicting after the route's retries: busy, not a bug; nothing was written
      reqLog.warn({ err: e.message }, 'transaction conflict persisted; answered 503');
      return sendProblem(
        res,
        503,
        'database_unavailable',
        'the database is busy with conflicting changes; retry later',
      );
    }
    reqLog.error({ err }, 'unhandled error');
    return sendProblem(res, 500, 'internal_error', 'an unexpected error occurred');
  };
}

/**
 * Requests Node's HTTP parser rejects (bad bytes, a request line or headers too large) never
 * reach express; answer them with a problem body and an X-Trace-Id too (SPEC.md §5).
 */
export function answerClientErrors(server: import('node:http').Server): void {
  server.on('clientError', (err: NodeJS.ErrnoException, socket: import('node:stream').Duplex) => {
    if (err.code === 'ECONNRESET' || !socket.writable) return void socket.destroy();
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
    const title = status === 431 ? 'Request Header Fields Too Large' : 'Bad Request';
    const traceId = randomUUID();
    const body = JSON.stringify({
      type: 'about:blank',
      title,
      status,
      code: 'invalid_parameter',
      detail: status === 431 ? 'the request line or headers are too large' : 'the request could not be parsed',
      trace_id: traceId,
    });
    socket.end(
      `HTTP/1.1 ${status} ${title}\r\nContent-Type: application/problem+json\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nX-Trace-Id: ${traceId}\r\nConnection: close\r\n\r\n${body}`,
    );
  });
}
