// An answer holding what Postgres refuses in text and jsonb (NUL, a lone surrogate), under an
// Idempotency-Key: the call is charged exactly what the provider reported, and a replay answers
// the first answer's bytes, on every API, whole and streamed. The stand-in writes them on
// `#standin unusual`; the JSON on the wire carries them as the escapes \u0000 and \ud800.
import assert from 'node:assert/strict';
import { balanceIsGrantsLessCharges, callsOf, gatewayUrl, settled, standinCall, student } from '../support/ai.ts';
import { assertLedgerInvariants, testDb } from '../support/helpers.ts';

type Api = 'chat' | 'responses' | 'messages';
const paths: Record<Api, string> = { chat: 'chat/completions', responses: 'responses', messages: 'messages' };
const models: Record<Api, string> = { chat: 'gpt-4o-mini', responses: 'gpt-4o-mini', messages: 'claude-haiku-4-5' };

function request(api: Api, prompt: string, stream: boolean): Record<string, unknown> {
  const model = models[api];
  if (api === 'chat') {
    return {
      model,
      messages: [{ role: 'user', content: prompt }],
      max_tokens: 64,
      stream,
      ...(stream ? { stream_options: { include_usage: true } } : {}),
    };
  }
  if (api === 'responses') return { model, input: prompt, max_output_tokens: 64, stream };
  return { model, messages: [{ role: 'user', content: prompt }], max_tokens: 64, stream };
}

/** The card's price of the usage the stand-in reported (no cached or reasoning tokens asked for). */
async function reportedPrice(api: Api, tag: string): Promise<string> {
  const u = (await standinCall(tag)).usage as unknown as Record<string, number>;
  const input = api === 'chat' ? u.prompt_tokens : u.input_tokens;
  const output = api === 'chat' ? u.completion_tokens : u.output_tokens;
  const [r] = await testDb`
    select trim_scale(round(${input}::numeric * c.credits_per_input_token
      + ${output}::numeric * c.credits_per_output_token, 18))::text as price
    from billing.rate_cards c where c.model = ${models[api]} and c.effective_from <= now()
    order by c.effective_from desc, c.version desc limit 1`;
  return r.price;
}

for (const api of ['chat', 'responses', 'messages'] as const) {
  for (const stream of [false, true]) {
    Deno.test(`${api}${stream ? ', streamed' : ''}: an answer with a NUL and a lone surrogate under a key is charged and replayed byte for byte`, async () => {
      const s = await student();
      const tag = `t${crypto.randomUUID().replaceAll('-', '')}`;
      const key = crypto.randomUUID();
      const send = () =>
        fetch(`${gatewayUrl}/${paths[api]}`, {
          method: 'POST',
          headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json', 'idempotency-key': key },
          body: JSON.stringify(request(api, `say it #standin words=3 unusual tag=${tag}`, stream)),
        });
      const first = await send();
      const firstText = await first.text();
      assert.equal(first.status, 200, firstText);
      assert.ok(firstText.includes('nul\\u0000') && firstText.includes('lone\\ud800'), firstText);
      const call = await settled(s.id);
      assert.equal(call.status, 'charged');
      assert.equal(call.charged, await reportedPrice(api, tag));
      assert.equal((await balanceIsGrantsLessCharges(s.id)).exact, true, 'the ledger took what the call charged');

      const again = await send();
      assert.equal(again.headers.get('idempotent-replayed'), 'true');
      assert.equal(await again.text(), firstText);
      assert.equal((await callsOf(s.id)).length, 1, 'the replay is not a second call');
    });
  }
}

Deno.test('the books balance after answers Postgres refuses as text', async () => {
  await assertLedgerInvariants();
});
