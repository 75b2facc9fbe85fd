// Every AI call on the record (docs/ai-gateway.md, "The call log"): each route's success,
// failure and refusal leaves the record the student and the operator expect, timings measured
// against a stand-in told to wait, one student never sees another's calls, the metrics carry the
// model (and never a caller's made-up one), the AI alerts open and resolve, content is kept only
// with consent, redacted, and expires, and records past retention roll up without changing a figure.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { ask, gatewayUrl, student } from '../support/ai.ts';
import { adminToken, api, env, functionsUrl, testDb, until, withGateway } from '../support/helpers.ts';
import { person, school } from '../support/orgs.ts';

type Logged = {
  id: string;
  model: string | null;
  endpoint: string;
  stream: boolean;
  outcome: string;
  code: string | null;
  upstream_status: number | null;
  first_token_ms: number | null;
  duration_ms: number | null;
  usage: Record<string, number> | null;
  charged: string;
  finish_reason: string | null;
  client_left: boolean;
  transfer_id: string | null;
  org_id: string | null;
  content_kept: boolean;
  content?: { prompt: string; answer: string } | null;
};

/** The student's own log, newest first (waits until no call of theirs is still held). */
async function myLog(token: string, query = ''): Promise<Logged[]> {
  return await until('every call settled', async () => {
    const r = await api(`/ai/v1/calls?limit=100${query}`, { token });
    assert.equal(r.status, 200, r.text);
    const items = data(r).items as Logged[];
    return items.every((c) => c.outcome !== 'held') && items;
  });
}

const usd = (s: string) => Number(s);

/** The `data` of an answer's envelope. */
// deno-lint-ignore no-explicit-any
const data = (r: { body: Record<string, unknown> }) => r.body.data as any;

Deno.test('each AI route leaves one record: model, endpoint, stream, usage, charge, finish reason, timings and the ledger transfer', async () => {
  const s = await student();
  await s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask('#standin words=3'), max_tokens: 20 });
  const stream = await s.openai.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: ask('#standin words=3'),
    max_tokens: 20,
    stream: true,
  });
  for await (const _ of stream) { /* read to the end */ }
  await s.openai.responses.create({ model: 'gpt-4o-mini', input: '#standin words=3', max_output_tokens: 20 });
  await s.openai.embeddings.create({ model: 'text-embedding-3-small', input: 'hello' });
  const anthropic = new Anthropic({ baseURL: gatewayUrl.replace(/\/v1$/, ''), apiKey: s.token, maxRetries: 0 });
  await anthropic.messages.create({
    model: 'claude-haiku-4-5',
    max_tokens: 20,
    messages: [{ role: 'user', content: '#standin words=3' }],
  });
  const log = await myLog(s.token);
  assert.deepEqual(log.map((c) => [c.endpoint, c.stream]), [
    ['messages', false],
    ['embeddings', false],
    ['responses', false],
    ['chat', true],
    ['chat', false],
  ]);
  for (const c of log) {
    assert.equal(c.outcome, 'charged', `${c.endpoint}: charged`);
    assert.equal(c.code, null);
    assert.equal(c.upstream_status, 200);
    assert.ok(usd(c.charged) > 0 && c.transfer_id, `${c.endpoint}: charged through a transfer`);
    assert.ok(c.usage && c.usage.input_tokens > 0, `${c.endpoint}: usage by kind`);
    assert.ok(c.first_token_ms !== null && c.duration_ms !== null && c.first_token_ms <= c.duration_ms);
    assert.equal(c.content_kept, false, 'nothing kept without consent');
  }
  assert.deepEqual(log.map((c) => c.finish_reason), ['end_turn', null, 'completed', 'stop', 'stop']);
  // The record's charge is the ledger's: the transfer it names moved exactly that.
  const [t] = await testDb`select trim_scale(sum(t.amount))::text as total from billing.transfers t
    where t.id = any(${log.map((c) => c.transfer_id)}::bigint[])`;
  const [r] =
    await testDb`select trim_scale(sum(c.charged))::text as total from billing.ai_calls c where c.user_id = ${s.id}`;
  assert.equal(t.total, r.total);
});

