// The portfolio metrics cache (SPEC.md R-21): results per query for the TTL, dropped in every
// instance when a position change is NOTIFYed, and bypassed entirely while the listener is
// down, so a read after a committed change never sees figures older than that change.
import type { Listener } from '../db/listen.js';
import { metrics } from '../metrics.js';

export class MetricsCache {
  private entries = new Map<string, { at: number; value: Promise<unknown> }>();

  constructor(private readonly ttlMs: number, private readonly listener: Listener | undefined) {
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
    const hit = this.entries.get(key);
    if (hit && Date.now() - hit.at < this.ttlMs) {
      metrics.cacheRequests.inc({ result: 'hit' });
      return hit.value as Promise<T>;
    }
    metrics.cacheRequests.inc({ result: 'miss' });
    const generation = this.entries;
    const value = compute();
    value.then(
      () => {
        if (generation === this.entries) metrics.cacheEntries.set(this.entries.size);
      },
      () => generation === this.entries && this.entries.delete(key),
    );
    this.entries.set(key, { at: Date.now(), value });
    metrics.cacheEntries.set(this.entries.size);
    return value;
  }
}
