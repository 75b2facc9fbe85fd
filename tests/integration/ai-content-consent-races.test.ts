// Attack on issue #54 (the AI call log, its metrics and alerts, content kept only with consent),
// by someone who did not write it, holding only students' tokens and the tokens of a school's
// owner for a school the attacker created. Operator credentials only set things up and read the
// tables and logs. A test that fails on today's code is a hole; the rest are regressions.
import assert from 'node:assert/strict';
import { ask, student } from '../support/ai.ts';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  env,
  functionsUrl,
  key,
  pgLogFrom,
  pgLogSince,
  testDb,
  until,
} from '../support/helpers.ts';
import { person, school } from '../support/orgs.ts';
import { orgGrant } from '../support/lots.ts';

// deno-lint-ignore no-explicit-any
type Json = any;
const data = (r: { body: Record<string, unknown> }) => r.body.data as Json;

/** The user's newest calls (every one settled). */
async function settledCalls(userId: string, n = 1) {
  return await until('calls settled', async () => {
    const rows = await testDb`select id, status, failure, org_id, keep_content, model, charged::text, answer
      from billing.ai_calls where user_id = ${userId} order by seq desc`;
    return rows.length >= n && rows.every((r) => r.status !== 'held') && rows;
  }, 20_000);
}

const keptOf = async (callId: string) =>
  await testDb`select prompt_redacted, response_redacted from billing.ai_logs where call_id = ${callId}`;

/** A streamed chat call read slowly: `during` runs after the first chunk, before the rest is read. */
async function streamWith(token: string, prompt: string, during: () => Promise<void>) {
  const res = await fetch(`${functionsUrl}/ai/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: ask(prompt), stream: true, max_tokens: 200 }),
  });
  assert.equal(res.status, 200);
  const reader = res.body!.getReader();
  await reader.read();
  await during();
  for (;;) if ((await reader.read()).done) break;
}

const cursor = (position: string) => btoa(position).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');

// ============================================================ 2. content without consent

Deno.test('consent withdrawn while a call runs: nothing of that call is kept once the student said no', async () => {
  const s = await student();
  const on = await api('/ai/v1/content-consent', { method: 'PUT', token: s.token, body: { keep_content: true } });
  assert.equal(on.status, 200, on.text);
  const marker = `midcall${crypto.randomUUID().replaceAll('-', '')}`;
  await streamWith(s.token, `#standin words=15 delay=150 ${marker}`, async () => {
    const off = await api('/ai/v1/content-consent', { method: 'PUT', token: s.token, body: { keep_content: false } });
    assert.equal(off.status, 200, off.text);
    assert.equal(data(off).keep_content, false);
  });
  const [call] = await settledCalls(s.id);
  assert.equal(call.status, 'charged');
  const kept = await keptOf(call.id);
  const mine = await api(`/ai/v1/calls/${call.id}`, { token: s.token });
  console.log('consent withdrawn mid-call:', { kept: kept.length, content_kept: data(mine).content_kept });
  assert.equal(kept.length, 0, `the prompt (${marker}) was kept after the student withdrew consent`);
});

Deno.test('content deleted by its owner while the call runs stays deleted', async () => {
  const s = await student();
  await api('/ai/v1/content-consent', { method: 'PUT', token: s.token, body: { keep_content: true } });
  await streamWith(s.token, '#standin words=15 delay=150 delete me', async () => {
    const [held] = await testDb`select id from billing.ai_calls where user_id = ${s.id} and status = 'held'`;
    const del = await api(`/ai/v1/calls/${held.id}/content`, { method: 'DELETE', token: s.token });
    assert.equal(del.status, 200, del.text);
    assert.equal(data(del).content_kept, false);
  });
  const [call] = await settledCalls(s.id);
  const mine = await api(`/ai/v1/calls/${call.id}`, { token: s.token });
  console.log('deleted mid-call, then:', { content_kept: data(mine).content_kept });
  assert.equal(data(mine).content, null, 'the content the student deleted (and was told is gone) came back');
});

