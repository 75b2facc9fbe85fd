// The metered AI gateway against the real local stack, through the official `openai` SDK and
// the Vercel AI SDK: the charge is the rate card's price of what the provider (the stand-in)
// reported, every failure point leaves the ledger exact, and no hold is left behind.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { generateText, streamText } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { encode } from 'gpt-tokenizer';
import { promptTokens } from '../../supabase/functions/ai/protocol.ts';
import { chat, type ChatRequest } from '../../supabase/functions/ai/protocols/chat.ts';

/** The gateway's bound of a Chat Completions prompt for `model`. */
const chatPromptTokens = (req: Pick<ChatRequest, 'messages'>, model: string, limit: number) =>
  promptTokens(chat, { ...req, model } as ChatRequest, limit);
import {
  activeHolds,
  ask,
  balanceIsGrantsLessCharges,
  balanceOf,
  callsOf,
  gatewayUrl,
  priceOf,
  settled,
  standinCall,
  student,
} from '../support/ai.ts';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  env,
  fund,
  holdsLapse,
  newUser,
  reportUsage,
  spawnGateway,
  testDb,
  userToken,
  watchTick,
  withGateway,
} from '../support/helpers.ts';
import { emulator } from '../support/purchases.ts';

const tag = () => `t${crypto.randomUUID().replaceAll('-', '')}`;

Deno.test('a non-streamed call is charged the rate card price of the usage the provider reported', async () => {
  const s = await student();
  const r = await s.openai.chat.completions.create({
    model: 'gpt-4o',
    messages: ask('hello #standin words=7 cached=4 reasoning=3'),
    max_tokens: 64,
  });
  assert.match(r.choices[0].message.content ?? '', /word7/);
  const [c] = await callsOf(s.id);
  assert.equal(c.status, 'charged');
  assert.equal(c.usage_source, 'provider');
  assert.equal(c.charged, await priceOf('gpt-4o', r.usage!));
  assert.equal((r.usage as unknown as { cost: string }).cost, c.charged);
  assert.equal(c.transfer_metadata.model, 'gpt-4o');
  assert.equal(c.transfer_metadata.cached_input_tokens, 4);
  assert.equal(c.transfer_metadata.reasoning_tokens, 3);
  assert.equal(await activeHolds(s.id), 0);
  assert.equal(await balanceOf(s.id), String(1000 - Number(c.charged)));
  await assertLedgerInvariants();
});

