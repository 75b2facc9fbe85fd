// Credits for some models beside a debt, under races, run against the local stack with students' tokens (and the
// tokens of a school's admins where the attacker created the school). Operator credentials only
// set things up (a platform grant to a school, a package) and check the invariants.
// Races: spends (usage, gateway calls, holds) against lost disputes, refunds, voids, gifts;
// replays: webhooks and keys many times at once; removed members mid-call; credits moved before
// a dispute; credits for some models never paying for another model, a debt or a reversal.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  key,
  newUser,
  reportUsage,
  sweepExpiredHolds,
  testDb,
  until,
  userToken,
} from '../support/helpers.ts';
import { checkLots, codeOf, dataOf, type Json } from '../support/money.ts';
import { buyGift, issue, redeem } from '../support/codes.ts';
import { balanceOf, buy, chargeOf, deliverWithRetries, emulator, type SignedEvent } from '../support/purchases.ts';
import { person, school } from '../support/orgs.ts';
import { orgGrant } from '../support/lots.ts';

// ============================================================ helpers

/** A gateway chat call (non-streamed); `directives` steer the stand-in. */
const chat = (
  token: string,
  model: string,
  directives = 'words=20',
  max_tokens = 100,
  headers: Record<string, string> = {},
) =>
  api('/ai/v1/chat/completions', {
    token,
    headers,
    body: { model, messages: [{ role: 'user', content: `#standin ${directives}` }], max_tokens },
  });

/** Server-reported usage (gpt-4o: 50 input tokens = 1 credit; gpt-4o-mini: 100,000 = 60 credits). */
const usageOf = (token: string, model: string, input_tokens: number, k = crypto.randomUUID()) =>
  reportUsage('/credits/usage', {
    token,
    headers: { 'idempotency-key': k },
    body: { model, input_tokens, output_tokens: 0 },
  });

/**
 * Credits for some models that paid for what they may not: a charge for another model (or none),
 * or a refund's / dispute's reversal of a purchase (or plan) they are not part of.
 */
async function restrictedMisuse(): Promise<Json[]> {
  return [
    ...await testDb`
    select x.kind::text, x.transfer_id::text, x.lot_id::text, t.metadata ->> 'model' as model, l.applies_to,
      trim_scale(x.amount)::text as amount
    from billing.lot_allocations x join billing.lots l on l.id = x.lot_id join billing.transfers t on t.id = x.transfer_id
    where x.amount > 0 and l.applies_to is not null and (
      (x.kind in ('usage', 'hold_capture')
        and not coalesce(billing.lot_pays_for(l.applies_to, t.metadata ->> 'model'), false))
      or (x.kind in ('refund_reversal', 'dispute_reversal')
        and not exists (select 1 from billing.purchases p where p.id = l.purchase_id and p.stripe_charge_id = t.reference)
        -- a plan's refund or dispute takes back its own plan lots whatever they pay for
        and not exists (select 1 from billing.plan_lots pl join billing.plan_grants g on g.subscription_id = pl.subscription_id
                        where pl.lot_id = l.id and g.stripe_charge_id = t.reference)))`,
  ];
}

/** Today's journal: its deferred revenue reconciles with the ledger's (rounding only). */
async function journalReconciles(): Promise<void> {
  const [{ j }] = await testDb`select billing.journal(current_date, current_date + 1, null) as j`;
  for (const r of j.reconciliation as { currency: string; items: Json[] }[]) {
    for (const i of r.items) {
      if (i.item === 'deferred_revenue_change_cents') {
        assert.ok(
          i.ledger !== null && Math.abs(Number(i.difference)) <= 3,
          `journal vs ledger deferred revenue (${r.currency}): ${JSON.stringify(i)}`,
        );
      }
    }
  }
}

/** Every money invariant this attack checks after a scenario. */
async function invariants(): Promise<void> {
  await assertLedgerInvariants();
  await checkLots();
  const misuse = await restrictedMisuse();
  assert.deepEqual(misuse, [], 'credits for some models paid only for those models and their own purchase');
  await journalReconciles();
}

/** A user's own account: balance, held, Σ remaining of its restricted and unrestricted lots. */
async function accountState(userId: string) {
  const [r] = await testDb`
    select trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held,
      trim_scale(coalesce((select sum(l.remaining) from billing.lots l where l.account_id = a.id and l.applies_to is not null), 0))::text as restricted,
      trim_scale(coalesce((select sum(l.remaining) from billing.lots l where l.account_id = a.id and l.applies_to is null), 0))::text as general
    from billing.accounts a where a.user_id = ${userId} and a.org_id is null`;
  return r;
}

