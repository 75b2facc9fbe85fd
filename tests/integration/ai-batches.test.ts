// Batches (docs/ai-gateway.md § Batches), through the pinned `openai` and Anthropic SDKs with a
// student's token: a batch is held whole at the batch price when it is created (refused whole
// when that does not fit), and settled once when the provider ended it: each line that succeeded
// at the batch price of the provider's usage, failed, expired and cancelled lines at nothing, the
// rest returned. Pollers racing, a repeated poll, the minute sync and a restarted gateway never
// charge twice; a batch nobody reads is still settled.
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { activeHolds, advanceBatchClock, gatewayUrl, student, syncBatches } from '../support/ai.ts';
import { api, assertLedgerInvariants, env, testDb, withGateway } from '../support/helpers.ts';

const standin = env('AI_STANDIN_URL');
const anthropicOf = (token: string, base = gatewayUrl) =>
  new Anthropic({ baseURL: base.replace(/\/v1$/, ''), apiKey: token, maxRetries: 0 });

/** A JSONL batch file of chat lines: line i says `directive(i)`, and sets max_tokens unless `noMax(i)`. */
function chatFile(n: number, directive: (i: number) => string, noMax = (_: number) => false) {
  const lines = Array.from({ length: n }, (_, i) =>
    JSON.stringify({
      custom_id: `q${i}`,
      method: 'POST',
      url: '/v1/chat/completions',
      body: {
        model: 'gpt-4o-mini',
        messages: [{ role: 'user', content: `question ${i} #standin ${directive(i)}` }],
        ...(noMax(i) ? {} : { max_tokens: 50 }),
      },
    }));
  return new File([lines.join('\n')], 'essays.jsonl', { type: 'application/jsonl' });
}

/** The batch's money: what its hold was, what the ledger moved for it, and what its lines cost at the batch price. */
async function money(batchId: string) {
  const [r] = await testDb`
    select b.call_id, trim_scale(h.amount)::text as held, h.status as hold_status,
      trim_scale(billing.ai_batch_share() * billing.ai_hold_amount(c.model, c.prompt_tokens, c.max_output_tokens))::text
        as worst,
      (select count(*)::int from billing.transfers t where t.correlation_id = 'ai:' || c.id and t.kind = 'hold_capture') as captures,
      (select trim_scale(coalesce(sum(t.amount), 0))::text from billing.transfers t where t.correlation_id = 'ai:' || c.id)
        as moved,
      (select trim_scale(coalesce(sum(billing.ai_batch_share() * (billing.price_usage(c.model,
          (l.usage ->> 'input_tokens')::bigint, (l.usage ->> 'output_tokens')::bigint,
          coalesce((l.usage ->> 'cached_input_tokens')::bigint, 0))).amount), 0))::text
        from billing.ai_batch_lines l where l.batch_id = b.id and l.outcome = 'succeeded') as priced,
      trim_scale(coalesce(c.charged, 0))::text as charged
    from billing.ai_batches b join billing.ai_calls c on c.id = b.call_id join billing.holds h on h.id = c.hold_id
    where b.id = ${batchId}`;
  return r;
}

async function balance(userId: string): Promise<string> {
  const [r] = await testDb`select trim_scale(balance)::text as b from billing.accounts where user_id = ${userId}`;
  return r.b;
}

