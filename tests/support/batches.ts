// Shared by the AI batch tests: the gateway's batch routes called with a student's token, a
// batch file's lines, and what the ledger did for a batch.
import assert from 'node:assert/strict';
import { gatewayUrl } from './ai.ts';
import { testDb } from './helpers.ts';

// deno-lint-ignore no-explicit-any
export type Json = Record<string, any>;

/** A gateway route under /ai/v1, answered as status, JSON (or {}) and text. */
export async function call(
  token: string,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
) {
  const res = await fetch(`${gatewayUrl}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      ...headers,
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json: Json = {};
  try {
    json = JSON.parse(text);
  } catch { /* not JSON */ }
  return { status: res.status, json, text };
}

/** One line of an OpenAI batch file: a chat completion of `text`. */
export const chatLine = (id: string, text: string, model = 'gpt-4o-mini', max_tokens = 20) => ({
  custom_id: id,
  method: 'POST',
  url: '/v1/chat/completions',
  body: { model, messages: [{ role: 'user', content: text }], max_tokens },
});

/** One request of an Anthropic message batch. */
export const messageRequest = (id: string, text: string, params: Record<string, unknown> = {}) => ({
  custom_id: id,
  params: { model: 'claude-haiku-4-5', max_tokens: 20, messages: [{ role: 'user', content: text }], ...params },
});

/** POST /ai/v1/files with `lines` as the JSONL file (through the gateway at `base`). */
export async function upload(token: string, lines: unknown[], base = gatewayUrl) {
  const form = new FormData();
  form.set('purpose', 'batch');
  form.set('file', new File([lines.map((l) => JSON.stringify(l)).join('\n')], 'f.jsonl'));
  const res = await fetch(`${base}/files`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}` },
    body: form,
  });
  return { status: res.status, json: await res.json() as Json };
}

/** POST /ai/v1/batches for an uploaded file. */
export const createBatch = (token: string, fileId: string, extra: Record<string, unknown> = {}) =>
  call(token, 'POST', '/batches', {
    input_file_id: fileId,
    endpoint: '/v1/chat/completions',
    completion_window: '24h',
    ...extra,
  });

/** The batch's money: its hold and account, what moved for it, the sum of its lines, the call's charge. */
export async function money(batchId: string) {
  const [r] = await testDb`
    select b.call_id, b.status, c.status as call_status, trim_scale(h.amount)::text as held, h.status as hold_status,
      h.account_id, a.org_id, a.member_id, a.user_id,
      (select count(*)::int from billing.transfers t where t.correlation_id = 'ai:' || c.id and t.kind = 'hold_capture')
        as captures,
      (select trim_scale(coalesce(sum(t.amount), 0))::text from billing.transfers t where t.correlation_id = 'ai:' || c.id)
        as moved,
      (select trim_scale(coalesce(sum(l.charged), 0))::text from billing.ai_batch_lines l where l.batch_id = b.id) as lines,
      (select count(*)::int from billing.ai_batch_lines l where l.batch_id = b.id and l.outcome = 'succeeded') as succeeded,
      trim_scale(coalesce(c.charged, 0))::text as charged
    from billing.ai_batches b join billing.ai_calls c on c.id = b.call_id join billing.holds h on h.id = c.hold_id
      join billing.accounts a on a.id = h.account_id
    where b.id = ${batchId}`;
  return r;
}

/** Charged once, exactly the sum of its lines, its hold no longer active. */
export function settledOnce(m: Json) {
  assert.equal(m.status, 'ended');
  assert.ok(m.captures <= 1, 'at most one capture');
  assert.equal(m.moved, m.lines, 'the ledger moved the sum of its lines');
  assert.equal(m.charged, m.lines, 'the call charged the sum of its lines');
  assert.notEqual(m.hold_status, 'active');
}

/** Every running batch of the user cancelled and read until ended (the shared sync queue stays clean). */
export async function closeAll(userId: string, token: string) {
  const open = await testDb`select id, kind from billing.ai_batches where user_id = ${userId}
    and status in ('submitting', 'in_progress')`;
  const path = (b: Json) => b.kind === 'openai' ? `/batches/${b.id}` : `/messages/batches/${b.id}`;
  for (const b of open) await call(token, 'POST', `${path(b)}/cancel`);
  for (const b of open) await call(token, 'GET', path(b));
}
