// Fallback upstreams (docs/ai-gateway.md § Upstreams): a model's card names its upstream; a host
// whose AI_UPSTREAM_<NAME>_FALLBACK_FOR names the model answers when that one fails before the
// answer's first byte. The answer is charged at the model's card, a failed try costs the student
// nothing, and the call's record, the x-ai-answered-by header and the call log say who answered
// and what failed before. Each test runs a gateway whose `openai` upstream is down in one way
// (scripts/local/ai-standin.ts: /_standin/fail/<how>) and whose `backup` is the stand-in.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { activeHolds, ask, balanceOf, cardPrice, priceOf, settled, student } from '../support/ai.ts';
import { adminToken, env, testDb, withGateway } from '../support/helpers.ts';

const standin = env('AI_STANDIN_URL');
const model = 'gpt-4o-mini';

/** A port nothing listens on: a refused connection. */
function closedPort(): number {
  const probe = Deno.listen({ hostname: '127.0.0.1', port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  return port;
}

/** The base URL of an `openai` upstream that is down in the way `how` says. */
const downBase = (how: string) =>
  how === 'refused' ? `http://127.0.0.1:${closedPort()}/v1` : `${standin}/_standin/fail/${how}/v1`;

/** A gateway whose model's card upstream is at `primary` and whose `backup` host is at `backup`. */
const fallbackEnv = (primary: string, backup = `${standin}/v1`, extra: Record<string, string> = {}) => ({
  AI_API_BASE: primary,
  AI_UPSTREAMS: 'compat,backup',
  AI_UPSTREAM_BACKUP_BASE: backup,
  AI_UPSTREAM_BACKUP_KEY: env('AI_API_KEY'),
  AI_UPSTREAM_BACKUP_SPEAKS: 'chat,responses',
  AI_UPSTREAM_BACKUP_FALLBACK_FOR: model,
  AI_TIMEOUT_MS: '1000',
  ...extra,
});

/** A provider that counts the requests it gets and answers each 500. */
function countingProvider() {
  let hits = 0;
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    hits++;
    await req.body?.cancel();
    return Response.json({ error: { message: 'down' } }, { status: 500 });
  });
  return { base: `http://127.0.0.1:${server.addr.port}/v1`, hits: () => hits, close: () => server.shutdown() };
}

/** The call's record as the fallbacks leave it. */
async function record(id: string) {
  const [r] = await testDb`select c.upstream, c.attempts, c.status, c.failure,
    trim_scale(coalesce(c.charged, 0))::text as charged, billing.ai_call_log_json(c) -> 'attempts' as logged
    from billing.ai_calls c where c.id = ${id}`;
  return r as {
    upstream: string;
    attempts: { upstream: string; failure: string; status: number | null; ms: number }[] | null;
    status: string;
    failure: string | null;
    charged: string;
    logged: unknown;
  };
}

const client = (url: string, token: string) => new OpenAI({ baseURL: `${url}/ai/v1`, apiKey: token, maxRetries: 0 });

const failures: [how: string, code: string][] = [
  ['refused', 'PROVIDER_UNREACHABLE'],
  ['timeout', 'PROVIDER_TIMEOUT'],
  ['429', 'PROVIDER_ERROR_429'],
  ['500', 'PROVIDER_ERROR_500'],
  ['broken', 'PROVIDER_ERROR_502'],
];

