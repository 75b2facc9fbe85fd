// The student page's display rounding and its job price (examples/student/credits.ts): pure
// string arithmetic, checked here without a stack (the price against SQL: the integration test
// student-page-price.test.ts).
import assert from 'node:assert/strict';
import { formatCredits, jobPrice, roundedCredits } from '../../examples/student/credits.ts';

Deno.test('credit amounts are rounded half up to 2 decimals and grouped for reading', () => {
  const cases: [string, string][] = [
    ['0', '0'],
    ['9990', '9,990'],
    ['0.6222', '0.62'],
    ['-0.021', '-0.02'],
    ['1249.5', '1,249.5'],
    ['1234567.005', '1,234,567.01'],
    ['0.995', '1'],
    ['-1234.567', '-1,234.57'],
    ['100.000000000000000000', '100'],
  ];
  for (const [amount, shown] of cases) assert.equal(roundedCredits(amount), shown, amount);
});

Deno.test('a tiny but non-zero amount reads "less than 0.01", never 0', () => {
  assert.equal(roundedCredits('0.004'), 'less than 0.01');
  assert.equal(roundedCredits('-0.000000000000000001'), 'less than 0.01');
  assert.equal(roundedCredits('0.000'), '0');
});

Deno.test('formatCredits groups thousands and keeps every digit', () => {
  assert.equal(formatCredits('1234567.123456789'), '1,234,567.123456789');
});

Deno.test("a job's price is the rate card applied to the worst case, in exact decimals", () => {
  // 2 bytes + 16 framing = 18 input tokens at $0.15/M, 256 output tokens at $0.60/M, markup 1.5:
  // (18 × 0.15 + 256 × 0.6) × 1.5 / 1000 = 0.23445 credits.
  const card = { usd_per_million_input: '0.15', usd_per_million_output: '0.6', markup: '1.5' };
  assert.equal(jobPrice(card, 'Hi', 256), '0.234450');
  // Every UTF-8 byte counts: an emoji is 4, so (4 + 16) × 0.15 × 1.5 / 1000.
  assert.equal(jobPrice(card, '🙂', 0), '0.004500');
});