Deno.test('failures and refusals are on the record with a stable code: provider error, provider refusal, timeout, abort, 402, 403, unknown model', async () => {
  const s = await student();
  const admin = await adminToken();
  const fails = (p: Promise<unknown>, status: number) =>
    assert.rejects(p, (e: unknown) => e instanceof OpenAI.APIError && e.status === status);
  await fails(s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask('#standin fail=500') }), 502);
  await fails(s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask('#standin fail=400') }), 400);
  await fails(s.openai.chat.completions.create({ model: 'made-up-model-x', messages: ask('hi') }), 400);
  const set = (models: string[]) =>
    api('/admin/model-access', { method: 'PUT', token: admin, body: { plan_id: null, models } });
  try {
    assert.equal((await set(['gpt-4o-mini'])).status, 200);
    await fails(s.openai.chat.completions.create({ model: 'gpt-4o', messages: ask('hi') }), 403);
  } finally {
    assert.equal((await set([])).status, 200);
  }
  // A client that hangs up mid-stream: the answer is read on and charged, and the record says it left.
  const ac = new AbortController();
  const stream = await s.openai.chat.completions.create(
    { model: 'gpt-4o-mini', messages: ask('#standin words=30 delay=30'), stream: true, max_tokens: 100 },
    { signal: ac.signal },
  );
  let n = 0;
  try {
    for await (const _ of stream) if (++n === 2) ac.abort();
  } catch { /* the abort */ }
  const broke = await student('0');
  await fails(broke.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask('hi') }), 402);
  const log = await myLog(s.token);
  assert.deepEqual(
    log.map((c) => [c.outcome, c.code, c.model, c.upstream_status]),
    [
      ['charged', null, 'gpt-4o-mini', 200],
      ['refused', 'MODEL_NOT_ALLOWED', 'gpt-4o', null],
      ['refused', 'UNKNOWN_MODEL', null, null],
      ['failed', 'PROVIDER_REFUSED_400', 'gpt-4o-mini', 400],
      ['failed', 'PROVIDER_ERROR_500', 'gpt-4o-mini', 500],
    ],
  );
  assert.equal(log[0].client_left, true, 'the record says the client left');
  assert.ok(usd(log[0].charged) > 0);
  for (const c of log.slice(1)) assert.equal(c.charged, '0', `${c.code}: nothing charged`);
  // Recorded once, by the statement that refused it (begin_ai_call answers a 402 as a row).
  assert.deepEqual(
    (await myLog(broke.token)).map((c) => [c.outcome, c.code, c.model]),
    [['refused', 'INSUFFICIENT_CREDITS', 'gpt-4o-mini']],
  );
  const [{ holds }] = await testDb`select count(*)::int as holds from billing.ai_calls c
    where c.user_id = any(${[s.id, broke.id]}::uuid[]) and c.status = 'refused' and c.hold_id is not null`;
  assert.equal(holds, 0, 'a refusal holds nothing');

  // The provider silent past the first-byte timeout: failed, PROVIDER_TIMEOUT, nothing charged.
  await withGateway({ AI_TIMEOUT_MS: '300' }, async (url) => {
    const slow = new OpenAI({ baseURL: `${url}/ai/v1`, apiKey: s.token, maxRetries: 0 });
    await assert.rejects(
      slow.chat.completions.create({
        model: 'gpt-4o-mini',
        messages: ask('#standin first_byte_delay=1500'),
        stream: true,
      }).then(async (st) => {
        for await (const _ of st) { /* the error arrives in the stream or as the answer */ }
        throw new Error('ended');
      }),
    );
  });
  const [timedOut] = await myLog(s.token);
  assert.deepEqual([timedOut.outcome, timedOut.code, timedOut.charged], ['failed', 'PROVIDER_TIMEOUT', '0']);
});

