// Rate-card drafts over real HTTP (docs/pricing.md): admins only, drafts price nothing, the dry
// run re-prices past usage without moving money, publishing is never retroactive, idempotent
// per draft and audited; and what a student can try against it.
import assert from 'node:assert/strict';
import {
  api,
  assertLedgerInvariants,
  key,
  newAdmin,
  reportUsage,
  student,
  testDb,
  userToken,
} from '../support/helpers.ts';

type Json = Record<string, unknown>;
const data = (r: { body: Json }) => r.body.data as Json;
const error = (r: { body: Json }) => r.body.error as Json;

async function admin() {
  const id = await newAdmin();
  return { id, token: await userToken(id, { admin: true }) };
}

/** A model of its own ($1 / $2 a million, ×1), so no other test's charges enter its dry run. */
async function ownModel(): Promise<string> {
  const model = `draft-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from) values (${model}, 1, 1, 2, 1, now() - interval '1 minute')`;
  return model;
}

const draft = (token: string, body: Json) => api('/admin/rate-cards/drafts', { token, body });
const usage = (token: string, model: string, input: number, output: number) =>
  reportUsage('/credits/usage', { token, headers: key(), body: { model, input_tokens: input, output_tokens: output } });

Deno.test('rate-card routes answer 403 FORBIDDEN to a student, whatever they send', async () => {
  const s = await student();
  const id = crypto.randomUUID();
  const calls = [
    api('/admin/rate-cards', { token: s.token }),
    draft(s.token, {
      model: 'gpt-4o',
      usd_per_million_input: '0',
      usd_per_million_output: '0',
      markup: '1',
      reason: 'x',
    }),
    api(`/admin/rate-cards/drafts/${id}/simulation`, { token: s.token }),
    api(`/admin/rate-cards/drafts/${id}/publish`, { token: s.token, body: { reason: 'x' } }),
    api(`/admin/rate-cards/drafts/${id}/discard`, { token: s.token, body: { reason: 'x' } }),
  ];
  for (const r of await Promise.all(calls)) {
    assert.equal(r.status, 403, r.text);
    assert.equal(error(r).code, 'FORBIDDEN');
  }
});

Deno.test('a draft prices nothing: a model with only a draft is 400 UNKNOWN_MODEL, a priced one keeps its price', async () => {
  const a = await admin();
  const model = await ownModel();
  const fresh = `draft-only-${crypto.randomUUID().slice(0, 8)}`;
  for (const m of [model, fresh]) {
    const r = await draft(a.token, {
      model: m,
      usd_per_million_input: '0',
      usd_per_million_output: '0',
      markup: '1',
      reason: 'free for all',
    });
    assert.equal(r.status, 201, r.text);
    assert.equal(data(r).status, 'draft');
  }
  const s = await student('100000');
  const unknown = await usage(s.token, fresh, 1000, 1000);
  assert.equal(unknown.status, 400);
  assert.equal(error(unknown).code, 'UNKNOWN_MODEL');
  const priced = await usage(s.token, model, 1_000_000, 0);
  assert.equal(priced.status, 201);
  assert.equal(data(priced).charged, '1000');
});

