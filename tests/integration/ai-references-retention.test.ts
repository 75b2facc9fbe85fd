// A conversation written the AI SDK's default way (`openai(model)`, earlier answers sent back as
// item references) outlives a day, a restart of every service and an emptied Redis: a whole
// answer's reference carries its item, a stream's item is kept sealed in Postgres (ai/references.ts,
// billing.ai_reference_items) for the retention (AI_REFERENCE_RETENTION_DAYS, 30 days here).
// What cannot be opened is refused with a 400 that says why: past the retention, another
// student's, altered, or whose content its owner deleted; a deleted account's items go.
import assert from 'node:assert/strict';
import { generateText, type ModelMessage, streamText } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { settled, standinCall, student } from '../support/ai.ts';
import { api, env, functionsUrl, testDb, tick, until, withGateway } from '../support/helpers.ts';
import { pendingItem, sealItem } from '../../supabase/functions/ai/references.ts';

const model = 'gpt-4o-mini';
const day = 86_400_000;
const tag = () => `t${crypto.randomUUID().replaceAll('-', '')}`;

/** The reference the AI SDK keeps for an answer message (what it sends back as item_reference). */
function referenceOf(messages: ModelMessage[]): string {
  const part = (messages[0].content as { providerOptions?: { openai?: { itemId?: string } } }[])[0];
  const id = part.providerOptions?.openai?.itemId;
  if (typeof id !== 'string' || !id.startsWith('ref_')) throw new Error(`not a reference: ${id}`);
  return id;
}

/** A turn at the AI SDK's defaults: the answer's messages, pushed onto the conversation. */
async function turn(base: string, token: string, messages: ModelMessage[], stream: boolean, text: string) {
  const openai = createOpenAI({ baseURL: `${base}/ai/v1`, apiKey: token });
  messages.push({ role: 'user', content: text });
  const answer = stream
    ? await (async () => {
      const r = streamText({ model: openai(model), messages, maxOutputTokens: 40 });
      assert.match(await r.text, /word1/);
      return (await r.response).messages;
    })()
    : await (async () => {
      const r = await generateText({ model: openai(model), messages, maxOutputTokens: 40 });
      assert.match(r.text, /word1/);
      return r.response.messages;
    })();
  messages.push(...answer);
  return referenceOf(answer);
}

/** A turn sending `id` back by reference, as the AI SDK does; `t` tags the stand-in's call. */
const sendBack = (token: string, id: string, t = tag()) =>
  api('/ai/v1/responses', {
    token,
    body: {
      model,
      max_output_tokens: 20,
      input: [{ type: 'item_reference', id }, { role: 'user', content: `And then? #standin words=3 tag=${t}` }],
    },
  });

/** Asserts a 400 ITEM_REFERENCE_UNRESOLVABLE whose message says `why`, and that the provider was never called. */
async function assertRefused(token: string, id: string, why: RegExp) {
  const t = tag();
  const res = await sendBack(token, id, t);
  assert.equal(res.status, 400, res.text);
  const error = res.body.error as { code: string; message: string; field: string };
  assert.equal(error.code, 'ITEM_REFERENCE_UNRESOLVABLE');
  assert.equal(error.field, 'input.0.id');
  assert.match(error.message, why);
  assert.equal((await standinCall(t)).status, 'unknown', 'never reaches the provider');
}

/** Restarts Postgres (pg_ctl) and redis-server (empty: it keeps nothing on disk). */
async function restartPostgresAndRedis() {
  const port = new URL(env('REDIS_URL')).port;
  await new Deno.Command('redis-cli', { args: ['-p', port, 'shutdown', 'nosave'] }).output();
  const redis = await new Deno.Command('redis-server', {
    args: ['--port', port, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'yes'],
  }).output();
  assert.ok(redis.success, 'redis-server started again');
  const pg = await new Deno.Command('bash', {
    args: ['-c', 'source scripts/lib.sh >/dev/null 2>&1; pg_stop; sleep 1; pg_start'],
    stdout: 'null',
    stderr: 'piped',
  }).output();
  assert.ok(pg.success, new TextDecoder().decode(pg.stderr));
}

/** Runs a command on the local Redis through its REST bridge; undefined while it cannot. */
async function redisCommand(command: string[]): Promise<unknown> {
  const res = await fetch(env('UPSTASH_REDIS_REST_URL'), {
    method: 'POST',
    headers: { authorization: `Bearer ${env('UPSTASH_REDIS_REST_TOKEN')}` },
    body: JSON.stringify(command),
  }).catch(() => undefined);
  if (!res?.ok) return await res?.body?.cancel();
  return (await res.json() as { result: unknown }).result;
}

const keptOf = (callId: string) =>
  testDb<{ sealed: string; created_at: Date }[]>`select sealed, created_at from billing.ai_reference_items
    where call_id = ${callId}`;

