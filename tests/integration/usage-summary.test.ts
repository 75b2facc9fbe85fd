// GET /credits/usage/summary and GET /orgs/:id/members/:user_id/usage/summary over real HTTP:
// the totals, models and buckets add up to the charges the ledger made, tokens come only from
// charges it priced, the runway follows the last 7 days' pace, and nobody reads another's (a
// school member no other member's, an outsider none).
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import {
  adminToken,
  api,
  functionsUrl,
  fund,
  key,
  newUser,
  reportUsage,
  testDb,
  userToken,
} from '../support/helpers.ts';
import { dataOf } from '../support/money.ts';
import { person, school, usage } from '../support/orgs.ts';
import type { UsageSummary } from '../../supabase/functions/_shared/contract/index.ts';

/** Token counts by kind: input and output here, the other kinds none (tests/integration/pricing-token-kinds). */
const kinds = (input: number, output: number) => ({
  input,
  output,
  cached_input: 0,
  reasoning: 0,
  images: 0,
  audio_seconds: 0,
});

const summaryOf = async (token: string, query = '') => {
  const r = await api(`/credits/usage/summary${query}`, { token });
  assert.equal(r.status, 200, r.text);
  return r.body.data as unknown as UsageSummary;
};

const charge = async (token: string, model: string, input: number, output: number, metadata?: object) => {
  const r = await reportUsage('/credits/usage', {
    token,
    body: { model, input_tokens: input, output_tokens: output, ...(metadata ? { metadata } : {}) },
    headers: key(),
  });
  assert.equal(r.status, 201, r.text);
  return (r.body.data as { charged: string }).charged;
};

/** Exact decimal sums of credit strings, by the database (no floats). */
const sum = async (amounts: string[]) =>
  (await testDb`select trim_scale(coalesce(sum(a::numeric), 0))::text as s from unnest(${amounts}::text[]) a`)[0].s;

Deno.test('a student sees each model, day and token kind their charges add up to, and a runway', async () => {
  const user = await newUser();
  const token = await userToken(user);
  await fund(user, '1000');
  const empty = await summaryOf(token);
  assert.equal(empty.runway, null, 'no pace without charges');
  assert.equal(empty.totals.requests, 0);
  assert.equal(empty.buckets.length, 30, 'the last 30 days, today included, one bucket each');

  const gpt = [await charge(token, 'gpt-4o', 1000, 500), await charge(token, 'gpt-4o', 2000, 0)];
  // Caller metadata cannot plant token counts: a ledger-owned key is refused (400), nothing charged.
  const planted = await reportUsage('/credits/usage', {
    token,
    body: { model: 'gpt-4o-mini', input_tokens: 1000, output_tokens: 1000, metadata: { input_tokens: 999999999 } },
    headers: key(),
  });
  assert.equal(planted.status, 400, planted.text);
  const mini = [await charge(token, 'gpt-4o-mini', 1000, 1000, { note: 'x' })];
  const hold = await api('/credits/holds', { token, body: { amount: '2' }, headers: key() });
  assert.equal(hold.status, 201, hold.text);
  const holdId = (hold.body.data as { hold_id: string }).hold_id;
  const captured = await api(`/credits/holds/${holdId}/capture`, { token, body: {}, headers: key() });
  assert.equal(captured.status, 200, captured.text);

  const s = await summaryOf(token);
  assert.equal(s.granularity, 'day');
  assert.equal(s.totals.requests, 4);
  assert.equal(s.totals.credits, await sum([...gpt, ...mini, '2']));
  assert.equal(s.totals.school_funded, '0');
  assert.deepEqual(s.totals.tokens, kinds(4000, 1500));
  assert.deepEqual(
    s.models.map((m) => [m.model, m.credits, m.requests, m.tokens]),
    [
      ['gpt-4o', await sum(gpt), 2, kinds(3000, 500)],
      ['other', '2', 1, kinds(0, 0)],
      ['gpt-4o-mini', await sum(mini), 1, kinds(1000, 1000)],
    ].sort((a, b) => Number(b[1]) - Number(a[1])),
    'models by credits, most first; a capture of a hold that named no model is "other"',
  );
  const today = s.buckets.at(-1)!;
  assert.equal(today.start, new Date().toISOString().slice(0, 10));
  assert.equal(today.credits, s.totals.credits, 'all of it today');
  assert.equal(today.requests, 4);
  assert.ok(s.buckets.slice(0, -1).every((b) => b.credits === '0' && b.models.length === 0));

  // The runway: available ÷ (the last 7 days' charges ÷ 7), whole days.
  const [{ days, pace }] = await testDb`
    select floor((1000 - ${s.totals.credits}::numeric) / round(${s.totals.credits}::numeric(38, 18) / 7, 18))::int as days,
      trim_scale(round(${s.totals.credits}::numeric(38, 18) / 7, 18))::text as pace`;
  assert.deepEqual(s.runway, {
    days,
    pace_per_day: pace,
    available: await sum(['1000', `-${s.totals.credits}`]),
    basis_days: 7,
  });

  // Weeks start on Monday (UTC); a range before the charges holds none of them.
  const weekly = await summaryOf(token, '?granularity=week');
  assert.ok(weekly.buckets.every((b) => new Date(`${b.start}T00:00:00Z`).getUTCDay() === 1));
  assert.equal(weekly.buckets.at(-1)!.credits, s.totals.credits);
  const before = await summaryOf(token, '?from=2026-01-01&to=2026-02-01');
  assert.equal(before.totals.requests, 0);
  assert.equal(before.buckets.length, 31);
  assert.notEqual(before.runway, null, 'the runway is of now, whatever the range');

  // Another student's summary holds none of this.
  const other = await summaryOf(await userToken(await newUser()));
  assert.equal(other.totals.requests, 0);
});