/** The dispute's two events (open, lost) for a charge, not delivered. */
async function lostDispute(charge: string): Promise<SignedEvent[]> {
  const open = (await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open', deliver: false })).events;
  const lost = (await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost', deliver: false })).events;
  return [...open, ...lost];
}

/**
 * Ada, a member of a school her other self created (the owner), sponsored with 5,000 credits for
 * gpt-4o-mini only (a sponsor code the school issued, funded by a platform grant), who then buys
 * starter (9,990 credits, 999¢) with her own card.
 */
async function sponsoredBuyer(restricted = '5000') {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'allowance', restricted);
  const issued = await issue(owner.token, org, { credits: restricted, user_id: ada.id, applies_to: ['gpt-4o-mini'] });
  assert.equal(issued.status, 201, issued.text);
  const r = await redeem(ada.token, (dataOf(issued) as { code: string }).code);
  assert.equal(r.status, 200, r.text);
  const co = await buy(ada.token, 'starter');
  return { owner, ada, org, purchase: co.purchase_id, charge: await chargeOf(co.session_id) };
}

// ============================================================ 1. a lost dispute racing spends, with credits for one model

Deno.test('a lost dispute delivered three times racing 30 spends for two models never takes the credits for one model', async () => {
  const s = await sponsoredBuyer();
  const events = await lostDispute(s.charge);
  const spends = [
    ...Array.from({ length: 12 }, () => usageOf(s.ada.token, 'gpt-4o', 300 * 50)), // 300 credits each
    ...Array.from({ length: 6 }, () => usageOf(s.ada.token, 'gpt-4o-mini', 500_000)), // 300 credits each
    ...Array.from({ length: 6 }, () => chat(s.ada.token, 'gpt-4o', 'words=20 first_byte_delay=300')),
    ...Array.from({ length: 6 }, () => chat(s.ada.token, 'gpt-4o-mini', 'words=20 first_byte_delay=300')),
  ];
  const hooks = [...events, ...events, ...events].map((e) => deliverWithRetries(e));
  const results = await Promise.all(spends);
  const delivered = await Promise.all(hooks);
  assert.ok(delivered.every((d) => d.status < 300), JSON.stringify(delivered.map((d) => d.status)));
  // Converge: the events once more, in order.
  for (const e of events) assert.ok((await deliverWithRetries(e)).status < 300);
  const [p] = await testDb`select dispute_status from billing.purchases where id = ${s.purchase}`;
  assert.equal(p.dispute_status, 'lost');
  const codes = results.map((r) => r.status);
  assert.ok(codes.some((c) => c === 201 || c === 200), `some spends went through: ${codes}`);
  // What the finished calls returned stays reserved for the refund until pg_cron's minute
  // tick (sweepExpiredHolds runs it) takes it back.
  await sweepExpiredHolds();

  // What gpt-4o cost could only come from her purchase; it is owed. The 5,000 for gpt-4o-mini paid
  // only gpt-4o-mini.
  const [spent] = await testDb`
    select trim_scale(coalesce(sum(x.amount) filter (where l.applies_to is null), 0))::text as from_general,
           trim_scale(coalesce(sum(x.amount) filter (where l.applies_to is not null), 0))::text as from_restricted
    from billing.lot_allocations x join billing.lots l on l.id = x.lot_id join billing.accounts a on a.id = l.account_id
    where a.user_id = ${s.ada.id} and x.kind in ('usage', 'hold_capture')`;
  const st = await accountState(s.ada.id);
  assert.equal(
    st.restricted,
    String(5000 - Number(spent.from_restricted)),
    'the credits for gpt-4o-mini lost only what gpt-4o-mini used',
  );
  assert.equal(st.general, '0', 'nothing of the disputed purchase is left to spend');
  const [{ off }] =
    await testDb`select trim_scale(${st.balance}::numeric - (${st.restricted}::numeric - ${spent.from_general}::numeric))::text as off`;
  assert.equal(
    off,
    '0',
    `balance = restricted − what was spent of the purchase (${JSON.stringify(st)}, ${JSON.stringify(spent)})`,
  );
  // In debt: another model is refused, with the debt said.
  const r = await usageOf(s.ada.token, 'gpt-4o', 50);
  assert.equal(r.status, 402, r.text);
  assert.equal((r.body.error as { details: Json }).details.debt, true, r.text);
  await invariants();
});

// ============================================================ 2. in debt beside credits for one model

Deno.test('in debt beside credits for one model: 30 parallel spends of them stop at the balance; holds and other models are refused', async () => {
  const s = await sponsoredBuyer();
  await usageOf(s.ada.token, 'gpt-4o', 1230 * 50); // 1,230 on gpt-4o, from her purchase
  const refunded = await api('/checkout/refunds', {
    token: await adminToken(),
    headers: key(),
    body: { purchase_id: s.purchase },
  });
  assert.equal(refunded.status, 202, refunded.text);
  await until('the refund', async () => (await accountState(s.ada.id)).general === '0');
  assert.deepEqual(await accountState(s.ada.id), { balance: '3770', held: '0', restricted: '5000', general: '0' });

  // 300 credits each on gpt-4o-mini: 12 would fit in 3,770 (3,600); 30 are sent at once, through
  // usage and the gateway, with a student's own hold and a gpt-4o call among them.
  const results = await Promise.all([
    ...Array.from({ length: 20 }, () => usageOf(s.ada.token, 'gpt-4o-mini', 500_000)),
    ...Array.from({ length: 10 }, () => chat(s.ada.token, 'gpt-4o-mini', 'words=20 first_byte_delay=200', 4000)),
    api('/credits/holds', { token: s.ada.token, headers: key(), body: { amount: '1' } }),
    chat(s.ada.token, 'gpt-4o', 'words=5'),
  ]);
  const hold = results.at(-2)!;
  const other = results.at(-1)!;
  assert.equal(hold.status, 402, `a hold for no model while in debt: ${hold.text}`);
  assert.equal(other.status, 402, `gpt-4o while in debt: ${other.text}`);
  const st = await accountState(s.ada.id);
  const [{ debt }] = await testDb`select trim_scale(sum(l.remaining) - max(a.balance))::text as debt
    from billing.accounts a join billing.lots l on l.account_id = a.id and l.open where a.user_id = ${s.ada.id} and a.org_id is null`;
  assert.deepEqual(
    [debt, st.held, st.general],
    ['1230', '0', '0'],
    `credits for one model never pay the debt, which still waits in front of them: ${JSON.stringify(st)}`,
  );
  await invariants();
});

// ============================================================ 3. a dispute after the credits moved

Deno.test("a school's purchase moved into an allowance, a redeemed sponsor code, a parked hold and calls in flight: a lost dispute reaches them all (the hold finishes) and never the school's credits for one model", async () => {
  const [owner, bo] = await Promise.all(['owner', 'bo'].map(person)); // bo: the owner's second account
  const org = await school(owner, [bo], 'allowance', null);
  const co = await buy(owner.token, 'starter', org); // 9,990 for the wallet, the owner's card
  const charge = await chargeOf(co.session_id);
  const funded = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: key(),
    body: { user_id: bo.id, amount: '4000' },
  });
  assert.equal(funded.status, 201, funded.text);
  const issued = await issue(owner.token, org, { credits: '3000', user_id: bo.id });
  assert.equal(issued.status, 201, issued.text);
  assert.equal((await redeem(bo.token, (dataOf(issued) as { code: string }).code)).status, 200);
  await orgGrant(org, '5000', 'adjustment', ['gpt-4o-mini']); // the platform's credits for one model (setup)
  // Bo parks 2,000 of the redeemed credits in a hold of his own, and calls gpt-4o on the allowance.
  const parked = await api('/credits/holds', {
    token: bo.token,
    headers: key(),
    body: { amount: '2000', ttl_seconds: 600 },
  });
  assert.equal(parked.status, 201, parked.text);
  const calls = Array.from({ length: 4 }, () => chat(bo.token, 'gpt-4o', 'words=50 first_byte_delay=2500', 1000));
  await until(
    'calls held',
    async () =>
      (await testDb`select count(*)::int as n from billing.ai_calls where user_id = ${bo.id} and status = 'held'`)[0]
        .n === 4,
  )
    .catch(async (e) => {
      console.log('calls:', (await Promise.all(calls)).map((a) => a.text.slice(0, 300)));
      throw e;
    });
  const events = await lostDispute(charge);
  const delivered = await Promise.all([...events, ...events].map(deliverWithRetries));
  for (const e of events) assert.ok((await deliverWithRetries(e)).status < 300);
  const answers = await Promise.all(calls);
  const captured = await api(`/credits/holds/${(dataOf(parked) as { hold_id: string }).hold_id}/capture`, {
    token: bo.token,
    headers: key(),
    body: {},
  });
  console.log('dispute after a move:', {
    webhooks: delivered.map((d) => d.status),
    calls: answers.map((a) => a.status),
    parked_capture: [captured.status, codeOf(captured)],
  });
  // A hold that reserved the credits before the loss finishes normally: what it spent the school
  // owes, recorded by the minute's tick.
  assert.equal(captured.status, 200, captured.text);
  await sweepExpiredHolds();
  const [left] = await testDb`select trim_scale(coalesce(sum(l.remaining), 0))::text as r, count(*)::int as lots
    from billing.lots l where l.purchase_id = ${co.purchase_id} and l.remaining > 0`;
  assert.equal(left.r, '0', 'no credit of the lost purchase is left anywhere');
  const [wallet] = await testDb`select trim_scale(coalesce(sum(l.remaining), 0))::text as r from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.org_id = ${org} and a.member_id is null and l.applies_to is not null`;
  assert.equal(wallet.r, '5000', "the school's credits for gpt-4o-mini are all there");
  await invariants();
});

