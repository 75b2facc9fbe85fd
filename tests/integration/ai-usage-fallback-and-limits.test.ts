// The gateway's Responses, Messages and embeddings routes charge what the rate card says when a
// stream omits its usage or a prompt is given as token ids; each test names what a student (or a provider behaving as real ones
// do) did to get an answer for less than the rate card, or to make the ledger wrong.
import assert from 'node:assert/strict';
import { activeHolds, callsOf, gatewayUrl, settled, standinCall, student } from '../support/ai.ts';
import { api, assertLedgerInvariants, clearOfWindowEdge, counting, withGateway } from '../support/helpers.ts';

const tag = () => `t${crypto.randomUUID().replaceAll('-', '')}`;

/** A streamed call through fetch, read to its end; the SSE text. */
async function streamed(
  path: string,
  token: string,
  body: Record<string, unknown>,
  headers: Record<string, string> = {},
) {
  const res = await fetch(`${gatewayUrl}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ ...body, stream: true }),
  });
  return { status: res.status, text: await res.text(), headers: res.headers };
}

Deno.test('Responses: a stream whose terminal event carries no usage is charged by the tokenizer, not free', async () => {
  // An OpenAI-compatible Responses host that does not report usage (the stand-in's no_usage):
  // the student got the whole answer and response.completed; the provider bills it.
  const s = await student();
  const t = tag();
  const r = await streamed('/responses', s.token, {
    model: 'gpt-4o',
    input: `a long answer please #standin words=200 no_usage tag=${t}`,
    max_output_tokens: 1000,
  });
  assert.equal(r.status, 200);
  assert.match(r.text, /word200/, 'the whole answer was delivered');
  assert.equal((await standinCall(t)).status, 'done');
  const c = await settled(s.id);
  // The doc's rule: "the provider never reports usage: what it sent, counted by the tokenizer".
  // Unstreamed, the same call is charged so; streamed, it was failed and charged nothing.
  assert.equal(c.status, 'charged', `call ${c.status} ${c.failure}, charged ${c.charged}`);
  assert.equal(c.usage_source, 'tokenizer');
  assert.ok(Number(c.charged) > 0);
  // The gateway ended the stream with PROVIDER_ERROR in place of the provider's response.completed.
  assert.ok(!r.text.includes('PROVIDER_ERROR'), 'the stream ends as the provider ended it');
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});

Deno.test('Messages: a stream whose message_delta carries no usage is charged by the tokenizer, not zero', async () => {
  const s = await student();
  const t = tag();
  const r = await streamed('/messages', s.token, {
    model: 'claude-haiku-4-5',
    max_tokens: 1000,
    messages: [{ role: 'user', content: `a long answer please #standin words=200 no_usage tag=${t}` }],
  });
  assert.equal(r.status, 200);
  assert.match(r.text, /word200/, 'the whole answer was delivered');
  assert.equal((await standinCall(t)).status, 'done');
  const c = await settled(s.id);
  assert.equal(c.status, 'charged');
  // It was recorded as the provider's own report of zero tokens of every kind, and charged 0.
  assert.equal(c.usage_source, 'tokenizer', `usage ${JSON.stringify(c.usage)} from ${c.usage_source}`);
  assert.ok(Number(c.charged) > 0, `charged ${c.charged}`);
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});

Deno.test('embeddings: token-id arrays past AI_MAX_PROMPT_TOKENS are PROMPT_TOO_LONG, as text is', async () => {
  const s = await student();
  // 200,000 token ids (one input token each), over the 128,000-token prompt limit: text this
  // long is refused before anything is held, token ids were not (the count of texts was 0).
  const ids = Array.from({ length: 20 }, () => Array.from({ length: 10_000 }, (_, i) => i % 1000));
  const res = await api('/ai/v1/embeddings', {
    token: s.token,
    body: { model: 'text-embedding-3-small', input: ids },
  });
  assert.equal(res.status, 400, `status ${res.status}: ${res.text.slice(0, 300)}`);
  assert.equal((res.body.error as { code: string }).code, 'PROMPT_TOO_LONG');
  assert.equal((await callsOf(s.id)).length, 0, 'nothing held, the provider never called');
});

Deno.test("the new AI routes count against the gateway's per-student AI rate limit, as chat does", async () => {
  // RATE_LIMIT_AI_CHAT_PER_MIN names only /ai/v1/chat/completions: /responses, /messages and
  // /embeddings fell to the default class (100 a minute by default, a bucket of its own), so
  // a student doubled (tripled) the provider calls a minute the AI limit allows.
  await clearOfWindowEdge();
  await withGateway(
    { ...counting, RATE_LIMIT_AI_CHAT_PER_MIN: '2', RATE_LIMIT_DEFAULT_PER_MIN: '1000' },
    async (url) => {
      const s = await student();
      const statuses: number[] = [];
      const calls: [string, Record<string, unknown>][] = [
        ['responses', { model: 'gpt-4o-mini', input: 'hi #standin words=2', max_output_tokens: 16 }],
        ['messages', { model: 'claude-haiku-4-5', max_tokens: 16, messages: [{ role: 'user', content: 'hi' }] }],
        ['embeddings', { model: 'text-embedding-3-small', input: 'hi' }],
        ['responses', { model: 'gpt-4o-mini', input: 'hi again #standin words=2', max_output_tokens: 16 }],
      ];
      for (const [path, body] of calls) {
        const res = await fetch(`${url}/ai/v1/${path}`, {
          method: 'POST',
          headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
          body: JSON.stringify(body),
        });
        await res.body?.cancel();
        statuses.push(res.status);
      }
      assert.deepEqual(statuses.slice(0, 2), [200, 200]);
      assert.deepEqual(statuses.slice(2), [429, 429], `statuses ${statuses}`);
    },
  );
});
