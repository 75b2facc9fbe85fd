// The AI stand-in's batch APIs (scripts/local/ai-standin/batches*.ts), driven through the official
// SDKs: OpenAI's Batch API (files + batches) and Anthropic's Message Batches. Each line runs
// through the interactive route, so its directives and usage are that route's. The batch clock is
// shared by every caller of the stand-in: these tests only move it forward, and reckon times from
// their own batches. It talks to the stand-in directly: AI_STANDIN_PORT (else AI_STANDIN_URL, else
// :54332), AI_API_KEY (else .local/env).
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';

async function fromLocalEnv(name: string): Promise<string | undefined> {
  const file = await Deno.readTextFile(new URL('../../.local/env', import.meta.url)).catch(() => '');
  return file.match(new RegExp(`^${name}=(.*)$`, 'm'))?.[1];
}
const port = Deno.env.get('AI_STANDIN_PORT');
const base = port ? `http://127.0.0.1:${port}` : Deno.env.get('AI_STANDIN_URL') ?? 'http://127.0.0.1:54332';
const apiKey = Deno.env.get('AI_API_KEY') ?? await fromLocalEnv('AI_API_KEY') ?? '';

const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0 });
const anthropic = new Anthropic({ baseURL: base, apiKey, maxRetries: 0 });

/** Moves the stand-in's batch clock forward. */
async function advance(seconds: number): Promise<void> {
  const res = await fetch(`${base}/_standin/clock`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ advance_seconds: seconds }),
  });
  assert.equal(res.status, 200);
  await res.body?.cancel();
}

type Hook = { fetches: number; lines: Record<string, string> };
const hook = async (id: string): Promise<Hook> => await (await fetch(`${base}/_standin/batches/${id}`)).json();

const words = (n: number) => Array.from({ length: n }, (_, i) => ` word${i + 1}`).join('');

// ---------------------------------------------------------------- OpenAI

type Row = {
  id: string;
  custom_id: string;
  response: { status_code: number; request_id: string; body: unknown } | null;
  error: { code: string; message: string } | null;
};
const rows = (jsonl: string): Row[] => jsonl.trim().split('\n').map((l) => JSON.parse(l));
const byId = (rs: Row[]) => Object.fromEntries(rs.map((r) => [r.custom_id, r]));

/** An OpenAI batch of chat lines (custom_id → the user's text), created through the SDK. */
async function openaiBatch(lines: Record<string, string>, model = 'gpt-4o-mini') {
  const jsonl = Object.entries(lines).map(([custom_id, content]) =>
    JSON.stringify({
      custom_id,
      method: 'POST',
      url: '/v1/chat/completions',
      body: { model, messages: [{ role: 'user', content }] },
    })
  ).join('\n');
  const file = await openai.files.create({ file: new File([jsonl], 'lines.jsonl'), purpose: 'batch' });
  return await openai.batches.create({
    input_file_id: file.id,
    endpoint: '/v1/chat/completions',
    completion_window: '24h',
  });
}
const content = async (id: string | null | undefined) => {
  assert.ok(id, 'the file exists');
  return await (await openai.files.content(id)).text();
};