Deno.test("a school's consent withdrawn while a member's call runs: nothing of that call is kept", async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', '1000');
  const on = await api(`/orgs/${org}`, { method: 'PATCH', token: owner.token, body: { ai_content_consent: true } });
  assert.equal(on.status, 200, on.text);
  await streamWith(ada.token, '#standin words=15 delay=150 pooled mid-call', async () => {
    const off = await api(`/orgs/${org}`, { method: 'PATCH', token: owner.token, body: { ai_content_consent: false } });
    assert.equal(off.status, 200, off.text);
  });
  const [call] = await settledCalls(ada.id);
  assert.equal(call.org_id, org, 'the school paid');
  const kept = await keptOf(call.id);
  assert.equal(kept.length, 0, "the member's prompt was kept after the school withdrew consent");
});

Deno.test("a school's consent covers only the calls it pays: a member's own-credit calls, an outsider's, a removed member's", async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  // A pool with nothing in it: Ada's calls fall on her own credits.
  const org = await school(owner, [ada], 'pool', null);
  await testDb`select 1`; // (no grant)
  const grant = await api('/credits/grants', {
    token: await adminToken(),
    headers: key(),
    body: { user_id: ada.id, amount: '100', reason: 'own', kind: 'promo_grant' },
  });
  assert.equal(grant.status, 201, grant.text);
  const on = await api(`/orgs/${org}`, { method: 'PATCH', token: owner.token, body: { ai_content_consent: true } });
  assert.equal(on.status, 200, on.text);
  const r = await api('/ai/v1/chat/completions', {
    token: ada.token,
    body: { model: 'gpt-4o-mini', messages: ask('#standin words=2 own credits'), max_tokens: 10 },
  });
  console.log('member on own credits, school consented:', r.status, r.text.slice(0, 200));
  assert.equal(r.status, 200, r.text);
  const calls = await settledCalls(ada.id);
  assert.equal(calls[0].org_id, null, 'her own credits paid (the pool is empty)');
  for (const c of calls.filter((c) => c.status !== 'refused')) {
    if (c.org_id === null) {
      assert.equal(c.keep_content, false, 'kept a call the school did not pay');
      assert.equal((await keptOf(c.id)).length, 0);
    }
  }
  // Removed: her later calls are hers alone.
  const removed = await api(`/orgs/${org}/members/${ada.id}`, { method: 'DELETE', token: owner.token });
  assert.equal(removed.status, 200, removed.text);
  const r2 = await api('/ai/v1/chat/completions', {
    token: ada.token,
    body: { model: 'gpt-4o-mini', messages: ask('#standin words=2 after removal'), max_tokens: 10 },
  });
  assert.equal(r2.status, 200, r2.text);
  const [after] = await settledCalls(ada.id);
  assert.deepEqual([after.org_id, after.keep_content, (await keptOf(after.id)).length], [null, false, 0]);
  // The school's consent status says nothing of a student who is not a member.
  const seen = await api('/ai/v1/content-consent', { token: ada.token });
  assert.deepEqual(data(seen).schools_keeping, []);
});

Deno.test('no prompt text is kept without consent: a Responses call with an Idempotency-Key keeps its instructions verbatim (unredacted) for 24 h', async () => {
  const s = await student();
  const marker = `instr${crypto.randomUUID().replaceAll('-', '')}`;
  const instructions = `You tutor ${marker}; the student is grace.hopper@example.com, SSN 123-45-6789.`;
  for (const stream of [false, true]) {
    const res = await fetch(`${functionsUrl}/ai/v1/responses`, {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json', ...key() },
      body: JSON.stringify({
        model: 'gpt-4o-mini',
        instructions,
        input: '#standin words=2',
        max_output_tokens: 20,
        stream,
      }),
    });
    assert.equal(res.status, 200);
    await res.text();
  }
  await settledCalls(s.id, 2);
  const consent = await api('/ai/v1/content-consent', { token: s.token });
  assert.equal(data(consent).keep_content, false, 'the student never consented');
  const [{ n, email }] = await testDb`select count(*)::int as n,
      bool_or(c::text like '%grace.hopper@example.com%') as email
    from billing.ai_calls c where c.user_id = ${s.id} and c::text like ${`%${marker}%`}`;
  console.log('instructions kept in ai_calls.answer without consent:', { calls: n, unredacted_email: email });
  assert.equal(n, 0, `${n} call records keep the caller's instructions (prompt text) without consent`);
});