for (const [how, code] of failures) {
  Deno.test(`an upstream that fails before the first byte (${how}) is answered by the next, charged at the card`, async () => {
    const s = await student();
    await withGateway(fallbackEnv(downBase(how)), async (url) => {
      const openai = client(url, s.token);
      const { data: stream, response } = await openai.chat.completions.create({
        model,
        messages: ask('#standin words=7 cached=2'),
        max_tokens: 50,
        stream: true,
        stream_options: { include_usage: true },
      }).withResponse();
      assert.equal(response.headers.get('x-ai-answered-by'), `backup/${model}`);
      let text = '';
      let usage: OpenAI.CompletionUsage & { cost?: string } | undefined;
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta?.content ?? '';
        if (chunk.usage) usage = chunk.usage;
      }
      assert.match(text, /word7/);
      const call = await settled(s.id);
      const r = await record(call.id);
      assert.equal(r.status, 'charged');
      assert.equal(r.upstream, 'backup');
      assert.equal(r.charged, await priceOf(model, usage!));
      assert.equal(usage?.cost, r.charged);
      assert.deepEqual(r.attempts?.map((a) => [a.upstream, a.failure]), [['openai', code]]);
      assert.deepEqual(r.logged, r.attempts);

      if (how !== 'timeout' && how !== 'broken') {
        // A whole answer falls back the same way (its timeout is the call's deadline: see the docs).
        const { data, response } = await openai.chat.completions.create({
          model,
          messages: ask('#standin words=3'),
          max_tokens: 20,
        }).withResponse();
        assert.equal(response.headers.get('x-ai-answered-by'), `backup/${model}`);
        const whole = await record(response.headers.get('x-ai-call-id')!);
        assert.equal(whole.upstream, 'backup');
        assert.equal(whole.charged, await priceOf(model, data.usage!));
        assert.equal(response.headers.get('x-credits-charged'), whole.charged);
        assert.deepEqual(whole.attempts?.map((a) => a.failure), [code]);
      }
    });
    assert.equal(await activeHolds(s.id), 0);
  });
}