Deno.test('an OpenAI batch of 100 lines is held whole, polled by two clients, and charged once at the batch price', async () => {
  const s = await student('100');
  const other = new OpenAI({ baseURL: gatewayUrl, apiKey: s.token, maxRetries: 0 });
  const file = await s.openai.files.create({
    file: chatFile(100, (i) => i % 10 === 9 ? 'fail=500' : `words=${3 + i % 7}`),
    purpose: 'batch',
  });
  // Created through a gateway that then stops: another one (and the sync) carry on.
  let created!: OpenAI.Batches.Batch;
  await withGateway({}, async (url) => {
    created = await new OpenAI({ baseURL: `${url}/ai/v1`, apiKey: s.token, maxRetries: 0 }).batches.create({
      input_file_id: file.id,
      endpoint: '/v1/chat/completions',
      completion_window: '24h',
    });
  });
  assert.equal(created.status, 'in_progress');
  const held = await money(created.id);
  assert.equal(held.held, held.worst, "held at the batch price of every line's worst case");
  assert.equal(await balance(s.id), '100', 'a hold moves nothing');
  // The same file again answers the same batch (one batch per file).
  const again = await s.openai.batches.create({
    input_file_id: file.id,
    endpoint: '/v1/chat/completions',
    completion_window: '24h',
  });
  assert.equal(again.id, created.id);

  await advanceBatchClock(120);
  const polls = await Promise.all([
    s.openai.batches.retrieve(created.id),
    other.batches.retrieve(created.id),
    syncBatches(),
    other.batches.retrieve(created.id),
  ]);
  const done = await s.openai.batches.retrieve(created.id);
  assert.equal(done.status, 'completed');
  assert.deepEqual(done.request_counts, { total: 100, completed: 90, failed: 10 });
  assert.ok(polls.length === 4);
  const m = await money(created.id);
  assert.equal(m.captures, 1, 'one capture, whoever polled');
  assert.equal(m.moved, m.priced, 'charged exactly the sum of its lines at the batch price');
  assert.equal(m.charged, m.priced);
  const [{ left }] = await testDb`select trim_scale(100 - ${m.priced}::numeric)::text as left`;
  assert.equal(await balance(s.id), left, 'the balance is short of exactly that');
  assert.notEqual(m.hold_status, 'active', 'the rest returned');
  assert.equal(await activeHolds(s.id), 0);

  // The output is served once the batch is settled, and its usage is what was charged.
  const output = await (await s.openai.files.content(done.output_file_id!)).text();
  const usage = new Map(
    output.trim().split('\n').map((l) => JSON.parse(l)).map((l) => [l.custom_id, l.response.body.usage]),
  );
  assert.equal(usage.size, 90);
  const lines = await testDb`select custom_id, outcome, usage, trim_scale(charged)::text as charged
    from billing.ai_batch_lines where batch_id = ${created.id}`;
  for (const l of lines) {
    if (l.custom_id.endsWith('9')) {
      assert.deepEqual([l.outcome, l.charged], ['errored', '0'], 'a failed line costs nothing');
    } else {assert.equal(
        l.usage.output_tokens,
        usage.get(l.custom_id).completion_tokens,
        `${l.custom_id}: the provider's usage`,
      );}
  }
  const errors = await (await s.openai.files.content(done.error_file_id!)).text();
  assert.equal(errors.trim().split('\n').length, 10);

  // Read again, synced again: nothing more moves.
  await Promise.all([s.openai.batches.retrieve(created.id), syncBatches()]);
  assert.deepEqual(await money(created.id), m);
  // The call log shows the batch and its lines.
  const logged = (await api(`/ai/v1/calls/${m.call_id}`, { token: s.token })).body.data as {
    batch: { id: string; lines: unknown[] };
    charged: string;
  };
  assert.equal(logged.batch.id, created.id);
  assert.equal(logged.batch.lines.length, 100);
  assert.equal(logged.charged, m.priced);
  await assertLedgerInvariants();
});

Deno.test('an Anthropic message batch of 100 requests is charged once at the batch price, its results read twice', async () => {
  const s = await student('100');
  const requests = Array.from({ length: 100 }, (_, i) => ({
    custom_id: `r${i}`,
    params: {
      model: 'claude-haiku-4-5',
      max_tokens: 40,
      messages: [{ role: 'user' as const, content: `essay ${i} #standin ${i % 25 === 0 ? 'fail=500' : 'words=4'}` }],
    },
  }));
  const anthropic = anthropicOf(s.token);
  let batch!: Anthropic.Messages.MessageBatch;
  await withGateway({}, async (url) => {
    batch = await anthropicOf(s.token, `${url}/ai/v1`).messages.batches.create({ requests });
  });
  assert.equal(batch.processing_status, 'in_progress');
  const held = await money(batch.id);
  assert.equal(held.held, held.worst);
  await advanceBatchClock(120);
  await Promise.all([
    anthropic.messages.batches.retrieve(batch.id),
    anthropicOf(s.token).messages.batches.retrieve(batch.id),
    syncBatches(),
  ]);
  const ended = await anthropic.messages.batches.retrieve(batch.id);
  assert.equal(ended.processing_status, 'ended');
  assert.deepEqual(ended.request_counts, { processing: 0, succeeded: 96, errored: 4, canceled: 0, expired: 0 });
  const m = await money(batch.id);
  assert.equal(m.captures, 1);
  assert.equal(m.moved, m.priced);
  const read = async () => {
    const out: string[] = [];
    for await (const r of await anthropic.messages.batches.results(batch.id)) {
      out.push(`${r.custom_id}:${r.result.type}`);
    }
    return out;
  };
  const [first, second] = [await read(), await read()];
  assert.equal(first.length, 100);
  assert.deepEqual(second, first);
  assert.deepEqual(await money(batch.id), m, 'reading the results charges nothing');
  await assertLedgerInvariants();
});