Deno.test('an OpenAI batch completes as the clock moves: 2xx lines in the output file with usage, a fail=500 line in the error file', async () => {
  const batch = await openaiBatch({
    soon: 'say #standin words=3',
    broken: 'say #standin fail=500',
    late: 'say #standin words=5 batch_at=3600',
  });
  assert.equal(batch.status, 'in_progress');
  assert.deepEqual(batch.request_counts, { total: 3, completed: 0, failed: 0 });
  assert.equal(batch.output_file_id, null);
  assert.equal(batch.expires_at, batch.created_at + 86_400);

  await advance(61);
  const midway = await openai.batches.retrieve(batch.id);
  assert.equal(midway.status, 'in_progress');
  assert.deepEqual(midway.request_counts, { total: 3, completed: 1, failed: 1 });

  await advance(3600);
  const done = await openai.batches.retrieve(batch.id);
  assert.equal(done.status, 'completed');
  assert.deepEqual(done.request_counts, { total: 3, completed: 2, failed: 1 });
  assert.equal(done.completed_at, batch.created_at + 3600, 'it completed when its last line did');

  const output = await content(done.output_file_id);
  const out = byId(rows(output));
  assert.deepEqual(Object.keys(out).sort(), ['late', 'soon']);
  for (const [id, n] of [['soon', 3], ['late', 5]] as const) {
    const body = out[id].response?.body as OpenAI.ChatCompletion;
    assert.equal(out[id].response?.status_code, 200);
    assert.match(out[id].id, /^batch_req_/);
    assert.equal(body.choices[0].message.content, words(n));
    assert.ok(body.usage && body.usage.prompt_tokens > 0 && body.usage.completion_tokens > 0, 'usage per line');
  }
  const errors = rows(await content(done.error_file_id));
  assert.equal(errors.length, 1);
  assert.equal(errors[0].custom_id, 'broken');
  assert.equal(errors[0].response?.status_code, 500);
  assert.ok((errors[0].response?.body as { error?: unknown }).error, 'the error body of the chat route');

  assert.equal(await content(done.output_file_id), output, 'reading the output twice gives the same bytes');
  assert.deepEqual(await openai.batches.retrieve(batch.id), done, 'an ended batch stays as it ended');
  assert.deepEqual(await hook(batch.id), {
    fetches: 3,
    lines: { soon: 'succeeded', broken: 'errored', late: 'succeeded' },
  });
  const file = await openai.files.retrieve(String(done.output_file_id));
  assert.equal(file.purpose, 'batch_output');
  assert.equal(file.bytes, new TextEncoder().encode(output).length);
});

Deno.test('OpenAI batches of Responses and Embeddings lines answer as their interactive routes, usage included', async () => {
  for (
    const [endpoint, body] of [
      ['/v1/responses', { model: 'gpt-4o-mini', input: 'say #standin words=4 cached=2' }],
      ['/v1/embeddings', { model: 'text-embedding-3-small', input: 'embed me', dimensions: 8 }],
    ] as const
  ) {
    const line = JSON.stringify({ custom_id: 'only', method: 'POST', url: endpoint, body });
    const file = await openai.files.create({ file: new File([line], 'in.jsonl'), purpose: 'batch' });
    const batch = await openai.batches.create({ input_file_id: file.id, endpoint, completion_window: '24h' });
    await advance(61);
    const done = await openai.batches.retrieve(batch.id);
    assert.equal(done.status, 'completed', endpoint);
    assert.equal(done.error_file_id, null, 'no error file when nothing failed');
    const [row] = rows(await content(done.output_file_id));
    const answer = row.response?.body as Record<string, unknown>;
    if (endpoint === '/v1/responses') {
      const usage = answer.usage as OpenAI.Responses.ResponseUsage;
      assert.equal(answer.status, 'completed');
      assert.ok(usage.input_tokens > 0 && usage.output_tokens > 0);
      assert.equal(usage.input_tokens_details.cached_tokens, 2);
    } else {
      assert.equal((answer.data as { embedding: number[] }[])[0].embedding.length, 8);
      assert.ok((answer.usage as { prompt_tokens: number }).prompt_tokens > 0);
    }
  }
});

Deno.test('a cancelled OpenAI batch is cancelling, then cancelled at its next read; the lines not done are batch_cancelled', async () => {
  const batch = await openaiBatch({ soon: 'say #standin words=2', late: 'say #standin batch_at=3600' });
  await advance(61);
  const cancelling = await openai.batches.cancel(batch.id);
  assert.equal(cancelling.status, 'cancelling');
  assert.ok(cancelling.cancelling_at && cancelling.cancelling_at >= batch.created_at + 61);
  assert.equal(cancelling.output_file_id, null);

  await advance(3600); // past the late line's time: a cancelled line never runs
  const cancelled = await openai.batches.retrieve(batch.id);
  assert.equal(cancelled.status, 'cancelled');
  assert.ok(cancelled.cancelled_at);
  assert.deepEqual(cancelled.request_counts, { total: 2, completed: 1, failed: 0 });
  assert.deepEqual(rows(await content(cancelled.output_file_id)).map((r) => r.custom_id), ['soon']);
  const [error] = rows(await content(cancelled.error_file_id));
  assert.equal(error.custom_id, 'late');
  assert.equal(error.response, null);
  assert.equal(error.error?.code, 'batch_cancelled');
  assert.deepEqual((await hook(batch.id)).lines, { soon: 'succeeded', late: 'canceled' });
});