/** A model of its own on the rate card (served by the stand-in): its figures are one test's alone. */
async function ownModel(prefix: string): Promise<string> {
  const model = `${prefix}-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from, upstream) values (${model}, 1, 0.2, 0.4, 2, now() - interval '1 minute', 'openai')`;
  return model;
}

Deno.test('time to first token is measured: a provider told to wait shows it, and the operator sees it by model', async () => {
  const s = await student();
  const model = await ownModel('timed');
  const stream = await s.openai.chat.completions.create({
    model,
    messages: ask('#standin words=3 first_byte_delay=400'),
    stream: true,
  });
  for await (const _ of stream) { /* to the end */ }
  await s.openai.chat.completions.create({ model, messages: ask('#standin words=3') });
  const [fast, slow] = await myLog(s.token);
  assert.ok(slow.first_token_ms! >= 400, `waited ${slow.first_token_ms} ms`);
  assert.ok(fast.first_token_ms! < 400, `answered in ${fast.first_token_ms} ms`);
  const admin = await adminToken();
  const stats = await api('/admin/ai/stats', { token: admin });
  assert.equal(stats.status, 200, stats.text);
  const hour = data(stats).hour as { models: { model: string; calls: number; ttft_p95_ms: number }[] };
  const mine = hour.models.find((m) => m.model === model);
  assert.ok(mine && mine.calls === 2 && mine.ttft_p95_ms >= 400, JSON.stringify(mine));
});

Deno.test("one student never sees another's calls or content; the operator filters the log and pages it", async () => {
  const a = await student();
  const b = await student();
  await a.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask('#standin words=2') });
  await a.openai.chat.completions.create({ model: 'gpt-4o', messages: ask('#standin words=2') });
  const [aCall] = await myLog(a.token);
  assert.deepEqual(await myLog(b.token), [], "b's log is empty");
  for (const [method, path] of [['GET', `/ai/v1/calls/${aCall.id}`], ['DELETE', `/ai/v1/calls/${aCall.id}/content`]]) {
    const r = await api(path, { method, token: b.token });
    assert.equal(r.status, 404, `${method} ${path}`);
    assert.equal((r.body.error as { code: string }).code, 'AI_CALL_NOT_FOUND');
  }
  assert.equal((await api(`/admin/ai/calls?user_id=${a.id}`, { token: b.token })).status, 403);
  const admin = await adminToken();
  const page1 = await api(`/admin/ai/calls?user_id=${a.id}&limit=1`, { token: admin });
  assert.equal(page1.status, 200, page1.text);
  const page2 = await api(
    `/admin/ai/calls?user_id=${a.id}&limit=1&cursor=${data(page1).next_cursor}`,
    { token: admin },
  );
  assert.deepEqual(
    [...(data(page1).items as Logged[]), ...(data(page2).items as Logged[])].map((c) => c.model),
    ['gpt-4o', 'gpt-4o-mini'],
  );
  assert.equal(data(page2).next_cursor, null);
  const byModel = await api(`/admin/ai/calls?user_id=${a.id}&model=gpt-4o-mini&outcome=charged`, { token: admin });
  assert.deepEqual((data(byModel).items as Logged[]).map((c) => c.model), ['gpt-4o-mini']);
  const csv = await fetch(`${functionsUrl}/admin/ai/calls?user_id=${a.id}&format=csv`, {
    headers: { authorization: `Bearer ${admin}` },
  });
  const lines = (await csv.text()).trim().split('\r\n');
  assert.equal(lines.length, 3, 'a header and two calls');
  assert.match(lines[0], /^id,created_at,user_id,/);
  const bad = await api(`/admin/ai/calls?cursor=not-ours`, { token: admin });
  assert.equal(bad.status, 400);
});