Deno.test('a streamed call costs what the same call costs unstreamed, and its last chunk says so', async () => {
  const s = await student();
  const messages = ask('the same question #standin words=9 cached=2 reasoning=5');
  const whole = await s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages, max_tokens: 100 });
  const stream = await s.openai.chat.completions.create({
    model: 'gpt-4o-mini',
    messages,
    max_tokens: 100,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let usage: (OpenAI.CompletionUsage & { cost?: string }) | undefined;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? '';
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, whole.choices[0].message.content);
  const [streamed, unstreamed] = await callsOf(s.id);
  assert.equal(streamed.charged, unstreamed.charged);
  assert.equal(usage?.cost, streamed.charged);
  assert.equal(streamed.charged, await priceOf('gpt-4o-mini', usage!));
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test('a stream whose caller did not ask for usage gets no usage chunk and is charged all the same', async () => {
  const s = await student();
  const stream = await s.openai.chat.completions.create({
    model: 'gpt-4o',
    messages: ask('no usage asked #standin words=4'),
    max_tokens: 50,
    stream: true,
  });
  let sawUsage = false;
  for await (const chunk of stream) sawUsage ||= Boolean(chunk.usage);
  assert.equal(sawUsage, false);
  const c = await settled(s.id);
  assert.equal(c.usage_source, 'provider');
  assert.notEqual(c.charged, '0');
});

Deno.test('a call the balance cannot hold is a 402 through the SDK, and the provider is never called', async () => {
  const s = await student('1');
  const t = tag();
  await assert.rejects(
    s.openai.chat.completions.create({ model: 'gpt-4o', messages: ask(`#standin tag=${t}`), max_tokens: 1000 }),
    (err: unknown) => {
      assert.ok(err instanceof OpenAI.APIError);
      assert.equal(err.status, 402);
      assert.equal((err.error as { code: string }).code, 'INSUFFICIENT_CREDITS');
      assert.ok((err.error as { details: { required: string } }).details.required);
      return true;
    },
  );
  assert.equal((await standinCall(t)).status, 'unknown');
  assert.equal(await balanceOf(s.id), '1');
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test('a client that hangs up before the usage chunk is charged what the provider reports, read to its end', async () => {
  const s = await student();
  const t = tag();
  const controller = new AbortController();
  const stream = await s.openai.chat.completions.create(
    {
      model: 'gpt-4o',
      // The provider counts 30,000 more prompt tokens than the gateway could: hanging up early
      // must not turn the charge into the gateway's own count.
      messages: ask(`long answer #standin words=80 delay=30 extra_prompt=30000 tag=${t}`),
      max_tokens: 2000,
      stream: true,
    },
    { signal: controller.signal },
  );
  let chunks = 0;
  try {
    for await (const _ of stream) if (++chunks === 5) controller.abort();
  } catch { /* the SDK may end the loop by throwing its abort error */ }
  assert.equal(chunks, 5);
  const c = await settled(s.id);
  const upstream = await standinCall(t);
  assert.equal(upstream.status, 'done', 'the provider answered to its end');
  assert.equal(c.status, 'charged');
  assert.equal(c.usage_source, 'provider');
  assert.equal(c.charged, await priceOf('gpt-4o', upstream.usage!));
  assert.equal(c.transfer_metadata.usage_source, 'provider');
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});

Deno.test('a provider failure before usage charges nothing and releases the hold (error, drop, silence)', async () => {
  const s = await student();
  for (const directive of ['fail=500', 'fail=429', 'stop_after=3']) {
    await assert.rejects(
      async () => {
        const stream = await s.openai.chat.completions.create({
          model: 'gpt-4o',
          messages: ask(`#standin words=20 ${directive}`),
          max_tokens: 50,
          stream: true,
        });
        for await (const _ of stream) { /* read to the end */ }
      },
      Error,
      directive,
    );
    const c = await settled(s.id);
    assert.equal(c.status, 'failed', directive);
    assert.equal(c.charged, '0');
    assert.match(c.failure, /^PROVIDER_/);
  }
  assert.equal(await balanceOf(s.id), '1000');
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});

Deno.test('a provider that reports no usage is charged what it streamed, counted by the tokenizer', async () => {
  const s = await student();
  const r = await s.openai.chat.completions.create({
    model: 'gpt-4o',
    messages: ask('#standin words=6 no_usage'),
    max_tokens: 50,
  });
  assert.ok(r.usage);
  const [c] = await callsOf(s.id);
  assert.equal(c.usage_source, 'tokenizer');
  assert.equal(c.usage.output_tokens, r.usage.completion_tokens);
});

Deno.test('an error after the usage chunk is charged (the provider bills it) and marked failed by the gateway', async () => {
  const s = await student();
  {
    const stream = await s.openai.chat.completions.create({
      model: 'gpt-4o',
      messages: ask('#standin words=5 error_after_usage'),
      max_tokens: 50,
      stream: true,
      stream_options: { include_usage: true },
    });
    for await (const _ of stream) { /* the caller got the whole answer and its usage */ }
  }
  const c = await settled(s.id);
  assert.equal(c.status, 'charged');
  assert.equal(c.transfer_metadata.failed_by, 'gateway');
  assert.notEqual(c.charged, '0');
});

Deno.test('an Idempotency-Key makes a retried call answer once and charge once', async () => {
  const s = await student();
  const key = crypto.randomUUID();
  const body = { model: 'gpt-4o', messages: ask('#standin words=3'), max_tokens: 20 };
  const first = await s.openai.chat.completions.create(body, { headers: { 'Idempotency-Key': key } });
  const again = await s.openai.chat.completions.create(body, { headers: { 'Idempotency-Key': key } });
  assert.equal(again.id, first.id);
  assert.equal(again.choices[0].message.content, first.choices[0].message.content);
  assert.equal((await callsOf(s.id)).length, 1);
  await assert.rejects(
    s.openai.chat.completions.create({ ...body, max_tokens: 21 }, { headers: { 'Idempotency-Key': key } }),
    (err: unknown) => err instanceof OpenAI.APIError && err.status === 409,
  );
});

Deno.test('parallel streams whose holds exceed the balance: as many run as the balance covers, the rest 402', async () => {
  // Each call holds the dearest price of its prompt plus 100 answer tokens of gpt-4o.
  const s = await student('0');
  const messages = ask('#standin words=3 first_byte_delay=2000'); // the 8 overlap however slowly they arrive
  const [{ hold }] = await testDb`select billing.ai_hold_amount('gpt-4o', ${await chatPromptTokens(
    { messages },
    'gpt-4o',
    128_000,
  )}, 100)::text as hold`;
  const admin = await adminToken();
  await api('/credits/grants', {
    token: admin,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { user_id: s.id, amount: String(Number(hold) * 3), reason: 'three holds', kind: 'promo_grant' },
  });
  const results = await Promise.allSettled(
    Array.from({ length: 8 }, async () => {
      const stream = await s.openai.chat.completions.create({
        model: 'gpt-4o',
        messages,
        max_tokens: 100,
        stream: true,
      });
      for await (const _ of stream) { /* read */ }
    }),
  );
  const refused = results.filter((r) => r.status === 'rejected');
  assert.equal(results.length - refused.length, 3);
  for (const r of refused) {
    assert.equal(((r as PromiseRejectedResult).reason as InstanceType<typeof OpenAI.APIError>).status, 402);
  }
  for (let i = 0; i < 50 && (await activeHolds(s.id)) > 0; i++) await new Promise((r) => setTimeout(r, 50));
  assert.equal(await activeHolds(s.id), 0);
  const b = await balanceIsGrantsLessCharges(s.id);
  assert.ok(b.exact, `the balance is the grants less the calls' charges: ${JSON.stringify(b)}`);
  await assertLedgerInvariants();
});

Deno.test('the same Idempotency-Key sent 8 times at once with a balance for one call: one call, never a 402', async () => {
  // begin_ai_call holds before it writes the call's record: a duplicate that waited on the first
  // one's hold is answered by the first one's claim (in use, or its replay), not refused for
  // the credits the first one holds.
  const s = await student('0');
  const messages = ask('#standin words=3 first_byte_delay=2000'); // the 8 overlap however slowly they arrive
  const [{ hold }] = await testDb`select billing.ai_hold_amount('gpt-4o', ${await chatPromptTokens(
    { messages },
    'gpt-4o',
    128_000,
  )}, 100)::text as hold`;
  const admin = await adminToken();
  await api('/credits/grants', {
    token: admin,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { user_id: s.id, amount: hold, reason: 'one hold', kind: 'promo_grant' },
  });
  const key = crypto.randomUUID();
  const results = await Promise.allSettled(
    Array.from({ length: 8 }, () =>
      s.openai.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 100 }, {
        headers: { 'idempotency-key': key },
      })),
  );
  const answered = results.filter((r) => r.status === 'fulfilled');
  assert.ok(answered.length >= 1, 'the first call is answered');
  for (const r of results) {
    if (r.status === 'rejected') {
      const err = r.reason as InstanceType<typeof OpenAI.APIError>;
      assert.equal(err.status, 409, `a duplicate is in use, never refused for credits: ${err.message}`);
    }
  }
  const [{ calls, charged, refused }] = await testDb`select
      count(*) filter (where c.status = 'charged')::int as calls,
      trim_scale(coalesce(sum(c.charged), 0))::text as charged,
      count(*) filter (where c.status = 'refused' and c.failure <> 'IDEMPOTENCY_KEY_IN_USE')::int as refused
    from billing.ai_calls c where c.user_id = ${s.id}`;
  assert.deepEqual({ calls, refused }, { calls: 1, refused: 0 }, 'one call charged; every refusal was "in use"');
  for (const r of answered) {
    assert.equal((r as PromiseFulfilledResult<{ usage?: { cost?: unknown } }>).value.usage?.cost, charged);
  }
  assert.equal(await activeHolds(s.id), 0);
  const b = await balanceIsGrantsLessCharges(s.id);
  assert.ok(b.exact, `the balance is the grants less the call's charge: ${JSON.stringify(b)}`);
  await assertLedgerInvariants();
});

Deno.test('a per-model cap stops a call before the provider is called', async () => {
  const s = await student();
  // Less than the least answer (AI_MIN_OUTPUT_TOKENS of gpt-4o): a shorter answer does not fit either.
  const capped = await api('/credits/caps', {
    method: 'PUT',
    token: s.token,
    body: { period: 'day', model: 'gpt-4o', amount: '0.5' },
  });
  assert.equal(capped.status, 200);
  await assert.rejects(
    s.openai.chat.completions.create({ model: 'gpt-4o', messages: ask('hi'), max_tokens: 500 }),
    (err: unknown) =>
      err instanceof OpenAI.APIError && err.status === 402 &&
      (err.error as { code: string }).code === 'SPEND_CAP_REACHED',
  );
  const ok = await s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask('hi'), max_tokens: 50 });
  assert.ok(ok.choices.length);
});