Deno.test('the dry run re-prices past usage per student and organisation, and moves no money', async () => {
  const a = await admin();
  const model = await ownModel();
  const s1 = await student('100000'), s2 = await student('100000');
  assert.equal((await usage(s1.token, model, 1_000_000, 1_000_000)).status, 201); // 3,000
  assert.equal((await usage(s2.token, model, 2_000_000, 0)).status, 201); // 2,000
  const d = await draft(a.token, {
    model,
    usd_per_million_input: '2',
    usd_per_million_output: '2',
    markup: '1',
    reason: 'input doubles',
  });
  const [before] = await testDb`select count(*)::int as n, sum(balance)::text as total from billing.accounts`;
  const [{ transfers }] = await testDb`select count(*)::int as transfers from billing.transfers`;
  const from = new Date(Date.now() - 3_600_000).toISOString(), to = new Date(Date.now() + 60_000).toISOString();
  const r = await api(`/admin/rate-cards/drafts/${data(d).id}/simulation?from=${from}&to=${to}`, { token: a.token });
  assert.equal(r.status, 200, r.text);
  const sim = data(r) as {
    totals: Json;
    most_affected: Json[];
    by_organisation: Json[];
    distribution: { buckets: Json[] };
  };
  assert.deepEqual(
    [sim.totals.charges, sim.totals.students, sim.totals.before, sim.totals.after, sim.totals.change_percent],
    [2, 2, '5000', '8000', '60'],
  );
  assert.deepEqual(sim.most_affected.map((m) => [m.user_id, m.before, m.after]), [
    [s2.id, '2000', '4000'],
    [s1.id, '3000', '4000'],
  ]);
  assert.deepEqual(sim.by_organisation.map((o) => [o.org_id, o.students, o.change]), [[null, 2, '3000']]);
  assert.equal(sim.distribution.buckets.find((b) => b.bucket === 'up more than 50%')?.students, 1);
  const [after] = await testDb`select count(*)::int as n, sum(balance)::text as total from billing.accounts`;
  const [{ transfers: transfersAfter }] = await testDb`select count(*)::int as transfers from billing.transfers`;
  assert.deepEqual(after, before, 'no balance moved');
  assert.equal(transfersAfter, transfers, 'no transfer written');
});

Deno.test('publishing: never in the past, later than now takes effect later, replays, and is audited', async () => {
  const a = await admin();
  const model = await ownModel();
  const d = await draft(a.token, {
    model,
    usd_per_million_input: '3',
    usd_per_million_output: '3',
    markup: '1',
    usd_per_image: '0.01',
    reason: 'new prices',
  });
  const publish = (body: Json) => api(`/admin/rate-cards/drafts/${data(d).id}/publish`, { token: a.token, body });

  const past = await publish({ reason: 'backdated', effective_from: new Date(Date.now() - 60_000).toISOString() });
  assert.equal(past.status, 400);
  assert.equal(error(past).code, 'INVALID_EFFECTIVE_FROM');

  const tomorrow = new Date(Date.now() + 86_400_000).toISOString();
  const p = await publish({ reason: 'from tomorrow', effective_from: tomorrow });
  assert.equal(p.status, 200, p.text);
  const card = data(p).rate_card as Json;
  assert.deepEqual([card.version, card.usd_per_image, data(p).replayed], [2, '0.01', false]);

  const s = await student('100000');
  const today = await usage(s.token, model, 1_000_000, 0);
  assert.equal(data(today).rate_card_version, 1, 'until then, the old card prices');

  const again = await publish({ reason: 'again', effective_from: new Date(Date.now() + 2 * 86_400_000).toISOString() });
  assert.deepEqual([again.status, (data(again).rate_card as Json).id, data(again).replayed], [200, card.id, true]);

  const concurrent = await Promise.all(Array.from({ length: 10 }, () => publish({ reason: 'race' })));
  assert.ok(concurrent.every((r) => r.status === 200 && (data(r).rate_card as Json).id === card.id));
  const [{ versions }] = await testDb`select count(*)::int as versions from billing.rate_cards where model = ${model}`;
  assert.equal(versions, 2, 'one version per draft, however often it is published');

  const discard = await api(`/admin/rate-cards/drafts/${data(d).id}/discard`, {
    token: a.token,
    body: { reason: 'too late' },
  });
  assert.equal(discard.status, 409);
  assert.equal(error(discard).code, 'RATE_CARD_DRAFT_CLOSED');

  const overview = data(await api('/admin/rate-cards', { token: a.token })) as { scheduled: Json[]; changes: Json[] };
  assert.ok(overview.scheduled.some((c) => c.id === card.id));
  const audit = overview.changes.filter((c) => c.draft_id === data(d).id).map((c) => [c.action, c.admin_id, c.reason]);
  assert.deepEqual(audit, [['published', a.id, 'from tomorrow'], ['drafted', a.id, 'new prices']]);
});

Deno.test('publishing now prices the next charge with the new version', async () => {
  const a = await admin();
  const model = await ownModel();
  const d = await draft(a.token, {
    model,
    usd_per_million_input: '5',
    usd_per_million_output: '5',
    markup: '2',
    reason: 'now',
  });
  const p = await api(`/admin/rate-cards/drafts/${data(d).id}/publish`, { token: a.token, body: { reason: 'now' } });
  assert.equal(p.status, 200, p.text);
  const s = await student('100000');
  const r = await usage(s.token, model, 1_000_000, 0);
  assert.deepEqual([data(r).rate_card_version, data(r).charged], [2, '10000']);
});