Deno.test('the metrics carry the model, and a made-up model name never becomes a label', async () => {
  const s = await student();
  await s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask('#standin words=2') });
  const made = `zz-${crypto.randomUUID().slice(0, 8)}`;
  await assert.rejects(s.openai.chat.completions.create({ model: made, messages: ask('hi') }));
  const res = await fetch(`${functionsUrl}/health/metrics`, {
    headers: { authorization: `Bearer ${env('METRICS_TOKEN')}` },
  });
  const text = await res.text();
  assert.match(text, /scholarlink_ai_calls_last_hour\{model="gpt-4o-mini",endpoint="chat",outcome="charged"\} [1-9]/);
  assert.match(text, /scholarlink_ai_time_to_first_token_ms_bucket\{model="gpt-4o-mini",le="\+Inf"\} [1-9]/);
  assert.match(text, /scholarlink_ai_credits_charged_last_hour\{model="gpt-4o-mini"\} /);
  assert.match(text, /scholarlink_ai_calls_last_hour\{model="\(unpriced\)",endpoint="chat",outcome="refused"\} [1-9]/);
  assert.ok(!text.includes(made), 'the made-up name is nowhere in the metrics');
});

Deno.test('an AI error-rate alert opens when a model fails a run of calls and resolves when it recovers; a slow run opens ai_latency', async () => {
  const model = await ownModel('alerting');
  const [before] = await testDb`select * from billing.alert_settings`;
  await testDb`update billing.alert_settings set ai_window_calls = 6, ai_min_calls = 4, ai_error_max_percent = 50,
    ai_ttft_p95_max_ms = 300`;
  const open = async (condition: string) =>
    (await testDb`select 1 from billing.alerts where condition = ${condition} and status = 'open'`).length === 1;
  try {
    const s = await student();
    const call = (d: string) =>
      s.openai.chat.completions.create({ model, messages: ask(`#standin words=2 ${d}`), max_tokens: 10 })
        .catch(() => null);
    for (let i = 0; i < 4; i++) await call('fail=503');
    await testDb`select count(*) from billing.evaluate_alerts()`;
    assert.ok(await open(`ai_error_rate:${model}`), 'four failures of four open it');
    const [alert] = await testDb`select details from billing.alerts where condition = ${`ai_error_rate:${model}`}
      and status = 'open'`;
    assert.deepEqual([alert.details.calls, alert.details.errors], [4, 4]);
    for (let i = 0; i < 6; i++) await call('');
    await testDb`select count(*) from billing.evaluate_alerts()`;
    assert.ok(!(await open(`ai_error_rate:${model}`)), 'six successes in the window resolve it');
    assert.ok(!(await open(`ai_latency:${model}`)), 'fast answers raise no latency alert');
    for (let i = 0; i < 4; i++) await call('first_byte_delay=350');
    await testDb`select count(*) from billing.evaluate_alerts()`;
    assert.ok(await open(`ai_latency:${model}`), 'a slow run opens ai_latency');
  } finally {
    await testDb`update billing.alert_settings set ai_window_calls = ${before.ai_window_calls},
      ai_min_calls = ${before.ai_min_calls}, ai_error_max_percent = ${before.ai_error_max_percent},
      ai_ttft_p95_max_ms = ${before.ai_ttft_p95_max_ms}`;
    await testDb`select count(*) from billing.evaluate_alerts()`;
  }
});

