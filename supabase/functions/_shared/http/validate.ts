// Request bodies and validation: one streaming reader that never holds more than a route's
// limit in memory, and zod turning a bad body or query into a 400 envelope (its sentence: values/invalid.ts).
import type { Context } from 'hono';
import type { z } from 'zod';
import type { AppContext } from '../app-env.ts';
import { AppError } from '../errors.ts';
import { invalid } from '../values/invalid.ts';

const defaultMaxBytes = 64 * 1024;

const tooLarge = (maxBytes: number) =>
  new AppError('validation', 'PAYLOAD_TOO_LARGE', `The body is larger than ${maxBytes} bytes.`, { status: 413 });

/**
 * The raw body as text, with at most `maxBytes` ever read: a declared Content-Length over the
 * limit is refused before reading anything, and a streamed body is cut off as soon as it
 * passes the limit (the rest is never read). A 413 PAYLOAD_TOO_LARGE in the envelope either way.
 * Every route that reads a body reads it through here.
 * @example const raw = await readBody(c, 512 * 1024) // a webhook's bytes, exactly as signed
 */
export async function readBody(c: Context, maxBytes = defaultMaxBytes): Promise<string> {
  if (Number(c.req.header('content-length')) > maxBytes) throw tooLarge(maxBytes);
  const stream = c.req.raw.body;
  if (!stream) return '';
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > maxBytes) {
      await reader.cancel().catch(() => {});
      throw tooLarge(maxBytes);
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return new TextDecoder().decode(bytes);
}

/**
 * Parses the JSON body with `schema`: an oversized body is 413; a non-JSON or invalid one 400.
 * @example const body = await readJson(c, UsageRequestSchema)
 */
export async function readJson<S extends z.ZodType>(
  c: AppContext,
  schema: S,
  maxBytes = defaultMaxBytes,
): Promise<z.infer<S>> {
  const text = await readBody(c, maxBytes);
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
