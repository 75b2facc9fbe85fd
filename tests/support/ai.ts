// Shared by the AI gateway's tests: a funded student with an OpenAI client pointed at the local
// gateway, what the ledger charged for a call, and what the rate card says it should cost.
import OpenAI from 'openai';
import { env, functionsUrl, fund, key, newUser, spawnGateway, testDb, tick, until, userToken } from './helpers.ts';

export const gatewayUrl = `${functionsUrl}/ai/v1`;

/** One user message: `ask('#standin words=5')`. */
export const ask = (text: string) => [{ role: 'user' as const, content: text }];

/** A student with `credits` and an official OpenAI client using their token (no SDK retries). */
export async function student(credits = '1000') {
  const id = await newUser();
  if (credits !== '0') await fund(id, credits);
  const token = await userToken(id);
  return { id, token, openai: new OpenAI({ baseURL: gatewayUrl, apiKey: token, maxRetries: 0 }) };
}

/** A new model priced 1 credit a token, in and out ($1,000 a million, ×1): holds and prices in whole credits. */
export async function creditPerToken(): Promise<string> {
  const m = `tok-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from) values (${m}, 1, 1000, 1000, 1, now() - interval '1 minute')`;
  return m;
}

/** OpenAI's usage object, as the provider reported it. */
export type ReportedUsage = {
  prompt_tokens: number;
  completion_tokens: number;
  prompt_tokens_details?: { cached_tokens?: number } | null;
  completion_tokens_details?: { reasoning_tokens?: number } | null;
};

/** The rate card's price of reported usage (disjoint kinds), as exact text. */
export async function priceOf(model: string, u: ReportedUsage): Promise<string> {
  const cached = u.prompt_tokens_details?.cached_tokens ?? 0;
  const reasoning = u.completion_tokens_details?.reasoning_tokens ?? 0;
  const [r] = await testDb`select trim_scale((billing.price_usage(${model}, ${u.prompt_tokens - cached},
    ${u.completion_tokens - reasoning}, ${cached}, ${reasoning})).amount)::text as price`;
  return r.price;
}

export type Kinds = {
  input: number;
  cached?: number;
  write?: number;
  write1h?: number;
  output: number;
  reasoning?: number;
};
/** The card's price of usage by kind, worked out from its per-token prices (not through the gateway's pricing). */
export async function cardPrice(model: string, k: Kinds): Promise<string> {
  const [r] = await testDb`
    select trim_scale(round(${k.input}::numeric * c.credits_per_input_token
      + ${k.cached ?? 0}::numeric * c.credits_per_cached_input_token
      + ${k.write ?? 0}::numeric * c.credits_per_cache_write_token
      + ${k.write1h ?? 0}::numeric * c.credits_per_cache_write_1h_token
      + ${k.output}::numeric * c.credits_per_output_token
      + ${k.reasoning ?? 0}::numeric * c.credits_per_reasoning_token, 18))::text as price
    from billing.rate_cards c where c.model = ${model} and c.effective_from <= now()
    order by c.effective_from desc, c.version desc limit 1`;
  return r.price;
}

/** Anthropic's usage object, as the provider reported it (every input kind apart). */
export type MessagesUsage = {
  input_tokens: number;
  output_tokens: number;
  cache_read_input_tokens?: number | null;
  cache_creation_input_tokens?: number | null;
};

/** The card's price of an Anthropic usage object: `await messagesPrice('claude-haiku-4-5', message.usage)`. */
export const messagesPrice = (model: string, u: MessagesUsage) =>
  cardPrice(model, {
    input: u.input_tokens,
    cached: u.cache_read_input_tokens ?? 0,
    write: u.cache_creation_input_tokens ?? 0,
    output: u.output_tokens,
  });

/**
 * Runs an ai_completion job to its end through a gateway of its own (jobs call upstreams, not the
 * built-in stand-in): its id and row. `await runAiJob(s.token, { model, prompt, max_tokens: 50 })`
 */
export async function runAiJob(token: string, input: Record<string, unknown>) {
  const gw = spawnGateway({ AI_PROVIDER: 'openai' });
  try {
    await gw.ready();
    const res = await fetch(`${gw.url}/jobs`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...key() },
      body: JSON.stringify({ type: 'ai_completion', input }),
    });
    if (res.status !== 202) throw new Error(`the job was not queued: ${res.status} ${await res.text()}`);
    const id = (await res.json()).data.job_id as string;
    const job = await until('the job to finish', async () => {
      await tick(gw.url);
      const [j] = await testDb`select status, result, error from billing.jobs where id = ${id}`;
      return ['completed', 'failed'].includes(j.status) && j;
    }, 30_000);
    return { id, status: job.status as string, result: job.result as Record<string, unknown>, error: job.error };
  } finally {
    await gw.kill();
  }
}

