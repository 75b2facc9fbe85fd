// Request validation with zod: one place turns a bad body or query into a 400 envelope.
import type { z } from 'zod';
import type { AppContext } from './app.ts';
import { AppError } from './errors.ts';

const defaultMaxBytes = 64 * 1024;

/** Whether a string is a UUID (any version), e.g. an id taken from a path. */
export const isUuid = (s: string) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s);

function invalid(error: z.ZodError): AppError {
  const first = error.issues[0];
  const field = first?.path.join('.') || undefined;
  return new AppError('validation', 'VALIDATION_FAILED', field ? `${field}: ${first.message}` : first.message, {
    field,
    details: { issues: error.issues.slice(0, 10).map((i) => ({ path: i.path.join('.'), message: i.message })) },
  });
}

/**
 * Parses the JSON body with `schema`; a missing, oversized, non-JSON or invalid body is a 400.
 * @example const body = await readJson(c, UsageRequestSchema)
 */
export async function readJson<S extends z.ZodType>(
  c: AppContext,
  schema: S,
  maxBytes = defaultMaxBytes,
): Promise<z.infer<S>> {
  const text = await c.req.text();
  if (new TextEncoder().encode(text).length > maxBytes) {
    throw new AppError('validation', 'PAYLOAD_TOO_LARGE', `The body is larger than ${maxBytes} bytes.`, {
      status: 413,
    });
  }
  let json: unknown;
  try {
    json = text === '' ? {} : JSON.parse(text);
  } catch {
    throw new AppError('validation', 'INVALID_JSON', 'The body is not valid JSON.');
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) throw invalid(parsed.error);
  return parsed.data;
}

/** Parses the query string with `schema`. */
export function readQuery<S extends z.ZodType>(c: AppContext, schema: S): z.infer<S> {
  const parsed = schema.safeParse(c.req.query());
  if (!parsed.success) throw invalid(parsed.error);
  return parsed.data;
}
