// The redaction fast path: a string `mayNeedRedaction` passes over is one no rule changes, so
// skipping the rules for it is invisible. Checked against every rule on generated strings
// built from the pieces the rules look for (digits and separators, markers, newlines).
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { mayNeedRedaction, redact, redactEveryRule } from '../../supabase/functions/_shared/redact.ts';

const pieces = [
  ...'0123456789'.split(''),
  ' ',
  '-',
  '.',
  '(',
  ')',
  '+',
  ':',
  '#',
  '=',
  '"',
  '@',
  '\n',
  '\r',
  'a',
  'x',
  'Z',
  'eyJ',
  'eyJhbGciOi',
  'Bearer ',
  'basic ',
  'sk_',
  'pk_',
  '_test_',
  '_live_',
  'whsec_',
  'postmark',
  'Postmark-Server-Token',
  'passport',
  'Passport No',
  'example.com',
  'abcdefgh',
  '12345678',
  '4242 4242 4242 4242',
  '555-123-4567',
  '(555) 123-4567',
  '+1 (555) 123.4567',
  '123-45-6789',
  crypto.randomUUID(),
];
const text = fc.array(fc.constantFrom(...pieces), { maxLength: 24 }).map((p) => p.join(''));

Deno.test('a string the fast path skips is one no redaction rule changes', () => {
  fc.assert(
    fc.property(text, (s) => {
      if (!mayNeedRedaction(s)) assert.equal(redactEveryRule(s), s);
    }),
    { numRuns: 20_000 },
  );
});

Deno.test('redact equals every rule applied, for any string', () => {
  fc.assert(fc.property(fc.oneof(text, fc.string({ maxLength: 64 })), (s) => redact(s) === redactEveryRule(s)), {
    numRuns: 20_000,
  });
});

Deno.test('the fast path takes the clean strings of a request log line', () => {
  for (const s of ['credits', 'POST', '/credits/usage', 'request', 'gpt-4o-mini', 'IDEMPOTENCY_KEY_REUSED']) {
    assert.equal(mayNeedRedaction(s), false, s);
  }
  for (const s of ['555-123-4567', '+1 (555) 123-4567', '4242-4242-4242-4242', 'a@b.co', 'line\nbreak']) {
    assert.equal(mayNeedRedaction(s), true, s);
  }
});
