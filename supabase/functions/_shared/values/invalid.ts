// The 400 for a value that failed a schema, as one sentence a person can act on: the words
// every route's schema errors end in (readJson, readQuery, parseOr400), below the HTTP layer so
// the value schemas (values/query.ts) can raise it too.
import type { z } from 'zod';
import { AppError } from '../errors.ts';

// Fields with a code of their own (docs/api.md), the same one the SQL functions' guards raise
// for the same input: a caller sees INVALID_AMOUNT for a bad amount whichever layer refused it.
const fieldCodes = new Map([
  ['amount', 'INVALID_AMOUNT'],
  ['threshold', 'INVALID_AMOUNT'],
  ['ttl_seconds', 'INVALID_TTL'],
  ['input_tokens', 'INVALID_TOKENS'],
  ['output_tokens', 'INVALID_TOKENS'],
  ['cached_input_tokens', 'INVALID_TOKENS'],
  ['reasoning_tokens', 'INVALID_TOKENS'],
  ['images', 'INVALID_TOKENS'],
  ['audio_seconds', 'INVALID_TOKENS'],
  ['kind', 'INVALID_KIND'],
]);

/**
 * The 400 for a value that failed a route's schema: one sentence a person can act on, naming
 * the first bad field (`field`), with the code of that field when it has one. Every route's
 * schema errors come through here (readJson, readQuery, parseOr400).
 * @example invalid(LotsQuerySchema.safeParse({ limit: '0' }).error) // "limit must be a whole number from 1 to 200."
 */
export function invalid(error: z.ZodError): AppError {
  const first = error.issues[0] && meant(error.issues[0]);
  // An unknown key (strict schemas) is named by the issue's `keys`, not its path.
  const unknownKey = first?.code === 'unrecognized_keys' ? first.keys[0] : undefined;
  const field = [...(first?.path ?? []), ...(unknownKey ? [unknownKey] : [])].join('.') || undefined;
  const code = (!unknownKey && fieldCodes.get(String(first?.path.at(-1)))) || 'VALIDATION_FAILED';
  const message = first ? sentence(first, field) : 'The request is not valid.';
  return new AppError('validation', code, message, {
    field,
    details: { issues: error.issues.slice(0, 10).map((i) => ({ path: i.path.join('.'), message: phrase(i) })) },
  });
}

/**
 * Inside a union, the issue of the branch the value was meant for (the first whose type it has),
 * so its own reason is said: `input.0.type …` rather than "input is not in an accepted form".
 */
function meant(issue: z.core.$ZodIssue): z.core.$ZodIssue {
  while (issue.code === 'invalid_union') {
    const branch = issue.errors.find(([i]) => i && !(i.code === 'invalid_type' && i.path.length === 0));
    if (!branch) break;
    issue = { ...branch[0], path: [...issue.path, ...branch[0].path] };
  }
  return issue;
}

// zod's own messages ("Invalid input", "Too big: expected number to be <=10000000") start so;
// a schema's own (`must be a UUID`) are already phrases and are kept.
const zodDefault = /^(Invalid|Too (big|small)|Expected|Unrecognized)/;

const article = (noun: string) => (/^[aeiou]/.test(noun) ? `an ${noun}` : `a ${noun}`);

/** What is wrong with the value, as the end of a sentence that starts with its field's name. */
function phrase(issue: z.core.$ZodIssue): string {
  if (!zodDefault.test(issue.message)) return issue.message;
  switch (issue.code) {
    case 'invalid_type':
      // zod leaves `input` out of issues unless asked: a missing value is "received undefined".
      return /received undefined$/.test(issue.message)
        ? 'is required'
        : `must be ${issue.expected === 'int' ? 'an integer' : article(issue.expected)}`;
    case 'too_big':
      return issue.origin === 'string'
        ? `must be at most ${issue.maximum} characters long`
        : issue.origin === 'array' || issue.origin === 'set'
        ? `must have at most ${issue.maximum} items`
        : `must be at most ${issue.maximum}`;
    case 'too_small':
      return issue.origin === 'string'
        ? (Number(issue.minimum) <= 1 ? 'must not be empty' : `must be at least ${issue.minimum} characters long`)
        : issue.origin === 'array' || issue.origin === 'set'
        ? `must have at least ${issue.minimum} item${Number(issue.minimum) === 1 ? '' : 's'}`
        : `must be at least ${issue.minimum}`;
    case 'invalid_value':
      return `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'invalid_format':
      return formats[issue.format] ?? 'is not in the expected format';
    case 'invalid_union': {
      const types = issue.errors.map((branch) => branch[0]).filter((i) => i?.code === 'invalid_type')
        .map((i) => i.code === 'invalid_type' ? article(i.expected) : '');
      return types.length === issue.errors.length ? `must be ${types.join(' or ')}` : 'is not in an accepted form';
    }
    case 'not_multiple_of':
      return `must be a multiple of ${issue.divisor}`;
    default:
      return 'is not valid';
  }
}

const formats: Record<string, string> = {
  email: 'must be an email address',
  uuid: 'must be a UUID',
  datetime: 'must be an instant (RFC 3339, e.g. 2026-11-01T00:00:00Z)',
  date: 'must be a date (YYYY-MM-DD)',
  url: 'must be a URL',
};

function sentence(issue: z.core.$ZodIssue, field: string | undefined): string {
  if (issue.code === 'unrecognized_keys') return `${field} is not a field this route accepts: remove it.`;
  const rest = phrase(issue);
  return field ? `${field} ${rest}.` : `The request ${rest}.`;
}
