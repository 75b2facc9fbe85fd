// Redaction of the content kept with consent (billing.ai_logs; docs/ai-gateway.md, "The call
// log"). It reads the text as a provider does: normalised (NFKC, so a fullwidth ＠ or digit is
// the ASCII one; invisible format characters and NULs dropped), and the text parts of one message joined
// in order as well as each alone, so an email split over two parts is still one email. The
// normalised, redacted text is what is kept. Log lines keep redact.ts's cheaper rules: they
// never carry request text.
import { type CountryCode, findPhoneNumbersInText } from 'libphonenumber-js/max';
import { sharedRules } from './redact.ts';

interface Span {
  start: number;
  end: number;
  placeholder: string;
}

// Letters and marks of any script: josé@exämple.de is an address. Read outward from each @
// (a pattern starting at every letter would cost the square of a long word's length).
const localChar = /[\p{L}\p{M}\p{N}._%+-]/u;
const domain = /[\p{L}\p{M}\p{N}-]+(?:\.[\p{L}\p{M}\p{N}-]+)*\.[\p{L}\p{M}]{2,}/uy;
// Digits joined by up to three separators of any kind a card is written with (spaces, dots,
// slashes, dashes, underscores; a no-break space is a space once normalised).
const digitRun = /\d(?:[\s./\\_\-\u2010-\u2015\u2212]{0,3}\d)*/g;
const digitGroup = /\d+/g;
// A phone-shaped run of at most 25 characters (a longer one is read in pieces): what
// libphonenumber is asked about; it finds numbers only in these.
const phoneRun = /\+?\(?\d[\d \t().\/\-]{6,22}\d/g;
const isoDate = /^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{4}$/;
const wordChar = /[\p{L}\p{N}_]/u;
/** Countries whose national numbers are written with a leading 0. */
const zeroCountries = ['GB', 'FR', 'DE', 'IN'];
/** Look-ups of phone numbers for one kept text: at most ~25 ms of libphonenumber on the worst runs (~0.05 ms on a phone number). */
const phoneLookups = 64;
// Every format character (Unicode Cf: soft hyphen, zero-width joiners, direction marks, bidi
// embeddings and isolates, invisible operators, tag characters …): a provider reads past them,
// so one inside an email or a card number must not hide it.
const invisible = /[\p{Cf}\0]/gu;

const matches = (pattern: RegExp, text: string) => [...text.matchAll(pattern)];

/** Card numbers: 13–19 digits (whole groups as written) that pass Luhn, whatever separates them. */
function cards(text: string): Span[] {
  const found: Span[] = [];
  for (const run of matches(digitRun, text)) {
    const groups = matches(digitGroup, run[0]);
    // Luhn of any window in O(1): prefix sums of the digits as they are and doubled, by the
    // parity of their place (a run of thousands of one-digit groups costs no more than its length).
    const n = groups.reduce((k, g) => k + g[0].length, 0);
    const sums = [0, 1, 2, 3].map(() => new Int32Array(n + 1)); // even as is, odd as is, even doubled, odd doubled
    const groupEnd: number[] = [];
    let k = 0;
    for (const g of groups) {
      for (let c = 0; c < g[0].length; c++, k++) {
        const d = g[0].charCodeAt(c) - 48, dd = d > 4 ? d * 2 - 9 : d * 2, odd = k & 1;
        for (let i = 0; i < 4; i++) sums[i][k + 1] = sums[i][k] + ((i & 1) === odd ? (i < 2 ? d : dd) : 0);
      }
      groupEnd.push(k);
    }
    const luhnOf = (a: number, b: number) => { // digits [a, b): the last one is not doubled
      const p = (b - 1) & 1, q = 1 - p;
      return (sums[p][b] - sums[p][a] + sums[2 + q][b] - sums[2 + q][a]) % 10 === 0;
    };
    for (let i = 0; i < groups.length; i++) {
      const a = i === 0 ? 0 : groupEnd[i - 1];
      for (let j = i; j < groups.length && groupEnd[j] - a <= 19; j++) {
        if (groupEnd[j] - a < 13 || !luhnOf(a, groupEnd[j])) continue;
        found.push({
          start: run.index + groups[i].index,
          end: run.index + groups[j].index + groups[j][0].length,
          placeholder: '[CARD]',
        });
        i = j;
        break;
      }
    }
  }
  return found;
}

/** How many more times libphonenumber may be asked (~60 µs each) for one kept text. */
export interface Lookups {
  left: number;
}

/**
 * Phone numbers libphonenumber finds in phone-shaped runs that are not cards: international
 * (+…) ones, and national ones of the listed countries that write numbers that way (a leading
 * 0: UK, France, Germany, India; none: US, Indian mobiles). A run is asked about no more than
 * it needs; once the text's look-ups are spent, every such run left is redacted as [NUMBER].
 */
function phones(text: string, cards: Span[], lookups: Lookups): Span[] {
  const found: Span[] = [];
  let card = 0; // cards are in order, as runs are
  for (const run of matches(phoneRun, text)) {
    const digits = run[0].replace(/\D/g, '');
    const end = run.index + run[0].length;
    while (card < cards.length && cards[card].end <= run.index) card++;
    const inCard = card < cards.length && cards[card].start <= run.index && end <= cards[card].end;
    // Digits inside a word (a hex id, a marker) are no phone number.
    const inWord = wordChar.test(text[run.index - 1] ?? '') || wordChar.test(text[end] ?? '');
    if (digits.length < 8 || inCard || inWord || isoDate.test(run[0])) continue;
    if (lookups.left <= 0) {
      found.push({ start: run.index, end, placeholder: '[NUMBER]' });
      continue;
    }
    const countries = run[0].startsWith('+') ? ['US'] : digits.startsWith('0') ? zeroCountries : ['US', 'IN'];
    for (const country of countries as CountryCode[]) {
      if (lookups.left-- <= 0) break;
      const numbers = findPhoneNumbersInText(run[0], country);
      for (const n of numbers) {
        found.push({ start: run.index + n.startsAt, end: run.index + n.endsAt, placeholder: '[PHONE]' });
      }
      if (numbers.some((n) => n.endsAt - n.startsAt === run[0].length)) break; // the whole run is one number
    }
  }
  return found;
}

// Each rule's pattern once more without `g`, to write one match's placeholder.
const rules = sharedRules.map(([pattern, replacement]) => ({
  pattern,
  one: new RegExp(pattern.source, pattern.flags.replace('g', '')),
  replacement,
}));

/** What a rule replaces: its whole match, by the match's own replacement (`Bearer [TOKEN]`); and emails. */
function ruleSpans(text: string): Span[] {
  const found: Span[] = [];
  for (const { pattern, one, replacement } of rules) {
    for (const m of matches(pattern, text)) {
      const placeholder = typeof replacement === 'string' ? m[0].replace(one, replacement) : replacement(m[0]);
      found.push({ start: m.index, end: m.index + m[0].length, placeholder });
    }
  }
  return [...found, ...emails(text)];
}

function emails(text: string): Span[] {
  const found: Span[] = [];
  for (let at = text.indexOf('@'); at >= 0; at = text.indexOf('@', at + 1)) {
    let start = at;
    while (start > 0 && localChar.test(text[start - 1])) start--;
    if (start === at) continue;
    domain.lastIndex = at + 1;
    if (domain.exec(text)) found.push({ start, end: domain.lastIndex, placeholder: '[EMAIL]' });
  }
  return found;
}

function spansOf(text: string, lookups: Lookups): Span[] {
  const cardSpans = cards(text);
  return [...ruleSpans(text), ...cardSpans, ...phones(text, cardSpans, lookups)];
}

/** Text as a provider reads it, and as it is kept: well-formed, NFKC, without invisible joiners. */
const normalised = (text: string) => text.toWellFormed().normalize('NFKC').replace(invisible, '');

/**
 * The parts of one message, each normalised and redacted, with what they hold joined in order
 * found too: a span across parts leaves its placeholder in the part it starts in.
 * @example redactParts(['carol.white', '@example.org']) // ['[EMAIL]', '']
 */
export function redactParts(parts: string[], lookups: Lookups = { left: phoneLookups }): string[] {
  const texts = parts.map(normalised);
  const starts: number[] = [];
  let at = 0;
  for (const t of texts) {
    starts.push(at);
    at += t.length;
  }
  const spans = spansOf(texts.join(''), lookups);
  if (texts.length > 1) texts.forEach((t, i) => spans.push(...spansOf(t, lookups).map((s) => shift(s, starts[i]))));
  const merged = merge(spans);
  let first = 0; // the first span not ended before this part (parts and spans are in order)
  return texts.map((t, i) => {
    while (first < merged.length && merged[first].end <= starts[i]) first++;
    let out = '', from = 0;
    for (let j = first; j < merged.length && merged[j].start < starts[i] + t.length; j++) {
      const s = merged[j];
      const a = Math.max(s.start - starts[i], 0), b = Math.min(s.end - starts[i], t.length);
      out += t.slice(from, a) + (s.start >= starts[i] ? s.placeholder : '');
      from = b;
    }
    return out + t.slice(from);
  });
}

const shift = (s: Span, by: number): Span => ({ ...s, start: s.start + by, end: s.end + by });

/** Spans in order, overlapping ones as one (the first found names it). */
function merge(spans: Span[]): Span[] {
  const sorted = spans.map((s, order) => ({ ...s, order })).sort((a, b) => a.start - b.start || a.order - b.order);
  const out: Array<Span & { order: number }> = [];
  for (const s of sorted) {
    const last = out.at(-1);
    if (last && s.start < last.end) {
      if (s.order < last.order) last.placeholder = s.placeholder;
      last.end = Math.max(last.end, s.end);
    } else out.push({ ...s });
  }
  return out;
}

/** The `text` fields of an array's items: a message's content parts, read joined by the provider. */
const isPart = (v: unknown): v is { text: string } =>
  v !== null && typeof v === 'object' && typeof (v as { text?: unknown }).text === 'string';

const withText = (part: unknown, text: string) => ({ ...(part as object), text });

/**
 * A request or answer as kept: every string normalised and redacted, the text parts of an array
 * (a message's content) also read joined; at most `budget` characters of text in all, the rest
 * cut (the caller marks the cut).
 * @example redactContent({ content: [{ text: 'carol.white' }, { text: '@example.org' }] })
 */
export function redactContent(value: unknown, budget = Infinity): unknown {
  const left = { n: budget };
  const lookups = { left: phoneLookups };
  // Normalised, then cut where the budget ends: whatever the cut splits lies past it. NFKC
  // shrinks a text at most 4:1, so 5 characters read are enough for each one kept (a text of
  // invisible characters keeps less, never more).
  const take = (s: string) => {
    const t = normalised(s.slice(0, left.n * 5 + 5)).slice(0, left.n);
    left.n -= t.length;
    return t;
  };
  const text = (s: string) => redactParts([take(s)], lookups)[0];
  const walk = (v: unknown): unknown => {
    if (typeof v === 'string') return text(v);
    // The provider reads numbers too (a tool schema's const, enum, default): one that redacts as
    // text (a card, a phone number) is kept as its placeholder.
    if (typeof v === 'number' && Number.isInteger(v) && Math.abs(v) >= 1e6) {
      const t = text(String(v));
      return t === String(v) ? v : t;
    }
    if (Array.isArray(v)) {
      const parts = v.filter(isPart);
      if (parts.length < 2) return v.map(walk);
      const texts = redactParts(parts.map((p) => take(p.text)), lookups);
      let k = 0;
      return v.map((item) => isPart(item) ? withText(walk({ ...item, text: '' }), texts[k++]) : walk(item));
    }
    // Keys too: a tool's schema names its own properties, and the provider reads them.
    if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [text(k), walk(x)]));
    return v;
  };
  return walk(value);
}
