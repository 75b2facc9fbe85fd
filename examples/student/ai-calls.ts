// "Your AI calls": the student's latest calls through the metered AI gateway, from
// GET /ai/v1/calls with their own token (the gateway answers only the caller's calls): when,
// the model, tokens by kind (in, read from and written to the prompt cache, out, reasoning), the
// cost in credits, and how each call ended with its code.
// Plain fetch, as the ask box (ask.ts); every value is set as text, never as HTML.
/// <reference lib="dom" />
import { asBillingError, toBillingError } from '../../client/errors.ts';
import { roundedCredits } from './credits.ts';
import { el } from './dom.ts';

/** One call as GET /ai/v1/calls lists it (the parts the page shows). */
export interface AiCall {
  id: string;
  created_at: string;
  model: string | null;
  endpoint: string;
  outcome: 'held' | 'charged' | 'failed' | 'refused';
  code: string | null;
  /** Disjoint kinds, as the ledger billed them. */
  usage: {
    input_tokens?: number;
    cached_input_tokens?: number;
    cache_write_tokens?: number;
    cache_write_1h_tokens?: number;
    output_tokens?: number;
    reasoning_tokens?: number;
  } | null;
  charged: string;
  duration_ms: number | null;
}

const outcomeWords: Record<AiCall['outcome'], string> = {
  held: 'Answering…',
  charged: 'Answered',
  failed: 'Failed: nothing charged',
  refused: 'Not sent: nothing charged',
};

/** How a call ended, in a student's words, with the code support needs when there is one. */
export function outcomeText(call: AiCall): string {
  // A provider that failed after it reported usage still bills the call: it is charged, with a code.
  const words = call.outcome === 'charged' && call.code ? 'Answered in part' : outcomeWords[call.outcome];
  return call.code ? `${words} (${call.code})` : words;
}

/**
 * "120 in / 35 out", with each other kind the call was billed for ("…, 300 read from cache, 5,000
 * written to cache / 35 out, 8 reasoning"): a cache write costs more than input, reasoning as
 * output, so without them such a call looks overpriced. A dash when the provider reported no usage.
 */
export function tokensText(call: AiCall): string {
  const u = call.usage;
  if (!u) return '—';
  const n = (x: number | undefined) => (x ?? 0).toLocaleString('en-US');
  const written = (u.cache_write_tokens ?? 0) + (u.cache_write_1h_tokens ?? 0);
  const input = [`${n(u.input_tokens)} in`];
  if (u.cached_input_tokens) input.push(`${n(u.cached_input_tokens)} read from cache`);
  if (written) input.push(`${n(written)} written to cache`);
  const output = [`${n(u.output_tokens)} out`];
  if (u.reasoning_tokens) output.push(`${n(u.reasoning_tokens)} reasoning`);
  return `${input.join(', ')} / ${output.join(', ')}`;
}

/** The calls as a table (a row per call, `data-call` its id), or the empty state. */
export function renderAiCalls(box: HTMLElement, calls: AiCall[]) {
  if (calls.length === 0) {
    box.replaceChildren(el('p', 'No AI calls yet: ask a question above.', { class: 'muted' }));
    return;
  }
  const head = ['When', 'Model', 'Tokens', 'Cost', 'Outcome'];
  const table = el('table', '', { 'data-testid': 'ai-calls' });
  table.append(el('tr'));
  for (const h of head) table.rows[0].append(el('th', h));
  for (const c of calls) {
    const tr = el('tr', '', { 'data-call': c.id, 'data-outcome': c.outcome });
    const cells = [
      new Date(c.created_at).toLocaleString(),
      c.model ?? '—',
      tokensText(c),
      `${roundedCredits(c.charged)} credits`,
      outcomeText(c),
    ];
    cells.forEach((text, i) => tr.append(el('td', text, { 'data-label': head[i] })));
    table.append(tr);
  }
  box.replaceChildren(table);
}

/**
 * Loads the student's latest `limit` calls from the gateway at `api` and draws them into `box`;
 * answers whether one is still answering (its charge is not known yet).
 */
export async function showAiCalls(api: string, token: string, box: HTMLElement, limit = 10): Promise<boolean> {
  let res: Response;
  try {
    res = await fetch(`${api}/functions/v1/ai/v1/calls?limit=${limit}`, {
      headers: { authorization: `Bearer ${token}` },
    });
  } catch (err) {
    throw asBillingError(err);
  }
  if (!res.ok) throw await toBillingError(new Error(`HTTP ${res.status}`), res);
  const { data } = await res.json() as { data: { items: AiCall[] } };
  renderAiCalls(box, data.items);
  return data.items.some((c) => c.outcome === 'held');
}
