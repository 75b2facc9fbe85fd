// A model's kind (chat or embedding, on its rate card) decides which APIs serve it, over the real
// stack with students' tokens: an embedding model's card prices input only, so no API that writes
// an answer may call it (the gateway's three and ai_completion jobs), and a chat model is not an
// embedding model; a refusal reaches no provider and holds or charges nothing. Jobs call the
// model's own upstream, as the gateway does; GET /ai/v1/models lists each model's own APIs; a chat
// card pricing its answer at 0 is never published.
import assert from 'node:assert/strict';
import { activeHolds, balanceOf, refusalsOf, runAiJob, standinCall, student } from '../support/ai.ts';
import { api, assertLedgerInvariants, key, newAdmin, testDb, tick, until, userToken } from '../support/helpers.ts';

type Json = Record<string, unknown>;
const error = (r: { body: Json }) => r.body.error as Json;
const embedding = 'text-embedding-3-small';
const tag = () => `t${crypto.randomUUID().replaceAll('-', '')}`;

/** The user's jobs and the holds on their account, ever: a refused job leaves neither. */
const jobsAndHolds = async (userId: string) =>
  (await testDb`select (select count(*)::int from billing.jobs j where j.user_id = ${userId}) as jobs,
    (select count(*)::int from billing.holds h join billing.accounts a on a.id = h.account_id
     where a.user_id = ${userId}) as holds`)[0];

Deno.test('an embedding model is 400 MODEL_KIND_NOT_SUPPORTED on chat completions, responses and messages: no provider call, nothing held or charged', async () => {
  const s = await student('10');
  const t = tag();
  const prompt = `#standin words=800 tag=${t}`;
  const calls: [string, Json][] = [
    ['/ai/v1/chat/completions', { model: embedding, messages: [{ role: 'user', content: prompt }], max_tokens: 800 }],
    ['/ai/v1/chat/completions', {
      model: embedding,
      messages: [{ role: 'user', content: prompt }],
      stream: true,
      stream_options: { include_usage: true },
    }],
    ['/ai/v1/responses', { model: embedding, input: prompt, max_output_tokens: 800 }],
    ['/ai/v1/messages', { model: embedding, max_tokens: 800, messages: [{ role: 'user', content: prompt }] }],
  ];
  for (const [path, body] of calls) {
    const r = await api(path, { token: s.token, body, headers: key() });
    assert.equal(r.status, 400, `${path}: ${r.text}`);
    assert.equal(error(r).code, 'MODEL_KIND_NOT_SUPPORTED', path);
    // /messages answers in Anthropic's error shape, the OpenAI routes in this project's envelope.
    assert.equal(error(r).type, path.endsWith('/messages') ? 'invalid_request_error' : 'validation', path);
    assert.deepEqual((error(r).details as Json).endpoints, ['embeddings'], path);
    assert.equal((error(r).details as Json).kind, 'embedding');
  }
  assert.equal((await standinCall(t)).status, 'unknown', 'the provider was never called');
  assert.equal(await balanceOf(s.id), '10');
  assert.equal(await activeHolds(s.id), 0);
  assert.deepEqual(
    (await refusalsOf(s.id)).map((c) => `${c.endpoint}:${c.failure}`).sort(),
    ['chat', 'chat', 'messages', 'responses'].map((e) => `${e}:MODEL_KIND_NOT_SUPPORTED`),
    'each refusal is in the call log',
  );
});

Deno.test('a chat model is 400 MODEL_KIND_NOT_SUPPORTED on embeddings, charged nothing', async () => {
  const s = await student('10');
  const t = tag();
  const r = await api('/ai/v1/embeddings', { token: s.token, body: { model: 'gpt-4o', input: `#standin tag=${t}` } });
  assert.equal(r.status, 400, r.text);
  assert.equal(error(r).code, 'MODEL_KIND_NOT_SUPPORTED');
  assert.deepEqual((error(r).details as Json).endpoints, ['chat', 'responses', 'messages']);
  assert.equal((await standinCall(t)).status, 'unknown');
  assert.equal(await balanceOf(s.id), '10');
  // The embedding model itself still embeds, at its input price.
  const ok = await api('/ai/v1/embeddings', { token: s.token, body: { model: embedding, input: 'one two three' } });
  assert.equal(ok.status, 200, ok.text);
});

Deno.test('an embedding model as an ai_completion job is 400 MODEL_KIND_NOT_SUPPORTED: no job, nothing held or charged', async () => {
  const s = await student('10');
  const r = await api('/jobs', {
    token: s.token,
    headers: key(),
    body: { type: 'ai_completion', input: { model: embedding, prompt: 'write me an essay', max_tokens: 10 } },
  });
  assert.equal(r.status, 400, r.text);
  assert.equal(error(r).code, 'MODEL_KIND_NOT_SUPPORTED');
  assert.deepEqual(await jobsAndHolds(s.id), { jobs: 0, holds: 0 });
  assert.equal(await balanceOf(s.id), '10');
});

