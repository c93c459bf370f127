// Bybit V5's REST API: the public linear tickers (mark prices, SPEC.md R-31) and the signed
// position list (reconciliation, R-34). Answers go to SQL as their own text, so no price or
// size passes through a JS number; only the envelope (retCode, the page cursor) is read here.
// Signing is Node's crypto in a few lines (HMAC-SHA256 over timestamp + key + recv_window +
// query, Bybit V5's scheme), not a client library for two GETs.
import { createHmac } from 'node:crypto';
import { backoffMs } from '../backoff.js';
import type { Config } from '../config.js';
import { describeFailure, httpRequest } from './http.js';

/** The source failed or refused: the answer's status or retCode, a timeout, or not JSON. */
export class BybitError extends Error {}

const RECV_WINDOW = '5000';
const PAGE_LIMIT = 200;
// A page is a request; a cursor that never ends must not loop for ever.
const MAX_PAGES = 100;

interface Credentials {
  key: string;
  secret: string;
}

export function signBybit(
  secret: string,
  timestamp: string,
  apiKey: string,
  recvWindow: string,
  query: string,
): string {
  return createHmac('sha256', secret)
    .update(timestamp + apiKey + recvWindow + query)
    .digest('hex');
}

/** One GET with retCode 0, after at most 1 + POSITION_MANAGER_PRICE_API_RETRIES tries. */
async function bybitGet(
  config: Readonly<Config>,
  path: string,
  query: string,
  credentials?: Credentials,
): Promise<string> {
  const url = new URL(`${path}?${query}`, config.priceApiUrl);
  let last: unknown;
  for (let attempt = 0; attempt <= config.priceApiRetries; attempt++) {
    if (attempt > 0) await new Promise((ok) => setTimeout(ok, backoffMs(attempt - 1, 500, 5000)));
    const timestamp = String(Date.now());
    const headers: Record<string, string> = credentials
      ? {
          'X-BAPI-API-KEY': credentials.key,
          'X-BAPI-TIMESTAMP': timestamp,
          'X-BAPI-RECV-WINDOW': RECV_WINDOW,
          'X-BAPI-SIGN': signBybit(credentials.secret, timestamp, credentials.key, RECV_WINDOW, query),
        }
      : {};
    try {
      const answer = await httpRequest(url, { timeoutMs: config.priceApiTimeoutSeconds * 1000, headers });
      if (answer.status !== 200) {
        last = answer;
        continue;
      }
      const envelope = JSON.parse(answer.text) as { retCode?: unknown; retMsg?: string | null } | null;
      if (envelope?.retCode === 0) return answer.text;
      last = new Error(`retCode ${String(envelope?.retCode)}: ${String(envelope?.retMsg ?? '').slice(0, 200)}`);
    } catch (err) {
      last = err instanceof SyntaxError ? new Error('the answer is not JSON') : err;
    }
  }
  throw new BybitError(`${url.origin}${path}: ${describeFailure(last)}`);
}

/** Every linear symbol's ticker, mark price included: one request. */
export function fetchLinearTickers(config: Readonly<Config>): Promise<string> {
  return bybitGet(config, '/v5/market/tickers', 'category=linear');
}

/** Every page of the account's linear USDT positions (needs BYBIT_API_KEY and BYBIT_API_SECRET). */
export async function fetchLinearPositions(config: Readonly<Config>, credentials: Credentials): Promise<string[]> {
  const pages: string[] = [];
  let cursor = '';
  do {
    const params = new URLSearchParams({ category: 'linear', settleCoin: 'USDT', limit: String(PAGE_LIMIT) });
    if (cursor) params.set('cursor', cursor);
    const text = await bybitGet(config, '/v5/position/list', params.toString(), credentials);
    pages.push(text);
    const next = (JSON.parse(text) as { result?: { nextPageCursor?: unknown } }).result?.nextPageCursor;
    cursor = typeof next === 'string' ? next : '';
  } while (cursor !== '' && pages.length < MAX_PAGES);
  if (cursor !== '') throw new BybitError(`/v5/position/list: more than ${MAX_PAGES} pages`);
  return pages;
}