Deno.test('withdrawing consent leaves no copy of the content: the replay copy of a consented call holds none of its prompt', async () => {
  const s = await student();
  await api('/ai/v1/content-consent', { method: 'PUT', token: s.token, body: { keep_content: true } });
  const marker = `replay${crypto.randomUUID().replaceAll('-', '')}`;
  const k = key();
  const body = JSON.stringify({
    model: 'gpt-4o-mini',
    instructions: `tutor ${marker}`,
    input: '#standin words=2',
    max_output_tokens: 20,
  });
  const send = () =>
    fetch(`${functionsUrl}/ai/v1/responses`, {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json', ...k },
      body,
    });
  const first = await send();
  assert.equal(first.status, 200);
  await first.text();
  const [call] = await settledCalls(s.id);
  assert.equal((await keptOf(call.id)).length, 1, 'kept with consent');
  await api('/ai/v1/content-consent', { method: 'PUT', token: s.token, body: { keep_content: false } });
  assert.equal((await keptOf(call.id)).length, 0, 'withdrawal deleted the kept content');
  // The replay still answers (its key asked for that), but from a copy that holds none of the
  // prompt: what it echoes comes from the request sent again.
  const again = await send();
  assert.equal(again.headers.get('idempotent-replayed'), 'true');
  assert.ok((await again.text()).includes(marker), 'the replay echoes the instructions it was sent');
  const [{ n }] = await testDb`select count(*)::int as n from billing.ai_calls c
    where c.user_id = ${s.id} and c::text like ${`%${marker}%`}`;
  assert.equal(n, 0, 'no copy of the prompt is stored');
});

// ============================================================ 1. reading others' calls

Deno.test("a student, a school owner and a member never read another's calls or content (filters, cursors, ids, admin routes)", async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', '1000');
  await api(`/orgs/${org}`, { method: 'PATCH', token: owner.token, body: { ai_content_consent: true } });
  const r = await api('/ai/v1/chat/completions', {
    token: ada.token,
    body: { model: 'gpt-4o-mini', messages: ask('#standin words=2 secret homework'), max_tokens: 10 },
  });
  assert.equal(r.status, 200, r.text);
  const [adaCall] = await settledCalls(ada.id);
  assert.equal((await keptOf(adaCall.id)).length, 1);
  const eve = await student();
  for (const who of [eve.token, owner.token]) {
    const forged = ['9223372036854775807', '0', '-1', `${Number.MAX_SAFE_INTEGER}`].map(cursor);
    for (
      const q of [
        '',
        '?limit=100',
        '?model=gpt-4o-mini&outcome=charged',
        ...forged.map((f) => `?cursor=${f}&limit=100`),
      ]
    ) {
      const list = await api(`/ai/v1/calls${q}`, { token: who });
      assert.ok(list.status === 200 || list.status === 400, list.text);
      assert.ok(!list.text.includes(adaCall.id), `GET /ai/v1/calls${q} showed another's call`);
    }
    for (const q of [`?user_id=${ada.id}`, `?org_id=${org}`, `?user=${ada.id}`]) {
      const list = await api(`/ai/v1/calls${q}`, { token: who });
      assert.equal(list.status, 400, `GET /ai/v1/calls${q}: ${list.text}`);
    }
    assert.equal((await api(`/ai/v1/calls/${adaCall.id}`, { token: who })).status, 404);
    const del = await api(`/ai/v1/calls/${adaCall.id}/content`, { method: 'DELETE', token: who });
    assert.equal(del.status, 404);
    for (const p of ['/admin/ai/calls', `/admin/ai/calls/${adaCall.id}`, '/admin/ai/stats', '/admin/ai/summary']) {
      const a = await api(`${p}${p.endsWith('calls') ? `?org_id=${org}` : ''}`, { token: who });
      assert.ok(a.status === 401 || a.status === 403, `${p}: ${a.status}`);
    }
  }
  // The content is still there: no one else deleted it.
  assert.equal((await keptOf(adaCall.id)).length, 1);
  // A member reads nothing of the school's other calls (the owner's own).
  const o = await api('/ai/v1/chat/completions', {
    token: owner.token,
    body: { model: 'gpt-4o-mini', messages: ask('#standin words=2 owner'), max_tokens: 10 },
  });
  if (o.status === 200) {
    const [ownerCall] = await settledCalls(owner.id);
    assert.equal((await api(`/ai/v1/calls/${ownerCall.id}`, { token: ada.token })).status, 404);
  }
});