Deno.test('content is kept only with consent, redacted, shown to its owner and the operator, deletable, and gone after 30 days', async () => {
  const s = await student();
  const admin = await adminToken();
  // One word: a UUID's dashed digit groups can read as a phone number and be redacted.
  const marker = `kept${crypto.randomUUID().replaceAll('-', '')}`;
  const prompt = `#standin words=3 ${marker} mail me at ada.lovelace@example.com`;
  await s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask(prompt) });
  const consent = await api('/ai/v1/content-consent', { method: 'PUT', token: s.token, body: { keep_content: true } });
  assert.equal(consent.status, 200, consent.text);
  assert.equal(data(consent).keep_content, true);
  await s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask(prompt) });
  const [kept, notKept] = await myLog(s.token);
  assert.deepEqual([kept.content_kept, notKept.content_kept], [true, false]);
  const mine = await api(`/ai/v1/calls/${kept.id}`, { token: s.token });
  const content = data(mine).content as { prompt: string; answer: string };
  assert.ok(content.prompt.includes(marker) && content.prompt.includes('[EMAIL]'), content.prompt);
  assert.ok(!content.prompt.includes('ada.lovelace@example.com'), 'the email is redacted');
  assert.match(content.answer, /word3/);
  const seen = await api(`/admin/ai/calls/${kept.id}`, { token: admin });
  assert.equal(data(seen).content.prompt, content.prompt, 'the operator sees consented content');
  assert.equal(data(await api(`/admin/ai/calls/${notKept.id}`, { token: admin })).content, null);
  // The owner deletes one; the schedule deletes the rest once 30 days have passed.
  assert.equal((await api(`/ai/v1/calls/${kept.id}/content`, { method: 'DELETE', token: s.token })).status, 200);
  assert.equal(data(await api(`/ai/v1/calls/${kept.id}`, { token: s.token })).content, null);
  await s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask(prompt) });
  const [expiring] = await myLog(s.token);
  assert.equal(expiring.content_kept, true);
  await testDb`update billing.ai_logs set expires_at = now() - interval '1 second' where call_id = ${expiring.id}`;
  await testDb`select billing.delete_expired_ai_logs(5000)`;
  assert.equal(data(await api(`/ai/v1/calls/${expiring.id}`, { token: s.token })).content, null, 'gone after 30 days');
  // Withdrawing consent deletes at once what it kept.
  await s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask(prompt) });
  const [last] = await myLog(s.token);
  assert.equal(last.content_kept, true);
  await api('/ai/v1/content-consent', { method: 'PUT', token: s.token, body: { keep_content: false } });
  assert.equal(data(await api(`/ai/v1/calls/${last.id}`, { token: s.token })).content, null);
});

Deno.test("a school's consent keeps the content of the calls it pays for, not of its members' own", async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', '1000');
  const patched = await api(`/orgs/${org}`, {
    method: 'PATCH',
    token: owner.token,
    body: { ai_content_consent: true },
  });
  assert.equal(patched.status, 200, patched.text);
  assert.equal(data(patched).ai_content_consent, true);
  const member = await api(`/orgs/${org}`, { method: 'PATCH', token: ada.token, body: { ai_content_consent: false } });
  assert.equal(member.status, 403, 'a member cannot change it');
  const client = new OpenAI({ baseURL: gatewayUrl, apiKey: ada.token, maxRetries: 0 });
  await client.chat.completions.create({ model: 'gpt-4o-mini', messages: ask('#standin words=2 pooled') });
  const [pooled] = await myLog(ada.token);
  assert.deepEqual([pooled.org_id, pooled.content_kept], [org, true]);
  const seen = await api('/ai/v1/content-consent', { token: ada.token });
  assert.deepEqual(data(seen).schools_keeping, [org]);
  await api(`/orgs/${org}`, { method: 'PATCH', token: owner.token, body: { ai_content_consent: false } });
  assert.equal(data(await api(`/ai/v1/calls/${pooled.id}`, { token: ada.token })).content, null, 'withdrawn: deleted');
});

