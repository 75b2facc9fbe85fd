// Redaction of log lines: personal data and secrets become placeholders, and newlines in user
// strings are escaped so one entry stays one line. Content kept with consent (ai_logs) is
// redacted by redact-content.ts, which reads the text as a provider does.

const luhn = (digits: string): boolean => {
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = Number(digits[digits.length - 1 - i]);
    if (i % 2 === 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return sum % 10 === 0;
};

type Rule = [RegExp, string | ((m: string) => string)];

const secretRules: Rule[] = [
  [/\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*/g, '[JWT]'],
  [/\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}/gi, '$1 [TOKEN]'],
  [/\b(sk|rk|pk)_(test|live)_[A-Za-z0-9]{8,}/g, '[STRIPE_KEY]'],
  [/\bwhsec_[A-Za-z0-9]{8,}/g, '[STRIPE_WEBHOOK_SECRET]'],
  // Postmark server/account tokens are UUIDs, told apart from ids only by their label.
  [
    /\b(postmark[-_ ]?(server|account)?[-_ ]?token|x-postmark-(server|account)-token)(["'\s:=]+)[0-9a-f-]{36}/gi,
    '$1$4[POSTMARK_TOKEN]',
  ],
];
const ssn: Rule = [/\b\d{3}-\d{2}-\d{4}\b/g, '[SSN]'];
const passport: Rule = [/\b(passport(?:\s*(?:no\.?|number|#))?\s*[:#]?\s*)[A-Z0-9]{6,9}\b/gi, '$1[PASSPORT]'];
/** What kept content's redaction (redact-content.ts) takes from log lines': secrets, tokens, SSNs, passport numbers. */
export const sharedRules: Rule[] = [...secretRules, ssn, passport];

// Order matters: secrets and tokens before the looser number patterns. Log lines never carry
// request text, so these are cheap ASCII patterns; kept content has its own (redact-content.ts).
const rules: Rule[] = [
  ...secretRules,
  [/[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}/g, '[EMAIL]'],
  // Card numbers: 13–19 digits, optionally grouped by spaces or dashes, Luhn-valid.
  [/\b\d(?:[ -]?\d){12,18}\b/g, (m) => (luhn(m.replace(/[ -]/g, '')) ? '[CARD]' : m)],
  ssn,
  passport,
  // Phone numbers: +country or (area) or 3-3-4 groupings; not ISO dates, not bare amounts.
  [/(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)|\b\d{3})[ .-]\d{3}[ .-]\d{4}\b/g, '[PHONE]'],
];

// What every rule above needs to match at all: one of these markers, or a run of nine digits
// kept together by at most two of ` .-()+` between neighbours (an SSN has 9 digits, a phone
// 10, a card 13, all written that way). A string with neither cannot match any rule, so it
// skips the ten regex passes: most logged strings (UUIDs, routes, codes) are short and clean,
// and those passes were most of the cost of a log line. Keep this a superset when adding a
// rule (tests/unit/redact-fast-path.test.ts checks it against every rule).
const markers = /eyJ|bearer|basic|_(?:test|live)_|whsec_|postmark|passport|@|[\r\n]/i;
const isSeparator = (c: number) => c === 32 || c === 45 || c === 46 || c === 40 || c === 41 || c === 43;

/** Whether any rule could match `text`; false means `redact(text) === text`. */
export function mayNeedRedaction(text: string): boolean {
  if (markers.test(text)) return true;
  let digits = 0;
  let gap = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 48 && c <= 57) {
      if (++digits >= 9) return true;
      gap = 0;
    } else if (digits > 0 && gap < 2 && isSeparator(c)) {
      gap++;
    } else {
      digits = 0;
      gap = 0;
    }
  }
  return false;
}

/** Every rule, unconditionally: `redact` without its fast path (and the reference in tests). */
export function redactEveryRule(text: string): string {
  let out = text;
  for (const [pattern, replacement] of rules) {
    out = typeof replacement === 'string' ? out.replace(pattern, replacement) : out.replace(pattern, replacement);
  }
  return out.replace(/\r/g, '\\r').replace(/\n/g, '\\n');
}

/**
 * Redacts personal data and secrets in a string.
 * @example redact('My email is john@example.com') // 'My email is [EMAIL]'
 */
export function redact(text: string): string {
  return mayNeedRedaction(text) ? redactEveryRule(text) : text;
}

/** Redacts every string in a JSON-like value, keeping its shape. */
export function redactDeep(value: unknown): unknown {
  if (typeof value === 'string') return redact(value);
  if (Array.isArray(value)) return value.map(redactDeep);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, redactDeep(v)]));
  }
  return value;
}

/** The patterns a log must never contain, for the suite's leak scan. */
export const leakPatterns: Array<[string, RegExp]> = [
  ['email', /[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}/],
  ['jwt', /\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}/],
  ['stripe key', /\b(sk|rk)_(test|live)_[A-Za-z0-9]{8,}/],
  ['webhook secret', /\bwhsec_[A-Za-z0-9]{8,}/],
  ['bearer token', /\bBearer\s+[A-Za-z0-9._~+/=-]{20,}/],
  ['ssn', /\b\d{3}-\d{2}-\d{4}\b/],
  // A promo, gift or sponsor code as it is shown (_shared/domain/codes.ts): nothing should ever log one.
  ['code', /\b[0-9A-HJKMNP-TV-Z]{5}-[0-9A-HJKMNP-TV-Z]{5}-[0-9A-HJKMNP-TV-Z]{5}-[0-9A-HJKMNP-TV-Z]{5}\b/],
];