Deno.test('rate-card drafts refuse bad prices, unknown drafts and missing reasons', async () => {
  const a = await admin();
  const base = { model: 'gpt-4o', usd_per_million_input: '1', usd_per_million_output: '1', markup: '1', reason: 'x' };
  const bad: [Json, string][] = [
    [{ ...base, usd_per_million_input: '-1' }, 'usd_per_million_input'],
    [{ ...base, usd_per_image: '1000001' }, 'usd_per_image'],
    [{ ...base, usd_per_audio_second: '0.0000000000000000001' }, 'usd_per_audio_second'],
    [{ ...base, usd_per_million_output: 1e300 }, 'usd_per_million_output'],
    [{ ...base, markup: '0' }, 'markup'],
    [{ ...base, model: 'gpt 4o\u0000' }, 'model'],
    [{ ...base, reason: '   ' }, 'reason'],
  ];
  for (const [body, field] of bad) {
    const r = await draft(a.token, body);
    assert.equal(r.status, 400, `${field}: ${r.text}`);
    assert.equal(error(r).field, field);
  }
  const missing = await api(`/admin/rate-cards/drafts/${crypto.randomUUID()}/simulation`, { token: a.token });
  assert.equal(missing.status, 404);
  assert.equal(error(missing).code, 'RATE_CARD_DRAFT_NOT_FOUND');
  const notUuid = await api('/admin/rate-cards/drafts/1%27%20or%201=1/publish', {
    token: a.token,
    body: { reason: 'x' },
  });
  assert.equal(notUuid.status, 404);
  const d = await draft(a.token, base);
  const noReason = await api(`/admin/rate-cards/drafts/${data(d).id}/publish`, { token: a.token, body: {} });
  assert.equal(noReason.status, 400);
  assert.equal(error(noReason).field, 'reason');
  const wideRange = await api(`/admin/rate-cards/drafts/${data(d).id}/simulation?from=2025-01-01&to=2026-06-01`, {
    token: a.token,
  });
  assert.equal(wideRange.status, 400);
});

Deno.test('the dashboard has the rate cards: the cards, the drafts with their dry run, and a form to draft', async () => {
  const a = await admin();
  const r = await api('/admin/dashboard', { token: a.token });
  assert.equal(r.status, 200);
  assert.match(r.text, /<div id="rate-cards"><\/div>/);
  assert.match(r.text, /<form id="draft-form"/);
  assert.match(r.text, /'\.\/rate-cards\/drafts\/' \+ encodeURIComponent/, 'its buttons call the admin routes');
});

Deno.test('a card published a few seconds ahead prices charges before it at the old price and after it at the new', async () => {
  const adminId = await newAdmin();
  const admin = await userToken(adminId, { admin: true });
  const model = `ahead-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from) values (${model}, 1, 1, 1, 1, now() - interval '1 minute')`;
  const d = await api('/admin/rate-cards/drafts', {
    token: admin,
    body: { model, usd_per_million_input: '10', usd_per_million_output: '10', markup: '1', reason: 'rise' },
  });
  assert.equal(d.status, 201, d.text);
  const at = Date.now() + 2500;
  const p = await api(`/admin/rate-cards/drafts/${data(d).id}/publish`, {
    token: admin,
    body: { reason: 'rise', effective_from: new Date(at).toISOString() },
  });
  assert.equal(p.status, 200, p.text);
  const s = await student('100000');
  const before = await usage(s.token, model, 1_000_000, 0);
  assert.deepEqual([data(before).rate_card_version, data(before).charged], [1, '1000']);
  await new Promise((r) => setTimeout(r, Math.max(0, at - Date.now()) + 300));
  const after = await Promise.all(
    Array.from({ length: 5 }, () => usage(s.token, model, 1_000_000, 0)),
  );
  assert.deepEqual(after.map((r) => [data(r).rate_card_version, data(r).charged]), Array(5).fill([2, '10000']));
  await assertLedgerInvariants();
});
