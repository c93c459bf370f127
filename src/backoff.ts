// The one exponential back-off of every retry loop: the broker and listener reconnections, the
// consumer's retries and re-attachments, and the calls of outside services.

/** The delay before retry `attempt` (0-based): baseMs, doubling each attempt, capped at maxMs. */
export function backoffMs(attempt: number, baseMs: number, maxMs: number): number {
  return Math.min(baseMs * 2 ** Math.min(attempt, 30), maxMs);
}