Deno.test('the model allowlist: /models lists what may be called, a refused model is a 403 that says why', async () => {
  const s = await student();
  const admin = await adminToken();
  const set = (models: string[]) =>
    api('/admin/model-access', { method: 'PUT', token: admin, body: { plan_id: null, models } });
  try {
    assert.equal((await set(['gpt-4o-mini'])).status, 200);
    const models = await s.openai.models.list();
    assert.deepEqual(models.data.map((m) => m.id), ['gpt-4o-mini']);
    await assert.rejects(
      s.openai.chat.completions.create({ model: 'gpt-4o', messages: ask('hi'), max_tokens: 5 }),
      (err: unknown) =>
        err instanceof OpenAI.APIError && err.status === 403 &&
        (err.error as { code: string }).code === 'MODEL_NOT_ALLOWED',
    );
    await assert.rejects(
      s.openai.chat.completions.create({ model: 'no-such-model', messages: ask('hi'), max_tokens: 5 }),
      (err: unknown) => err instanceof OpenAI.APIError && err.status === 400,
    );
    assert.equal((await set(['not-a-priced-model'])).status, 400);
  } finally {
    assert.equal((await set([])).status, 200);
  }
  assert.ok((await s.openai.models.list()).data.some((m) => m.id === 'gpt-4o'));
});

