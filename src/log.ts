// pino JSON logs. Child loggers carry trace_id (and asset, message_key, ... where relevant);
// secrets never reach a line: keys, passwords and URL credentials are redacted.
import { pino, type Logger } from 'pino';

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