Deno.test("a gateway call's tokens count in the student's summary, once even when it cost more than its hold", async () => {
  const user = await newUser();
  const token = await userToken(user);
  await fund(user, '1000');
  const openai = new OpenAI({ baseURL: `${functionsUrl}/ai/v1`, apiKey: token, maxRetries: 0 });
  const ask = (content: string) => [{ role: 'user' as const, content }];
  const a = await openai.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: ask('#standin words=6 cached=4 reasoning=3'),
    max_tokens: 40,
  });
  // Billed more than its hold (extra_prompt: a tokenizer the gateway does not know): the hold's
  // capture and the excess carry the same counts, which count once.
  const b = await openai.chat.completions.create({
    model: 'gpt-4o',
    messages: ask('#standin words=2 extra_prompt=1000'),
    max_tokens: 10,
  });
  const [{ excess }] = await testDb`select count(*)::int as excess from billing.ai_calls c
    join billing.transfers t on t.correlation_id = 'ai:' || c.id and t.kind = 'usage' where c.user_id = ${user}`;
  assert.equal(excess, 1, 'the second call charged an excess beyond its hold');
  const u = [a.usage!, b.usage!];
  const s = await summaryOf(token);
  assert.deepEqual(s.totals.tokens, {
    input: u.reduce((n, x) => n + x.prompt_tokens - (x.prompt_tokens_details?.cached_tokens ?? 0), 0),
    output: u.reduce((n, x) => n + x.completion_tokens - (x.completion_tokens_details?.reasoning_tokens ?? 0), 0),
    cached_input: 4,
    reasoning: 3,
    images: 0,
    audio_seconds: 0,
  });
  assert.equal(s.totals.requests, 3, 'two calls: a capture each, and the excess');
  // A void of the first call's capture takes its tokens back out, as it does its credits.
  const [{ capture }] = await testDb`select c.transfer_id::text as capture from billing.ai_calls c
    where c.user_id = ${user} and c.model = 'gpt-4o-mini'`;
  const voided = await api(`/admin/charges/${capture}/void`, { token: await adminToken(), body: { reason: 'test' } });
  assert.equal(voided.status, 200, voided.text);
  const after = await summaryOf(token);
  assert.deepEqual([after.totals.tokens.cached_input, after.totals.tokens.reasoning], [0, 0]);
  assert.equal(after.totals.tokens.input, s.totals.tokens.input - (a.usage!.prompt_tokens - 4));
});

