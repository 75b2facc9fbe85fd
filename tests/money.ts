// Helpers for the money-path tests: an answer's data and error code, a usage charge under a key.
import { api, reportUsage, testDb } from './helpers.ts';

export type Json = Record<string, unknown>;
type Res = Awaited<ReturnType<typeof api>>;
export const dataOf = (r: Res) => r.body.data as Json;
export const codeOf = (r: Res) => (r.body.error as { code?: string } | undefined)?.code;

/** gpt-4o input: 50 tokens = 1 credit. */
export const usageBody = (credits: number) => ({ model: 'gpt-4o', input_tokens: credits * 50, output_tokens: 0 });
export const spendWith = (token: string, k: string, credits: number) =>
  reportUsage('/credits/usage', { token, headers: { 'idempotency-key': k }, body: usageBody(credits) });

/** How many usage charges the user's account made, and their total in credits. */
export async function charged(userId: string): Promise<{ n: number; total: string }> {
  const [{ n, total }] = await testDb`select count(*)::int as n, coalesce(trim_scale(sum(t.amount)), 0)::text as total
    from billing.transfers t join billing.accounts a on a.id = t.from_account_id
    where a.user_id = ${userId} and t.kind = 'usage'`;
  return { n, total };
}