Deno.test('limits the caller chooses are bounded: huge or negative max_tokens, n > 1, images', async () => {
  const s = await student();
  for (const bad of [{ max_tokens: 10_000_000 }, { max_tokens: -1 }, { max_completion_tokens: 0 }, { n: 2 }]) {
    await assert.rejects(
      s.openai.chat.completions.create({ model: 'gpt-4o', messages: ask('hi'), ...bad } as never),
      (err: unknown) => err instanceof OpenAI.APIError && err.status === 400,
      JSON.stringify(bad),
    );
  }
  const image = [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://x/y.png' } }] }];
  await assert.rejects(
    s.openai.chat.completions.create({ model: 'gpt-4o', messages: image, max_tokens: 5 } as never),
    (err: unknown) => err instanceof OpenAI.APIError && err.status === 400,
  );
  assert.equal((await callsOf(s.id)).length, 0);
});

Deno.test('the Vercel AI SDK works unchanged, streamed and not', async () => {
  const s = await student();
  const provider = createOpenAI({ baseURL: gatewayUrl, apiKey: s.token });
  const whole = await generateText({
    model: provider.chat('gpt-4o-mini'),
    prompt: 'hi #standin words=4',
    maxOutputTokens: 40,
  });
  assert.match(whole.text, /word4/);
  const streamed = streamText({
    model: provider.chat('gpt-4o-mini'),
    prompt: 'hi #standin words=4',
    maxOutputTokens: 40,
  });
  let text = '';
  for await (const part of streamed.textStream) text += part;
  assert.equal(text, whole.text);
  const calls = await callsOf(s.id);
  assert.equal(calls.length, 2);
  assert.equal(calls[0].charged, calls[1].charged);
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test("the AI SDK's chat model reads the cost from the answer's body and header, the raw usage chunk, or the call log", async () => {
  // @ai-sdk/openai's chat model parses usage with a schema of OpenAI's own fields, so usage.cost
  // reaches neither usage.raw nor providerMetadata; the wire shape stays OpenAI's, and the cost is
  // read where docs/ai-gateway.md § What a call cost says.
  const s = await student();
  const provider = createOpenAI({ baseURL: gatewayUrl, apiKey: s.token });
  const whole = await generateText({
    model: provider.chat('gpt-4o-mini'),
    prompt: 'hi #standin words=4',
    maxOutputTokens: 40,
    include: { responseBody: true }, // the SDK keeps no body unless asked
  });
  const [w] = await callsOf(s.id);
  assert.equal(whole.response.headers?.['x-credits-charged'], w.charged);
  assert.equal((whole.response.body as { usage: { cost: string } }).usage.cost, w.charged);

  const streamed = streamText({
    model: provider.chat('gpt-4o-mini'),
    prompt: 'hi #standin words=4',
    maxOutputTokens: 40,
    includeRawChunks: true,
  });
  let cost: string | undefined;
  for await (const part of streamed.fullStream) {
    if (part.type === 'raw') cost = (part.rawValue as { usage?: { cost?: string } }).usage?.cost ?? cost;
  }
  const callId = (await streamed.response).headers?.['x-ai-call-id'];
  await settled(s.id);
  const [st] = await callsOf(s.id);
  assert.equal(cost, st.charged, "the raw usage chunk's usage.cost");
  assert.equal(callId, st.id);
  const logged = await fetch(`${gatewayUrl}/calls/${callId}`, { headers: { authorization: `Bearer ${s.token}` } });
  assert.equal((await logged.json()).data.charged, st.charged, 'GET /ai/v1/calls/{x-ai-call-id}');
});

Deno.test('POST /credits/usage refuses a student token; a server key works until it is revoked', async () => {
  const s = await student();
  const usage = { model: 'gpt-4o', input_tokens: 50, output_tokens: 0 };
  const mine = await api('/credits/usage', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { user_id: s.id, ...usage },
  });
  assert.equal(mine.status, 403);
  assert.equal((mine.body.error as { code: string }).code, 'USAGE_REPORTED_BY_SERVER');

  const admin = await adminToken();
  const made = await api('/admin/server-keys', { token: admin, body: { name: 'essay tutor backend' } });
  assert.equal(made.status, 201);
  const key = made.body.data as { id: string; secret: string };
  assert.match(key.secret, /^slk_[0-9a-f]{48}$/);
  const listed = await api('/admin/server-keys', { token: admin });
  assert.ok(!listed.text.includes(key.secret), 'a list never shows a secret');
  const report = () =>
    api('/credits/usage', {
      token: key.secret,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body: { user_id: s.id, ...usage },
    });
  assert.equal((await report()).status, 201);
  assert.equal((await api(`/admin/server-keys/${key.id}`, { method: 'DELETE', token: admin })).status, 200);
  assert.equal((await report()).status, 401);
  assert.equal(await balanceOf(s.id), '999');
});

Deno.test("a server key is checked by the usage report's own statement, first: a refusal is not kept, names no user", async () => {
  const s = await student();
  const admin = await adminToken();
  const make = async () =>
    (await api('/admin/server-keys', { token: admin, body: { name: 'grading backend' } })).body.data as {
      id: string;
      secret: string;
    };
  const revoked = await make();
  assert.equal((await api(`/admin/server-keys/${revoked.id}`, { method: 'DELETE', token: admin })).status, 200);
  const live = await make();
  const key = crypto.randomUUID();
  const send = (secret: string, userId: string) =>
    api('/credits/usage', {
      token: secret,
      headers: { 'idempotency-key': key },
      body: { user_id: userId, model: 'gpt-4o', input_tokens: 50, output_tokens: 0 },
    });
  // A revoked key, an unknown one, a user who does not exist: the same 401, nothing about the user.
  for (
    const [secret, userId] of [[revoked.secret, s.id], [`slk_${'0'.repeat(48)}`, s.id], [
      revoked.secret,
      crypto.randomUUID(),
    ]]
  ) {
    const refused = await send(secret, userId);
    assert.equal(refused.status, 401, refused.text);
    assert.deepEqual(
      [(refused.body.error as { code: string }).code, (refused.body.error as { message: string }).message],
      ['UNAUTHORIZED', 'This server key is unknown or was revoked.'],
    );
  }
  // Nothing was kept under the Idempotency-Key: a live key's report with it is charged, not a replayed 401.
  const charged = await send(live.secret, s.id);
  assert.equal(charged.status, 201, charged.text);
  assert.equal(charged.headers.get('idempotent-replayed'), null);
  assert.equal(await balanceOf(s.id), '999');
});

Deno.test('caller metadata can never set a key the ledger owns (failed, model, token counts)', async () => {
  const s = await student();
  for (const key of ['failed', 'failed_by', 'usage_source', 'model', 'output_tokens']) {
    const r = await reportUsage('/credits/usage', {
      token: s.token,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body: { model: 'gpt-4o', input_tokens: 50, output_tokens: 0, metadata: { [key]: true } },
    });
    assert.equal(r.status, 400, key);
  }
  // Even past the API, the ledger drops them: a failed_only correction trusts only the gateway.
  await testDb`select billing.charge_usage(${s.id}, 'gpt-4o', 50, 0, ${crypto.randomUUID()}, null,
    '{"failed": true, "failed_by": "gateway"}'::jsonb)`;
  const [t] =
    await testDb`select t.metadata from billing.transfers t join billing.accounts a on a.id = t.from_account_id
    where a.user_id = ${s.id} and t.kind = 'usage' order by t.id desc limit 1`;
  assert.equal(t.metadata.failed, undefined);
  assert.equal(t.metadata.failed_by, undefined);
});

Deno.test('no prompt or answer text reaches the gateway log or the Postgres log', async () => {
  const s = await student();
  const secret = `prompt-marker-${crypto.randomUUID()}`;
  await s.openai.chat.completions.create({
    model: 'gpt-4o',
    messages: ask(`${secret} #standin words=2`),
    max_tokens: 20,
  });
  await assert.rejects(
    s.openai.chat.completions.create({ model: 'gpt-4o', messages: ask(`${secret} #standin fail=500`), max_tokens: 20 }),
  );
  await new Promise((r) => setTimeout(r, 300));
  const local = env('LOCAL_AUTH_DIR').replace(/\/auth$/, '');
  // The Postgres log sits in the cluster's data directory (.local/pg, or /var/lib/postgresql/… as root).
  const pgLog = (await Deno.stat(`${local}/pg/data/server.log`).catch(() => null))
    ? `${local}/pg/data/server.log`
    : null;
  for (const file of [`${local}/logs/gateway.log`, `${local}/logs/ai-standin.log`, ...(pgLog ? [pgLog] : [])]) {
    const text = await Deno.readTextFile(file).catch(() => '');
    assert.ok(!text.includes(secret), `${file} holds prompt text`);
  }
});

Deno.test('the provider refusing or failing a whole call is PROVIDER_REFUSED or PROVIDER_ERROR, and nothing is charged', async () => {
  const s = await student();
  const codeOf = (directive: string) =>
    s.openai.chat.completions.create({ model: 'gpt-4o', messages: ask(`#standin ${directive}`), max_tokens: 20 }).then(
      () => ['answered'],
      (err) => [(err as InstanceType<typeof OpenAI.APIError>).status, (err.error as { code: string }).code],
    );
  assert.deepEqual(await codeOf('fail=400'), [400, 'PROVIDER_REFUSED']);
  assert.deepEqual(await codeOf('fail=503'), [502, 'PROVIDER_ERROR']);
  assert.equal(await balanceOf(s.id), '1000');
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test('a provider slower than AI_TIMEOUT_MS is PROVIDER_TIMEOUT; a prompt over AI_MAX_PROMPT_TOKENS is PROMPT_TOO_LONG', async () => {
  await withGateway({ AI_TIMEOUT_MS: '300', AI_MAX_PROMPT_TOKENS: '40' }, async (url) => {
    const s = await student();
    const ai = new OpenAI({ baseURL: `${url}/ai/v1`, apiKey: s.token, maxRetries: 0 });
    const codeOf = (content: string, stream = false) =>
      (async () => {
        const r = await ai.chat.completions.create({ model: 'gpt-4o', messages: ask(content), max_tokens: 20, stream });
        if (stream) { for await (const _ of r as AsyncIterable<unknown>) { /* read */ } }
      })().then(
        () => 'answered',
        (err) => `${(err as InstanceType<typeof OpenAI.APIError>).status} ${(err.error as { code: string })?.code}`,
      );
    assert.equal(await codeOf('#standin first_byte_delay=1500', true), '504 PROVIDER_TIMEOUT');
    assert.match(await codeOf('word '.repeat(60)), /^400 /);
    const r = await fetch(`${url}/ai/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o', messages: ask('word '.repeat(60)), max_tokens: 5 }),
    });
    assert.deepEqual([r.status, (await r.json()).error.code], [400, 'PROMPT_TOO_LONG']);
    // Silent mid-stream: the chunks stop coming; the call fails and charges nothing.
    assert.match(await codeOf('#standin words=5 delay=1500', true), /PROVIDER_TIMEOUT/);
    const c = await settled(s.id);
    assert.equal(c.failure, 'PROVIDER_TIMEOUT');
    assert.equal(await balanceOf(s.id), '1000');
  });
});

for (
  const [where, failpoints] of [['mid-stream', ''], ['after the hold', 'ai.after_hold'], [
    'before the capture',
    'ai.before_capture',
  ]]
) {
  Deno.test(`a gateway that dies ${where} charges nothing: the hold expires and the sweep frees the call`, async () => {
    const gw = spawnGateway(failpoints ? { FAILPOINTS: failpoints } : {});
    await gw.ready();
    const s = await student();
    const ai = new OpenAI({ baseURL: `${gw.url}/ai/v1`, apiKey: s.token, maxRetries: 0 });
    try {
      const stream = await ai.chat.completions.create({
        model: 'gpt-4o',
        messages: ask('#standin words=100 delay=20'),
        max_tokens: 200,
        stream: true,
      });
      let chunks = 0;
      for await (const _ of stream) if (++chunks === 3 && !failpoints) await gw.kill();
    } catch { /* the connection died with the gateway */ }
    await gw.kill();
    const [c] = await callsOf(s.id);
    assert.equal(c.status, 'held');
    // What pg_cron does once the hold's TTL has passed: the sweeps run.
    await holdsLapse(testDb`h.id = (select hold_id from billing.ai_calls where id = ${c.id})`);
    await testDb`update billing.ai_calls set created_at = now() - interval '2 minutes' where id = ${c.id}`;
    await testDb`select billing.release_expired_holds(100000)`;
    await testDb`select billing.sweep_ai_calls(500)`;
    const [after] = await callsOf(s.id);
    assert.equal(after.status, 'failed');
    assert.equal(after.failure, 'GATEWAY_LOST');
    assert.equal(await balanceOf(s.id), '1000');
    assert.equal(await activeHolds(s.id), 0);
    await assertLedgerInvariants();
  });
}

Deno.test('revoking a server key that does not exist is SERVER_KEY_NOT_FOUND', async () => {
  const r = await api(`/admin/server-keys/${crypto.randomUUID()}`, { method: 'DELETE', token: await adminToken() });
  assert.equal(r.status, 404);
  assert.equal((r.body.error as { code: string }).code, 'SERVER_KEY_NOT_FOUND');
});

Deno.test('a response format, tool choice and tools count toward the hold: a long schema cannot ride on a small one', async () => {
  const s = await student('5');
  const description = 'Before answering, carefully read this whole study guide chapter and follow it. '.repeat(1000);
  const body = {
    model: 'gpt-4o',
    max_tokens: 50,
    messages: ask('Answer per the schema.'),
    response_format: {
      type: 'json_schema',
      json_schema: { name: 'answer', description, schema: { type: 'object', properties: { a: { type: 'string' } } } },
    },
  };
  await assert.rejects(
    s.openai.chat.completions.create(body as never),
    (err: unknown) => {
      assert.ok(err instanceof OpenAI.APIError && err.status === 402, String(err));
      const required = Number((err.error as { details: { required: string } }).details.required);
      assert.ok(required > 100, `the hold (${required}) covers the schema's tokens`);
      return true;
    },
  );
  assert.equal((await callsOf(s.id)).length, 0);
});

/** The transfers that moved the user's own credits, oldest first, in exact text. */
async function transfersOf(userId: string) {
  return await testDb`select t.kind, trim_scale(t.amount)::text as amount, t.idempotency_key as key, t.metadata
    from billing.transfers t join billing.accounts a on a.id in (t.from_account_id, t.to_account_id)
    where a.user_id = ${userId} order by t.id`;
}

/** The 402 a refused gateway call answered, as the SDK saw it: its code and details. */
function refusal(err: unknown) {
  assert.ok(err instanceof OpenAI.APIError && err.status === 402, String(err));
  return err.error as { code: string; details: { debt?: boolean; required?: string; available?: string } };
}

Deno.test('what a provider bills beyond the hold and the balance is charged whole, as debt: the next call is refused until a grant pays the debt first', async () => {
  const s = await student('3');
  const r = await s.openai.chat.completions.create({
    model: 'gpt-4o',
    messages: ask('#standin words=2 extra_prompt=1000'),
    max_tokens: 10,
  });
  const price = await priceOf('gpt-4o', r.usage!);
  const [c] = await callsOf(s.id);
  assert.equal(c.charged, price, 'the whole price is charged, past the hold and the balance');
  assert.equal((r.usage as unknown as { cost: string }).cost, price);
  // The hold is captured; the excess is one usage charge keyed by the call, the rest of it debt.
  const [grant, capture, excess, ...more] = await transfersOf(s.id);
  assert.deepEqual(more, []);
  assert.equal(grant.kind, 'promo_grant');
  assert.equal(capture.kind, 'hold_capture');
  const [{ rest, debt }] = await testDb`select trim_scale(${price}::numeric - ${capture.amount}::numeric)::text as rest,
    trim_scale(3 - ${price}::numeric)::text as debt`;
  assert.deepEqual(
    [excess.kind, excess.key, excess.amount, excess.metadata.reserved, excess.metadata.priced, excess.metadata.model],
    ['usage', `ai-overage:${c.id}`, rest, capture.amount, price, 'gpt-4o'],
  );
  assert.ok(!('unbilled' in excess.metadata));
  assert.ok(Number(debt) < 0);
  assert.equal(await balanceOf(s.id), debt, 'the excess beyond the 3 credits is debt on the balance');
  const [alert] = await testDb`select details from billing.evaluate_alerts() where condition = 'ai_call_overran'`;
  assert.deepEqual(
    alert?.details,
    { model: 'gpt-4o', call_id: c.id, excess: rest },
    "the minute's alerts tell of the overrun",
  );
  await assert.rejects(
    s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask('#standin words=2'), max_tokens: 5 }),
    (err: unknown) => {
      const e = refusal(err);
      assert.deepEqual([e.code, e.details.debt], ['INSUFFICIENT_CREDITS', true]);
      return true;
    },
  );
  assert.equal((await callsOf(s.id)).length, 1, 'the refused call reached no provider');
  await fund(s.id, '100');
  const [{ after }] = await testDb`select trim_scale(100 + ${debt}::numeric)::text as after`;
  assert.equal(await balanceOf(s.id), after, 'the grant paid the debt first');
  const next = await s.openai.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: ask('#standin words=2'),
    max_tokens: 5,
  });
  const [paid] = await callsOf(s.id);
  assert.equal(paid.status, 'charged');
  const cost = (next.usage as unknown as { cost: string }).cost;
  const [{ expected }] = await testDb`select trim_scale(${after}::numeric - ${cost}::numeric)::text as expected`;
  assert.equal(await balanceOf(s.id), expected);
  await assertLedgerInvariants();
});

Deno.test('parallel calls on a drained balance: each call running charges its own excess whole, once, and no further call runs while the debt is owed', async () => {
  const s = await student('0');
  const messages = ask('#standin words=2 extra_prompt=1000');
  const [{ hold }] = await testDb`select billing.ai_hold_amount('gpt-4o', ${await chatPromptTokens(
    { messages },
    'gpt-4o',
    128_000,
  )}, 10)::text as hold`;
  const [{ funded }] = await testDb`select trim_scale(${hold}::numeric * 6)::text as funded`;
  await fund(s.id, funded);
  // Calls held before the first excess became debt finish and charge theirs; a call that begins
  // after it is refused.
  const results = await Promise.allSettled(
    Array.from({ length: 6 }, () => s.openai.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 10 })),
  );
  const answers = results.flatMap((r) => r.status === 'fulfilled' ? [r.value] : []);
  for (const r of results) {
    if (r.status === 'rejected') assert.equal(refusal(r.reason).code, 'INSUFFICIENT_CREDITS');
  }
  assert.ok(answers.length >= 1);
  const prices = await Promise.all(answers.map((a) => priceOf('gpt-4o', a.usage!)));
  const calls = await callsOf(s.id);
  assert.equal(calls.length, answers.length, 'a refused call reached no provider and left no call');
  const [sums] = await testDb`select trim_scale(sum(p))::text as priced,
    trim_scale(${funded}::numeric - sum(p))::text as balance,
    (select trim_scale(sum(c.charged))::text from billing.ai_calls c where c.user_id = ${s.id}) as charged
    from unnest(${prices}::numeric[]) p`;
  assert.equal(sums.charged, sums.priced, 'the calls charged exactly what the provider billed');
  assert.ok(Number(sums.balance) < 0);
  assert.equal(await balanceOf(s.id), sums.balance, 'the grant less every whole price: the excesses are debt');
  // Each excess (what its hold did not capture: a hold that gave its reservation to another call's
  // excess first captures less, or nothing) is charged once, at once, keyed by its call.
  const excesses = await testDb`select trim_scale(c.charged - coalesce(h.captured_amount, 0))::text as excess,
      (select trim_scale(sum(t.amount))::text from billing.transfers t where t.kind = 'usage'
        and t.idempotency_key = 'ai-overage:' || c.id) as charged
    from billing.ai_calls c join billing.holds h on h.id = c.hold_id where c.user_id = ${s.id}`;
  for (const x of excesses) assert.equal(x.charged, x.excess, 'the excess is charged once, whole');
  await assert.rejects(
    s.openai.chat.completions.create({ model: 'gpt-4o', messages, max_tokens: 10 }),
    (err: unknown) => refusal(err).details.debt === true,
  );
  assert.equal((await callsOf(s.id)).length, answers.length);
  assert.equal(await activeHolds(s.id), 0);
  await assertLedgerInvariants();
});