Deno.test('bad ranges are 400 and name the field', async () => {
  const token = await userToken(await newUser());
  for (
    const q of [
      '?from=2026-02-01&to=2026-01-01',
      '?from=2025-01-01&to=2026-01-03',
      '?granularity=month',
      '?from=yesterday',
      '?from=2026-11-01T00:00:00Z',
      '?user_id=00000000-0000-4000-8000-000000000001',
    ]
  ) {
    const r = await api(`/credits/usage/summary${q}`, { token });
    assert.equal(r.status, 400, q);
    assert.equal((r.body.error as { code: string }).code, 'VALIDATION_FAILED', q);
  }
  // An instant where a date is wanted says which form is: not "at most 10 characters".
  const instant = await api('/credits/usage/summary?from=2026-11-01T00:00:00Z', { token });
  assert.equal((instant.body.error as { message: string }).message, 'from must be a date (YYYY-MM-DD).');
  // The SQL function guards its own range too (a caller of SQL, not HTTP).
  await assert.rejects(
    testDb`select billing.usage_summary(gen_random_uuid(), current_date, current_date - 1, 'day')`,
    /INVALID_RANGE/,
  );
});

Deno.test('school-funded usage: the member sees it as school_funded; admins see any member, members only themselves', async () => {
  const [owner, ada, bo, outsider] = await Promise.all(['owner', 'ada', 'bo', 'outsider'].map(person));
  const org = await school(owner, [ada, bo]);
  // 40 credits to each member's allowance.
  const funded = await api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount: '40' }, headers: key() });
  assert.equal(funded.status, 201, funded.text);
  const charged = await usage(ada.token);
  assert.equal(charged.status, 201, charged.text);
  const credits = (charged.body.data as { charged: string }).charged;

  const own = await summaryOf(ada.token);
  assert.equal(own.totals.credits, credits);
  assert.equal(own.totals.school_funded, credits);
  assert.equal(own.runway, null, 'her own account paid nothing: no pace of hers');

  const path = (who: string) => `/orgs/${org}/members/${who}/usage/summary`;
  const byAdmin = await api(path(ada.id), { token: owner.token });
  assert.equal(byAdmin.status, 200, byAdmin.text);
  const seen = byAdmin.body.data as unknown as UsageSummary;
  assert.equal(seen.totals.credits, credits);
  assert.deepEqual(seen.totals.tokens, kinds(1000, 1000));
  const [{ pace }] = await testDb`select trim_scale(round(${credits}::numeric(38, 18) / 7, 18))::text as pace`;
  assert.equal(seen.runway?.pace_per_day, pace, 'the runway of her allowance');
  assert.equal(seen.runway?.available, await sum(['40', `-${credits}`]));

  const byHerself = await api(path(ada.id), { token: ada.token });
  assert.equal(byHerself.status, 200);
  const byPeer = await api(path(ada.id), { token: bo.token });
  assert.equal(byPeer.status, 403);
  assert.equal((byPeer.body.error as { code: string }).code, 'ORG_FORBIDDEN');
  const byOutsider = await api(path(ada.id), { token: outsider.token });
  assert.equal(byOutsider.status, 404);
  // Another organisation's admin learns nothing about this one's members through their own.
  const otherOrg = await school(outsider, [], 'allowance', null);
  const across = await api(`/orgs/${otherOrg}/members/${ada.id}/usage/summary`, { token: outsider.token });
  assert.equal(across.status, 200);
  assert.equal((across.body.data as unknown as UsageSummary).totals.requests, 0);
});

Deno.test("a school member cannot read another member's usage summary, nor an outsider any", async () => {
  const [owner, ada, bob, eve] = await Promise.all(['owner', 'ada', 'bob', 'eve'].map(person));
  const org = await school(owner, [ada, bob], 'pool', '100');
  const used = await reportUsage('/credits/usage', {
    token: ada.token,
    headers: key(),
    body: { model: 'gpt-4o-mini', input_tokens: 1000, output_tokens: 1000 },
  });
  assert.equal(used.status, 201, used.text);
  for (const [who, token] of [['bob', bob.token], ['eve', eve.token]] as const) {
    const r = await api(`/orgs/${org}/members/${ada.id}/usage/summary`, { token });
    assert.ok([403, 404].includes(r.status), `${who}: ${r.status} ${r.text}`);
    assert.ok(!r.text.includes('"credits":"0.'), r.text);
  }
  const own = await api(`/orgs/${org}/members/${bob.id}/usage/summary`, { token: bob.token });
  assert.equal(own.status, 200, own.text);
  const admin = await api(`/admin/charges/${dataOf(used).transfer_id}/void`, {
    token: ada.token,
    body: { reason: 'mine' },
  });
  assert.equal(admin.status, 403, admin.text);
});
