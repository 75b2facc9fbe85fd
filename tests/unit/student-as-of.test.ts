// The student page's "as of" view in words (examples/student/as-of.ts): what a lot may pay for,
// a lot as a row, and the picked time as the instant the API takes.
import assert from 'node:assert/strict';
import { appliesToText, localInstant, lotRow } from '../../examples/student/as-of.ts';
import type { Lot } from '../../client/mod.ts';

const lot: Lot = {
  id: '7',
  source: 'purchase',
  category: 'paid',
  priority: 0,
  amount: '5000',
  remaining: '1234.567',
  granted_at: '2026-11-03T10:00:00Z',
  expires_at: null,
  frozen: false,
  applies_to: null,
};

Deno.test('a lot says which models it may pay for only when it is limited (applies_to null: any)', () => {
  assert.equal(appliesToText(lot), '');
  assert.equal(appliesToText({ applies_to: ['essay-tutor', 'gpt-4o-mini*'] }), 'only for: essay-tutor, gpt-4o-mini*');
  assert.equal(appliesToText({ applies_to: [] }), 'for no model');
});

Deno.test('a lot as a row: where from, amounts for reading, its expiry, and its notes', () => {
  const row = lotRow({ ...lot, frozen: true, applies_to: ['gpt-4o*'] });
  assert.deepEqual([row[0], row[2], row[3], row[4]], ['Bought credits', '5,000', '1,234.57', 'never']);
  assert.equal(row[5], 'on hold: its payment is disputed · only for: gpt-4o*');
  assert.equal(lotRow(lot)[5], '');
});

Deno.test('the picked time (the reader’s clock, no offset) is the instant it names; empty or nonsense is none', () => {
  assert.equal(localInstant('2026-11-03T18:30:05'), new Date(2026, 10, 3, 18, 30, 5).toISOString());
  assert.equal(localInstant(''), null);
  assert.equal(localInstant('not a time'), null);
});
