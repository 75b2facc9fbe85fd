// The shared text patterns route schemas are built from (beside pg-values.ts's blocks): ids
// with a fixed alphabet, and text a partner prints in the platform's name. A value that fits
// one of these cannot carry an email address, a link or a control character into SQL (and so
// into an error's DETAIL and the Postgres log) or onto a Stripe invoice.
// tests/unit/route-schemas.test.ts fails on a free-text string field not built from them.
import { pgText } from './pg-values.ts';
import { isCountryCode } from './countries.ts';

/**
 * A credit package's id, as the catalogue names them: lower-case letters, digits, `_` and `-`.
 * @example package_id: PackageIdSchema
 */
export const PackageIdSchema = pgText(64).min(1).regex(/^[a-z0-9_-]+$/, 'must be a package id');

/** Printable ASCII without spaces, e.g. a client's temporary id. */
export const tokenText = (max: number) => pgText(max).min(1).regex(/^[\x21-\x7e]+$/, 'must be printable ASCII');

/** Printable ASCII, spaces included, e.g. a correlation id or a batch event's id. */
export const printableText = (max: number) => pgText(max).min(1).regex(/^[\x20-\x7e]+$/, 'must be printable ASCII');

/** A model name, e.g. `'gpt-4o-mini'`. */
export const ModelSchema = pgText(64).min(1).regex(/^[A-Za-z0-9._:-]+$/, 'must be a model name');

/** A plan's id, as the catalogue names them (the alphabet of package ids). */
export const PlanIdSchema = pgText(64).min(1).regex(/^[a-z0-9_-]+$/, 'must be a plan id');

// Control, format (bidirectional overrides U+202A–U+202E and U+2066–U+2069, zero-width
// characters, U+FEFF), line and paragraph separators; and what prints as nothing or as a blank
// (private-use and unassigned code points, combining marks standing alone, variation selectors,
// Hangul fillers, the braille blank).
const unprintable = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Co}\p{Cn}\u034F\uFE00-\uFE0F\u115F\u1160\u3164\uFFA0\u2800]/u;
// Anything a mail client or a reader takes for a link or an address, read after NFKC folds
// look-alikes (full-width letters, `。` and `．` for dots): a scheme (`https`, `hxxp`, `mailto:`,
// `javascript:`, `tel:`, …), `www.`, a dotted name ending in letters (`evil.example`, `x.co`), a defanged
// one (`evil[.]com`, `evil . com`), an IP address, an email address.
const linkLike =
  /h[tx]{2}ps?|\b(mailto|javascript|data|tel|sms|ftp|file|intent|vbscript):|:\/\/|www\.|[\p{L}\p{N}_-][.\u2024\u3002]\p{L}{2,}|[\p{L}\p{N}]\s+[.\u2024\u3002]\s+\p{L}{2,}|\[\.\]|\(\.\)|\d{1,3}(\.\d{1,3}){3}|@/iu;
const folded = (s: string) => s.normalize('NFKC');

/** Whether `s` may be printed by a partner in our name: no control or format character, no link. */
export const isPrintable = (s: string): boolean => !unprintable.test(s) && !linkLike.test(folded(s));

/**
 * Text a partner (Stripe) prints on what it sends in the platform's name: a customer's name, an
 * address line, a city, a PO number. Trimmed, 1 to `max` characters, no control or format
 * character (Unicode Cc, Cf: bidirectional overrides, zero-width), no URL or domain.
 * @example po_number: printedText(64).optional()
 */
export const printedText = (max: number) =>
  pgText(max).trim().min(1).regex(
    new RegExp(`^[^${unprintable.source.slice(1, -1)}]*$`, 'u'),
    'must not contain control, format, bidirectional or invisible characters',
  ).refine((s) => !linkLike.test(folded(s)), 'must not contain a link, a domain or an email address');

/** A postal code: letters, digits, spaces and hyphens. */
export const PostalCodeSchema = pgText(20).trim().min(1).regex(/^[A-Za-z0-9 -]+$/, 'must be a postal code');

/**
 * An ISO 3166-1 alpha-2 country code that is assigned (`US`, `GB`; not `ZZ`, `UK` or `EU`).
 * @example country: CountryCodeSchema
 */
export const CountryCodeSchema = pgText(2).regex(/^[A-Z]{2}$/, 'must be an ISO 3166-1 alpha-2 code, e.g. US')
  .refine(isCountryCode, 'must be an ISO 3166-1 alpha-2 code, e.g. US');

/**
 * An IANA time zone name as written (`Europe/Berlin`, `Etc/GMT+5`, `UTC`): whether Postgres knows
 * it is SQL's to say (INVALID_CAP), without the name in the error.
 * @example time_zone: TimeZoneSchema.default('UTC')
 */
export const TimeZoneSchema = pgText(64).min(1).regex(
  /^[A-Za-z0-9_+\/-]+$/,
  'must be an IANA time zone, e.g. Europe/Berlin',
);

/**
 * A name made of lower-case letters, digits and `_` (a job type, a template).
 * @example type: snakeName(64)
 */
export const snakeName = (max: number) =>
  pgText(max).min(1).regex(/^[a-z0-9_]+$/, 'must be lower-case letters, digits and _');
