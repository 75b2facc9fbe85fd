// What text, integers and JSON may reach Postgres: the one rule every route schema is built
// from (the blocks below; tests/unit/route-schemas.test.ts walks them all) and the SQL
// encoders apply (jsonText here, sql-literal.ts). A value Postgres would refuse or change is a
// 400 before any SQL is sent: never a 5xx, never a failed statement whose text (with the
// request's values) lands in the server log. docs/api.md, "Text, numbers and JSON".
import { z } from 'zod';
import { AppError } from '../errors.ts';

/** Postgres' largest bigint, 2^63 - 1. */
export const maxBigint = 9_223_372_036_854_775_807n;

/**
 * Whether Postgres stores `s` exactly as sent, as text and inside jsonb: no NUL (text cannot
 * hold it, jsonb refuses `\u0000`) and no unpaired UTF-16 surrogate (not a character: a driver
 * writes U+FFFD in its place, jsonb refuses its `\u` escape). Noncharacters such as U+FFFF are
 * characters, stored as sent, and accepted.
 * @example isPgText('a\u0000b') // false
 */
export const isPgText = (s: string): boolean => !s.includes('\0') && s.isWellFormed();

/**
 * `s` as text Postgres stores: each NUL and unpaired surrogate becomes U+FFFD (as a UTF-8
 * decoder shows what it cannot read). Only for text a provider wrote, which must be stored for
 * its charge to be kept; a caller's text is refused instead (pgText).
 * @example pgStorable('a\u0000b') // 'a\uFFFDb'
 */
export const pgStorable = (s: string): string => s.toWellFormed().replaceAll('\0', '\uFFFD');

const notPgText = 'must not contain NUL (U+0000) or an unpaired surrogate';

/** The 400 for a value that is not text Postgres stores exactly, wherever it was found. */
export const textRefused = () =>
  new AppError('validation', 'VALIDATION_FAILED', `Text ${notPgText}.`, { details: { rule: notPgText } });

/**
 * Text Postgres stores exactly, of at most `max` characters (code points, as zod and Postgres'
 * length() count them): the start of every string a route accepts; chain `.min`, `.trim`,
 * `.regex` as needed; `tooLong` says what the value should be when a longer one means another
 * form (an instant where a date is wanted).
 * @example name: pgText(200).trim().min(1)
 */
export const pgText = (max: number, tooLong?: string) => z.string().refine(isPgText, notPgText).max(max, tooLong);

/**
 * A JSON integer in [min, max] (bounds within ±(2^53 − 1), so exact in JS and in the SQL
 * integer type the bounds fit; `-0` reaches SQL as 0).
 * @example ttl_seconds: pgInt(1, 86_400).optional()
 */
export const pgInt = (min: number, max: number) =>
  // A present value of another type ("10", 1.5) is not an integer; a missing one keeps "is required".
  z.number({ error: (i) => (i.code === 'invalid_type' && i.input !== undefined ? 'must be an integer' : undefined) })
    .int({ error: 'must be an integer' }).min(min).max(max);

/**
 * An integer from a query string: decimal digits only (no `1e2`, `0x10`, signs, spaces or
 * fractions, which `Number()` would take), in [min, max].
 * @example limit: queryInt(1, 200).default(50)
 */
export const queryInt = (min: number, max: number) => {
  const message = `must be a whole number from ${min} to ${max}`;
  return pgText(15).regex(/^[0-9]+$/, message).transform(Number).pipe(
    z.number().int().min(min, message).max(max, message),
  );
};

/**
 * A positive bigint as decimal digits (an entry id, a cursor): 1 to 2^63 − 1.
 * @example cursor: bigintText('must be a cursor from a previous page').optional()
 */
export const bigintText = (message: string) =>
  pgText(19)
    .regex(/^[1-9][0-9]{0,18}$/, message)
    // zod runs refinements even after the regex failed: only digits reach BigInt.
    .refine((s) => /^[0-9]+$/.test(s) && BigInt(s) <= maxBigint, message);

