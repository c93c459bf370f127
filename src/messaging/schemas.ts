// Incoming message bodies (SPEC.md §6.1): parsed so that numbers stay exact (lossless-json
// keeps each number's text; nothing becomes a JS number), then checked structurally with zod.
// The SQL functions check every value again and own the accounting rules; this layer rejects
// what is not even the right shape, naming the field, before it reaches a transaction.
import { isLosslessNumber, parse } from 'lossless-json';
import { z } from 'zod';
import type { MessageKind } from '../db/ingest.js';
import { bodyKey } from './body-key.js';

const MAX_BODY_BYTES = 1024 * 1024;

// A JSON number beyond numeric's range would fail the whole body's jsonb parse without naming
// the field, so its size is checked here.
const decimal = z
  .union([
    z.string().max(40, 'at most 40 characters'),
    z.custom(
      (v) => isLosslessNumber(v) && v.value.length <= 40 && !/[eE][+-]?0*\d{4,}$/.test(v.value),
      'must be a decimal of at most 40 characters and an exponent below 1000',
    ),
  ])
  .nullish();
const text = (max: number) => z.string().max(max, `at most ${max} characters`).nullish();
const symbol = z.string().min(1, 'must not be empty').max(40, 'at most 40 characters');

const flatFill = z.object({
  event_type: text(64),
  event_id: text(200),
  order_id: text(100),
  execution_id: text(100),
  exec_id: text(100),
  asset: symbol.nullish(),
  symbol: symbol.nullish(),
  side: z.string().max(10, 'must be Buy or Sell').nullish(),
  execution_quantity: decimal,
  filled_quantity: decimal,
  execution_price: decimal,
  price: decimal,
  execution_fees: decimal,
  fee: decimal,
  trace_id: text(128),
});

const enrichedFill = z.object({
  event_type: text(64),
  event_id: text(200),
  trace_id: text(128),
  order: z.object({
    order_id: text(100),
    asset: symbol.nullish(),
    side: z.string().max(10, 'must be Buy or Sell').nullish(),
    filled_quantity: decimal,
    average_price: decimal,
    fees: decimal,
  }),
});

// symbol and size may come from the Gateway's `raw` Bybit record instead (SPEC.md §4.3).
const reportItem = z
  .object({ symbol: symbol.nullish(), size: decimal, raw: z.record(z.string(), z.unknown()).nullish() })
  .superRefine((item, ctx) => {
    const fromRaw = (k: 'symbol' | 'size') => item[k] ?? item.raw?.[k];
    if (fromRaw('symbol') === null || fromRaw('symbol') === undefined)
      ctx.addIssue({ code: 'custom', path: ['symbol'], message: 'is required' });
    else if (item.symbol == null && !symbol.safeParse(fromRaw('symbol')).success)
      ctx.addIssue({ code: 'custom', path: ['raw', 'symbol'], message: 'must be a string of at most 40 characters' });
    if (fromRaw('size') === null || fromRaw('size') === undefined)
      ctx.addIssue({ code: 'custom', path: ['size'], message: 'is required' });
    else if (item.size == null && !decimal.safeParse(fromRaw('size')).success)
      ctx.addIssue({ code: 'custom', path: ['raw', 'size'], message: 'must be a decimal' });
  });
const reports = z.union([reportItem, z.array(reportItem).min(1).max(100, 'at most 100 reports')]);
const positionEvent = z.literal('position', { error: 'must be position' });

const report = z.union([
  z.object({ event_type: positionEvent, event_id: text(200), trace_id: text(128), payload: reports }),
  z.object({ event_type: positionEvent, event_id: text(200), trace_id: text(128), data: reports }),
]);

export type Checked =
  | {
      ok: true;
      traceId: string | undefined;
      asset?: string;
      lockKey?: string;
      bodyKey: string;
    }
  | { ok: false; reason: string; traceId: string | undefined };

function describe(error: z.ZodError): string {
  const issue = error.issues[0];
  if (!issue) return 'body: invalid';
  // A union reports every branch's issues: name the most specific one (a bound or format
  // problem over a mere type mismatch, then the deepest path).
  const flatten = (i: z.core.$ZodIssue, base: PropertyKey[]): z.core.$ZodIssue[] =>
    i.code === 'invalid_union'
      ? i.errors.flat().flatMap((x) => flatten(x, [...base, ...i.path]))
      : [{ ...i, path: [...base, ...i.path] }];
  const candidates = flatten(issue, []);
  const rank = (i: z.core.$ZodIssue) =>
    (i.code === 'invalid_type' || i.code === 'invalid_union' ? 1000 : 0) - i.path.length;
  const inner = [...candidates].sort((a, b) => rank(a) - rank(b))[0] ?? issue;
  const path = inner.path.length ? inner.path.join('.') : 'body';
  return `${path}: ${inner.message}`;
}