/** The calls the gateway refused before the provider (their records: no hold, a stable code), newest first. */
export async function refusalsOf(userId: string) {
  return await testDb<{ failure: string; model: string | null; endpoint: string }[]>`
    select c.failure, c.model, c.endpoint from billing.ai_calls c
    where c.user_id = ${userId} and c.status = 'refused' order by c.seq desc`;
}

/** The user's gateway calls that were begun (held, charged or failed), newest first, with the ledger's transfer for each. */
export async function callsOf(userId: string) {
  return await testDb`
    select c.id, c.status, c.failure, c.usage_source, trim_scale(coalesce(c.charged, 0))::text as charged,
      c.usage, t.amount::text as transfer_amount, t.metadata as transfer_metadata, h.status as hold_status
    from billing.ai_calls c
    left join billing.transfers t on t.id = c.transfer_id
    left join billing.holds h on h.id = c.hold_id
    where c.user_id = ${userId} and c.status <> 'refused' order by c.created_at desc`;
}

/** Active holds on the user's own account: none may be left behind by any call. */
export async function activeHolds(userId: string): Promise<number> {
  const [r] = await testDb`select count(*)::int as n from billing.holds h join billing.accounts a on a.id = h.account_id
    where a.user_id = ${userId} and h.status = 'active'`;
  return r.n;
}

export async function balanceOf(userId: string): Promise<string> {
  const [r] = await testDb`select trim_scale(balance)::text as b from billing.accounts where user_id = ${userId}`;
  return r?.b ?? '0';
}

/** Whether the user's balance is exactly what was granted less what their calls charged (in SQL: exact decimals). */
export async function balanceIsGrantsLessCharges(userId: string) {
  const [r] = await testDb`
    select a.balance = x.expected as exact, trim_scale(a.balance)::text as balance, trim_scale(x.expected)::text as expected
    from billing.accounts a
    cross join lateral (
      select coalesce((select sum(t.amount) from billing.transfers t where t.to_account_id = a.id), 0)
           - coalesce((select sum(c.charged) from billing.ai_calls c where c.user_id = ${userId}), 0) as expected) x
    where a.user_id = ${userId}`;
  return r as { exact: boolean; balance: string; expected: string };
}

/** How the stand-in saw a tagged call end: done, aborted, running or unknown (never called). */
export async function standinCall(tag: string): Promise<{ status: string; usage?: ReportedUsage }> {
  const res = await fetch(`${env('AI_STANDIN_URL')}/_standin/calls/${tag}`);
  return await res.json();
}

/** Waits until the gateway settled the user's newest call (streams settle after the last byte). */
/** Waits until the user has a call held (in flight with its hold), and answers its id. */
export async function heldCall(userId: string): Promise<string> {
  return await until(
    'a call held',
    async () =>
      (await testDb`select id::text from billing.ai_calls where user_id = ${userId} and status = 'held'`)[0]?.id,
  );
}

export async function settled(userId: string, timeoutMs = 10_000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const [c] = await callsOf(userId);
    if (c && c.status !== 'held') return c;
    if (Date.now() > until) throw new Error(`call of ${userId} still ${c?.status ?? 'missing'}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** An upstream that counts the requests it gets and answers each as the stand-in does (a fallback host). */
export function countingBackup() {
  let hits = 0;
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, (req) => {
    hits++;
    const path = new URL(req.url).pathname.replace(/^.*\/v1\//, '/v1/');
    return fetch(`${env('AI_STANDIN_URL')}${path}`, { method: 'POST', headers: req.headers, body: req.body });
  });
  return { base: `http://127.0.0.1:${server.addr.port}/v1`, hits: () => hits, close: () => server.shutdown() };
}

/** Moves the stand-in's batch clock (a batch's lines complete `batch_at` seconds after it was created); shared: only ever forward. */
export const advanceBatchClock = (seconds: number) =>
  fetch(`${env('AI_STANDIN_URL')}/_standin/clock`, {
    method: 'POST',
    body: JSON.stringify({ advance_seconds: seconds }),
  }).then((r) => r.json());

/** The minute sync of AI batches, as pg_cron calls it. */
export const syncBatches = () =>
  fetch(`${functionsUrl}/ai/v1/batches/sync`, {
    method: 'POST',
    headers: { authorization: `Bearer ${env('CRON_SECRET')}` },
  }).then((r) => r.json());