Deno.test('what a call costs beyond its hold is charged whole past the per-model cap, and counts against it', async () => {
  const s = await student();
  const capped = await api('/credits/caps', {
    method: 'PUT',
    token: s.token,
    body: { period: 'day', model: 'gpt-4o', amount: '1' },
  });
  assert.equal(capped.status, 200, capped.text);
  const r = await s.openai.chat.completions.create({
    model: 'gpt-4o',
    messages: ask('#standin words=2 extra_prompt=30000'),
    max_tokens: 10,
  });
  const price = await priceOf('gpt-4o', r.usage!);
  assert.ok(Number(price) > 1, 'the provider billed past the cap');
  const [c] = await callsOf(s.id);
  assert.equal(c.charged, price, 'the whole price is charged, past the cap of 1');
  const [cap] = await testDb`select trim_scale(spent)::text as spent from billing.spend_caps c
    join billing.accounts a on a.id = c.account_id where a.user_id = ${s.id}`;
  assert.equal(cap.spent, price, 'the cap counts it all');
  const [{ left }] = await testDb`select trim_scale(1000 - ${price}::numeric)::text as left`;
  assert.equal(await balanceOf(s.id), left, 'drawn from free credits: no debt');
  await assert.rejects(
    s.openai.chat.completions.create({ model: 'gpt-4o', messages: ask('hi'), max_tokens: 5 }),
    (err: unknown) => refusal(err).code === 'SPEND_CAP_REACHED',
  );
  assert.equal(await balanceOf(s.id), left, 'the refused call took nothing');
  await assertLedgerInvariants();
});

