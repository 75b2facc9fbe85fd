// Helpers for the money tests: an answer's data and error code, usage charged under a key (one
// request or a batch), voids, the sweep, and what the ledger holds for a user or a lot.
import assert from 'node:assert/strict';
import { adminToken, api, env, reportUsage, testDb } from './helpers.ts';

export type Json = Record<string, unknown>;
type Res = Awaited<ReturnType<typeof api>>;
export const dataOf = (r: Res) => r.body.data as Json;
export const codeOf = (r: Res) => (r.body.error as { code?: string } | undefined)?.code;

/** gpt-4o input: 50 tokens = 1 credit. */
export const usageBody = (credits: number) => ({ model: 'gpt-4o', input_tokens: credits * 50, output_tokens: 0 });
export const spendWith = (token: string, k: string, credits: number) =>
  reportUsage('/credits/usage', { token, headers: { 'idempotency-key': k }, body: usageBody(credits) });
/** POST /credits/usage with any body under the Idempotency-Key `k`, reported by the server for the token's user. */
export const report = (token: string, k: string, body: Json) =>
  reportUsage('/credits/usage', { token, headers: { 'idempotency-key': k }, body });

/** POST /credits/usage/batch as the app's server (service role). */
export const batch = (events: Json[]) =>
  api('/credits/usage/batch', { token: env('SUPABASE_SERVICE_ROLE_KEY'), body: { events } });
/** One usage event of `credits` (gpt-4o input) for a batch. */
export const usageEvent = (user: string, id: string, credits: number) => ({
  event_id: id,
  user_id: user,
  ...usageBody(credits),
  occurred_at: new Date().toISOString(),
});
/** A batch answer's outcomes, one per event in order. */
export const outcomesOf = (r: Res) =>
  (r.body.data as { outcomes: { status: string; transfer_id?: string; charged?: string }[] }).outcomes;

/** POST /admin/charges/:id/void as a fresh admin. */
export const voidCharge = async (id: string, reason = 'provider outage') =>
  api(`/admin/charges/${id}/void`, { token: await adminToken(), body: { reason } });

/** The minute sweep, as pg_cron runs it: due lots expire. */
export const sweep = () => testDb`select billing.expire_lots(500)`;

/** How many usage charges the user's account made, and their total in credits. */
export async function charged(userId: string): Promise<{ n: number; total: string }> {
  const [{ n, total }] = await testDb`select count(*)::int as n, coalesce(trim_scale(sum(t.amount)), 0)::text as total
    from billing.transfers t join billing.accounts a on a.id = t.from_account_id
    where a.user_id = ${userId} and t.kind = 'usage'`;
  return { n, total };
}

/** Every transfer touching the user's own account, its entries, and its balance. */
export async function ledgerOf(user: string) {
  const [r] = await testDb`
    select (select count(*) from billing.transfers t where t.from_account_id = a.id or t.to_account_id = a.id)::int as transfers,
           (select count(*) from billing.entries e where e.account_id = a.id)::int as entries,
           trim_scale(a.balance)::text as balance
    from billing.accounts a where a.user_id = ${user}`;
  return r ?? { transfers: 0, entries: 0, balance: null };
}

/** How many ledger transfers were written under a user's HTTP Idempotency-Key for `action`. */
export const transfersUnder = async (user: string, action: string, k: string) =>
  (await testDb`select count(*)::int as n from billing.transfers
    where idempotency_key = ${`http:${user}:${action}:${k}`}`)[0].n as number;

/** The user's lots, oldest first. */
export const lotsOf = async (user: string) =>
  await testDb<{ id: string; category: string; remaining: string }[]>`
    select l.id::text, l.category, trim_scale(l.remaining)::text as remaining from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.user_id = ${user} order by l.id`;

/** Net credits that left one lot as breakage (an expiry's positive rows, an un-expiry's negative ones). */
export const expiredOf = async (lot: string) =>
  (await testDb`select trim_scale(coalesce(sum(amount), 0))::text as n from billing.lot_allocations
                where lot_id = ${lot} and kind = 'expiry'`)[0].n as string;

/** billing.check_lots finds nothing: lots, expiries, accounts and transfers agree, and deferred revenue matches the flows. */
export async function checkLots(): Promise<void> {
  const [{ check_lots: c }] = await testDb`select billing.check_lots()`;
  const text = JSON.stringify(c);
  for (const k of ['lots', 'expiry', 'accounts', 'transfers']) assert.deepEqual(c[k], [], `check_lots: ${text}`);
  for (
    const d of Object.values(c.deferred_revenue_cents as Record<string, { from_lots: number; from_flows: number }>)
  ) {
    assert.equal(d.from_lots, d.from_flows, `check_lots: ${text}`);
  }
}

/** A model with every kind priced ($2 / $0.5 / $8 / $12 a million, $0.04 an image, $0.006 an audio second, ×2). */
export async function fullCard(): Promise<string> {
  const model = `kinds-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from, usd_per_million_cached_input, usd_per_million_reasoning, usd_per_image, usd_per_audio_second)
    values (${model}, 1, 2, 8, 2, now() - interval '1 minute', 0.5, 12, 0.04, 0.006)`;
  return model;
}

/**
 * A model whose input token costs exactly a millionth of a credit ($0.001 a million, ×1): n input
 * tokens charge n / 1,000,000 credits, so a test spends any amount to six places through the real
 * usage charge, e.g. `billing.charge_usage(user, model, 1234567, 0, key)` spends 1.234567.
 */
export async function microCard(): Promise<string> {
  const model = `micro-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from) values (${model}, 1, 0.001, 0, 1, now() - interval '1 minute')`;
  return model;
}

/** Usage of every kind: 382 credits on a fullCard model. */
export const everyKind = {
  input_tokens: 1000,
  output_tokens: 500,
  cached_input_tokens: 4000,
  reasoning_tokens: 250,
  images: 3,
  audio_seconds: 10,
};
