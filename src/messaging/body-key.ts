// R-3's last-resort message key: SHA-256 (hex) of the body's canonical JSON per RFC 8785
// (JCS). JCS is defined through ECMAScript's own serialisation: strings and numbers exactly as
// JSON.stringify writes them (numbers as IEEE doubles, so 1.0 and 1 are the same body), object
// keys sorted by UTF-16 code units, no whitespace. Numbers pass through a double only here, to
// name the message; the body itself goes to SQL as its original text.
import { createHash } from 'node:crypto';
import { isLosslessNumber } from 'lossless-json';

function canonical(v: unknown): string {
  if (isLosslessNumber(v)) return JSON.stringify(Number(v.value));
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/** The key of a parsed body (numbers as lossless-json's LosslessNumber). */
export function bodyKey(tree: unknown): string {
  return createHash('sha256').update(canonical(tree), 'utf8').digest('hex');
}