Deno.test('an OpenAI batch expires 86,400 s after it was created: what was done is output, the rest batch_expired', async () => {
  const batch = await openaiBatch({ soon: 'say #standin words=2', never: 'say #standin batch_at=90000' });
  await advance(86_401);
  const expired = await openai.batches.retrieve(batch.id);
  assert.equal(expired.status, 'expired');
  assert.equal(expired.expired_at, batch.created_at + 86_400);
  assert.deepEqual(expired.request_counts, { total: 2, completed: 1, failed: 0 });
  assert.deepEqual(rows(await content(expired.output_file_id)).map((r) => r.custom_id), ['soon']);
  const [error] = rows(await content(expired.error_file_id));
  assert.deepEqual([error.custom_id, error.response, error.error?.code], ['never', null, 'batch_expired']);
});

Deno.test('an OpenAI batch is refused for an unknown file, another endpoint, a line for another url, a repeated custom_id or two models', async () => {
  const line = (custom_id: string, url = '/v1/chat/completions', model = 'gpt-4o-mini') =>
    JSON.stringify({ custom_id, method: 'POST', url, body: { model, messages: [{ role: 'user', content: 'hi' }] } });
  const upload = async (...lines: string[]) =>
    (await openai.files.create({ file: new File([lines.join('\n')], 'in.jsonl'), purpose: 'batch' })).id;
  const create = (input_file_id: string, endpoint = '/v1/chat/completions') =>
    openai.batches.create({
      input_file_id,
      endpoint: endpoint as OpenAI.Batches.BatchCreateParams['endpoint'],
      completion_window: '24h',
    });
  await assert.rejects(create('file-unknown'), OpenAI.BadRequestError);
  await assert.rejects(create(await upload(line('a')), '/v1/completions'), OpenAI.BadRequestError);
  await assert.rejects(create(await upload(line('a'), line('b', '/v1/responses'))), OpenAI.BadRequestError);
  await assert.rejects(create(await upload(line('a'), line('a'))), OpenAI.BadRequestError);
  await assert.rejects(create(await upload(line('a'), line('b', undefined, 'gpt-4o'))), OpenAI.BadRequestError);
});

// ---------------------------------------------------------------- Anthropic

type Results = Anthropic.Messages.Batches.MessageBatchIndividualResponse[];
const params = (text: string, model = 'claude-sonnet-4-5') => ({
  model,
  max_tokens: 100,
  messages: [{ role: 'user' as const, content: text }],
});
async function results(id: string): Promise<Results> {
  const all: Results = [];
  for await (const r of await anthropic.messages.batches.results(id)) all.push(r);
  return all;
}