Deno.test('a cancelled batch and an expired one charge only the lines done and return every other credit', async () => {
  const s = await student('100');
  // Cancelled: 3 lines done at 60 s, 7 due at 10 hours.
  const f1 = await s.openai.files.create({
    file: chatFile(10, (i) => i < 3 ? 'words=3' : 'batch_at=36000'),
    purpose: 'batch',
  });
  const b1 = await s.openai.batches.create({
    input_file_id: f1.id,
    endpoint: '/v1/chat/completions',
    completion_window: '24h',
  });
  // Expired: 2 lines done at 60 s, 8 due after the window.
  const f2 = await s.openai.files.create({
    file: chatFile(10, (i) => i < 2 ? 'words=3' : 'batch_at=99999'),
    purpose: 'batch',
  });
  const b2 = await s.openai.batches.create({
    input_file_id: f2.id,
    endpoint: '/v1/chat/completions',
    completion_window: '24h',
  });
  await advanceBatchClock(120);
  const cancelling = await s.openai.batches.cancel(b1.id);
  assert.ok(['cancelling', 'cancelled'].includes(cancelling.status), cancelling.status);
  const cancelled = await s.openai.batches.retrieve(b1.id);
  assert.equal(cancelled.status, 'cancelled');
  assert.deepEqual(cancelled.request_counts, { total: 10, completed: 3, failed: 7 });
  await advanceBatchClock(86_400);
  await syncBatches();
  const expired = await s.openai.batches.retrieve(b2.id);
  assert.equal(expired.status, 'expired');
  assert.deepEqual(expired.request_counts, { total: 10, completed: 2, failed: 8 });
  const [m1, m2] = [await money(b1.id), await money(b2.id)];
  assert.equal(m1.moved, m1.priced);
  assert.equal(m2.moved, m2.priced);
  assert.ok(Number(m1.priced) > 0 && Number(m2.priced) > 0);
  assert.equal(await activeHolds(s.id), 0, 'every unused credit returned');
  const [outcomes] = await testDb`select array_agg(distinct outcome order by outcome) as o from billing.ai_batch_lines
    where batch_id in (${b1.id}, ${b2.id}) and outcome <> 'succeeded'`;
  assert.deepEqual(outcomes.o, ['cancelled', 'expired']);
  await assertLedgerInvariants();
});

Deno.test('a batch nobody reads is settled by the minute sync, and a restarted gateway answers it', async () => {
  const s = await student('100');
  let id = '';
  await withGateway({}, async (url) => {
    const client = new OpenAI({ baseURL: `${url}/ai/v1`, apiKey: s.token, maxRetries: 0 });
    const f = await client.files.create({ file: chatFile(5, () => 'words=3'), purpose: 'batch' });
    id =
      (await client.batches.create({ input_file_id: f.id, endpoint: '/v1/chat/completions', completion_window: '24h' }))
        .id;
  });
  await advanceBatchClock(120);
  await syncBatches();
  const m = await money(id);
  assert.equal(m.captures, 1);
  assert.equal(m.moved, m.priced);
  const [{ status }] = await testDb`select status from billing.ai_batches where id = ${id}`;
  assert.equal(status, 'ended', 'settled before anyone read it');
  assert.equal((await s.openai.batches.retrieve(id)).status, 'completed');
  assert.deepEqual(await money(id), m);
});

Deno.test('a batch that does not fit is refused whole with the figures; nothing is held or sent', async () => {
  const s = await student('0.001');
  const f = await s.openai.files.create({ file: chatFile(20, () => 'words=3'), purpose: 'batch' });
  const err = await s.openai.batches.create({
    input_file_id: f.id,
    endpoint: '/v1/chat/completions',
    completion_window: '24h',
  })
    .then(() => null, (e) => e);
  assert.equal(err?.status, 402);
  assert.match(err.message, /it needs [0-9.]+ credits and 0\.001 are available/);
  assert.equal(await activeHolds(s.id), 0);
  const [{ n }] = await testDb`select count(*)::int as n from billing.ai_batches where user_id = ${s.id}`;
  assert.equal(n, 0);
});