Deno.test('a stream that breaks after its first byte is not tried again elsewhere: failed, nothing charged', async () => {
  const s = await student();
  const backup = countingProvider();
  try {
    await withGateway(fallbackEnv(`${standin}/v1`, backup.base), async (url) => {
      const res = await fetch(`${url}/ai/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({
          model,
          messages: ask('#standin words=30 delay=5 stop_after=3'),
          max_tokens: 50,
          stream: true,
        }),
      });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('x-ai-answered-by'), `openai/${model}`);
      const body = await res.text();
      assert.match(body, /word1/);
      assert.match(body, /PROVIDER_ERROR/);
    });
  } finally {
    await backup.close();
  }
  assert.equal(backup.hits(), 0);
  const call = await settled(s.id);
  const r = await record(call.id);
  assert.equal(r.status, 'failed');
  assert.equal(r.upstream, 'openai');
  assert.equal(r.attempts, null);
  assert.equal(r.charged, '0');
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test('a provider refusing the request itself (400) is not tried elsewhere', async () => {
  const s = await student();
  const backup = countingProvider();
  try {
    await withGateway(fallbackEnv(downBase('400'), backup.base), async (url) => {
      const res = await fetch(`${url}/ai/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: ask('hello'), max_tokens: 10 }),
      });
      assert.equal(res.status, 400);
      assert.equal((await res.json()).error.code, 'PROVIDER_REFUSED');
    });
  } finally {
    await backup.close();
  }
  assert.equal(backup.hits(), 0);
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test('when every upstream fails the student gets a clear error, is charged nothing and the hold is released', async () => {
  const s = await student('50');
  await withGateway(fallbackEnv(downBase('500'), `${standin}/_standin/fail/429/v1`), async (url) => {
    for (const stream of [false, true]) {
      const res = await fetch(`${url}/ai/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: ask('hello'), max_tokens: 10, stream }),
      });
      assert.equal(res.status, 502);
      const body = await res.json();
      assert.equal(body.error.code, 'PROVIDER_ERROR');
      assert.match(body.error.message, /nothing was charged/);
      const call = await settled(s.id);
      const r = await record(call.id);
      assert.equal(r.status, 'failed');
      assert.equal(r.failure, 'PROVIDER_ERROR_429');
      assert.equal(r.upstream, 'backup');
      assert.deepEqual(r.attempts?.map((a) => [a.upstream, a.failure, a.status]), [[
        'openai',
        'PROVIDER_ERROR_500',
        500,
      ]]);
      assert.equal(r.charged, '0');
    }
  });
  assert.equal(await activeHolds(s.id), 0);
  assert.equal(await balanceOf(s.id), '50');
});

Deno.test('without a fallback host the card upstream is the only one tried, as before', async () => {
  const s = await student();
  await withGateway({ AI_API_BASE: downBase('500') }, async (url) => {
    const res = await fetch(`${url}/ai/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: ask('hello'), max_tokens: 10 }),
    });
    assert.equal(res.status, 502);
    await res.body?.cancel();
  });
  const call = await settled(s.id);
  const r = await record(call.id);
  assert.equal(r.failure, 'PROVIDER_ERROR_500');
  assert.equal(r.upstream, 'openai');
  assert.equal(r.attempts, null);
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test('fallback hosts are tried in AI_UPSTREAMS order, skipping those not named for the model or its API', async () => {
  const s = await student();
  const deaf = countingProvider();
  const key = env('AI_API_KEY');
  try {
    await withGateway({
      AI_API_BASE: downBase('500'),
      AI_UPSTREAMS: 'compat,deaf,other,first,second',
      // Named for every model, but speaks no chat.
      AI_UPSTREAM_DEAF_BASE: deaf.base,
      AI_UPSTREAM_DEAF_KEY: key,
      AI_UPSTREAM_DEAF_SPEAKS: 'embeddings',
      AI_UPSTREAM_DEAF_FALLBACK_FOR: '*',
      // Speaks chat, but is another model's fallback.
      AI_UPSTREAM_OTHER_BASE: deaf.base,
      AI_UPSTREAM_OTHER_KEY: key,
      AI_UPSTREAM_OTHER_FALLBACK_FOR: 'gpt-4o',
      AI_UPSTREAM_FIRST_BASE: `${standin}/_standin/fail/429/v1`,
      AI_UPSTREAM_FIRST_KEY: key,
      AI_UPSTREAM_FIRST_FALLBACK_FOR: `gpt-4o,${model}`,
      AI_UPSTREAM_SECOND_BASE: `${standin}/v1`,
      AI_UPSTREAM_SECOND_KEY: key,
      AI_UPSTREAM_SECOND_FALLBACK_FOR: '*',
    }, async (url) => {
      const { data, response } = await client(url, s.token).chat.completions.create({
        model,
        messages: ask('#standin words=4'),
        max_tokens: 20,
      }).withResponse();
      assert.equal(response.headers.get('x-ai-answered-by'), `second/${model}`);
      const r = await record(response.headers.get('x-ai-call-id')!);
      assert.equal(r.upstream, 'second');
      assert.equal(r.charged, await priceOf(model, data.usage!));
      assert.deepEqual(r.attempts?.map((a) => [a.upstream, a.failure, a.status]), [
        ['openai', 'PROVIDER_ERROR_500', 500],
        ['first', 'PROVIDER_ERROR_429', 429],
      ]);
      // The operator's export says the same, in one field.
      const csv = await fetch(`${url}/admin/ai/calls?user_id=${s.id}&format=csv`, {
        headers: { authorization: `Bearer ${await adminToken()}` },
      });
      const [head, line] = (await csv.text()).trim().split('\r\n');
      const at = head.split(',').indexOf('attempts');
      assert.ok(at > 0);
      assert.equal(line.split(',')[at], 'openai:PROVIDER_ERROR_500 first:PROVIDER_ERROR_429');
    });
  } finally {
    await deaf.close();
  }
  assert.equal(deaf.hits(), 0);
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test('a replayed answer says who answered it the first time', async () => {
  const s = await student();
  await withGateway(fallbackEnv(downBase('503')), async (url) => {
    const key = `fb-${crypto.randomUUID()}`;
    const sendKeyed = () =>
      fetch(`${url}/ai/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json', 'idempotency-key': key },
        body: JSON.stringify({ model, messages: ask('#standin words=2'), max_tokens: 10 }),
      });
    const first = await sendKeyed();
    await first.body?.cancel();
    const again = await sendKeyed();
    await again.body?.cancel();
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    assert.equal(again.headers.get('x-ai-answered-by'), `backup/${model}`);
    assert.equal(again.headers.get('x-credits-charged'), first.headers.get('x-credits-charged'));
  });
});

Deno.test('the Responses and Messages APIs fall back the same way, streamed', async () => {
  const s = await student();
  await withGateway({
    ...fallbackEnv(downBase('broken')),
    AI_ANTHROPIC_BASE: downBase('502'),
    AI_UPSTREAM_BACKUP_SPEAKS: 'chat,responses,messages',
    AI_UPSTREAM_BACKUP_FALLBACK_FOR: `${model},claude-haiku-4-5`,
  }, async (url) => {
    const calls: [string, string, Record<string, unknown>][] = [
      ['responses', model, { input: '#standin words=5', max_output_tokens: 30 }],
      ['messages', 'claude-haiku-4-5', { messages: ask('#standin words=5'), max_tokens: 30 }],
    ];
    for (const [endpoint, m, body] of calls) {
      const res = await fetch(`${url}/ai/v1/${endpoint}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: m, stream: true, ...body }),
      });
      assert.equal(res.status, 200, res.status === 200 ? endpoint : await res.text());
      assert.equal(res.headers.get('x-ai-answered-by'), `backup/${m}`);
      assert.match(await res.text(), /word5/);
      const call = await settled(s.id);
      assert.equal(res.headers.get('x-ai-call-id'), call.id);
      const r = await record(call.id);
      assert.equal(r.status, 'charged');
      assert.equal(r.upstream, 'backup');
      // A stream broken before its first bytes and a 502 both read as PROVIDER_ERROR_502.
      assert.deepEqual(r.attempts?.map((a) => a.failure), ['PROVIDER_ERROR_502']);
      const u = call.usage as Record<string, number>;
      assert.equal(
        r.charged,
        await cardPrice(m, {
          input: u.input_tokens,
          cached: u.cached_input_tokens,
          output: u.output_tokens,
          reasoning: u.reasoning_tokens,
        }),
      );
    }
  });
  assert.equal(await activeHolds(s.id), 0);
});