// ============================================================ 3. flooding the log

Deno.test("refusals are recorded no faster than the per-student AI limit, and keep none of the caller's text", async () => {
  const s = await student();
  // A name the schema accepts (64 characters at most) but no rate card has.
  const made = `ZZZZ-${crypto.randomUUID()}`;
  const left = 60_000 - (Date.now() % 60_000);
  if (left < 25_000) await new Promise((r) => setTimeout(r, left + 50));
  const statuses: number[] = [];
  for (let i = 0; i < 90; i += 10) {
    const batch = await Promise.all(Array.from({ length: 10 }, (_, j) => {
      const path = ['/ai/v1/chat/completions', '/ai/v1/responses', '/ai/v1/embeddings', '/ai/v1/messages'][j % 4];
      const body = path.endsWith('responses')
        ? { model: made, input: 'hi' }
        : path.endsWith('embeddings')
        ? { model: made, input: 'hi' }
        : { model: made, messages: ask('hi'), max_tokens: 10 };
      return api(path, { token: s.token, body });
    }));
    statuses.push(...batch.map((b) => b.status));
  }
  const [{ n, widest }] = await testDb`select count(*)::int as n,
      coalesce(max(length(c::text)), 0)::int as widest from billing.ai_calls c where c.user_id = ${s.id}`;
  const limited = statuses.filter((x) => x === 429).length;
  console.log('refusal flood:', { sent: statuses.length, rows: n, rate_limited: limited, widest_row_chars: widest });
  assert.ok(n > 0, 'the refusals were recorded');
  assert.ok(n <= 60, `${n} rows in one minute: more than the per-student AI limit`);
  assert.ok(widest < 2000, `a refusal row holds ${widest} characters`);
  const [{ leaked }] = await testDb`select count(*)::int as leaked from billing.ai_calls c
    where c.user_id = ${s.id} and c::text like '%ZZZZ%'`;
  assert.equal(leaked, 0, 'a refusal kept the made-up model name');
});

Deno.test('content kept with consent is capped at 64 KiB of each text, in bytes (not 64 Ki UTF-16 units)', async () => {
  const s = await student('100000');
  await api('/ai/v1/content-consent', { method: 'PUT', token: s.token, body: { keep_content: true } });
  // 70,000 characters of a three-byte letter, each its own word so the count stays modest.
  const prompt = `#standin words=2 ${'中 '.repeat(35_000)}`;
  const r = await api('/ai/v1/chat/completions', {
    token: s.token,
    body: { model: 'gpt-4o-mini', messages: ask(prompt), max_tokens: 10 },
  });
  assert.equal(r.status, 200, r.text.slice(0, 300));
  const [call] = await settledCalls(s.id);
  const [row] = await testDb`select octet_length(prompt_redacted)::int as bytes, length(prompt_redacted)::int as chars
    from billing.ai_logs where call_id = ${call.id}`;
  console.log('kept prompt size:', row);
  assert.ok(row.bytes <= 65_536 + 64, `the kept prompt is ${row.bytes} bytes (${row.chars} characters)`);
});

// ============================================================ 4. metrics and alerts