Deno.test('a line without a maximum is held at AI_MAX_OUTPUT_TOKENS; bad lines are refused with their line', async () => {
  const s = await student('100');
  const f = await s.openai.files.create({ file: chatFile(3, () => 'words=3', (i) => i === 1), purpose: 'batch' });
  const b = await s.openai.batches.create({
    input_file_id: f.id,
    endpoint: '/v1/chat/completions',
    completion_window: '24h',
  });
  const maxes = await testDb`select custom_id, max_output_tokens::int as m from billing.ai_batch_lines
    where batch_id = ${b.id} order by custom_id`;
  assert.deepEqual(maxes.map((r) => r.m), [50, Number(Deno.env.get('AI_MAX_OUTPUT_TOKENS') ?? 4096), 50]);
  const refused = async (lines: unknown[]) => {
    const file = new File([lines.map((l) => JSON.stringify(l)).join('\n')], 'bad.jsonl');
    return await s.openai.files.create({ file, purpose: 'batch' }).then(() => null, (e) => e);
  };
  const line = (body: Record<string, unknown>, custom_id = 'a') => ({
    custom_id,
    method: 'POST',
    url: '/v1/chat/completions',
    body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], ...body },
  });
  for (
    const [lines, field] of [
      [[line({}), line({ stream: true }, 'b')], 'stream'],
      [[line({}), line({ model: 'gpt-4o' }, 'b')], 'model'],
      [[line({}), line({}, 'a')], 'custom_id'],
      [[line({ max_tokens: 1_000_000 })], 'max_tokens'],
      [[line({ models: ['gpt-4o-mini', 'gpt-4o'] })], 'models'],
    ] as const
  ) {
    const err = await refused([...lines]);
    assert.equal(err?.status, 400, field);
    assert.equal(err.error?.field ?? err.error?.error?.field, field);
  }
  const url = await refused([{ ...line({}), url: '/v1/embeddings' }]);
  assert.equal(url?.status, 400);
});

Deno.test("another student's file, batch and results are not found; a sixth running batch is refused", async () => {
  const [a, b] = [await student('100'), await student('100')];
  const f = await a.openai.files.create({ file: chatFile(1, () => 'batch_at=36000'), purpose: 'batch' });
  const notFound = (p: Promise<unknown>) => p.then(() => null, (e) => [e?.status, e?.code ?? e?.error?.error?.code]);
  assert.deepEqual(
    await notFound(
      b.openai.batches.create({ input_file_id: f.id, endpoint: '/v1/chat/completions', completion_window: '24h' }),
    ),
    [404, 'AI_FILE_NOT_FOUND'],
  );
  const batch = await a.openai.batches.create({
    input_file_id: f.id,
    endpoint: '/v1/chat/completions',
    completion_window: '24h',
  });
  assert.deepEqual(await notFound(b.openai.batches.retrieve(batch.id)), [404, 'AI_BATCH_NOT_FOUND']);
  assert.deepEqual(await notFound(b.openai.batches.cancel(batch.id)), [404, 'AI_BATCH_NOT_FOUND']);
  assert.deepEqual(await notFound(b.openai.files.content(f.id)), [404, 'AI_FILE_NOT_FOUND']);
  assert.deepEqual(
    await notFound(a.openai.files.content(`batch_output_${batch.id}`)),
    [404, 'AI_FILE_NOT_FOUND'],
    'no output before it ended',
  );
  const anthropic = anthropicOf(b.token);
  assert.deepEqual(
    await notFound(anthropic.messages.batches.retrieve(batch.id)),
    [404, 'AI_BATCH_NOT_FOUND'],
    'an OpenAI batch is not a message batch',
  );
  for (let i = 0; i < 4; i++) {
    const more = await a.openai.files.create({ file: chatFile(1, () => 'batch_at=36000'), purpose: 'batch' });
    await a.openai.batches.create({
      input_file_id: more.id,
      endpoint: '/v1/chat/completions',
      completion_window: '24h',
    });
  }
  const sixth = await a.openai.files.create({ file: chatFile(1, () => 'batch_at=36000'), purpose: 'batch' });
  const err = await a.openai.batches.create({
    input_file_id: sixth.id,
    endpoint: '/v1/chat/completions',
    completion_window: '24h',
  })
    .then(() => null, (e) => e);
  assert.equal(err?.status, 429);
  assert.equal(err.error?.code ?? err.code, 'AI_BATCH_LIMIT');
  // Cancelled, they free their places and return their holds.
  const open = await testDb`select id from billing.ai_batches where user_id = ${a.id}`;
  for (const { id } of open) await a.openai.batches.cancel(id);
  for (const { id } of open) await a.openai.batches.retrieve(id);
  assert.equal(await activeHolds(a.id), 0);
  assert.equal(await balance(a.id), '100');
});

