// Query-string and path values whose every accepted value Postgres accepts too, so a hostile
// value is a 400 with a `field` and never reaches SQL to come back as a 500: bounded integers
// (bigint ids, page sizes), real calendar dates and instants within one window, UUIDs. Built
// from pg-values.ts's blocks.
import { z } from 'zod';
import { bigintText, pgText, queryInt } from './pg-values.ts';
import { cursorOf } from './page.ts';
import { invalid } from './invalid.ts';

/** The window every date and instant must fall in (docs/api.md, "Query values"). */
export const earliestDay = '1970-01-01';
export const latestDay = '9999-12-31';
const earliestMs = Date.parse(`${earliestDay}T00:00:00Z`);
const afterLatestMs = Date.parse('+010000-01-01T00:00:00Z');
const outOfWindow = `must be between ${earliestDay} and ${latestDay}`;

/**
 * A page size from the query string: decimal digits only (no `1e3`, `0x10`, spaces or signs),
 * within [1, max], `fallback` when absent.
 * @example limit: pageLimit(200, 50)
 */
export const pageLimit = (max: number, fallback: number) => queryInt(1, max).default(fallback);

// An instant where a date is wanted is longer than 10 characters: the same words either way.
const dateOnly = 'must be a date (YYYY-MM-DD)';

/**
 * A calendar date `YYYY-MM-DD` that exists (no 2026-02-30) and lies in the window.
 * @example DailyReportSchema = z.strictObject({ date: CalendarDateSchema })
 */
export const CalendarDateSchema = pgText(10, dateOnly).pipe(
  z.iso.date(dateOnly)
    .refine((s) => s >= earliestDay && s <= latestDay, outOfWindow),
);

// Real offsets run from -12:00 to +14:00; Postgres refuses anything past ±15:59.
const offsetMinutes = (s: string) => {
  const m = s.match(/([+-])(\d{2}):(\d{2})$/);
  return m ? Number(m[2]) * 60 + Number(m[3]) : 0;
};

/**
 * An instant, RFC 3339 with `Z` or an offset of at most ±14:00, in the window. The text is
 * passed on as given (microseconds kept); only its range is checked here.
 * @example from: InstantSchema.optional()
 */
export const InstantSchema = pgText(40).pipe(
  z.iso
    .datetime({ offset: true })
    .refine((s) => offsetMinutes(s) <= 14 * 60, 'the UTC offset must be at most ±14:00')
    .refine((s) => {
      const ms = Date.parse(s);
      return ms >= earliestMs && ms < afterLatestMs;
    }, outOfWindow),
);

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Whether a string is a UUID (any version), e.g. an id taken from a path. */
export const isUuid = (s: string) => uuid.test(s);

/** A UUID in its canonical 8-4-4-4-12 hex form (any version). */
export const UuidSchema = pgText(36).regex(uuid, 'must be a UUID');

/**
 * The 400 envelope for a value that failed `schema`, naming the first bad field; for inputs
 * that do not come through readJson/readQuery (form posts).
 * @example const body = parseOr400(SessionRequestSchema, Object.fromEntries(new URLSearchParams(raw)))
 */
export function parseOr400<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  const parsed = schema.safeParse(input);
  if (parsed.success) return parsed.data;
  throw invalid(parsed.error);
}

/**
 * The cursor of a list paged by a bigint id (ledger entries, lots): opaque, its position at
 * most 2^63 - 1.
 * @example cursor: IdCursorSchema.optional()
 */
export const IdCursorSchema = cursorOf(bigintText('must be an id'));

/** The cursor of a list paged by a UUID (an organisation's invitations). */
export const UuidCursorSchema = cursorOf(UuidSchema);

/** The cursor of a list paged by an instant (a provider's payments and payouts). */
export const InstantCursorSchema = cursorOf(InstantSchema);

/**
 * A range's bound given as a calendar date (its midnight, UTC) or an instant, as an instant.
 * @example from: DayOrInstantSchema.optional()
 */
export const DayOrInstantSchema = pgText(40).transform((s, ctx) => {
  const isDay = /^[0-9]{4}-[0-9]{2}-[0-9]{2}$/.test(s);
  const parsed = (isDay ? CalendarDateSchema : InstantSchema).safeParse(s);
  if (parsed.success) return isDay ? `${parsed.data}T00:00:00Z` : parsed.data;
  ctx.addIssue({ code: 'custom', message: 'must be a date (YYYY-MM-DD) or an instant (RFC 3339)' });
  return z.NEVER;
});

/**
 * Fills a range's missing bounds: `to` tomorrow (UTC), so today is in; `from` `days` before
 * `to`. Reports default to the last 30 days this way (/admin/metrics, /orgs/:id/usage).
 * @example z.strictObject({ from: day.optional(), to: day.optional() }).transform(lastDays(30))
 */
export const lastDays = (days: number) => <T extends { from?: string; to?: string }>(q: T) => {
  const to = q.to ?? new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
  const from = q.from ?? new Date(Date.parse(to) - days * 86_400_000).toISOString().slice(0, 10);
  return { ...q, from, to };
};
