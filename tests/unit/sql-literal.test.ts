// The SQL literal encoder refuses, as a 400 before any statement exists, every value Postgres
// would refuse or change in a text or jsonb literal: so nothing a caller sends can make a
// one-round-trip statement fail in Postgres (whose log would then hold the whole statement).
// That what it does write reads back exactly is tests/integration/sql-inline.test.ts.
import assert from 'node:assert/strict';
import { AppError } from '../../supabase/functions/_shared/errors.ts';
import { inline, jsonb } from '../../supabase/functions/_shared/adapters/sql-literal.ts';

const refused = (e: unknown) => e instanceof AppError && e.status === 400 && e.code === 'VALIDATION_FAILED';
const unpaired = ['\ud800', 'a\udbffb', '\udc00', 'x\udfff', '\udc00\ud800'];

Deno.test('inline refuses NUL and unpaired surrogates in text with a 400', () => {
  for (const s of ['\0', 'a\0b', ...unpaired]) assert.throws(() => inline`select ${s}`, refused, JSON.stringify(s));
});

Deno.test('jsonb refuses NUL and unpaired surrogates in any string or key, however deep, with a 400', () => {
  for (const bad of ['\0', ...unpaired]) {
    for (
      const value of [
        bad,
        { email: 'someone@example.com', note: `x${bad}` },
        { [`k${bad}`]: 1 },
        [1, [2, [3, { deep: bad }]]],
      ]
    ) {
      assert.throws(() => jsonb(value), refused, JSON.stringify(value));
    }
  }
  let deep: unknown = '\0';
  for (let i = 0; i < 100_000; i++) deep = [deep];
  assert.throws(() => jsonb(deep), refused, 'walked without recursion: no stack overflow');
});

Deno.test('jsonb refuses numbers JSON cannot carry, and inline numbers it cannot write exactly', () => {
  for (const n of [Infinity, -Infinity, NaN]) assert.throws(() => jsonb({ n }), refused);
  for (const n of [1.5, 2 ** 53, -(2 ** 60), Infinity]) assert.throws(() => inline`select ${n}`, refused);
  assert.throws(() => inline`select ${{} as unknown as string}`, /cannot write/, 'a programming error stays a 500');
  assert.throws(() => inline`select ${undefined as unknown as string}`, /cannot write/);
});

Deno.test('what Postgres stores as sent is written: noncharacters, astral characters, quotes', () => {
  assert.equal(inline`select ${'\uffff\ufffe\u{10ffff}'}`, "select E'\\uffff\\ufffe\\U0010ffff'");
  assert.equal(inline`select ${jsonb({ "it's": '\\' })}`, `select E'{"it''s":"\\\\\\\\"}'::jsonb`);
  assert.equal(inline`select ${-0}, ${-1}`, 'select 0, (-1)');
});
