// Model aliases over the real local stack: a call naming an alias (claude-3-5-haiku, an id
// Anthropic no longer serves) is its card's call (claude-haiku-4-5): held and charged at the
// card's price, recorded under the card's id, and the provider is asked for the card's id (the
// stand-in answers with the model it was asked for, as Anthropic does). GET /ai/v1/models shows
// the card once, with its aliases; a name that is neither a card nor an alias is still refused.
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import {
  activeHolds,
  balanceOf,
  callsOf,
  cardPrice,
  gatewayUrl,
  messagesPrice,
  refusalsOf,
  runAiJob,
  standinCall,
  student,
} from '../support/ai.ts';
import { adminToken, api, assertLedgerInvariants, key, testDb } from '../support/helpers.ts';
import { grantLot } from '../support/lots.ts';

const alias = 'claude-3-5-haiku';
const card = 'claude-haiku-4-5';
const anthropicOf = (token: string) =>
  new Anthropic({ baseURL: gatewayUrl.replace(/\/v1$/, ''), apiKey: token, maxRetries: 0 });
type Json = Record<string, unknown>;

/** The user's newest call as recorded: its model, and the model and card version its charge names. */
const recorded = async (userId: string) =>
  (await testDb`select c.model, t.metadata ->> 'model' as charged_model,
      (t.metadata ->> 'rate_card_version')::int as version
    from billing.ai_calls c join billing.transfers t on t.id = c.transfer_id
    where c.user_id = ${userId} order by c.seq desc limit 1`)[0];
/** The card's version in effect. */
const cardVersion = async () =>
  (await testDb`select r.version from billing.rate_cards r where r.model = ${card} and r.effective_from <= now()
    order by r.effective_from desc, r.version desc limit 1`)[0].version;

Deno.test('a call naming an alias is charged exactly as its card, recorded under the card, and the provider is asked for the card', async () => {
  const body = {
    max_tokens: 64,
    messages: [{ role: 'user' as const, content: 'the same question #standin words=9 cached=3' }],
  };
  const byAlias = await student();
  const byCard = await student();
  const a = await anthropicOf(byAlias.token).messages.create({ ...body, model: alias });
  const c = await anthropicOf(byCard.token).messages.create({ ...body, model: card });
  assert.equal(a.model, card, 'the provider was asked for the card, not the alias');
  assert.equal(c.model, card);
  assert.deepEqual(a.usage, c.usage, 'the same request, the same usage');

  const [ca] = await callsOf(byAlias.id);
  const [cc] = await callsOf(byCard.id);
  assert.equal(ca.status, 'charged');
  assert.equal(ca.charged, await messagesPrice(card, a.usage), "the card's price of what the provider reported");
  assert.equal(ca.charged, cc.charged, 'to the credit what the card charges');
  assert.equal(await balanceOf(byAlias.id), await balanceOf(byCard.id));
  const under = { model: card, charged_model: card, version: await cardVersion() };
  assert.deepEqual(await recorded(byAlias.id), under, "recorded and charged under the card's id and version");
  assert.equal(await activeHolds(byAlias.id), 0);

  // Streamed, the same: the stream's message names the card, and costs what whole costs.
  const stream = anthropicOf(byAlias.token).messages.stream({ ...body, model: alias });
  const streamed = await stream.finalMessage();
  assert.equal(streamed.model, card);
  const { response } = await stream.withResponse();
  assert.equal(response.headers.get('x-ai-answered-by'), `anthropic/${card}`, 'who answered names the card');
  const [cs] = await callsOf(byAlias.id);
  assert.equal(cs.charged, ca.charged);
  assert.deepEqual(await recorded(byAlias.id), under);
  await assertLedgerInvariants();
});