/** A streamed first answer: its reference, and its call's id. */
async function streamedAnswer(token: string, userId: string) {
  const id = await turn(functionsUrl, token, [], true, 'Hello #standin words=5');
  return { id, call: (await settled(userId)).id as string };
}

Deno.test('a conversation at the AI SDK defaults goes on after every service restarted and Redis was emptied', async () => {
  const s = await student('100000');
  const messages: ModelMessage[] = [];
  const whole = await turn(functionsUrl, s.token, messages, false, 'Turn 1 #standin words=5');
  const streamed = await turn(functionsUrl, s.token, messages, true, 'Turn 2 #standin words=6');
  const call = (await settled(s.id)).id as string;
  // The stream's item is kept sealed: the answer's text is nowhere in its row.
  const [row] = await keptOf(call);
  assert.ok(row, "the streamed answer's item is kept");
  assert.doesNotMatch(row.sealed, /word1/);

  await restartPostgresAndRedis();
  await until('Redis flushed', async () => (await redisCommand(['FLUSHALL'])) === 'OK');
  assert.equal(await redisCommand(['DBSIZE']), 0, 'Redis is empty');

  // A gateway process started afresh: nothing of the first turns is in its memory.
  await withGateway({}, async (url) => {
    const sent: string[] = [];
    const openai = createOpenAI({
      baseURL: `${url}/ai/v1`,
      apiKey: s.token,
      fetch: (input, init) => {
        sent.push(String(init?.body ?? ''));
        return fetch(input, init);
      },
    });
    const t = tag();
    messages.push({ role: 'user', content: `Turn 3 #standin words=4 tag=${t}` });
    const r = await generateText({ model: openai(model), messages, maxOutputTokens: 40 });
    assert.match(r.text, /word1/);
    assert.equal((await standinCall(t)).status, 'done');
    const body = JSON.parse(sent[0]) as { input: { type?: string; id?: string }[] };
    const refs = body.input.filter((i) => i.type === 'item_reference').map((i) => i.id);
    assert.deepEqual(refs, [whole, streamed], 'both earlier answers went back by reference');
  });
  const [last] = await testDb`select status from billing.ai_calls where user_id = ${s.id} order by seq desc limit 1`;
  assert.equal(last.status, 'charged');
});

Deno.test('a reference sealed 29 days ago opens; one sealed past the retention is a 400 that says so', async () => {
  const s = await student('100000');
  const { call } = await streamedAnswer(s.token, s.id);
  const item = { type: 'message', id: 'msg_1', role: 'assistant', content: [{ type: 'output_text', text: 'old' }] };
  for (const [daysAgo, opens] of [[29, true], [31, false]] as const) {
    const at = Date.now() - daysAgo * day;
    // A stream's: its item kept as the gateway keeps it, written that long ago.
    const pending = await pendingItem(s.id, at);
    const kept = await pending.seal(item);
    await testDb`select billing.keep_ai_reference_items(${s.id}, ${call}, ${testDb.json([kept])})`;
    await testDb`update billing.ai_reference_items set created_at = ${new Date(at)}
      where key_hash = decode(${kept.key_hash}, 'hex')`;
    await tick();
    const [{ n }] = await testDb`select count(*)::int as n from billing.ai_reference_items
      where key_hash = decode(${kept.key_hash}, 'hex')`;
    assert.equal(n, opens ? 1 : 0, `${daysAgo} days: the tick keeps it within the retention, deletes it past`);
    for (const id of [await sealItem(s.id, item, at), pending.id]) {
      if (opens) {
        const res = await sendBack(s.token, id);
        assert.equal(res.status, 200, res.text);
      } else await assertRefused(s.token, id, /expired \(references open for 30 days\)/);
    }
  }
});

Deno.test("another student's, an altered one and one whose content was deleted are refused; a deleted account's items go", async () => {
  const owner = await student('100000'), other = await student('100000');
  const { id, call } = await streamedAnswer(owner.token, owner.id);
  assert.equal((await sendBack(owner.token, id)).status, 200);

  await assertRefused(other.token, id, /not a reference the gateway gave this account/);
  const altered = id.slice(0, 30) + (id[30] === 'A' ? 'B' : 'A') + id.slice(31);
  await assertRefused(owner.token, altered, /altered/);

  const deleted = await api(`/ai/v1/calls/${call}/content`, { token: owner.token, method: 'DELETE' });
  assert.equal(deleted.status, 200, deleted.text);
  assert.equal((await keptOf(call)).length, 0, 'deleting the content deletes the kept item');
  await assertRefused(owner.token, id, /not kept \(its call's content was deleted/);

  // A soft-deleted account's items go at the next tick; a hard-deleted one's with the row.
  const gone = await student('100000');
  const kept = await streamedAnswer(gone.token, gone.id);
  assert.equal((await keptOf(kept.call)).length, 1);
  await testDb`update auth.users set deleted_at = now() where id = ${gone.id}`;
  await tick();
  assert.equal((await keptOf(kept.call)).length, 0, "a deleted account's items are deleted");
});
