// The parameter checks of SPEC.md §5 that express-openapi-validator cannot make. They read the
// operation's parameters as the validator resolved them from openapi.yaml (req.openapi), so
// names and bounds live in the contract only. One 400 names every bad field: these errors are
// merged with the validator's (problem.ts) or raised after it passes (checkQuery).
import { parse } from 'node:querystring';
import type { Request, RequestHandler } from 'express';

export interface FieldError {
  location: 'query' | 'path' | 'header';
  field: string;
  message: string;
}

/** Bad parameters found by our own checks; problem.ts answers 400 naming each. */
export class BadRequest extends Error {
  constructor(readonly errors: FieldError[]) {
    super(errors.map((e) => `${e.field} ${e.message}`).join('; '));
  }
}

interface Parameter {
  name: string;
  in: string;
  schema?: { type?: string; minimum?: number; maximum?: number };
}

const DECIMAL = /^\d{1,12}(\.\d{1,8})?$/;
// Fixed-width text of a DECIMAL value: comparing two of them compares the quantities, without
// turning either into a JS number.
const sortable = (d: string) => {
  const [whole = '', fraction = ''] = d.split('.');
  return `${whole.padStart(12, '0')}.${fraction.padEnd(8, '0')}`;
};

/** Errors of the query string as received, for the operation the validator matched. */
export function queryErrors(req: Request): FieldError[] {
  const operation = (req as Request & { openapi?: { schema?: { parameters?: Parameter[] } } }).openapi?.schema;
  if (!operation) return [];
  const known = new Map((operation.parameters ?? []).filter((p) => p.in === 'query').map((p) => [p.name, p]));
  // Re-parsed as Express's 'simple' query parser does: the validator coerces req.query in place.
  const query = parse(req.originalUrl.split('?').slice(1).join('?'));
  const errors: FieldError[] = [];
  const bad = (field: string, message: string) => errors.push({ location: 'query', field, message });
  for (const [name, value] of Object.entries(query)) {
    const schema = known.get(name)?.schema;
    if (!known.has(name)) bad(name, 'is not a parameter of this operation');
    else if (schema?.type === 'integer' && typeof value === 'string') {
      // ajv takes "1e3", "0x10" or " 5" for integers, and 20 digits lose precision as a float.
      const { minimum = 0, maximum = Number.MAX_SAFE_INTEGER } = schema;
      if (!/^\d+$/.test(value)) bad(name, 'must be decimal digits');
      else if (BigInt(value) < BigInt(minimum) || BigInt(value) > BigInt(maximum))
        bad(name, `must be between ${minimum} and ${maximum}`);
    }
  }
  const { size_min: min, size_max: max } = query;
  if (
    known.has('size_min') &&
    typeof min === 'string' &&
    typeof max === 'string' &&
    DECIMAL.test(min) &&
    DECIMAL.test(max) &&
    sortable(min) > sortable(max)
  )
    bad('size_min', 'must not be greater than size_max');
  return errors;
}

/** Raises queryErrors when the validator found nothing else. */
export const checkQuery: RequestHandler = (req, _res, next) => {
  const errors = queryErrors(req);
  next(errors.length ? new BadRequest(errors) : undefined);
};

// {asset} is the only path parameter. The validator cannot decode a malformed %-escape in it and
// reports it as a query field named after a URL segment; name it here, before the validator.
const ASSET_PATH = /^\/api\/v1\/positions\/([^/]+)(\/(validate|snapshot|snapshots))?\/?$/i;

export const checkAssetEncoding: RequestHandler = (req, _res, next) => {
  const segment = ASSET_PATH.exec(req.path)?.[1];
  try {
    if (segment !== undefined) decodeURIComponent(segment);
  } catch {
    return next(new BadRequest([{ location: 'path', field: 'asset', message: 'is not valid percent-encoding' }]));
  }
  next();
};
