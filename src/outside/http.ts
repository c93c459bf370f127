// The one way this service calls an outside HTTP service (the Gateway, Bybit): a deadline per
// try, the answer as text (decimals in it must never pass through a JS number).

export interface HttpAnswer {
  status: number;
  text: string;
}

/** One request with a deadline; throws on a network error or when the deadline passes. */
export async function httpRequest(
  url: string | URL,
  init: { method?: string; headers?: Record<string, string>; body?: string; timeoutMs: number },
): Promise<HttpAnswer> {
  const res = await fetch(url, {
    method: init.method ?? 'GET',
    headers: init.headers,
    body: init.body,
    signal: AbortSignal.timeout(init.timeoutMs),
  });
  return { status: res.status, text: await res.text() };
}

/** An error or an answer, in one short line for a log (an answer body is cut at 300 characters). */
export function describeFailure(failure: unknown): string {
  if (failure && typeof failure === 'object' && 'status' in failure) {
    const a = failure as HttpAnswer;
    return `HTTP ${a.status}: ${a.text.slice(0, 300)}`;
  }
  const e = failure as Error;
  return e?.name === 'TimeoutError' ? 'no answer in time' : String(e?.message ?? failure);
}