// ============================================================ 4. a member removed mid-call, excess over the hold

Deno.test('a pool member capped at 1 a day, removed while 10 calls billed beyond their holds are in flight: the pool pays each call whole, past the cap, never her own account; nothing after', async () => {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'pool', null);
  await orgGrant(org, '100', 'adjustment');
  await orgGrant(org, '1000', 'adjustment', ['gpt-4o-mini']);
  const cap = await api(`/orgs/${org}/members/${ada.id}/cap`, {
    method: 'PUT',
    token: owner.token,
    body: { period: 'day', amount: '1' },
  });
  assert.equal(cap.status, 200, cap.text);
  const [pool] = await testDb`select id from billing.accounts where org_id = ${org} and member_id is null`;
  // 200,000 prompt tokens the gateway cannot count: 120 credits each beyond a hold of ~0.03.
  const calls = Array.from(
    { length: 10 },
    () => chat(ada.token, 'gpt-4o-mini', 'words=10 first_byte_delay=1500 extra_prompt=200000', 20),
  );
  await until(
    'some calls held',
    async () =>
      (await testDb`select count(*)::int as n from billing.ai_calls where user_id = ${ada.id} and status = 'held'`)[0]
        .n >= 5,
  );
  const removed = await api(`/orgs/${org}/members/${ada.id}`, { method: 'DELETE', token: owner.token });
  const answers = await Promise.all(calls);
  const [paid] =
    await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as n, count(*)::int as c from billing.transfers t
    where t.from_account_id = ${pool.id} and t.member_id = ${ada.id} and t.kind in ('usage', 'hold_capture')`;
  const [x] =
    await testDb`select trim_scale(a.balance)::text as pool, trim_scale(1100 - ${paid.n}::numeric)::text as rest,
      (select trim_scale(coalesce(sum(c.charged), 0))::text from billing.ai_calls c where c.user_id = ${ada.id}) as priced,
      (select trim_scale(coalesce(sum(t.amount), 0))::text from billing.transfers t
        where t.from_account_id = a.id and t.kind = 'hold_capture') as captured,
      (select trim_scale(s.spent)::text from billing.spend_caps s where s.account_id = a.id and s.member_id = ${ada.id}) as cap,
      (select trim_scale(coalesce(sum(o.balance), 0))::text from billing.accounts o where o.user_id = ${ada.id}) as own,
      (select count(*)::int from billing.transfers t join billing.accounts o on o.id = t.from_account_id
        where o.user_id = ${ada.id}) as own_charges,
      (select count(*)::int from billing.ai_calls c join billing.holds h on h.id = c.hold_id
        where c.user_id = ${ada.id} and c.status = 'charged' and (c.charged <= h.amount
          or c.charged - h.captured_amount is distinct from (select sum(t.amount) from billing.transfers t
            where t.kind = 'usage' and t.idempotency_key like 'ai-overage:' || c.id || '%'))) as not_once
    from billing.accounts a where a.id = ${pool.id}`;
  console.log('member removed mid-call:', {
    removed: removed.status,
    calls: answers.map((a) => a.status),
    pool_paid: paid,
    x,
  });
  assert.equal(removed.status, 200, removed.text);
  // Calls already running when she was removed finish, each charging its whole price, the
  // excess past its hold (~120 each) included, to the pool their holds drew on: past her cap
  // (what the holds reserved fit it), into debt if the pool's 1,100 fall short.
  assert.ok(Number(paid.n) > 5 * 100, `the running calls were charged whole: ${JSON.stringify(paid)}`);
  assert.deepEqual(
    [x.priced, x.cap, x.pool, x.own, x.own_charges, x.not_once],
    [paid.n, paid.n, x.rest, '0', 0, 0],
    `the pool paid each call's price (its excess once), counted against her cap; her own account nothing: ${
      JSON.stringify(x)
    }`,
  );
  assert.ok(Number(x.captured) <= 1, `the holds fit the cap: ${JSON.stringify(x)}`);
  // After the removal (and the calls under way settled): nothing more from the school's pool.
  const poolCount = async () =>
    (await testDb`select count(*)::int as n from billing.transfers t where t.from_account_id = ${pool.id}`)[0]
      .n as number;
  const before = await poolCount();
  const after = await Promise.all([
    chat(ada.token, 'gpt-4o-mini', 'words=3'),
    usageOf(ada.token, 'gpt-4o-mini', 1000),
    api('/credits/holds', { token: ada.token, headers: key(), body: { amount: '1' } }),
  ]);
  console.log('after removal:', after.map((a) => [a.status, codeOf(a)]));
  assert.equal(await poolCount(), before, 'the pool paid for a removed member');
  await invariants();
});

// ============================================================ 5. one gift, two redeemers, twenty keys; then a lost dispute

Deno.test('a gift code redeemed 40 times at once by two accounts (one in debt beside credits for one model) goes once; its lost dispute never takes the credits for one model', async () => {
  const s = await sponsoredBuyer();
  await usageOf(s.ada.token, 'gpt-4o', 1230 * 50);
  const refunded = await api('/checkout/refunds', {
    token: await adminToken(),
    headers: key(),
    body: { purchase_id: s.purchase },
  });
  assert.equal(refunded.status, 202, refunded.text);
  await until('the refund', async () => (await accountState(s.ada.id)).general === '0');
  const friend = await person('friend');
  const dan = await person('dan');
  const g = await buyGift(friend.token, 'starter'); // 9,990 for 999¢
  const sameKey = crypto.randomUUID();
  const tries = await Promise.all([
    ...Array.from({ length: 10 }, () => redeem(s.ada.token, g.code, sameKey)),
    ...Array.from({ length: 10 }, () => redeem(s.ada.token, g.code)),
    ...Array.from({ length: 10 }, () => redeem(dan.token, g.code)),
    ...Array.from({ length: 10 }, () => usageOf(s.ada.token, 'gpt-4o-mini', 500_000)),
  ]);
  const byWho = (from: number, to: number) => tries.slice(from, to).map((r) => r.status);
  console.log('gift race:', {
    ada_same_key: byWho(0, 10),
    ada: byWho(10, 20),
    dan: byWho(20, 30),
    spends: byWho(30, 40),
  });
  const [n] = await testDb`select count(*)::int as n from billing.transfers t
    join billing.lots l on l.grant_transfer_id = t.id where t.kind = 'code_redemption' and l.purchase_id = ${g.purchase_id}`;
  assert.equal(n.n, 1, 'the gift was redeemed once');
  await journalReconciles();
  // Now the friend's charge is lost, racing the student's spending.
  const events = await lostDispute(await chargeOf(g.session_id));
  await Promise.all([
    ...[...events, ...events].map(deliverWithRetries),
    ...Array.from({ length: 10 }, () => usageOf(s.ada.token, 'gpt-4o-mini', 500_000)),
    ...Array.from({ length: 5 }, () => usageOf(s.ada.token, 'gpt-4o', 100 * 50)),
    ...Array.from({ length: 5 }, () => usageOf(dan.token, 'gpt-4o', 100 * 50)),
  ]);
  for (const e of events) assert.ok((await deliverWithRetries(e)).status < 300);
  const [left] = await testDb`select trim_scale(coalesce(sum(l.remaining), 0))::text as r from billing.lots l
    where l.purchase_id = ${g.purchase_id}`;
  assert.equal(left.r, '0', 'nothing of the lost gift is left');
  console.log('after the gift dispute:', await accountState(s.ada.id), await accountState(dan.id));
  await invariants();
});

// ============================================================ 6. an admin void racing spends while in debt

Deno.test('a void of a charge that left a debt, racing 20 spends of credits for one model: the void pays the debt, the journal reconciles', async () => {
  const s = await sponsoredBuyer();
  const charged = await usageOf(s.ada.token, 'gpt-4o', 1230 * 50);
  assert.equal(charged.status, 201, charged.text);
  const refunded = await api('/checkout/refunds', {
    token: await adminToken(),
    headers: key(),
    body: { purchase_id: s.purchase },
  });
  assert.equal(refunded.status, 202, refunded.text);
  await until('the refund', async () => (await accountState(s.ada.id)).general === '0');
  const admin = await adminToken();
  const results = await Promise.all([
    api(`/admin/charges/${(dataOf(charged) as { transfer_id: string }).transfer_id}/void`, {
      token: admin,
      body: { reason: 'provider outage' },
    }),
    ...Array.from({ length: 20 }, () => usageOf(s.ada.token, 'gpt-4o-mini', 500_000)),
    ...Array.from({ length: 5 }, () => usageOf(s.ada.token, 'gpt-4o', 50 * 50)),
  ]);
  console.log('void race:', results.map((r) => r.status).join(','), await accountState(s.ada.id));
  assert.equal(results[0].status, 200, results[0].text);
  await invariants();
});

// ============================================================ 7. jobs and the allowlist

Deno.test('an ai_completion job for a model the allowlist refuses is 403 and holds nothing; credits for one model never fund a job for another', async () => {
  const admin = await adminToken();
  const set = await api('/admin/model-access', {
    method: 'PUT',
    token: admin,
    body: { plan_id: null, models: ['gpt-4o-mini'] },
  });
  assert.equal(set.status, 200, set.text);
  try {
    const id = await newUser();
    const token = await userToken(id);
    const g = await api('/credits/grants', {
      token: admin,
      headers: key(),
      body: { user_id: id, amount: '500', reason: 'test', kind: 'promo_grant', lot: { applies_to: ['gpt-4o-mini'] } },
    });
    assert.equal(g.status, 201, g.text);
    const job = (model: string) =>
      api('/jobs', {
        token,
        headers: key(),
        body: { type: 'ai_completion', input: { model, prompt: 'one two three', max_tokens: 50 } },
      });
    const rs = await Promise.all([
      ...Array.from({ length: 10 }, () => job('gpt-4o')),
      chat(token, 'gpt-4o', 'words=3'),
    ]);
    console.log('jobs allowlist:', rs.map((r) => [r.status, codeOf(r)]));
    for (const r of rs) assert.equal(r.status, 403, r.text);
    const [h] =
      await testDb`select count(*)::int as n from billing.holds h join billing.accounts a on a.id = h.account_id where a.user_id = ${id}`;
    assert.equal(h.n, 0, 'nothing was held');
  } finally {
    const off = await api('/admin/model-access', { method: 'PUT', token: admin, body: { plan_id: null, models: [] } });
    assert.equal(off.status, 200, off.text);
  }
  // No list: the same student with credits for gpt-4o-mini only cannot fund a gpt-4o job.
  const id = await newUser();
  const token = await userToken(id);
  await api('/credits/grants', {
    token: admin,
    headers: key(),
    body: { user_id: id, amount: '500', reason: 'test', kind: 'promo_grant', lot: { applies_to: ['gpt-4o-mini'] } },
  });
  const r = await api('/jobs', {
    token,
    headers: key(),
    body: { type: 'ai_completion', input: { model: 'gpt-4o', prompt: 'x', max_tokens: 50 } },
  });
  assert.equal(r.status, 402, r.text);
  await invariants();
});

// ============================================================ 8. gateway holds in flight when the purchase is taken back

Deno.test('gpt-4o calls held on a purchase when it is refunded or its dispute lost, beside credits for gpt-4o-mini: the captures never reach them', async () => {
  for (const how of ['refund', 'lost dispute'] as const) {
    const s = await sponsoredBuyer();
    // Eight gpt-4o calls of ~180 credits each, held at ~250, plus four on gpt-4o-mini.
    const calls = [
      ...Array.from({ length: 8 }, () => chat(s.ada.token, 'gpt-4o', 'words=3000 first_byte_delay=2500', 4096)),
      ...Array.from({ length: 4 }, () => chat(s.ada.token, 'gpt-4o-mini', 'words=3000 first_byte_delay=2500', 4096)),
    ];
    await until(
      'twelve calls held',
      async () =>
        (await testDb`select count(*)::int as n from billing.ai_calls where user_id = ${s.ada.id} and status = 'held'`)[
          0
        ].n === 12,
    );
    if (how === 'refund') {
      const r = await api('/checkout/refunds', {
        token: await adminToken(),
        headers: key(),
        body: { purchase_id: s.purchase },
      });
      assert.equal(r.status, 202, r.text);
    } else {
      const events = await lostDispute(s.charge);
      await Promise.all([...events, ...events].map(deliverWithRetries));
      for (const e of events) assert.ok((await deliverWithRetries(e)).status < 300);
    }
    const answers = await Promise.all(calls);
    // What the finished calls returned stays reserved for the refund until pg_cron's minute
    // tick (sweepExpiredHolds runs it) takes it back.
    await sweepExpiredHolds();
    const rows = await testDb`select model, status, trim_scale(charged)::text as charged
      from billing.ai_calls where user_id = ${s.ada.id} order by created_at`;
    console.log(
      how,
      answers.map((a) => a.status).join(','),
      rows.map((r) => `${r.model}:${r.charged}`).join(' '),
      await accountState(s.ada.id),
    );
    // Each call charged from its hold, nothing past it: the gpt-4o calls spent the purchase, which
    // is now owed; the gpt-4o-mini calls spent the credits for gpt-4o-mini.
    const st = await accountState(s.ada.id);
    const [x] = await testDb`select
      trim_scale(${st.restricted}::numeric - ${st.balance}::numeric)::text as debt,
      trim_scale(coalesce(sum(charged) filter (where model = 'gpt-4o'), 0))::text as big,
      trim_scale(5000 - coalesce(sum(charged) filter (where model = 'gpt-4o-mini'), 0))::text as mini_left,
      (select count(*)::int from billing.transfers t where t.idempotency_key like 'ai-overage:%'
        and t.from_account_id = (select a.id from billing.accounts a where a.user_id = ${s.ada.id} and a.org_id is null))
        as excesses
      from billing.ai_calls where user_id = ${s.ada.id}`;
    assert.deepEqual([x.debt, st.restricted, st.general, x.excesses], [x.big, x.mini_left, '0', 0], JSON.stringify(x));
    await invariants();
    // In debt for what the gpt-4o calls spent of the purchase: the next gpt-4o call is refused.
    const next = await chat(s.ada.token, 'gpt-4o', 'words=3');
    assert.equal(next.status, 402, next.text);
    assert.equal((next.body.error as { details: Json }).details.debt, true, next.text);
  }
});

// ============================================================ 9. one key, twenty times at once

Deno.test('the same Idempotency-Key 20 times at once on a gateway call, a hold and a usage report charges once', async () => {
  const s = await sponsoredBuyer('500');
  const k = crypto.randomUUID();
  const hk = crypto.randomUUID();
  const uk = crypto.randomUUID();
  const rs = await Promise.all([
    ...Array.from(
      { length: 20 },
      () => chat(s.ada.token, 'gpt-4o-mini', 'words=30 first_byte_delay=300', 100, { 'idempotency-key': k }),
    ),
    ...Array.from(
      { length: 20 },
      () => api('/credits/holds', { token: s.ada.token, headers: { 'idempotency-key': hk }, body: { amount: '7' } }),
    ),
    ...Array.from({ length: 20 }, () => usageOf(s.ada.token, 'gpt-4o', 50 * 50, uk)),
  ]);
  const st = (a: number, b: number) => [...new Set(rs.slice(a, b).map((r) => r.status))];
  console.log('same key x20:', { chat: st(0, 20), hold: st(20, 40), usage: st(40, 60) });
  const [n] = await testDb`select
    (select count(*)::int from billing.ai_calls where user_id = ${s.ada.id} and status = 'charged') as calls,
    (select count(*)::int from billing.holds h join billing.accounts a on a.id = h.account_id where a.user_id = ${s.ada.id} and h.purpose is distinct from 'ai') as holds,
    (select count(*)::int from billing.transfers t join billing.accounts a on a.id = t.from_account_id where a.user_id = ${s.ada.id} and t.kind = 'usage') as usage`;
  assert.deepEqual({ ...n }, { calls: 1, holds: 1, usage: 1 });
  await invariants();
});

// ============================================================ 10. who pays an overrun

// What a student's own calls cost beyond their holds is charged to her own account at once, into
// debt. Joining a school's pool afterwards must not hand that bill to the school: the calls were
// made on her own account, before she was a member; her next credit pays it.
Deno.test("a student's own overruns, run up before she joined a school, stay her own debt: the school's pool never pays them, her next grant does", async () => {
  const ada = await person('ada');
  const own = await api('/credits/grants', {
    token: await adminToken(),
    headers: key(),
    body: { user_id: ada.id, amount: '1', reason: 'test funding', kind: 'promo_grant' },
  });
  assert.equal(own.status, 201, own.text);
  // Five calls on her own 1 credit that the provider bills for 200,000 more prompt tokens each.
  const rs = await Promise.all(
    Array.from({ length: 5 }, () => chat(ada.token, 'gpt-4o-mini', 'words=5 extra_prompt=200000', 10)),
  );
  const ok = rs.filter((r) => r.status === 200);
  assert.ok(ok.length > 0, rs.map((r) => r.text).join('\n'));
  // Calls that start once one of them charged its excess are refused: she is in debt.
  for (const r of rs.filter((r) => r.status !== 200)) {
    assert.deepEqual([r.status, codeOf(r)], [402, 'INSUFFICIENT_CREDITS'], r.text);
    assert.equal((r.body.error as { details: Json }).details.debt, true, r.text);
  }
  const mine = async () =>
    (await testDb`select trim_scale(a.balance)::text as balance,
      (select trim_scale(coalesce(sum(c.charged), 0))::text from billing.ai_calls c where c.user_id = ${ada.id}) as charged,
      (select count(*)::int from billing.ai_calls c where c.user_id = ${ada.id} and c.status = 'charged') as calls
      from billing.accounts a where a.user_id = ${ada.id} and a.org_id is null`)[0];
  const before = await mine();
  const [{ debt }] = await testDb`select trim_scale(${before.charged}::numeric - 1)::text as debt`;
  assert.equal(before.calls, ok.length);
  assert.ok(Number(debt) >= 100 * ok.length, `each call charged whole: ${JSON.stringify(before)}`);
  assert.equal(before.balance, `-${debt}`, 'the 1 credit paid, the rest is her debt');
  const refused = await chat(ada.token, 'gpt-4o-mini', 'words=3', 10);
  assert.deepEqual([refused.status, codeOf(refused)], [402, 'INSUFFICIENT_CREDITS'], refused.text);
  assert.equal((refused.body.error as { details: Json }).details.debt, true, refused.text);
  // A school (someone else's, funded by the platform) invites her to its pool; she makes one call.
  const owner = await person('owner');
  const org = await school(owner, [ada], 'pool', '1000');
  const next = await chat(ada.token, 'gpt-4o-mini', 'words=3', 10);
  const [pool] = await testDb`select trim_scale(a.balance)::text as balance,
      (select trim_scale(coalesce(sum(t.amount), 0))::text from billing.transfers t where t.from_account_id = a.id
        and t.kind in ('usage', 'hold_capture')) as paid
    from billing.accounts a where a.org_id = ${org} and a.member_id is null`;
  const after = await mine();
  console.log('owed before joining:', { debt, next: next.status, school_paid: pool.paid });
  // The pool paid that call's price, if it ran, and nothing of her debt.
  const [{ call }] =
    await testDb`select trim_scale(${after.charged}::numeric - ${before.charged}::numeric)::text as call`;
  assert.equal(pool.paid, call, `the school's pool paid only her call as a member: ${JSON.stringify(pool)}`);
  assert.equal(after.balance, before.balance, 'her debt is still hers');
  // Her next credit pays the debt first (a grant above it, however many calls ran).
  const amount = String(Math.ceil(Number(debt)) + 500);
  const grant = await api('/credits/grants', {
    token: await adminToken(),
    headers: key(),
    body: { user_id: ada.id, amount, reason: 'test funding', kind: 'promo_grant' },
  });
  assert.equal(grant.status, 201, grant.text);
  const [paid] =
    await testDb`select trim_scale(a.balance)::text as balance, trim_scale(${amount}::numeric - ${debt}::numeric)::text as rest,
      (select trim_scale(sum(l.remaining))::text from billing.lots l where l.account_id = a.id and l.open) as lots
    from billing.accounts a where a.user_id = ${ada.id} and a.org_id is null`;
  assert.deepEqual([paid.balance, paid.lots], [paid.rest, paid.rest], 'the grant paid the debt first');
  await invariants();
});

