// Structured logs: one JSON object per line on stdout/stderr, every string redacted.
// On the request path (one line per request) this is built field by field: strings that no
// redaction rule can match are not copied or scanned twice (redact.ts's fast path).
import { redact, redactDeep } from './redact.ts';

type Fields = Record<string, unknown>;

function write(level: 'info' | 'warn' | 'error', msg: string, fields: Fields) {
  const entry: Fields = { level, time: new Date().toISOString(), msg };
  for (const key of Object.keys(fields)) {
    const v = fields[key];
    const safe = typeof v === 'string' ? redact(v) : v !== null && typeof v === 'object' ? redactDeep(v) : v;
    // An own property even for a key named __proto__, as object spread would make it.
    if (key === '__proto__') Object.defineProperty(entry, key, { value: safe, enumerable: true, writable: true });
    else entry[key] = safe;
  }
  const line = JSON.stringify(entry);
  if (level === 'error') console.error(line);
  else console.log(line);
}

/**
 * @example log.info('request', { requestId, status: 200 })
 */
export const log = {
  info: (msg: string, fields: Fields = {}) => write('info', msg, fields),
  warn: (msg: string, fields: Fields = {}) => write('warn', msg, fields),
  error: (msg: string, fields: Fields = {}) => write('error', msg, fields),
};

/** The name and message of an error, never its stack or attached data. */
export const errorSummary = (err: unknown) =>
  err instanceof Error ? { errorName: err.name, errorMessage: err.message } : { errorName: typeof err };
