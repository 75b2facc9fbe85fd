// Structured logs: one JSON object per line on stdout/stderr, every string redacted.
import { redactDeep } from './redact.ts';

type Fields = Record<string, unknown>;

function write(level: 'info' | 'warn' | 'error', msg: string, fields: Fields) {
  const line = JSON.stringify({ level, time: new Date().toISOString(), msg, ...(redactDeep(fields) as Fields) });
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