Deno.test('metric labels and alert conditions come only from the rate card: a hostile model name, a refused priced model, an error on one model', async () => {
  const s = await student();
  const hostile = `evil"} 1\nscholarlink_pwned{x="${crypto.randomUUID().slice(0, 6)}`;
  const r = await api('/ai/v1/chat/completions', {
    token: s.token,
    body: { model: hostile, messages: ask('hi'), max_tokens: 5 },
  });
  assert.equal(r.status, 400, r.text); // refused by the schema: recorded, its name never (not on the rate card)
  const made = `evil.${crypto.randomUUID().slice(0, 8)}`; // a valid name on no rate card: recorded, model null
  const r2 = await api('/ai/v1/chat/completions', {
    token: s.token,
    body: { model: made, messages: ask('hi'), max_tokens: 5 },
  });
  assert.equal(r2.status, 400, r2.text);
  // An error on gpt-4o counts against gpt-4o only.
  await api('/ai/v1/chat/completions', {
    token: s.token,
    body: { model: 'gpt-4o', messages: ask('#standin fail=500'), max_tokens: 5 },
  });
  const calls = await settledCalls(s.id, 3);
  assert.deepEqual(calls.map((c) => [c.status, c.model, c.failure]), [
    ['failed', 'gpt-4o', 'PROVIDER_ERROR_500'],
    ['refused', null, 'UNKNOWN_MODEL'],
    ['refused', null, 'VALIDATION_FAILED'],
  ]);
  const res = await fetch(`${functionsUrl}/health/metrics`, {
    headers: { authorization: `Bearer ${env('METRICS_TOKEN')}` },
  });
  const text = await res.text();
  assert.ok(!text.includes('scholarlink_pwned') && !text.includes('evil'), 'the hostile name reached the metrics');
  const [{ stored }] = await testDb`select count(*)::int as stored from billing.ai_calls c
    where c.user_id = ${s.id} and c::text like '%evil%'`;
  assert.equal(stored, 0, 'a made-up name was stored');
  for (const line of text.split('\n').filter((l) => l.startsWith('scholarlink_ai_'))) {
    const model = /model="([^"]*)"/.exec(line)?.[1];
    if (model === undefined) continue;
    const [{ priced }] =
      await testDb`select exists (select 1 from billing.rate_cards where model = ${model}) as priced`;
    assert.ok(priced || model === '(unpriced)', `label model="${model}" is not on the rate card`);
  }
  await testDb`select count(*) from billing.evaluate_alerts()`;
  const bad = await testDb`select condition from billing.alerts where condition like 'ai_%' and
    substr(condition, strpos(condition, ':') + 1) <> '' and condition like '%:%'
    and not exists (select 1 from billing.rate_cards r where r.model = substr(alerts.condition, strpos(alerts.condition, ':') + 1))`;
  assert.deepEqual(bad.map((b) => b.condition), [], 'an AI alert names a model not on the rate card');
});

// ============================================================ 5. money: recording changes no charge

Deno.test('20 parallel calls on a balance for a few: refusals charge nothing, every record matches the ledger', async () => {
  const s = await student('0.2');
  const rs = await Promise.all(Array.from({ length: 20 }, () =>
    api('/ai/v1/chat/completions', {
      token: s.token,
      body: { model: 'gpt-4o-mini', messages: ask('#standin words=5 first_byte_delay=200'), max_tokens: 20 },
    })));
  const calls = await settledCalls(s.id, 20);
  const by = (st: string) => calls.filter((c) => c.status === st).length;
  console.log('20 parallel:', rs.map((r) => r.status).join(','), { charged: by('charged'), refused: by('refused') });
  assert.equal(calls.length, 20, 'one record per request');
  assert.equal(by('charged'), rs.filter((r) => r.status === 200).length);
  for (const c of calls.filter((c) => c.status !== 'charged')) assert.equal(Number(c.charged ?? 0), 0);
  const [{ ledger, records }] = await testDb`select
      (select trim_scale(coalesce(sum(t.amount), 0))::text from billing.transfers t
        join billing.accounts a on a.id = t.from_account_id where a.user_id = ${s.id}) as ledger,
      (select trim_scale(coalesce(sum(c.charged), 0))::text from billing.ai_calls c where c.user_id = ${s.id}) as records`;
  assert.equal(records, ledger, 'the records charged what the ledger moved');
  await assertLedgerInvariants();
});

/** The balance of an organisation's pooled wallet, in exact text. */
const poolBalance = async (org: string) =>
  (await testDb`select trim_scale(balance)::text as b from billing.accounts where org_id = ${org} and member_id is null`)[
    0
  ]
    .b as string;

/**
 * A pool school (its owner the attacker's other self) whose wallet of 1 credit could not pay Ada's
 * call (the provider billed 200,000 prompt tokens more than the gateway counted): the pool was
 * charged it whole and is in debt. The platform then tops the pool up with an odd amount, less
 * than the debt (paying it first), and Ada holds `own` credits of her own.
 */
