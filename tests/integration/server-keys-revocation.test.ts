// Attacks on two changes, each probe asserting the secure behaviour:
// - a usage report's server key is checked by its own money statement (run_usage_report takes
//   the key's hash): revoked, unknown and malformed keys, header variations, Idempotency-Key
//   poisoning both ways, a revocation racing a report, what a bad key learns, rate limits;
// - a lot allocation keeps its part of the lot's cost basis (lot_allocations.cents): every flow a
//   student or a school member reaches that draws from or gives back to lots leaves
//   billing.check_lots() empty, and the live revenue metrics equal the rolled-up ones.
import assert from 'node:assert/strict';
import postgres from 'postgres';
import {
  adminToken,
  api,
  backdateLot,
  clearOfWindowEdge,
  counting,
  env,
  functionsUrl,
  key as keyHeader,
  student,
  testDb,
  withGateway,
} from '../support/helpers.ts';
import { person, school } from '../support/orgs.ts';
import { buy, chargeOf, emulator } from '../support/purchases.ts';
import { issue, redeem } from '../support/codes.ts';

// ------------------------------------------------------------------ server keys

type Res = Awaited<ReturnType<typeof api>>;
const usage = { model: 'gpt-4o', input_tokens: 50, output_tokens: 0 };

async function serverKey(admin: string, name = 'attack probe'): Promise<{ id: string; secret: string }> {
  const made = await api('/admin/server-keys', { token: admin, body: { name } });
  assert.equal(made.status, 201, made.text);
  return made.body.data as { id: string; secret: string };
}

async function revoke(admin: string, id: string): Promise<void> {
  const r = await api(`/admin/server-keys/${id}`, { method: 'DELETE', token: admin });
  assert.equal(r.status, 200, r.text);
}