Deno.test('tools: deep JSON and non-function kinds are a 400, never a 5xx', async () => {
  const s = await student();
  let deep: unknown = 1;
  for (let i = 0; i < 3000; i++) deep = [deep];
  const bad = [
    { tools: [deep] },
    { tools: [{ type: 'custom', custom: { name: 'x' } }] },
    { response_format: deep },
    { tool_choice: deep },
    { tools: [{ type: 'function', function: { name: 'f\u0000' } }] },
  ];
  for (const extra of bad) {
    const r = await api('/ai/v1/chat/completions', {
      token: s.token,
      body: { model: 'gpt-4o-mini', messages: ask('hi'), max_tokens: 5, ...extra },
    });
    assert.equal(r.status, 400, JSON.stringify(extra).slice(0, 80));
  }
  assert.equal((await callsOf(s.id)).length, 0);
});

Deno.test('a whole (non-streamed) answer slower than AI_TIMEOUT_MS still answers and is charged: only the deadline bounds it', async () => {
  await withGateway({ AI_TIMEOUT_MS: '300' }, async (url) => {
    const s = await student();
    const ai = new OpenAI({ baseURL: `${url}/ai/v1`, apiKey: s.token, maxRetries: 0 });
    const r = await ai.chat.completions.create({
      model: 'gpt-4o',
      messages: ask('#standin words=3 first_byte_delay=900'),
      max_tokens: 20,
    });
    const [c] = await callsOf(s.id);
    assert.equal(c.status, 'charged');
    assert.equal(c.charged, await priceOf('gpt-4o', r.usage!));
  });
});