async function poolInDebt(own: string | null) {
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', '1');
  const r = await api('/ai/v1/chat/completions', {
    token: ada.token,
    body: { model: 'gpt-4o-mini', messages: ask('#standin words=3 extra_prompt=200000'), max_tokens: 10 },
  });
  assert.equal(r.status, 200, r.text);
  const [call] = await settledCalls(ada.id);
  const [{ debt }] = await testDb`select trim_scale(1 - ${call.charged}::numeric)::text as debt`;
  assert.ok(Number(debt) < -50, `the pool owes ${debt}`);
  assert.equal(await poolBalance(org), debt, "the pool was charged Ada's call whole");
  await orgGrant(org, '37.4242', 'adjustment');
  const [{ left }] = await testDb`select trim_scale(37.4242 + ${debt}::numeric)::text as left`;
  assert.equal(await poolBalance(org), left, 'the top-up paid what it could of the debt');
  if (own) {
    const granted = await api('/credits/grants', {
      token: await adminToken(),
      headers: key(),
      body: { user_id: ada.id, amount: own, reason: 'own', kind: 'promo_grant' },
    });
    assert.equal(granted.status, 201, granted.text);
  }
  return { owner, ada, org, poolBalance: left };
}

Deno.test("the 402 for a school's pool in debt never tells a member (or a removed one) the school's balance", async () => {
  const { owner, ada, org, poolBalance } = await poolInDebt(null);
  const call = () =>
    api('/ai/v1/chat/completions', {
      token: ada.token,
      body: { model: 'gpt-4o-mini', messages: ask('#standin words=3'), max_tokens: 10 },
    });
  const asMember = await call();
  const removed = await api(`/orgs/${org}/members/${ada.id}`, { method: 'DELETE', token: owner.token });
  assert.equal(removed.status, 200, removed.text);
  const asFormer = await call();
  console.log('402s:', asMember.status, asMember.text.slice(0, 260), '|', asFormer.status);
  for (const r of [asMember, asFormer]) {
    assert.equal(r.status, 402, r.text);
    for (const figure of ['37.4242', poolBalance, poolBalance.replace(/^-/, '')]) {
      assert.ok(!r.text.includes(figure), `the school's wallet (${figure}) is in the answer: ${r.text}`);
    }
  }
});

Deno.test("a removed member's own credits still pay her own calls: the debt of the school's pool stays the school's", async () => {
  const { owner, ada, org, poolBalance: debt } = await poolInDebt('100');
  const removed = await api(`/orgs/${org}/members/${ada.id}`, { method: 'DELETE', token: owner.token });
  assert.equal(removed.status, 200, removed.text);
  const r = await api('/ai/v1/chat/completions', {
    token: ada.token,
    body: { model: 'gpt-4o-mini', messages: ask('#standin words=3'), max_tokens: 10 },
  });
  console.log('former member, 100 own credits:', r.status, r.text.slice(0, 200));
  assert.equal(r.status, 200, "a school she left (and that can't pay its own debt) blocks her own credits");
  const cost = (r.body.usage as { cost: string }).cost;
  const [{ own }] = await testDb`select trim_scale(100 - ${cost}::numeric)::text as own`;
  const [mine] = await testDb`select trim_scale(balance)::text as b from billing.accounts where user_id = ${ada.id}`;
  assert.equal(mine.b, own, 'her own credits paid her call');
  assert.equal(await poolBalance(org), debt, "the pool's debt is untouched by her");
  await assertLedgerInvariants();
});

// ============================================================ 6. text and numbers Postgres refuses

