// Redaction of kept content reads the text as a provider does: normalised, the parts of a
// message joined, with cards by Luhn whatever separates their digits, any script's email
// addresses and phone numbers in international and US, UK, French, German and Indian formats.
import assert from 'node:assert/strict';
import { redactContent, redactParts } from '../../supabase/functions/_shared/redact-content.ts';

const one = (text: string) => redactContent(text) as string;

Deno.test('an email split over two content parts is redacted, its placeholder in the part it starts in', () => {
  assert.deepEqual(redactParts(['mail carol.white', '@example.org today']), ['mail [EMAIL]', ' today']);
  const req = {
    model: 'gpt-4o-mini',
    messages: [{
      role: 'user',
      content: [{ type: 'text', text: 'carol.white' }, { type: 'text', text: '@example.org' }],
    }],
  };
  const kept = JSON.stringify(redactContent(req));
  assert.ok(!kept.includes('carol.white') && kept.includes('[EMAIL]'), kept);
  assert.deepEqual(JSON.parse(kept).messages[0].content.map((p: { type: string }) => p.type), ['text', 'text']);
});

Deno.test('a card split over parts, and parts read alone when joining hides one, are redacted', () => {
  assert.deepEqual(redactParts(['card 4111 1111 ', '1111 1111 thanks']), ['card [CARD]', ' thanks']);
  // Joined, the digits run on (17 digits fail Luhn); alone, the first part is a card.
  assert.deepEqual(redactParts(['4111111111111111', '2']), ['[CARD]', '2']);
});

Deno.test('emails with a fullwidth ＠, non-ASCII letters or invisible joiners are redacted', () => {
  for (
    const email of ['carol＠example.org', 'josé@exämple.de', 'ｃａｒｏｌ@example.org', 'car\u200Bol@exa\u00ADmple.org']
  ) {
    assert.equal(one(`write to ${email}.`), 'write to [EMAIL].', email);
  }
  assert.equal(one('用户@例子.中国 hi'), '[EMAIL] hi');
});

Deno.test('invisible format characters (direction marks, bidi isolates, tags) hide no email or card', () => {
  for (
    const text of [
      'carol.white\u200E@example.org',
      'carol.white@\u2061example.org',
      'carol.wh\u{E0020}ite@example.org',
      '4111\u200F1111\u200F1111\u200F1111',
      '4242\u20664242\u20694242\u20664242',
    ]
  ) {
    assert.match(one(`mine: ${text}.`), /^mine: \[(EMAIL|CARD)\]\.$/, text);
  }
});

Deno.test('card numbers are found by Luhn whatever separates the digits', () => {
  for (
    const card of [
      '4111111111111111',
      '4111 1111 1111 1111',
      '4111-1111-1111-1111',
      '4111.1111.1111.1111',
      '4111/1111/1111/1111',
      '4111\u00A01111\u00A01111\u00A01111',
      '4111\u202F1111\u202F1111\u202F1111',
      '４１１１ １１１１ １１１１ １１１１',
      '4111 - 1111 - 1111 - 1111',
      '3782 822463 10005', // Amex, 15 digits
    ]
  ) assert.equal(one(`pay with ${card} now`), 'pay with [CARD] now', card);
  assert.equal(one('in 2023 4111 1111 1111 1111 was used'), 'in 2023 [CARD] was used');
  assert.equal(one('order 4111 1111 1111 1112'), 'order 4111 1111 1111 1112', 'not Luhn-valid: kept');
});

Deno.test('phone numbers in international and US, UK, French, German and Indian formats are redacted', () => {
  for (
    const phone of [
      '(415) 555-2671', // US
      '415-555-2671',
      '+1 415 555 2671',
      '020 7946 0958', // UK
      '07700 900123',
      '+44 20 7946 0958',
      '01 23 45 67 89', // France
      '06 12 34 56 78',
      '+33 6 12 34 56 78',
      '030 1234567', // Germany
      '0151 23456789',
      '+49 30 1234567',
      '098765 43210', // India
      '+91 98765 43210',
      '+91-98765-43210',
      '＋４４\u00A020\u00A07946\u00A00958',
    ]
  ) assert.equal(one(`call me on ${phone} please`), 'call me on [PHONE] please', phone);
});

Deno.test('dates, amounts, years and ids stay as they are', () => {
  for (
    const text of [
      'due 2024-11-26 at 10:30',
      'we have 10000 students and 123456 lines',
      'it costs 1,250.75 EUR',
      'job 8f14e45f-ceea-467f-a1a5-3b3c5f5e1d27',
      'see section 3.2.1 of RFC 7231',
    ]
  ) assert.equal(one(text), text);
});

Deno.test('secrets, SSNs and passports are redacted as in log lines; newlines are kept', () => {
  assert.equal(one('Bearer abcdefghijklmnop'), 'Bearer [TOKEN]');
  // Built at run time, so no string in the tree looks like a live Stripe key.
  const liveKey = ['sk', 'live', 'abcdefghijkl'].join('_');
  assert.equal(one(`key ${liveKey}\nssn 123-45-6789`), 'key [STRIPE_KEY]\nssn [SSN]');
  assert.equal(one('passport no. X1234567'), 'passport no. [PASSPORT]');
});

Deno.test('the kept text is the normalised one, and keys are redacted too', () => {
  assert.equal(one('ｆｕｌｌｗｉｄｔｈ ﬁ'), 'fullwidth fi');
  assert.deepEqual(redactContent({ 'ada@example.com': 1 }), { '[EMAIL]': 1 });
});

Deno.test('the budget bounds what is read: text past it is cut, and what the cut splits is never kept whole', () => {
  const kept = redactContent({ a: 'x'.repeat(10), b: ['carol.white@example.org'] }, 16) as { a: string; b: string[] };
  assert.equal(kept.a, 'x'.repeat(10));
  assert.equal(kept.b[0], 'caro'); // keys count: 1 + 10 + 1 + 4
  assert.equal((redactContent('y'.repeat(100_000), 100) as string).length, 100);
});

Deno.test('digits inside a word (a hex id, a marker) are not a phone number', () => {
  for (const text of ['kept19a84726193dd286', 'id_01512345678x', 'v415555267100a']) assert.equal(one(text), text);
});
