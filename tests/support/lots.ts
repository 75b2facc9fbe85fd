// Shared by the tests of credits for some models: more models on the rate card, and an admin's
// grants (setup only) to a student or a school's wallet, with the lot options they take.
import assert from 'node:assert/strict';
import { adminToken, api, key, reportUsage, testDb } from './helpers.ts';

/** `n` more models on the rate card (a real one has dozens), each priced like a small model. */
export async function models(n: number): Promise<string[]> {
  const tag = crypto.randomUUID().slice(0, 6);
  const names = Array.from({ length: n }, (_, i) => `test-${tag}-${i + 1}`);
  for (const m of names) {
    await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
      effective_from) values (${m}, 1, 1, 2, 1, now() - interval '1 minute')`;
  }
  return names;
}

/** POST /credits/grants as an admin: `lot` as the route takes it (`applies_to`, expiry, …). */
export async function grantLot(userId: string, amount: string, kind: string, lot: Record<string, unknown> = {}) {
  return await api('/credits/grants', {
    token: await adminToken(),
    headers: key(),
    body: { user_id: userId, amount, reason: 'credits for some models', kind, lot },
  });
}

/** POST /orgs/:id/grants as a platform admin, for `appliesTo` when given. */
export async function orgGrant(org: string, amount: string, kind: string, appliesTo?: string[]) {
  const r = await api(`/orgs/${org}/grants`, {
    token: await adminToken(),
    headers: key(),
    body: { amount, kind, reason: 'pilot', ...(appliesTo ? { applies_to: appliesTo } : {}) },
  });
  assert.equal(r.status, 201, r.text);
}

/** POST /credits/usage for `credits` of a model from `models` (priced $1/M input, ×1: 1,000 input tokens = 1 credit). */
export const chargeCredits = (token: string, model: string, credits: number) =>
  reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model, input_tokens: Math.round(credits * 1000), output_tokens: 0 },
  });

/** A student's own hold (POST /credits/holds) of `amount`. */
export const holdCredits = (token: string, amount: string) =>
  api('/credits/holds', { token, headers: key(), body: { amount } });

/** A gateway chat call for `model`, the provider stand-in steered by `directives`. */
export const chatWith = (token: string, model: string, directives: string, max_tokens = 2000) =>
  api('/ai/v1/chat/completions', {
    token,
    headers: key(),
    body: { model, messages: [{ role: 'user', content: `#standin ${directives}` }], max_tokens },
  });

/** The user's own account id (not an allowance). */
export const ownAccount = async (userId: string) =>
  (await testDb`select id::text from billing.accounts where user_id = ${userId} and org_id is null`)[0].id as string;
