// The hot routes write their values into the statement (`inline`, _shared/adapters/sql-literal.ts) so postgres.js
// sends it in one round trip. What Postgres reads back must be exactly the value sent, for any
// string (quotes, backslashes, anything Unicode), and no value can end the literal early.
import assert from 'node:assert/strict';
import fc from 'fast-check';
import postgres from 'postgres';
import { inline, jsonb, oneTrip } from '../../supabase/functions/_shared/adapters/sql-literal.ts';
import { env, testDb } from '../support/helpers.ts';

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
      ).filter((s) => !s.includes('\0') && s.isWellFormed()),
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
  const note = { note: 'it\'s \\ "quoted" \u00e9 \u{1F600} \uffff', "k'ey": [1, -0, 1e300, null, true] };
  const [{ json }] = await oneTrip<{ json: unknown }[]>(testDb, inline`select ${jsonb(note)} as json`);
  assert.deepEqual(json, JSON.parse(JSON.stringify(note)));
  const [{ n, t, f, z }] = await oneTrip(
    testDb,
    inline`select 1-${-1} as n, ${true} as t, ${false} as f, ${null}::text as z`,
  );
  assert.deepEqual({ n, t, f, z }, { n: 2, t: true, f: false, z: null }, 'a negative number is not a comment');
});

Deno.test('the statement is ASCII whatever the values, and oneTrip runs one statement only', async () => {
  const text = inline`select ${'é 😀 \uffff ü'}::text as v`;
  assert.match(text, /^[\x20-\x7e]*$/, 'non-ASCII is written as escapes');
  assert.equal(await readBack('é 😀 \uffff ü'), 'é 😀 \uffff ü', 'a noncharacter reads back as itself');
  await assert.rejects(
    oneTrip(testDb, inline`select 1; select ${2}`),
    (e: { code?: string }) => e.code === '42601',
    'two statements in one are refused (the extended protocol)',
  );
  // @ts-expect-error: a plain string is not an inline statement.
  const typed = () => oneTrip(testDb, 'select 1');
  assert.equal(typeof typed, 'function');
});

Deno.test('one-trip statements and statements with parameters share a pooled connection without hanging', async () => {
  // One connection through the transaction-mode pooler, as the functions use it: postgres.js
  // would pipeline one-trip statements, and a statement with parameters behind them got no answer.
  const sql = postgres(env('DB_POOLER_URL'), { prepare: false, max: 1 });
  await sql`select 1`; // one connection open: the next statements pipeline on it at once
  const work: Promise<unknown>[] = [];
  for (let i = 0; i < 10; i++) work.push(oneTrip(sql, inline`select pg_sleep(0.01), ${i} as i`));
  work.push(sql`select ${'x'}::text as p, pg_sleep(0.01)`);
  for (let i = 0; i < 10; i++) work.push(oneTrip(sql, inline`select ${i} as j`));
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hung = new Promise((_, reject) => timer = setTimeout(() => reject(new Error('no answer in 10 s')), 10_000));
  try {
    await Promise.race([Promise.all(work), hung]);
  } finally {
    clearTimeout(timer);
    await sql.end({ timeout: 1 });
  }
});