Deno.test("a call a fallback answered cost the operator that upstream's provider price; the card upstream's answers cost its own", async () => {
  // The backup host's price for the model: ten times the card upstream's (the operator's table).
  await testDb`select billing.record_provider_prices(jsonb_build_array(
    (select jsonb_build_object('model', p.model, 'upstream', 'backup', 'usd_per_million_input', p.usd_per_million_input * 10,
       'usd_per_million_cached_input', p.usd_per_million_cached_input * 10, 'usd_per_million_output', p.usd_per_million_output * 10,
       'source_url', p.source_url, 'source_checked_on', p.source_checked_on)
     from billing.provider_prices p where p.model = ${model} and p.upstream = 'openai' and p.effective_from <= now()
     order by p.effective_from desc, p.version desc limit 1)))`;
  const s = await student();
  const costs = async (upstream: string) => {
    const call = await settled(s.id);
    const [c] = await testDb`select t.metadata ->> 'upstream' as named,
        billing.charge_cost(t.kind, t.metadata ->> 'model', t.created_at, t.amount, t.metadata) as cost,
        billing.provider_cost(${model}, t.created_at, t.metadata - 'upstream' || jsonb_build_object('upstream', ${upstream}::text))
          as at_upstream,
        billing.provider_cost(${model}, t.created_at, t.metadata - 'upstream' || '{"upstream": "openai"}') as at_card
      from billing.ai_calls a join billing.transfers t on t.id = a.transfer_id where a.id = ${call.id}`;
    return c as { named: string | null; cost: string; at_upstream: string; at_card: string };
  };
  await withGateway(fallbackEnv(downBase('500')), async (url) => {
    await client(url, s.token).chat.completions.create({ model, messages: ask('#standin words=5'), max_tokens: 20 });
  });
  const viaBackup = await costs('backup');
  assert.equal(viaBackup.named, 'backup', "the capture's metadata names who answered");
  assert.equal(viaBackup.cost, viaBackup.at_upstream);
  assert.ok(
    Number(viaBackup.cost) > Number(viaBackup.at_card) * 9,
    `${viaBackup.cost} at backup, ${viaBackup.at_card} at openai`,
  );

  await s.openai.chat.completions.create({ model, messages: ask('#standin words=5'), max_tokens: 20 });
  const direct = await costs('openai');
  assert.equal(direct.named, null, 'the card upstream answered: nothing more is named');
  assert.equal(direct.cost, direct.at_card);
});