Deno.test('an ai_completion job naming an alias calls, charges and logs its card', async () => {
  const s = await student('10');
  const t = `t${crypto.randomUUID().replaceAll('-', '')}`;
  const job = await runAiJob(s.token, { model: alias, prompt: `#standin words=7 tag=${t}`, max_tokens: 50 });
  assert.equal(job.status, 'completed', JSON.stringify(job.error));
  assert.equal(job.result.model, card, 'the provider was asked for the card');
  assert.equal((await standinCall(t) as { protocol?: string }).protocol, 'messages', "the card's upstream, Anthropic");
  const [logged] = await testDb`select l.model from billing.ai_logs l where l.job_id = ${job.id}`;
  assert.equal(logged?.model, card, 'logged under the card');
  const u = job.result.usage as { input_tokens: number; output_tokens: number };
  const price = await cardPrice(card, { input: u.input_tokens, output: u.output_tokens });
  assert.equal(await balanceOf(s.id), String(10 - Number(price)), "charged the card's price");
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});

Deno.test('GET /ai/v1/models shows the card once, with its aliases', async () => {
  const s = await student('1');
  const r = await api('/ai/v1/models', { token: s.token });
  assert.equal(r.status, 200, r.text);
  const models = r.body.data as { id: string; aliases: string[] }[];
  assert.deepEqual(models.filter((m) => m.id === card || m.id === alias).map((m) => [m.id, m.aliases]), [
    [card, [alias]],
  ]);
  assert.deepEqual(models.find((m) => m.id === 'gpt-4o')?.aliases, [], 'a card without aliases lists none');
});

Deno.test('a model that is neither a card nor an alias is still 400 UNKNOWN_MODEL: refused and recorded, nothing held', async () => {
  const s = await student('10');
  const r = await api('/ai/v1/messages', {
    token: s.token,
    headers: key(),
    body: { model: 'claude-3-5-haiku-nope', max_tokens: 16, messages: [{ role: 'user', content: 'hi' }] },
  });
  assert.equal(r.status, 400, r.text);
  assert.equal((r.body.error as Json).code, 'UNKNOWN_MODEL');
  assert.deepEqual((await refusalsOf(s.id)).map((c) => [c.failure, c.model]), [['UNKNOWN_MODEL', null]]);
  assert.equal(await balanceOf(s.id), '10');
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test("a job naming an alias is capped and reserved as its card: an admin's cap on the card binds it", async () => {
  const s = await student('10');
  const admin = await adminToken();
  const cap = await api(`/credits/caps/users/${s.id}`, {
    token: admin,
    method: 'PUT',
    body: { period: 'day', model: card, amount: '0.001' },
  });
  assert.equal(cap.status, 200, cap.text);
  for (const model of [card, alias]) {
    const res = await api('/jobs', {
      token: s.token,
      headers: key(),
      body: { type: 'ai_completion', input: { model, prompt: '#standin words=7', max_tokens: 50 } },
    });
    assert.equal(res.status, 402, `${model}: ${res.text}`);
    assert.equal((res.body.error as { code: string }).code, 'SPEND_CAP_REACHED', model);
  }
  assert.equal(await activeHolds(s.id), 0);
  assert.equal(await balanceOf(s.id), '10');
});

Deno.test("credits for a family only an alias's earlier cards match are refused: no call is priced by them", async () => {
  const s = await student('0');
  const lot = (appliesTo: string[]) => grantLot(s.id, '5', 'promo_grant', { applies_to: appliesTo });
  const refused = await lot(['claude-3-5*']); // only claude-3-5-haiku's own cards, history
  assert.equal(refused.status, 400, refused.text);
  assert.equal((refused.body.error as { code: string }).code, 'INVALID_LOT');
  assert.equal(await balanceOf(s.id), '0', 'nothing granted');
  // The alias by name is its card; a family its card starts is accepted.
  for (const appliesTo of [[alias], ['claude-haiku*']]) assert.equal((await lot(appliesTo)).status, 201, appliesTo[0]);
  assert.equal(await balanceOf(s.id), '10');
  await assertLedgerInvariants();
});
