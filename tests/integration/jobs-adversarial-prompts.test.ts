// AI jobs reserve the worst case the provider can bill (every input byte a token, plus
// max_tokens), so prompts built to tokenize badly are charged in full, never past the balance.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, fund, newUser, testDb, tick, until, userToken } from '../support/helpers.ts';

type Json = Record<string, unknown>;

/** Runs an ai_completion job to the end; returns what it was charged and its hold. */
async function runJob(credits: string, prompt: string, maxTokens: number) {
  const id = await newUser();
  await fund(id, credits);
  const token = await userToken(id);
  const created = await api('/jobs', {
    token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { type: 'ai_completion', input: { model: 'gpt-4o', prompt, max_tokens: maxTokens } },
  });
  assert.equal(created.status, 202, created.text);
  const jobId = (created.body.data as Json).job_id as string;
  await tick();
  const job = await until('completion', async () => {
    const [j] = await testDb`select status, hold_id, result from billing.jobs where id = ${jobId}`;
    return j.status === 'completed' && j;
  });
  const [hold] = await testDb`select amount::text from billing.holds where id = ${job.hold_id}`;
  const [{ charged }] = await testDb`select coalesce(sum(-e.amount), 0)::text as charged from billing.entries e
    join billing.accounts a on a.id = e.account_id where a.user_id = ${id} and e.amount < 0`;
  return { charged, held: hold.amount, usage: job.result.usage, balance: await api('/credits/balance', { token }) };
}

/** gpt-4o in credits: 0.02 an input token, 0.06 an output token (the seeded rate card, ×4 markup). */
const price = (input: number, output: number) => (input * 0.02 + output * 0.06).toFixed(2);

Deno.test('a 20,000-character prompt of one-letter words is charged for all 10,000 input tokens', async () => {
  const prompt = Array.from({ length: 10_000 }, () => 'a').join(' '); // 19,999 characters, 10,000 words
  const r = await runJob('500', prompt, 1);
  assert.deepEqual(r.usage, { input_tokens: 10_000, output_tokens: 1 });
  assert.equal(Number(r.charged).toFixed(2), price(10_000, 1), 'charged 200.06, not the 100.06 a chars/4 guess held');
  assert.ok(Number(r.held) >= Number(price(10_000, 1)), `the hold (${r.held}) covered the worst case`);
  await assertLedgerInvariants();
});

Deno.test('multi-byte prompts reserve by bytes, so the hold covers what the provider bills', async () => {
  for (const word of ['é', '字', '🙂']) {
    const prompt = Array.from({ length: 3_000 }, () => word).join(' ');
    const r = await runJob('500', prompt, 2);
    assert.equal(r.usage.input_tokens, 3_000);
    assert.equal(Number(r.charged).toFixed(2), price(3_000, 2), word);
    const bytes = new TextEncoder().encode(prompt).length;
    assert.ok(Number(r.held) >= Number(price(bytes, 2)), `${word}: held ${r.held} for ${bytes} bytes`);
  }
});

Deno.test('a job the balance cannot cover at its worst case is refused up front (402), not under-billed later', async () => {
  const id = await newUser();
  await fund(id, '150'); // enough for the chars/4 guess (100.06), not for the worst case (400.32)
  const prompt = Array.from({ length: 10_000 }, () => 'a').join(' ');
  const r = await api('/jobs', {
    token: await userToken(id),
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { type: 'ai_completion', input: { model: 'gpt-4o', prompt, max_tokens: 1 } },
  });
  assert.equal(r.status, 402);
  assert.equal((r.body.error as Json).code, 'INSUFFICIENT_CREDITS');
});
