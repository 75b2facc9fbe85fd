// The hot routes write their values into the statement (`inline`, _shared/db.ts) so postgres.js
// sends it in one round trip. What Postgres reads back must be exactly the value sent, for any
// string (quotes, backslashes, anything Unicode), and no value can end the literal early.
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { inline, oneTrip } from '../../supabase/functions/_shared/db.ts';
import { testDb } from '../helpers.ts';

const readBack = async (v: string) => {
  const [{ v: back }] = await oneTrip<{ v: string }[]>(testDb, inline`select ${v}::text as v`);
  return back;
};

Deno.test('any string written in by inline reads back as itself', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        fc.string({ unit: 'grapheme' }),
        fc.string({
          unit: fc.constantFrom("'", '\\', '"', '$', ';', '-', '/', '*', 'E', 'x', '\n', '\u00e9', '\u{1F600}'),
        }),
      ).filter((s) => !s.includes('\0')),
      async (s) => assert.equal(await readBack(s), s),
    ),
    { numRuns: 300 },
  );
});

Deno.test('values that try to end the literal stay values', async () => {
  const attacks = [
    "'; drop table billing.entries; --",
    "\\'; select 1; --",
    "\\\\'",
    "E'\\x27'",
    '$$ || (select 1) || $$',
    "'' or ''=''",
  ];
  for (const s of attacks) assert.equal(await readBack(s), s);
  const [{ json }] = await oneTrip<{ json: unknown }[]>(
    testDb,
    inline`select ${JSON.stringify({ note: 'it\'s \\ "quoted"' })}::jsonb as json`,
  );
  assert.deepEqual(json, { note: 'it\'s \\ "quoted"' });
  const [{ n, t, f, z }] = await oneTrip(
    testDb,
    inline`select 1-${-1} as n, ${true} as t, ${false} as f, ${null}::text as z`,
  );
  assert.deepEqual({ n, t, f, z }, { n: 2, t: true, f: false, z: null }, 'a negative number is not a comment');
});

Deno.test('inline refuses what it cannot write exactly', () => {
  assert.throws(() => inline`select ${'a\0b'}`, /NUL/);
  assert.throws(() => inline`select ${1.5}`, /safe integer/);
  assert.throws(() => inline`select ${2 ** 60}`, /safe integer/);
  assert.throws(() => inline`select ${{} as unknown as string}`, /cannot write/);
  assert.throws(() => inline`select ${undefined as unknown as string}`, /cannot write/);
});
