// pino JSON logs. Child loggers carry trace_id (and asset, message_key, ... where relevant);
// secrets never reach a line: keys, passwords and URL credentials are redacted.
import { pino, type Logger } from 'pino';
import { redactCredentials } from './config.js';

export type { Logger };

export function createLogger(options: { level: string; service: string; role?: string }): Logger {
  return pino({
    level: options.level,
    base: { service: options.service, ...(options.role ? { role: options.role } : {}) },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    redact: {
      paths: [
        'apiKey',
        'password',
        'req.headers["x-api-key"]',
        'headers["x-api-key"]',
        'config.apiKey',
        'config.grafanaReaderPassword',
      ],
      censor: '[redacted]',
    },
  });
}

/**
 * A copy of an error with any `user:password@` hidden in its texts (driver and migration errors
 * may quote the connection string they failed on). The prototype is kept so that pino's error
 * serializer still names the type; causes and aggregated errors are copied the same way.
 */
export function safeError(err: unknown): Error {
  if (!(err instanceof Error)) return new Error(redactCredentials(String(err)));
  const copy = Object.create(Object.getPrototypeOf(err) as object | null) as Record<string, unknown>;
  for (const key of Object.getOwnPropertyNames(err)) {
    const value = (err as unknown as Record<string, unknown>)[key];
    copy[key] =
      typeof value === 'string'
        ? redactCredentials(value)
        : value instanceof Error
          ? safeError(value)
          : Array.isArray(value)
            ? value.map((v: unknown) => (v instanceof Error ? safeError(v) : v))
            : value;
  }
  return copy as unknown as Error;
}
