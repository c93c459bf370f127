// Messaging roles (consumer, relay). Placeholder until the messaging layer lands.
import type { Component, Runtime } from '../runtime.js';

export async function startMessaging(rt: Runtime, roles: { consumer: boolean; relay: boolean }): Promise<Component[]> {
  void rt;
  void roles;
  return [];
}