Deno.test('every new route refuses hostile text and numbers without a 5xx, storing nothing, logging nothing', async () => {
  const s = await student();
  const admin = await adminToken();
  const mark = await pgLogFrom();
  const nul = '%00';
  const lone = '%ED%A0%80';
  const queries = [
    `cursor=${cursor('9223372036854775808')}`,
    `cursor=${cursor('9223372036854775807')}`,
    `cursor=${cursor('-1')}`,
    `cursor=${cursor('1e3')}`,
    `cursor=${cursor('0x10')}`,
    `cursor=${cursor(' 1')}`,
    `cursor=9223372036854775808`,
    `cursor=-1`,
    `cursor=1e3`,
    `cursor=0x10`,
    `cursor=${nul}`,
    `limit=1000000000`,
    `limit=-0`,
    `limit=1e2`,
    `model=${nul}`,
    `model=${lone}`,
    `model=${'m'.repeat(5000)}`,
    `outcome=${nul}`,
    `outcome=held%00`,
  ];
  const results: [string, number][] = [];
  for (const q of queries) {
    results.push([`/ai/v1/calls?${q}`, (await api(`/ai/v1/calls?${q}`, { token: s.token })).status]);
  }
  for (
    const q of [
      ...queries,
      `from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z`,
      `from=${nul}`,
      `to=99999-01-01`,
      `from=-infinity`,
      `user_id=${nul}`,
      `user_id=00000000-0000-0000-0000-00000000000g`,
      `org_id=${lone}`,
      `format=csv&cursor=9223372036854775807&model=${lone}`,
    ]
  ) {
    results.push([`/admin/ai/calls?${q}`, (await api(`/admin/ai/calls?${q}`, { token: admin })).status]);
  }
  for (const q of [`from=2026-01-02&to=2026-01-01`, `from=0000-01-01&to=0000-01-02`, `from=${nul}`, `to=2026-02-30`]) {
    results.push([`/admin/ai/summary?${q}`, (await api(`/admin/ai/summary?${q}`, { token: admin })).status]);
  }
  for (const id of [nul, lone, 'not-a-uuid', '00000000-0000-0000-0000-000000000000%00', 'x'.repeat(5000)]) {
    results.push([`GET /ai/v1/calls/${id.slice(0, 20)}`, (await api(`/ai/v1/calls/${id}`, { token: s.token })).status]);
    results.push([
      `DELETE /ai/v1/calls/${id.slice(0, 20)}/content`,
      (await api(`/ai/v1/calls/${id}/content`, { method: 'DELETE', token: s.token })).status,
    ]);
    results.push([
      `GET /admin/ai/calls/${id.slice(0, 20)}`,
      (await api(`/admin/ai/calls/${id}`, { token: admin })).status,
    ]);
  }
  for (
    const body of [
      '{"keep_content":"true"}',
      '{"keep_content":1}',
      '{"keep_content":true,"x\\u0000":1}',
      '{"keep_content":"\\ud800"}',
      '[]',
      'null',
    ]
  ) {
    const r = await fetch(`${functionsUrl}/ai/v1/content-consent`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
      body,
    });
    await r.text();
    results.push([`PUT content-consent ${body}`, r.status]);
  }
  const fives = results.filter(([, st]) => st >= 500);
  const log = await pgLogSince(mark);
  console.log('hostile inputs:', results.length, 'requests;', fives.length, '5xx');
  assert.deepEqual(fives, [], 'a 5xx');
  assert.deepEqual(results.filter(([p, st]) => p.startsWith('PUT') && st === 200), [], 'a malformed consent accepted');
  const [{ consent }] =
    await testDb`select count(*)::int as consent from billing.ai_content_consent where user_id = ${s.id}`;
  assert.equal(consent, 0, 'a malformed body gave consent');
  assert.ok(!/ERROR|invalid input|out of range/i.test(log), `the Postgres log grew:\n${log.slice(0, 2000)}`);
});

Deno.test('kept content never reaches the Postgres log or the local logs', async () => {
  const mark = await pgLogFrom();
  const s = await student();
  await api('/ai/v1/content-consent', { method: 'PUT', token: s.token, body: { keep_content: true } });
  const marker = `pglog${crypto.randomUUID().replaceAll('-', '')}`;
  for (const d of ['words=2', 'fail=500', 'fail=400']) {
    await api('/ai/v1/chat/completions', {
      token: s.token,
      body: { model: 'gpt-4o-mini', messages: ask(`#standin ${d} ${marker}`), max_tokens: 10 },
    });
  }
  // Refused before the provider: past AI_MAX_OUTPUT_TOKENS, not to be cut.
  await api('/ai/v1/chat/completions', {
    token: s.token,
    headers: { 'x-ai-clamp': 'off' },
    body: { model: 'gpt-4o-mini', messages: ask(marker), max_tokens: 99999 },
  });
  await settledCalls(s.id, 3);
  assert.ok(!(await pgLogSince(mark)).includes(marker), 'the Postgres log holds the prompt');
  for await (const f of Deno.readDir('.local/logs')) {
    if (!f.isFile) continue;
    assert.ok(!(await Deno.readTextFile(`.local/logs/${f.name}`)).includes(marker), `.local/logs/${f.name}`);
  }
});
