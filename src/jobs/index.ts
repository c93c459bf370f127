// The worker role (graphile-worker). Placeholder until the jobs layer lands.
import type { Component, Runtime } from '../runtime.js';

export async function startWorker(rt: Runtime): Promise<Component[]> {
  void rt;
  return [];
}