Deno.test('an Anthropic batch ends as the clock moves: lines of several models succeed with usage, a fail=500 line is errored', async () => {
  const batch = await anthropic.messages.batches.create({
    requests: [
      { custom_id: 'soon', params: params('say #standin words=3') },
      { custom_id: 'other-model', params: params('say #standin words=2', 'claude-haiku-4-5') },
      { custom_id: 'broken', params: params('say #standin fail=500') },
      { custom_id: 'late', params: params('say #standin words=5 batch_at=3600') },
    ],
  });
  assert.equal(batch.processing_status, 'in_progress');
  assert.equal(batch.request_counts.processing, 4);
  assert.equal(batch.results_url, null);
  assert.equal(Date.parse(batch.expires_at) - Date.parse(batch.created_at), 86_400_000);
  await assert.rejects(results(batch.id), Anthropic.AnthropicError, 'no results_url before it ends');
  const early = await fetch(`${base}/v1/messages/batches/${batch.id}/results`, {
    headers: { 'x-api-key': apiKey, 'anthropic-version': '2023-06-01' },
  });
  assert.equal(early.status, 404, 'nor results');
  assert.equal((await early.json()).error.type, 'not_found_error');

  await advance(61);
  const midway = await anthropic.messages.batches.retrieve(batch.id);
  assert.equal(midway.processing_status, 'in_progress');
  assert.deepEqual(midway.request_counts, { processing: 1, succeeded: 2, errored: 1, canceled: 0, expired: 0 });

  await advance(3600);
  const ended = await anthropic.messages.batches.retrieve(batch.id);
  assert.equal(ended.processing_status, 'ended');
  assert.deepEqual(ended.request_counts, { processing: 0, succeeded: 3, errored: 1, canceled: 0, expired: 0 });
  assert.equal(Date.parse(String(ended.ended_at)) - Date.parse(batch.created_at), 3_600_000);
  assert.equal(ended.results_url, `${base}/v1/messages/batches/${batch.id}/results`);

  const first = await results(batch.id);
  const by = Object.fromEntries(first.map((r) => [r.custom_id, r.result]));
  for (const [id, n, model] of [['soon', 3, 'claude-sonnet-4-5'], ['other-model', 2, 'claude-haiku-4-5']] as const) {
    const r = by[id];
    assert.equal(r.type, 'succeeded');
    if (r.type !== 'succeeded') continue;
    assert.equal(r.message.model, model);
    assert.deepEqual(r.message.content.map((b) => b.type === 'text' ? b.text : ''), [words(n)]);
    assert.ok(r.message.usage.input_tokens > 0 && r.message.usage.output_tokens > 0, 'usage per line');
  }
  assert.equal(by.late.type, 'succeeded');
  assert.equal(by.broken.type, 'errored');
  if (by.broken.type === 'errored') assert.equal(by.broken.error.error.type, 'api_error');

  assert.deepEqual(await results(batch.id), first, 'reading the results twice gives the same results');
  const raw = async () => {
    const res = await fetch(String(ended.results_url), {
      headers: { 'x-api-key': apiKey, 'anthropic-version': '2023-06-01' },
    });
    assert.equal(res.headers.get('content-type'), 'application/binary');
    return await res.text();
  };
  assert.equal(await raw(), await raw(), 'and the same bytes');
  assert.deepEqual(await hook(batch.id), {
    fetches: 4,
    lines: { soon: 'succeeded', 'other-model': 'succeeded', broken: 'errored', late: 'succeeded' },
  });
});

Deno.test('a canceled Anthropic batch is canceling, then ended at its next read with the lines not done canceled', async () => {
  const batch = await anthropic.messages.batches.create({
    requests: [
      { custom_id: 'soon', params: params('say #standin words=2') },
      { custom_id: 'late', params: params('say #standin batch_at=3600') },
    ],
  });
  await advance(61);
  const canceling = await anthropic.messages.batches.cancel(batch.id);
  assert.equal(canceling.processing_status, 'canceling');
  assert.ok(canceling.cancel_initiated_at);
  assert.equal(canceling.results_url, null);

  await advance(3600);
  const ended = await anthropic.messages.batches.retrieve(batch.id);
  assert.equal(ended.processing_status, 'ended');
  assert.deepEqual(ended.request_counts, { processing: 0, succeeded: 1, errored: 0, canceled: 1, expired: 0 });
  const by = Object.fromEntries((await results(batch.id)).map((r) => [r.custom_id, r.result.type]));
  assert.deepEqual(by, { soon: 'succeeded', late: 'canceled' });
});

Deno.test('an Anthropic batch ends 86,400 s after it was created, the lines not done expired', async () => {
  const batch = await anthropic.messages.batches.create({
    requests: [
      { custom_id: 'soon', params: params('say #standin words=2') },
      { custom_id: 'never', params: params('say #standin batch_at=90000') },
    ],
  });
  await advance(86_401);
  const ended = await anthropic.messages.batches.retrieve(batch.id);
  assert.equal(ended.processing_status, 'ended');
  assert.equal(Date.parse(String(ended.ended_at)) - Date.parse(batch.created_at), 86_400_000);
  assert.deepEqual(ended.request_counts, { processing: 0, succeeded: 1, errored: 0, canceled: 0, expired: 1 });
  const by = Object.fromEntries((await results(batch.id)).map((r) => [r.custom_id, r.result.type]));
  assert.deepEqual(by, { soon: 'succeeded', never: 'expired' });
});

Deno.test('an Anthropic batch is refused with no requests or a repeated custom_id', async () => {
  await assert.rejects(anthropic.messages.batches.create({ requests: [] }), Anthropic.BadRequestError);
  await assert.rejects(
    anthropic.messages.batches.create({
      requests: [{ custom_id: 'a', params: params('hi') }, { custom_id: 'a', params: params('hi') }],
    }),
    Anthropic.BadRequestError,
  );
});