/** Parses and checks a body; the raw text (not the parsed tree) is what goes to SQL. */
export function checkBody(kind: MessageKind, raw: Buffer): Checked {
  if (raw.length > MAX_BODY_BYTES)
    return { ok: false, reason: `body: larger than ${MAX_BODY_BYTES} bytes`, traceId: undefined };
  if (nestingDepth(raw) > MAX_DEPTH)
    return { ok: false, reason: `body: nested deeper than ${MAX_DEPTH} levels`, traceId: undefined };
  let tree: unknown;
  try {
    tree = parse(raw.toString('utf8'));
  } catch (err) {
    return { ok: false, reason: `body: not valid JSON (${(err as Error).message})`, traceId: undefined };
  }
  if (tree === null || typeof tree !== 'object' || Array.isArray(tree))
    return { ok: false, reason: 'body: must be a JSON object', traceId: undefined };
  const obj = tree as Record<string, unknown>;
  const traceId =
    typeof obj.trace_id === 'string' && obj.trace_id.length <= 128 && !unstorable(obj.trace_id)
      ? obj.trace_id
      : undefined;
  // only a \u escape can put either into the parsed text
  const bad = raw.includes('\\u') && ESCAPED_UNSTORABLE.test(raw.toString('latin1')) ? unstorablePath(tree) : undefined;
  if (bad) return { ok: false, reason: `${bad.path}: contains ${bad.what}, which cannot be stored`, traceId };
  const schema =
    kind === 'report' ? report : typeof obj.order === 'object' && obj.order !== null ? enrichedFill : flatFill;
  const result = schema.safeParse(tree);
  if (!result.success) return { ok: false, reason: describe(result.error), traceId };
  return {
    ok: true,
    traceId,
    asset: fillAsset(kind, obj),
    lockKey: lockKey(kind, obj),
    bodyKey: bodyKey(tree),
  };
}

// Messages are a few levels deep; a deeply nested one would overflow the stack of the checks
// below (and of PostgreSQL's parser, whose error is not a data error), so it is refused first.
const MAX_DEPTH = 64;

/** The deepest nesting of objects and arrays in JSON text (brackets inside strings do not count). */
function nestingDepth(raw: Buffer): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i];
    if (inString) {
      if (c === 0x5c)
        i++; // backslash: skip the escaped byte
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) max = Math.max(max, ++depth);
    else if (c === 0x7d || c === 0x5d) depth--;
  }
  return max;
}

// PostgreSQL's jsonb holds neither U+0000 nor an unpaired UTF-16 surrogate: a message with one
// would fail in SQL without naming a field, so it is refused here, naming where it is (changing
// it instead would alter stored text).
const ESCAPED_UNSTORABLE = /\\u(0000|[dD][89a-fA-F])/;
// eslint-disable-next-line no-control-regex -- U+0000 is one of the characters it looks for
const UNSTORABLE = /(\u0000)|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function unstorable(s: string): string | undefined {
  const m = UNSTORABLE.exec(s);
  return m ? (m[1] ? 'U+0000' : 'an unpaired UTF-16 surrogate') : undefined;
}

function unstorablePath(v: unknown, path: string[] = []): { path: string; what: string } | undefined {
  if (typeof v === 'string') {
    const what = unstorable(v);
    return what ? { path: path.join('.') || 'body', what } : undefined;
  }
  if (v === null || typeof v !== 'object' || isLosslessNumber(v)) return undefined;
  for (const [k, x] of Array.isArray(v) ? v.entries() : Object.entries(v)) {
    const inKey = unstorable(String(k));
    const found = inKey
      ? { path: [...path, String(k)].join('.'), what: inKey }
      : unstorablePath(x, [...path, String(k)]);
    if (found) return found;
  }
  return undefined;
}

/** The fields of a fill: the `order` object of Order Manager's enriched event, else the body. */
const fillFields = (obj: Record<string, unknown>): Record<string, unknown> =>
  typeof obj.order === 'object' && obj.order !== null ? (obj.order as Record<string, unknown>) : obj;

/** A fill's asset as SQL will read it (upper case), so the consumer can keep each asset's fills in order. */
function fillAsset(kind: MessageKind, obj: Record<string, unknown>): string | undefined {
  if (kind !== 'fill') return undefined;
  const o = fillFields(obj);
  const raw = o.asset ?? o.symbol;
  return typeof raw === 'string' ? raw.trim().toUpperCase() : undefined;
}

/**
 * The position row a message locks, as "ASSET mode", for ordering a batch (fills: asset and
 * mode; a report of one position: its symbol); undefined when it cannot be told.
 */
function lockKey(kind: MessageKind, obj: Record<string, unknown>): string | undefined {
  if (kind === 'fill') {
    const asset = fillAsset(kind, obj);
    const o = fillFields(obj);
    const mode = typeof o.mode === 'string' ? o.mode.trim().toLowerCase() : 'one-way';
    return asset === undefined ? undefined : `${asset} ${mode}`;
  }
  const p = obj.payload ?? obj.data ?? obj;
  if (typeof p !== 'object' || p === null || Array.isArray(p)) return undefined;
  const r = p as Record<string, unknown>;
  const raw = r.raw !== null && typeof r.raw === 'object' ? (r.raw as Record<string, unknown>) : {};
  const symbol = r.symbol ?? raw.symbol;
  return typeof symbol === 'string' ? symbol.trim().toUpperCase() : undefined;
}
