// The gateway's prompt bound: exact where o200k is the provider's tokenizer, never below what the
// provider counts, and bounded work whatever is sent (counting stops at the limit and yields).
import assert from 'node:assert/strict';
import { encode } from 'gpt-tokenizer';
import { countTokens, utf8Bytes } from '../../supabase/functions/_shared/domain/token-bounds.ts';
import { promptTokens } from '../../supabase/functions/ai/protocol.ts';
import { chat, type ChatRequest } from '../../supabase/functions/ai/protocols/chat.ts';

/** The gateway's bound of a Chat Completions prompt for `model`. */
const chatPromptTokens = (req: Pick<ChatRequest, 'messages'>, model: string, limit: number) =>
  promptTokens(chat, { ...req, model } as ChatRequest, limit);

const o200k = async (text: string) => (await countTokens([text], 'o200k', Infinity))!;

Deno.test('the o200k bound equals the tokenizer on ordinary text, and is never below it on any text', async () => {
  // Characters o200k's pre-tokenizer treats differently: letters of both cases, digits, marks,
  // punctuation, every kind of space and newline, CJK, emoji, a lone surrogate.
  const alphabet = [
    'a',
    'B',
    'é',
    '1',
    '2',
    "'",
    '-',
    '.',
    '/',
    ' ',
    ' ',
    ' ',
    '\n',
    '\r\n',
    '\t',
    '漢',
    '😀',
    '\u0301',
    '\ud800',
  ];
  let seed = 52;
  const rand = (n: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n;
  for (let i = 0; i < 2000; i++) {
    const text = Array.from({ length: 1 + rand(300) }, () => alphabet[rand(alphabet.length)]).join('');
    const counted = await o200k(text), exact = encode(text).length;
    assert.ok(counted >= exact, JSON.stringify(text));
    if (!/[^ ]{257}/.test(text.replaceAll(/ (?=\S)/g, '|'))) assert.equal(counted, exact, JSON.stringify(text));
  }
  const prose = 'Ordinary text, short words: nothing is cut.\n'.repeat(500);
  assert.equal(await o200k(prose), encode(prose).length);
});

Deno.test('a long run whose cut counts fewer tokens than the whole is held for at least the whole', async () => {
  // Cut every 64 code points, this run counted 16,007 where o200k counts 18,005.
  const run = 'aaaa---'.repeat(128_000 / 7);
  assert.ok(await o200k(run) >= encode(run).length);
  assert.ok(await o200k(run) <= utf8Bytes(run));
});

Deno.test('a prompt far past the limit stops being counted at the limit', async () => {
  // 3.7 MB of rare characters in runs of 32: every character a token or more.
  const rare = Array.from({ length: 32 }, (_, i) => String.fromCodePoint(0x2a700 + i * 37)).join('');
  const piece = `${rare} `.repeat(30);
  let taken = 0;
  function* texts() {
    for (let i = 0; i < 1000; i++, taken++) yield piece;
  }
  assert.equal(await countTokens(texts(), 'o200k', 128_000), null);
  assert.ok(taken < 1000 && taken * piece.length < 2_000_000, `${taken} pieces read`);
  assert.equal(await countTokens(texts(), 'utf8', 128_000), null);
});

Deno.test('counting yields to the event loop, so a large prompt never holds other requests', async () => {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 0);
  const n = await chatPromptTokens(
    { messages: [{ role: 'user', content: 'a few words, '.repeat(40_000) }] },
    'gpt-4o',
    1e9,
  );
  clearInterval(timer);
  assert.ok(n !== null && n > 100_000);
  assert.ok(ticks > 0, 'no other task ran while counting');
});

Deno.test('a model of another family is held for its prompt bytes and a larger framing', async () => {
  const messages = [{ role: 'user' as const, content: 'héllo wörld' }];
  assert.equal(await chatPromptTokens({ messages }, 'claude-haiku-4-5', 128_000), 16 + 16 + utf8Bytes('héllo wörld'));
  assert.equal(await chatPromptTokens({ messages }, 'gpt-4o', 128_000), 3 + 4 + encode('héllo wörld').length);
  assert.equal(
    await chatPromptTokens({ messages: [{ role: 'user', content: 'a'.repeat(1_000_000) }] }, 'gpt-4o', 128_000),
    null,
  );
});

Deno.test('counts running at once, each pausing between slices, never disturb one another', async () => {
  const texts = ['one two three four five six seven '.repeat(20_000), 'ein zwei drei vier '.repeat(30_000)];
  const alone = await Promise.all(texts.map((t) => countTokens([t], 'o200k', Infinity)));
  const together = await Promise.all([...texts, ...texts].map((t) => countTokens([t], 'o200k', Infinity)));
  assert.deepEqual(together, [...alone, ...alone]);
  assert.deepEqual(alone, texts.map((t) => encode(t).length));
});