/** A usage report with exactly these headers (the authorization header as given, raw). */
async function rawReport(headers: [string, string][], body: unknown, url = functionsUrl): Promise<Res> {
  const h = new Headers([['content-type', 'application/json'], ...headers]);
  if (!h.has('idempotency-key')) h.set('idempotency-key', crypto.randomUUID());
  const res = await fetch(`${url}/credits/usage`, { method: 'POST', headers: h, body: JSON.stringify(body) });
  const text = await res.text();
  let parsed: Record<string, unknown> = {};
  try {
    parsed = JSON.parse(text);
  } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

const report = (secret: string, userId: string, key = crypto.randomUUID(), body: Record<string, unknown> = usage) =>
  api('/credits/usage', { token: secret, headers: { 'idempotency-key': key }, body: { user_id: userId, ...body } });

const codeOf = (r: Res) => (r.body.error as { code?: string } | undefined)?.code;

/** What the ledger holds for a user: their balance, usage transfers and stored idempotency answers. */
async function traces(userId: string) {
  const [row] = await testDb`select
      coalesce((select trim_scale(a.balance)::text from billing.accounts a where a.user_id = ${userId}), 'none') as balance,
      (select count(*)::int from billing.transfers t join billing.accounts a on a.id = t.from_account_id
        where a.user_id = ${userId} and t.kind = 'usage') as usage_transfers,
      (select count(*)::int from billing.idempotency_keys k where k.user_id = ${userId}) as stored_answers`;
  return row as { balance: string; usage_transfers: number; stored_answers: number };
}

Deno.test('a revoked, unknown or malformed server key never records usage, and stores nothing', async () => {
  const admin = await adminToken();
  const s = await student('10');
  const revoked = await serverKey(admin);
  await revoke(admin, revoked.id);
  const live = await serverKey(admin);
  const hex = live.secret.slice(4);
  const before = await traces(s.id);
  const bad = [
    revoked.secret,
    `slk_${'0'.repeat(48)}`,
    `slk_${hex.toUpperCase()}`, // the same key in upper case is another string, so another hash
    `slk_${hex.slice(0, 47)}`,
    `${live.secret}0`,
    `SLK_${hex}`,
    `slk_${hex.slice(0, 46)}zz`,
    hex,
    'slk_',
  ];
  for (const secret of bad) {
    const r = await rawReport([['authorization', `Bearer ${secret}`]], { user_id: s.id, ...usage });
    assert.equal(r.status, 401, `${JSON.stringify(secret)}: ${r.text}`);
    assert.equal(codeOf(r), 'UNAUTHORIZED');
  }
  assert.deepEqual(await traces(s.id), before, 'no charge, no stored answer');
});

Deno.test('Authorization header variations never let a revoked key through', async () => {
  const admin = await adminToken();
  const s = await student('10');
  const revoked = await serverKey(admin);
  await revoke(admin, revoked.id);
  const live = await serverKey(admin);
  const body = { user_id: s.id, ...usage };
  const before = await traces(s.id);
  const variants: [string, string][][] = [
    [['authorization', `bearer ${revoked.secret}`]],
    [['authorization', `BEARER ${revoked.secret}`]],
    [['authorization', `Bearer  ${revoked.secret}`]],
    [['authorization', `Bearer\t${revoked.secret}`]],
    [['authorization', revoked.secret]],
    [['authorization', `Bearer Bearer ${revoked.secret}`]],
    [['authorization', `Basic ${btoa(`${revoked.secret}:`)}`]],
    // Two Authorization headers: fetch joins them with ", "; neither order passes.
    [['authorization', `Bearer ${revoked.secret}`], ['authorization', `Bearer ${live.secret}`]],
    [['authorization', `Bearer ${live.secret}`], ['authorization', `Bearer ${revoked.secret}`]],
    // A revoked key plus a student's own token in every other place a credential could hide.
    [['authorization', `Bearer ${revoked.secret}`], ['apikey', s.token], ['x-api-key', live.secret]],
    [['authorization', `Bearer ${s.token}`], ['apikey', revoked.secret], ['x-api-key', revoked.secret]],
    [['authorization', `Bearer ${revoked.secret}, Bearer ${s.token}`]],
    [['authorization', `Bearer ${s.token}, Bearer ${live.secret}`]],
  ];
  for (const headers of variants) {
    const r = await rawReport(headers, body);
    assert.ok([401, 403].includes(r.status), `${JSON.stringify(headers)}: ${r.status} ${r.text}`);
  }
  assert.deepEqual(await traces(s.id), before, 'no charge, no stored answer');
  // The raw key without "Bearer " is the key itself: a live one works, a revoked one does not.
  assert.equal((await rawReport([['authorization', live.secret]], body)).status, 201);
  assert.equal((await rawReport([['authorization', revoked.secret]], body)).status, 401);
});

Deno.test("a revoked key's refusal does not poison an Idempotency-Key, and a live key's answer is never replayed to it", async () => {
  const admin = await adminToken();
  const s = await student('10');
  const revoked = await serverKey(admin);
  await revoke(admin, revoked.id);
  const live = await serverKey(admin);
  // Refused first, then the legitimate report under the same key and body: charged, not a replayed 401.
  const k1 = crypto.randomUUID();
  assert.equal((await report(revoked.secret, s.id, k1)).status, 401);
  assert.equal((await report(`slk_${'f'.repeat(48)}`, s.id, k1)).status, 401);
  const charged = await report(live.secret, s.id, k1);
  assert.equal(charged.status, 201, charged.text);
  assert.equal(charged.headers.get('idempotent-replayed'), null);
  // The reverse: the stored 201 (with the user's balance in it) is never replayed to a bad key,
  // same body or another (no IDEMPOTENCY_KEY_REUSED either, which would confirm the key is in use).
  for (const secret of [revoked.secret, `slk_${'e'.repeat(48)}`]) {
    for (const body of [usage, { ...usage, input_tokens: 51 }]) {
      const r = await report(secret, s.id, k1, body);
      assert.equal(r.status, 401, r.text);
      assert.equal(r.headers.get('idempotent-replayed'), null);
      assert.ok(!r.text.includes('balance'), r.text);
    }
  }
  // The live key's retry still gets its own stored answer.
  const replay = await report(live.secret, s.id, k1);
  assert.equal(replay.status, 201);
  assert.equal(replay.headers.get('idempotent-replayed'), 'true');
  assert.equal((await traces(s.id)).usage_transfers, 1);
});

Deno.test('a bad key learns nothing of the user it names: existence, standing, balance', async () => {
  const admin = await adminToken();
  const revoked = await serverKey(admin);
  await revoke(admin, revoked.id);
  const funded = await student('10');
  const empty = await student();
  const suspended = await student('10');
  await testDb`update auth.users set banned_until = now() + interval '1 day' where id = ${suspended.id}`;
  const users = [funded.id, empty.id, suspended.id, crypto.randomUUID(), '00000000-0000-0000-0000-000000000000'];
  const seen = new Set<string>();
  for (const secret of [revoked.secret, `slk_${'1'.repeat(48)}`]) {
    for (const user of users) {
      for (const body of [usage, { ...usage, input_tokens: 10_000_000 }, { ...usage, model: 'no-such-model' }]) {
        const r = await report(secret, user, crypto.randomUUID(), body);
        const { requestId: _r, timestamp: _t, ...meta } = (r.body.metadata ?? {}) as Record<string, unknown>;
        seen.add(JSON.stringify([r.status, r.body.error, meta]));
      }
    }
  }
  assert.equal(seen.size, 1, [...seen].join('\n'));
  assert.match([...seen][0], /^\[401,/);
});

/**
 * A report sent while the user's account is held, so it waits inside its statement; a DELETE of
 * its key meanwhile; then the account let go. Answers the report, and whether the DELETE answered
 * while the report still waited.
 */
async function reportDuringRevocation(admin: string, k: { id: string }, userId: string, send: () => Promise<Res>) {
  const locked = Promise.withResolvers<void>();
  const release = Promise.withResolvers<void>();
  const tx = testDb.begin(async (db) => {
    await db`select 1 from billing.accounts where user_id = ${userId} for update`;
    locked.resolve();
    await release.promise;
  });
  await locked.promise;
  const inFlight = send();
  for (let i = 0; i < 50; i++) {
    const [{ waiting }] = await testDb`select count(*)::int as waiting from pg_stat_activity
      where wait_event_type = 'Lock' and wait_event in ('transactionid', 'tuple') and state = 'active'
        and (query like '%run_usage_report%' or query like '%charge_usage_batch%')`;
    if (waiting > 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const revoked = api(`/admin/server-keys/${k.id}`, { method: 'DELETE', token: admin });
  const answeredFirst = await Promise.race([
    revoked.then(() => true),
    new Promise<boolean>((r) => setTimeout(() => r(false), 1500)),
  ]);
  release.resolve();
  await tx;
  const [late, del] = await Promise.all([inFlight, revoked]);
  assert.equal(del.status, 200, del.text);
  return { late, answeredFirst };
}

Deno.test('a batch report in flight when the DELETE answers is not recorded', async () => {
  const admin = await adminToken();
  const s = await student('10');
  const k = await serverKey(admin);
  const batch = () =>
    api('/credits/usage/batch', {
      token: k.secret,
      body: {
        events: [{ event_id: crypto.randomUUID(), user_id: s.id, occurred_at: new Date().toISOString(), ...usage }],
      },
    });
  const { late, answeredFirst } = await reportDuringRevocation(admin, k, s.id, batch);
  const applied = late.status === 200 && late.text.includes('"applied"');
  assert.ok(!(answeredFirst && applied), `recorded after the DELETE answered: ${late.text}`);
  assert.equal((await batch()).status, 401);
  assert.equal((await traces(s.id)).usage_transfers, applied ? 1 : 0);
});

Deno.test('a revoked key stops at once: a report in flight when the DELETE answers is not recorded', async () => {
  const admin = await adminToken();
  const s = await student('10');
  const k = await serverKey(admin);
  assert.equal((await report(k.secret, s.id)).status, 201);
  const { late, answeredFirst } = await reportDuringRevocation(admin, k, s.id, () => report(k.secret, s.id));
  if (answeredFirst) assert.equal(late.status, 401, `recorded after the DELETE answered: ${late.text}`);
  assert.equal((await report(k.secret, s.id)).status, 401);
  assert.equal((await traces(s.id)).usage_transfers, late.status === 201 ? 2 : 1);
});

Deno.test('20 reports racing a revocation: none sent after the DELETE answered is recorded', async () => {
  const admin = await adminToken();
  const s = await student('100');
  const k = await serverKey(admin);
  let revokedAt = Infinity;
  const sentAt: number[] = [];
  const results: Promise<Res>[] = [];
  for (let i = 0; i < 20; i++) {
    if (i === 10) {
      await api(`/admin/server-keys/${k.id}`, { method: 'DELETE', token: admin });
      revokedAt = performance.now();
    }
    sentAt.push(performance.now());
    results.push(report(k.secret, s.id));
  }
  const statuses = (await Promise.all(results)).map((r) => r.status);
  statuses.forEach((status, i) => {
    if (sentAt[i] > revokedAt) assert.equal(status, 401, `report ${i} sent after the DELETE answered`);
  });
  assert.equal((await traces(s.id)).usage_transfers, statuses.filter((x) => x === 201).length);
});

Deno.test('the batch route refuses revoked, unknown and malformed keys, charging nothing', async () => {
  const admin = await adminToken();
  const s = await student('10');
  const revoked = await serverKey(admin);
  await revoke(admin, revoked.id);
  const before = await traces(s.id);
  for (const secret of [revoked.secret, `slk_${'2'.repeat(48)}`, `slk_${'2'.repeat(47)}`]) {
    const r = await api('/credits/usage/batch', {
      token: secret,
      body: {
        events: [{ event_id: crypto.randomUUID(), user_id: s.id, occurred_at: new Date().toISOString(), ...usage }],
      },
    });
    assert.equal(r.status, 401, r.text);
  }
  assert.deepEqual(await traces(s.id), before);
});

Deno.test("server keys keep their rate limit: a live key's reports and a revoked key's both count", async () => {
  await clearOfWindowEdge();
  const admin = await adminToken();
  const s = await student('10');
  const live = await serverKey(admin);
  const revoked = await serverKey(admin);
  await revoke(admin, revoked.id);
  await withGateway({ ...counting, RATE_LIMIT_CREDITS_USAGE_PER_MIN: '3' }, async (url) => {
    const send = async (secret: string) =>
      (await rawReport([['authorization', `Bearer ${secret}`]], { user_id: s.id, ...usage }, url)).status;
    assert.deepEqual([
      await send(live.secret),
      await send(live.secret),
      await send(live.secret),
      await send(live.secret),
    ], [
      201,
      201,
      201,
      429,
    ]);
    // A revoked key is throttled like any caller once past its budget: no unlimited 401 oracle.
    assert.deepEqual(
      [await send(revoked.secret), await send(revoked.secret), await send(revoked.secret), await send(revoked.secret)],
      [401, 401, 401, 429],
    );
  });
});

// ------------------------------------------------------------------ cost basis of allocations

/** A connection as the platform's superuser, which runs the roll-up as pg_cron does. */
const superuser = () => postgres(env('SUPABASE_DB_URL').replace('//postgres:', '//supabase_admin:'), { max: 1 });

/**
 * What every flow must leave: check_lots' lists empty, no allocation written since `since` without
 * its cost basis, and the live revenue metrics equal to the rolled-up ones once the roll-up ran.
 */
async function assertCostBasisKept(since: Date, flow: string): Promise<void> {
  const [{ c }] = await testDb`select billing.check_lots() as c`;
  for (const list of ['lots', 'accounts', 'transfers', 'expiry']) assert.deepEqual(c[list], [], `${flow}: ${list}`);
  const [{ missing }] = await testDb`select count(*)::int as missing from billing.lot_allocations
    where created_at >= ${since} and cents is null`;
  assert.equal(missing, 0, `${flow}: allocations written without their cost basis`);
  const db = superuser();
  try {
    await db`select billing.refresh_stale_revenue()`;
    const [{ live, rolled }] = await db`select
        billing.revenue_metrics_live(date_trunc('day', now()) - interval '2 days', date_trunc('day', now()) + interval '1 day') as live,
        billing.revenue_metrics(date_trunc('day', now()) - interval '2 days', date_trunc('day', now()) + interval '1 day') as rolled`;
    assert.deepEqual(rolled, live, `${flow}: the rolled-up metrics are the live ones`);
  } finally {
    await db.end();
  }
}

Deno.test('paid credits drawn by usage, a hold, an AI call and a void, then refunded and disputed, keep their cost basis', async () => {
  const since = new Date();
  const admin = await adminToken();
  const key = await serverKey(admin);
  const s = await student();
  const co = await buy(s.token, 'plus'); // 24,990 paid and a promotional bonus
  for (const input_tokens of [20_000, 22_475, 1_234_567]) {
    assert.equal(
      (await report(key.secret, s.id, crypto.randomUUID(), { model: 'gpt-4o', input_tokens, output_tokens: 0 }))
        .status,
      201,
    );
  }
  await assertCostBasisKept(since, 'usage across the bonus and the paid lot');
  const hold = await api('/credits/holds', { token: s.token, headers: keyHeader(), body: { amount: '333.333' } });
  assert.equal(hold.status, 201, hold.text);
  const holdId = (hold.body.data as { hold_id: string }).hold_id;
  const cap = await api(`/credits/holds/${holdId}/capture`, {
    token: s.token,
    headers: keyHeader(),
    body: { amount: '111.1' },
  });
  assert.equal(cap.status, 200, cap.text);
  await assertCostBasisKept(since, 'a hold captured in part');
  const ai = await api('/ai/v1/chat/completions', {
    token: s.token,
    body: { model: 'gpt-4o', messages: [{ role: 'user', content: 'hello #standin words=7' }], max_tokens: 64 },
  });
  assert.equal(ai.status, 200, ai.text);
  await new Promise((r) => setTimeout(r, 300));
  await assertCostBasisKept(since, 'an AI call');
  const [{ id: charge }] = await testDb`select t.id::text from billing.transfers t join billing.accounts a
    on a.id = t.from_account_id where a.user_id = ${s.id} and t.kind = 'usage' order by t.id limit 1`;
  const voided = await api(`/admin/charges/${charge}/void`, { token: admin, body: { reason: 'provider outage' } });
  assert.equal(voided.status, 200, voided.text);
  await assertCostBasisKept(since, 'a void giving back to the lots');
  const stripeCharge = await chargeOf(co.session_id);
  await emulator(`/_emulator/charges/${stripeCharge}/refund`, { amount: 333 });
  await assertCostBasisKept(since, 'a partial refund');
  await emulator(`/_emulator/charges/${stripeCharge}/dispute`, { outcome: 'open' });
  await emulator(`/_emulator/charges/${stripeCharge}/dispute`, { outcome: 'lost' });
  await assertCostBasisKept(since, 'a lost dispute');
});

Deno.test('restricted, expiring and school credits keep their cost basis through codes, allowances, moves and expiry', async () => {
  const since = new Date();
  const admin = await adminToken();
  const key = await serverKey(admin);
  // Credits for some models only, granted and drawn.
  const s = await student('10');
  const g = await api('/credits/grants', {
    token: admin,
    headers: keyHeader(),
    body: { user_id: s.id, amount: '7.7', kind: 'promo_grant', reason: 'pilot', lot: { applies_to: ['gpt-4o-mini*'] } },
  });
  assert.equal(g.status, 201, g.text);
  for (const model of ['gpt-4o-mini', 'gpt-4o']) {
    assert.equal(
      (await report(key.secret, s.id, crypto.randomUUID(), { model, input_tokens: 123, output_tokens: 7 }))
        .status,
      201,
    );
  }
  await assertCostBasisKept(since, 'restricted credits');
  // A paid purchase that partly expires: its bonus backdated, swept.
  const p = await student();
  const co = await buy(p.token, 'plus');
  assert.equal(
    (await report(key.secret, p.id, crypto.randomUUID(), { model: 'gpt-4o', input_tokens: 3_333, output_tokens: 0 }))
      .status,
    201,
  );
  const [{ id: bonus }] = await testDb`select l.id::text from billing.lots l
    where l.purchase_id = ${co.purchase_id} and l.category = 'promotional'`;
  await backdateLot(bonus);
  await testDb`select billing.expire_lots(500)`;
  await assertCostBasisKept(since, 'expiry of a part-spent bonus');
  // A school: paid wallet credits, an allowance drawn by a member, a sponsor code, a removed member swept.
  const owner = await person('owner');
  const member = await person('member');
  const org = await school(owner, [member], 'allowance', null);
  await buy(owner.token, 'plus', org);
  const allowance = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: keyHeader(),
    body: { user_id: member.id, amount: '123.4567' },
  });
  assert.equal(allowance.status, 201, allowance.text);
  assert.equal(
    (await report(key.secret, member.id, crypto.randomUUID(), {
      model: 'gpt-4o',
      input_tokens: 1_111,
      output_tokens: 0,
    }))
      .status,
    201,
  );
  const sponsor = await issue(owner.token, org, { credits: '55.55', user_id: member.id, note: 'travel grant' });
  assert.equal(sponsor.status, 201, sponsor.text);
  const redeemed = await redeem(member.token, (sponsor.body.data as { code: string }).code);
  assert.equal(redeemed.status, 200, redeemed.text);
  // Wallets are not combined: the allowance pays the first, the sponsored credits the second.
  for (const input_tokens of [4_000, 2_500]) {
    const spent = await report(key.secret, member.id, crypto.randomUUID(), {
      model: 'gpt-4o',
      input_tokens,
      output_tokens: 0,
    });
    assert.equal(spent.status, 201, spent.text);
  }
  await api(`/orgs/${org}/members/${member.id}`, { token: owner.token, method: 'DELETE' });
  await testDb`select billing.expire_lots(500)`;
  await assertCostBasisKept(since, 'school wallet, allowance, sponsor code and a removed member');
});

Deno.test('after every flow of this file and the suites before it, no allocation lacks or misstates its cost basis', async () => {
  await assertCostBasisKept(new Date(0), 'the whole ledger');
});