Deno.test('a gateway call that takes the balance below the threshold queues an auto-recharge, as any spending does', async () => {
  const user = await newUser();
  const t = await userToken(user);
  const r = await api('/checkout/sessions', {
    token: t,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { package_id: 'starter', save_card: true },
  });
  assert.equal(r.status, 201, r.text);
  await emulator(`/_emulator/checkout/sessions/${(r.body.data as { session_id: string }).session_id}/pay`, {
    outcome: 'succeeded',
  });
  const on = await api('/credits/auto-recharge', {
    method: 'PUT',
    token: t,
    body: { enabled: true, package_id: 'mini', threshold: '9989.9' },
  });
  assert.equal(on.status, 200, on.text);
  const ai = new OpenAI({ baseURL: gatewayUrl, apiKey: t, maxRetries: 0 });
  await ai.chat.completions.create({ model: 'gpt-4o', messages: ask('#standin words=5'), max_tokens: 20 });
  await watchTick();
  const queued = await testDb`select status from billing.recharges where user_id = ${user}`;
  assert.deepEqual(queued.map((x) => x.status), ['queued']);
});

Deno.test('a million-letter prompt is refused as too long at once, not after minutes of tokenizing', async () => {
  await withGateway({ AI_MAX_PROMPT_TOKENS: '1000' }, async (url) => {
    const s = await student();
    const r = await fetch(`${url}/ai/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o-mini', messages: ask('a'.repeat(1_000_000)), max_tokens: 5 }),
      signal: AbortSignal.timeout(30_000), // the whole run took minutes before long runs were cut
    });
    assert.deepEqual([r.status, (await r.json()).error.code], [400, 'PROMPT_TOO_LONG']);
  });
});

Deno.test("metadata keys that read as the ledger's (case, spaces, invisible characters) are refused too", async () => {
  const s = await student();
  for (const key of ['FAILED', ' failed', 'failed\u200b', 'Failed_By', 'charged_at']) {
    const r = await reportUsage('/credits/usage', {
      token: s.token,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body: { model: 'gpt-4o', input_tokens: 50, output_tokens: 0, metadata: { [key]: true } },
    });
    assert.equal(r.status, 400, JSON.stringify(key));
  }
  assert.equal(await balanceOf(s.id), '1000');
});

// A special token's text (`<|endoftext|>`) in a prompt is ordinary text to the provider, so to
// the bound too: the tokenizer refuses it by default.
Deno.test('a prompt containing the text of a special token is counted as text, never a 500', async () => {
  const text = 'what does <|endoftext|> or <|endofprompt|> mean to a tokenizer?';
  const bound = await chatPromptTokens({ messages: ask(text) }, 'gpt-4o-mini', 128_000);
  const plain = encode(text, { disallowedSpecial: new Set(), allowedSpecial: new Set() }).length;
  assert.ok(bound !== null && bound >= 3 + 4 + plain, `the bound (${bound}) covers the text read as text (${plain})`);
  const s = await student();
  const r = await fetch(`${gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: ask(`${text} #standin words=2`), max_tokens: 5 }),
  });
  const body = await r.json();
  assert.notEqual(r.status, 500, JSON.stringify(body));
  assert.notEqual(body.error?.code, 'INTERNAL_ERROR');
  assert.equal(await activeHolds(s.id), 0);
});

