// The gateway's prompt count: long runs with no split point are cut for the tokenizer (whose cost
// grows with the square of a run), and a cut never counts fewer tokens than the whole: the hold
// stays a safe bound.
import assert from 'node:assert/strict';
import { encode } from 'gpt-tokenizer';
import { promptTokens, textTokens } from '../../supabase/functions/ai/request.ts';

Deno.test('cutting long runs never counts fewer tokens than encoding them whole', () => {
  const samples = [
    'a'.repeat(5_000),
    '漢字かな交じり文'.repeat(400),
    `${'x'.repeat(70)} and words ${'😀'.repeat(300)} then ${' '.repeat(200)}end`,
    'https://example.com/'.repeat(100),
    'ordinary text, short words, nothing cut',
  ];
  for (const s of samples) assert.ok(textTokens(s) >= encode(s).length, s.slice(0, 20));
  assert.equal(
    textTokens('ordinary text, short words, nothing cut'),
    encode('ordinary text, short words, nothing cut').length,
  );
});

Deno.test('a prompt of a million letters with no space is counted whole', () => {
  const n = promptTokens({ messages: [{ role: 'user', content: 'a'.repeat(1_000_000) }] });
  assert.ok(n >= 1_000_000 / 64, `${n} tokens`);
});