Deno.test('a batch the provider does not take charges nothing, and its file answers no second batch', async () => {
  const s = await student('100');
  const f = await s.openai.files.create({ file: chatFile(3, () => 'words=3'), purpose: 'batch' });
  await withGateway({ AI_API_BASE: `${standin}/_standin/fail/500/v1` }, async (url) => {
    const down = new OpenAI({ baseURL: `${url}/ai/v1`, apiKey: s.token, maxRetries: 0 });
    const err = await down.batches.create({
      input_file_id: f.id,
      endpoint: '/v1/chat/completions',
      completion_window: '24h',
    })
      .then(() => null, (e) => e);
    assert.equal(err?.status, 502);
  });
  const [b] = await testDb`select b.status, c.status as call, h.status as hold from billing.ai_batches b
    join billing.ai_calls c on c.id = b.call_id join billing.holds h on h.id = c.hold_id where b.user_id = ${s.id}`;
  assert.deepEqual([b.status, b.call, b.hold], ['failed', 'failed', 'released']);
  assert.equal(await balance(s.id), '100');
  const again = await s.openai.batches.create({
    input_file_id: f.id,
    endpoint: '/v1/chat/completions',
    completion_window: '24h',
  })
    .then(() => null, (e) => e);
  assert.deepEqual([again?.status, again?.code ?? again?.error?.error?.code], [409, 'AI_FILE_USED']);
  // A message batch's results before it ended: not yet.
  const mb = await anthropicOf(s.token).messages.batches.create({
    requests: [{
      custom_id: 'x',
      params: {
        model: 'claude-haiku-4-5',
        max_tokens: 20,
        messages: [{ role: 'user', content: '#standin batch_at=36000' }],
      },
    }],
  });
  const early = await fetch(`${gatewayUrl}/messages/batches/${mb.id}/results`, {
    headers: { authorization: `Bearer ${s.token}` },
  });
  const body = await early.json();
  assert.deepEqual(
    [early.status, body.type, body.error?.code],
    [409, 'error', 'AI_BATCH_NOT_ENDED'],
    "in Anthropic's shape",
  );
  await anthropicOf(s.token).messages.batches.cancel(mb.id);
});

Deno.test('a batch its provider does not know is left running within its window, then ends with nothing charged', async () => {
  const s = await student('100');
  const f = await s.openai.files.create({ file: chatFile(2, () => 'words=3'), purpose: 'batch' });
  const b = await s.openai.batches.create({
    input_file_id: f.id,
    endpoint: '/v1/chat/completions',
    completion_window: '24h',
  });
  // The provider answers 404 for it (as one whose key belongs to another account would).
  await testDb`update billing.ai_batches set provider_batch_id = ${`batch_unknown_${b.id}`} where id = ${b.id}`;
  assert.equal(
    (await s.openai.batches.retrieve(b.id)).status,
    'in_progress',
    'within its window: left for the operator',
  );
  assert.equal(await activeHolds(s.id), 1);
  await testDb`update billing.ai_batches set created_at = created_at - interval '25 hours 1 minute' where id = ${b.id}`;
  const lost = await s.openai.batches.retrieve(b.id);
  assert.equal(lost.status, 'failed');
  const m = await money(b.id);
  assert.deepEqual([m.captures, m.moved, m.charged], [0, '0', '0'], 'nothing charged');
  assert.equal(await activeHolds(s.id), 0, 'the hold returned');
  assert.equal(await balance(s.id), '100');
});