Deno.test('no text is kept without consent: a marker in the prompt is found in no table and no log', async () => {
  const s = await student();
  const marker = `nowhere${crypto.randomUUID().replaceAll('-', '')}`;
  await s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask(`#standin words=2 ${marker}`) });
  const stream = await s.openai.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: ask(`#standin words=2 ${marker}`),
    stream: true,
  });
  for await (const _ of stream) { /* to the end */ }
  await assert.rejects(
    s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask(`#standin fail=500 ${marker}`) }),
  );
  await s.openai.responses.create({ model: 'gpt-4o-mini', input: `#standin words=2 ${marker}` });
  await myLog(s.token);
  const tables = await testDb<{ s: string; t: string }[]>`select table_schema as s, table_name as t
    from information_schema.tables where table_type = 'BASE TABLE'
      and table_schema in ('billing', 'billing_api', 'public', 'auth', 'cron')`;
  for (const { s: schema, t } of tables) {
    const [{ n }] = await testDb.unsafe(
      `select count(*)::int as n from ${JSON.stringify(schema)}.${JSON.stringify(t)} x where x::text like $1`,
      [`%${marker}%`],
    );
    assert.equal(n, 0, `${schema}.${t} holds the marker`);
  }
  for await (const f of Deno.readDir('.local/logs')) {
    if (!f.isFile) continue;
    const text = await Deno.readTextFile(`.local/logs/${f.name}`);
    assert.ok(!text.includes(marker), `.local/logs/${f.name} holds the marker`);
  }
});

Deno.test('records past their retention roll up into days: the daily summary is the same before and after', async () => {
  const s = await student();
  for (const d of ['words=3', 'words=5', 'fail=500']) {
    await s.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask(`#standin ${d}`) }).catch(() => null);
  }
  await myLog(s.token);
  // Moved 200 days back: past the 180 days kept.
  const [{ day }] = await testDb`update billing.ai_calls set created_at = created_at - interval '200 days'
    where user_id = ${s.id} returning (created_at at time zone 'UTC')::date::text as day`;
  const admin = await adminToken();
  const summary = async () => {
    const r = await api(`/admin/ai/summary?from=${day}&to=${day}`, { token: admin });
    assert.equal(r.status, 200, r.text);
    return data(r).days;
  };
  const before = await summary();
  assert.ok(JSON.stringify(before).includes('"gpt-4o-mini"'), JSON.stringify(before));
  const [{ swept }] = await testDb`select billing.sweep_ai_call_records('180 days', 5000) as swept`;
  assert.ok(swept >= 3);
  assert.deepEqual(await myLog(s.token), [], 'the records are gone');
  assert.deepEqual(await summary(), before, 'the summary reads the same from the roll-up');
});

Deno.test('cache writes of both lifetimes count in the daily summary and its roll-up, as in the stats', async () => {
  const s = await student();
  const anthropic = new Anthropic({ baseURL: gatewayUrl.replace(/\/v1$/, ''), apiKey: s.token, maxRetries: 0 });
  await anthropic.messages.create({
    model: 'claude-haiku-4-5',
    max_tokens: 50,
    system: [{ type: 'text', text: 'a shared preamble', cache_control: { type: 'ephemeral', ttl: '1h' } }],
    messages: [{ role: 'user', content: 'hi #standin words=2 cache_write=5 cache_write_1h=2' }],
  });
  const [logged] = await myLog(s.token);
  assert.deepEqual([logged.usage?.cache_write_tokens, logged.usage?.cache_write_1h_tokens], [5, 2]);
  const admin = await adminToken();
  const stats = data(await api('/admin/ai/stats', { token: admin })).hour;
  assert.ok(
    stats.models.find((m: { model: string }) => m.model === 'claude-haiku-4-5').tokens.cache_write >= 7,
    'the stats count both',
  );
  // Moved to a day of its own, past the 180 days kept.
  const back = 400 + Math.floor(Math.random() * 2000);
  const [{ day }] = await testDb`update billing.ai_calls set created_at = created_at - make_interval(days => ${back})
    where user_id = ${s.id} returning (created_at at time zone 'UTC')::date::text as day`;
  const written = async () => {
    const r = await api(`/admin/ai/summary?from=${day}&to=${day}`, { token: admin });
    assert.equal(r.status, 200, r.text);
    return data(r).days.find((d: { model: string }) => d.model === 'claude-haiku-4-5')?.tokens.cache_write;
  };
  assert.equal(await written(), 7, 'the summary from the records');
  await testDb`select billing.sweep_ai_call_records('180 days', 5000)`;
  assert.deepEqual(await myLog(s.token), [], 'the record is gone');
  assert.equal(await written(), 7, 'the summary from the roll-up');
});