Deno.test('a job whose model became an embedding model after it was queued fails when it runs, charged nothing', async () => {
  const s = await student('10');
  const model = `kind-flip-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from) values (${model}, 1, 1, 2, 1, now() - interval '1 minute')`;
  // Queued with its hold, as POST /jobs queues it, and kept from every worker until the card changed.
  const id = await testDb.begin(async (sql) => {
    const [job] = await sql`select id from billing.enqueue_job(${s.id}, 'ai_completion',
      ${JSON.stringify({ model, prompt: 'one two three', max_tokens: 10 })}::text::jsonb, ${crypto.randomUUID()}, null,
      billing.ai_hold_amount(${model}, 100, 10))`;
    await sql`update billing.jobs set run_after = now() + interval '1 hour' where id = ${job.id}`;
    return job.id as string;
  });
  assert.equal(await activeHolds(s.id), 1);
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from, kind) values (${model}, 2, 1, 0, 1, now() - interval '1 second', 'embedding')`;
  await testDb`update billing.jobs set run_after = now() where id = ${id}`;
  const job = await until('the job to finish', async () => {
    await tick();
    const [j] = await testDb`select status, error from billing.jobs where id = ${id}`;
    return ['completed', 'failed'].includes(j.status) && j;
  }, 30_000);
  assert.equal(job.status, 'failed');
  assert.equal((job.error as Json).code, 'MODEL_KIND_NOT_SUPPORTED');
  assert.equal(await balanceOf(s.id), '10');
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test("an ai_completion job reaches its model's own upstream in that upstream's API, charged what it reported", async () => {
  const s = await student('10');
  const t = tag();
  const job = await runAiJob(s.token, {
    model: 'claude-haiku-4-5',
    prompt: `#standin words=7 tag=${t}`,
    max_tokens: 50,
  });
  assert.equal(job.status, 'completed', JSON.stringify(job.error));
  const call = await standinCall(t) as { status: string; protocol?: string; usage?: Record<string, number> };
  assert.equal(call.protocol, 'messages', "claude-haiku-4-5's card names Anthropic: the job spoke Messages");
  const u = call.usage!;
  assert.match((job.result as { text: string }).text, /word7/);
  const [expected] = await testDb`select trim_scale(10 - (billing.price_usage('claude-haiku-4-5',
    ${u.input_tokens + (u.cache_creation_input_tokens ?? 0)}, ${u.output_tokens}, ${u.cache_read_input_tokens ?? 0},
    0)).amount)::text as balance`;
  await until('the capture', async () => (await balanceOf(s.id)) === expected.balance);
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});

Deno.test('GET /ai/v1/models lists each model its own kind and APIs: those its kind is served by that its upstream speaks', async () => {
  const s = await student('1');
  const r = await api('/ai/v1/models', { token: s.token });
  assert.equal(r.status, 200, r.text);
  const models = r.body.data as { id: string; kind: string; endpoints: string[] }[];
  const of = (id: string) => models.find((m) => m.id === id);
  assert.deepEqual(of(embedding)?.endpoints, ['embeddings']);
  assert.equal(of(embedding)?.kind, 'embedding');
  assert.deepEqual(of('gpt-4o')?.endpoints, ['chat', 'responses']);
  assert.equal(of('gpt-4o')?.kind, 'chat');
  assert.deepEqual(of('claude-haiku-4-5')?.endpoints, ['messages']);
});

Deno.test('publishing a chat card with an output or reasoning price of 0 is 400 OUTPUT_PRICE_REQUIRED; an embedding card may price input only', async () => {
  const admin = await userToken(await newAdmin(), { admin: true });
  const draft = async (card: Json) => {
    const r = await api('/admin/rate-cards/drafts', { token: admin, body: { markup: '1', reason: 'kinds', ...card } });
    assert.equal(r.status, 201, r.text);
    return (r.body.data as { id: string }).id;
  };
  const publish = (id: string) =>
    api(`/admin/rate-cards/drafts/${id}/publish`, { token: admin, body: { reason: 'go' } });
  const model = () => `kinds-${crypto.randomUUID().slice(0, 8)}`;

  for (
    const prices of [{ usd_per_million_output: '0' }, { usd_per_million_output: '2', usd_per_million_reasoning: '0' }]
  ) {
    const m = model();
    const r = await publish(await draft({ model: m, usd_per_million_input: '1', ...prices }));
    assert.equal(r.status, 400, r.text);
    assert.equal(error(r).code, 'OUTPUT_PRICE_REQUIRED');
    assert.equal((await testDb`select count(*)::int as n from billing.rate_cards where model = ${m}`)[0].n, 0);
  }

  const vectors = model();
  const r = await publish(
    await draft({ model: vectors, usd_per_million_input: '1', usd_per_million_output: '0', kind: 'embedding' }),
  );
  assert.equal(r.status, 200, r.text);
  assert.equal(((r.body.data as Json).rate_card as Json).kind, 'embedding');
  // and the gateway serves it as one: embeddings only.
  const s = await student('10');
  const chat = await api('/ai/v1/chat/completions', {
    token: s.token,
    body: { model: vectors, messages: [{ role: 'user', content: 'hi' }] },
  });
  assert.equal(error(chat).code, 'MODEL_KIND_NOT_SUPPORTED');
  assert.equal(await balanceOf(s.id), '10');
});