// Jobs call the same models as the gateway: an account in debt starts none until a credit pays it.
Deno.test('a debt a call left refuses an ai_completion job; once a grant paid it, the job is accepted', async () => {
  const s = await student('3');
  const r = await s.openai.chat.completions.create({
    model: 'gpt-4o',
    messages: ask('#standin words=2 extra_prompt=1000'),
    max_tokens: 10,
  });
  const [{ debt }] = await testDb`select trim_scale(3 - ${await priceOf('gpt-4o', r.usage!)}::numeric)::text as debt`;
  assert.ok(Number(debt) < 0);
  assert.equal(await balanceOf(s.id), debt, 'the call left a debt');
  const job = () =>
    api('/jobs', {
      token: s.token,
      body: { type: 'ai_completion', input: { model: 'gpt-4o', prompt: 'one two three', max_tokens: 50 } },
      headers: { 'idempotency-key': crypto.randomUUID() },
    });
  const refused = await job();
  assert.equal(refused.status, 402, refused.text);
  const error = refused.body.error as { code: string; details: { debt: boolean } };
  assert.deepEqual([error.code, error.details.debt], ['INSUFFICIENT_CREDITS', true]);
  await fund(s.id, '100'); // as a purchase would
  const [{ after }] = await testDb`select trim_scale(100 + ${debt}::numeric)::text as after`;
  assert.equal(await balanceOf(s.id), after, 'the grant paid the debt first');
  const accepted = await job();
  assert.equal(accepted.status, 202, accepted.text);
  await assertLedgerInvariants();
});