/** How much JSON a field takes. */
export interface JsonLimits {
  /** Containers nested at most this deep: 1 is an object of plain values. */
  depth: number;
  /** Entries in any one object or array. */
  entries: number;
  /** Characters in a key. */
  key: number;
  /** Characters in a string value. */
  text: number;
  /** Top-level keys the caller may not set (another party owns them). */
  reserved?: readonly string[];
}

type Problem = { path: (string | number)[]; message: string };
/** Whether `s` has more than `max` characters (code points). */
const longer = (s: string, max: number) => s.length > max && [...s].length > max;

/** The first thing in `value` that is not JSON within `limits` that jsonb stores exactly. */
function jsonProblem(
  value: unknown,
  limits: JsonLimits,
  path: (string | number)[] = [],
  depth = 0,
): Problem | undefined {
  if (value === null || typeof value === 'boolean') return undefined;
  if (typeof value === 'number') {
    return Number.isFinite(value) ? undefined : { path, message: 'must be a finite number' };
  }
  if (typeof value === 'string') {
    if (!isPgText(value)) return { path, message: notPgText };
    return longer(value, limits.text) ? { path, message: `must be at most ${limits.text} characters` } : undefined;
  }
  if (typeof value !== 'object') return { path, message: 'must be JSON' };
  // Stops at the limit: never walks (or recurses into) anything deeper.
  if (depth >= limits.depth) return { path, message: `must be at most ${limits.depth} level(s) deep` };
  const entries: [string | number, unknown][] = Array.isArray(value) ? [...value.entries()] : Object.entries(value);
  if (entries.length > limits.entries) return { path, message: `must have at most ${limits.entries} entries` };
  for (const [k, v] of entries) {
    if (typeof k === 'string' && !isPgText(k)) return { path: [...path, k], message: `keys ${notPgText}` };
    if (typeof k === 'string' && longer(k, limits.key)) {
      return { path: [...path, k], message: `keys must be at most ${limits.key} characters` };
    }
    const problem = jsonProblem(v, limits, [...path, k], depth + 1);
    if (problem) return problem;
  }
  return undefined;
}

const jsonBlocks = new WeakSet<z.ZodType>();
/** Whether `schema` is a jsonObject block (its values are checked as a whole, not field by field). */
export const isJsonBlock = (schema: z.ZodType) => jsonBlocks.has(schema);

/**
 * A JSON object that jsonb stores exactly, within `limits`: every key and string walked.
 * @example metadata: jsonObject({ depth: 1, entries: 20, key: 64, text: 500 }).optional()
 */
export function jsonObject(limits: JsonLimits) {
  const schema = z.record(z.string(), z.unknown()).superRefine((value, ctx) => {
    const problem = jsonProblem(value, limits);
    if (problem) ctx.addIssue({ code: 'custom', path: problem.path, message: problem.message });
    // Compared as a reader would see them: case, spacing and invisible characters aside.
    const seen = (k: string) => k.normalize('NFKC').toLowerCase().replace(/[^a-z0-9_]/g, '');
    const taken = Object.keys(value).find((k) => limits.reserved?.includes(seen(k)));
    if (taken) ctx.addIssue({ code: 'custom', path: [taken], message: `is a key only the ledger writes` });
  });
  jsonBlocks.add(schema);
  return schema;
}

/**
 * `value` as JSON text for a jsonb parameter or literal, or the 400 for anything jsonb would
 * refuse or change (NUL, an unpaired surrogate, a number that is not finite): the guarantee
 * holds even where a route's schema forgot a field. Walked without recursion, however deep.
 * @example jsonText({ note: 'a' }) // '{"note":"a"}'
 */
export function jsonText(value: unknown): string {
  const pending = [value];
  while (pending.length) {
    const v = pending.pop();
    if (typeof v === 'string' && !isPgText(v)) throw textRefused();
    if (typeof v === 'number' && !Number.isFinite(v)) {
      throw new AppError('validation', 'VALIDATION_FAILED', 'Numbers must be finite.');
    }
    if (v && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        if (!isPgText(k)) throw textRefused();
        pending.push(x);
      }
    }
  }
  return JSON.stringify(value);
}
