// The portfolio metrics cache (SPEC.md R-21): results per query for at most the TTL, dropped in
// every instance when a position change is NOTIFYed, and bypassed entirely while the listener
// is down, so a read after a committed change never sees figures older than that change: a hit
// is served only after a round trip on the listening connection (Listener.sync).
//
// Entries expire at the end of TTL periods counted from the key's first computation, not a full
// TTL after each computation: a result computed right after a change then lives only to the end
// of the period under way, so a steady reader gets fresh figures every TTL whatever the changes
// did to the cache in between (TC-011: computed at 0 s, dropped by a change at 5 s, fresh at 15 s).
import type { Listener } from '../db/listen.js';
import { metrics } from '../metrics.js';

/** Period anchors kept before the map starts over (one per asset argument and endpoint). */
const MAX_ANCHORS = 10_000;

export class MetricsCache {
  private entries = new Map<string, { expires: number; value: Promise<unknown> }>();
  private anchors = new Map<string, number>();

  constructor(
    private readonly ttlMs: number,
    private readonly listener: Listener | undefined,
  ) {
    listener?.on(() => this.clear());
    listener?.onStateChange(() => this.clear());
  }

  clear(): void {
    // A new map, not clear(): computations still running belong to the old one and are dropped.
    this.entries = new Map();
    metrics.cacheEntries.set(0);
  }

  async get<T>(key: string, compute: () => Promise<T>): Promise<T> {
    if (this.ttlMs <= 0 || !this.listener?.connected) {
      metrics.cacheRequests.inc({ result: 'miss' });
      return compute();
    }
    const now = Date.now();
    const hit = this.entries.get(key);
    if (hit && now < hit.expires) {
      // The NOTIFY of a change committed just before this read may still be on its way: a
      // round trip on the listening connection brings it in first (R-21, "never older").
      const generation = this.entries;
      try {
        await this.listener.sync();
      } catch {
        metrics.cacheRequests.inc({ result: 'miss' });
        return compute();
      }
      if (generation === this.entries && this.entries.get(key) === hit && Date.now() < hit.expires) {
        metrics.cacheRequests.inc({ result: 'hit' });
        return hit.value as Promise<T>;
      }
    }
    metrics.cacheRequests.inc({ result: 'miss' });
    const generation = this.entries;
    const computedAt = Date.now();
    const value = compute();
    value.then(
      () => {
        if (generation === this.entries) metrics.cacheEntries.set(this.entries.size);
      },
      () => generation === this.entries && this.entries.delete(key),
    );
    this.entries.set(key, { expires: this.periodEnd(key, computedAt), value });
    metrics.cacheEntries.set(this.entries.size);
    return value;
  }

  private periodEnd(key: string, now: number): number {
    let anchor = this.anchors.get(key);
    if (anchor === undefined) {
      if (this.anchors.size >= MAX_ANCHORS) this.anchors = new Map();
      anchor = now;
      this.anchors.set(key, anchor);
    }
    return anchor + (Math.floor((now - anchor) / this.ttlMs) + 1) * this.ttlMs;
  }
}