// A refund arriving while gateway calls run on the refunded credits: their holds reserved them, so
// the calls finish and are billed normally; what they spent of the refunded credits the buyer owes
// (docs/credit-lots.md § Refunds, disputes and debt 1–2), a debt that refuses the next call.
Deno.test('a refund while eight gateway calls run on the refunded credits: they are billed, the buyer owes what they spent, and the next call is refused', async () => {
  const id = await newUser();
  const token = await userToken(id);
  const co = await buy(token, 'starter');
  const calls = Array.from({ length: 8 }, () => chat(token, 'gpt-4o', 'words=3000 first_byte_delay=2500', 4096));
  await until(
    'eight calls held',
    async () =>
      (await testDb`select count(*)::int as n from billing.ai_calls where user_id = ${id} and status = 'held'`)[0].n ===
        8,
  );
  const r = await api('/checkout/refunds', {
    token: await adminToken(),
    headers: key(),
    body: { purchase_id: co.purchase_id },
  });
  assert.equal(r.status, 202, r.text);
  const answers = await Promise.all(calls);
  assert.deepEqual(answers.map((a) => a.status), Array(8).fill(200));
  const [c] = await testDb`select trim_scale(sum(charged))::text as charged,
      (select trim_scale(sum(h.captured_amount))::text from billing.holds h where h.id in
        (select hold_id from billing.ai_calls where user_id = ${id})) as captured,
      (select count(*)::int from billing.transfers t where t.idempotency_key like 'ai-overage:%'
        and t.from_account_id = (select a.id from billing.accounts a where a.user_id = ${id} and a.org_id is null)) as excesses
    from billing.ai_calls where user_id = ${id}`;
  assert.deepEqual(
    [c.captured, c.excesses],
    [c.charged, 0],
    `every call was billed from what its hold reserved: ${JSON.stringify(c)}`,
  );
  assert.ok(Number(c.charged) > 0, JSON.stringify(c));
  // What the finished calls returned stays reserved for the refund until pg_cron's minute
  // tick (sweepExpiredHolds runs it) takes it back.
  await sweepExpiredHolds();
  assert.equal((await balanceOf(token)).balance, `-${c.charged}`, 'the buyer owes what the calls spent');
  const next = await chat(token, 'gpt-4o-mini', 'words=3', 10);
  assert.deepEqual([next.status, codeOf(next)], [402, 'INSUFFICIENT_CREDITS'], next.text);
  assert.equal((next.body.error as { details: Json }).details.debt, true, next.text);
  await invariants();
});
