import assert from 'node:assert/strict';
import { redact, redactDeep } from '../../supabase/functions/_shared/redact.ts';

// Key-shaped test values are assembled at run time so no secret scanner mistakes them for keys.
const fake = (prefix: string) => `${prefix}_${'abcdefgh12345678'}`;

const vectors: Array<[string, string, string]> = [
  [
    "the product's own example",
    'My email is john@example.com and phone is 555-123-4567',
    'My email is [EMAIL] and phone is [PHONE]',
  ],
  ['a card with spaces', 'card 4242 4242 4242 4242 thanks', 'card [CARD] thanks'],
  ['a card with dashes', 'pay with 5555-5555-5555-4444', 'pay with [CARD]'],
  ['a 19-digit card', 'card 6011000990139424', 'card [CARD]'],
  ['an SSN', 'ssn 123-45-6789', 'ssn [SSN]'],
  ['a passport number', 'Passport No: X12345678', 'Passport No: [PASSPORT]'],
  ['a JWT', 'token eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl', 'token [JWT]'],
  ['a bearer token', 'Authorization: Bearer abc.def-ghi_jkl~mno', 'Authorization: Bearer [TOKEN]'],
  ['a Stripe secret key', `key ${fake('sk_live')}`, 'key [STRIPE_KEY]'],
  ['a restricted key', fake('rk_test'), '[STRIPE_KEY]'],
  ['a publishable key', fake('pk_test'), '[STRIPE_KEY]'],
  ['a webhook secret', fake('whsec'), '[STRIPE_WEBHOOK_SECRET]'],
  [
    'a Postmark token',
    'X-Postmark-Server-Token: 1b2c3d4e-1111-2222-3333-444455556666',
    'X-Postmark-Server-Token: [POSTMARK_TOKEN]',
  ],
  ['an international phone', 'call +1 (555) 123-4567 now', 'call [PHONE] now'],
  ['newlines in user text', 'line one\nline two\r\n', 'line one\\nline two\\r\\n'],
];
for (const [what, input, expected] of vectors) {
  Deno.test(`redact: ${what}`, () => assert.equal(redact(input), expected));
}

const survivors: Array<[string, string]> = [
  ['an order id', 'order ord_1234567890123456'],
  ['an amount', 'charged 1234567.89 credits'],
  ['an ISO date', 'at 2026-11-21T22:15:07.123Z'],
  ['a plain date', 'on 2026-11-21'],
  ['a UUID', 'user 6a4a7e5e-9a52-4b9a-8d1c-1f0f6b3a2c11'],
  ['a Stripe object id', 'session cs_test_a1YS1URlnyQCN5fUUduORoQ7'],
  ['a non-Luhn 16-digit number', 'ref 1234567812345678'],
  ['a cents amount', 'price_cents 999'],
];
for (const [what, input] of survivors) {
  Deno.test(`redact keeps ${what}`, () => assert.equal(redact(input), input));
}

Deno.test('redactDeep keeps the shape and redacts nested strings', () => {
  assert.deepEqual(redactDeep({ a: ['x@y.io', 1], b: { c: 'ok' } }), { a: ['[EMAIL]', 1], b: { c: 'ok' } });
});
