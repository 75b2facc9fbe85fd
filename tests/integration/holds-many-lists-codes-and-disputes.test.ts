// Gateway calls in flight on accounts with credits for some
// models, against expiries of unrelated lists, an open dispute (Stripe emulator) and charges racing
// the call's capture. Outside tester: a student's token; admin grants and purchases only as setup.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  backdateLot,
  key,
  newUser,
  testDb,
  until,
  userToken,
} from '../support/helpers.ts';
import { checkLots } from '../support/money.ts';
import { buy, chargeOf, deliverWithRetries, emulator } from '../support/purchases.ts';
import {
  chargeCredits as charge,
  chatWith as chat,
  grantLot,
  holdCredits as hold,
  models,
  orgGrant,
  ownAccount,
} from '../support/lots.ts';
import { person, school } from '../support/orgs.ts';
import { issue } from '../support/codes.ts';

const state = async (accountId: string) =>
  (await testDb`select trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held
    from billing.accounts a where a.id = ${accountId}`)[0];
const callHolds = async (
  userId: string,
) => [
  ...await testDb`select c.model, trim_scale(h.amount)::text as held, h.status::text from billing.ai_calls c
    join billing.holds h on h.id = c.hold_id where c.user_id = ${userId} and c.status <> 'refused' order by c.created_at`,
];
/** Gateway calls of `userId` settled: what each was charged, and what of it went past its hold. */
async function settledCalls(userId: string) {
  await until(
    'calls settled',
    async () =>
      (await testDb`select count(*)::int as n from billing.ai_calls where user_id = ${userId} and status = 'held'`)[0]
        .n === 0,
  );
  return [
    ...await testDb`select c.model, c.status, trim_scale(c.charged)::text as charged,
      trim_scale(coalesce((select t.amount from billing.transfers t
        where t.idempotency_key = 'ai-overage:' || c.id::text), 0))::text as overage
    from billing.ai_calls c where c.user_id = ${userId} and c.status <> 'refused' order by c.created_at`,
  ];
}
async function invariants() {
  const [{ bad }] = await testDb`select billing.check_lots()::text as bad`;
  console.log('check_lots:', bad);
  await checkLots();
  await assertLedgerInvariants();
}
const soon = () => new Date(Date.now() + 86_400_000).toISOString();
async function expireLot(acct: string, amount: string) {
  const [{ lot }] =
    await testDb`select id::text as lot from billing.lots where account_id = ${acct} and amount = ${amount}
    and open and expires_at is not null`;
  await backdateLot(lot);
  await testDb`select billing.expire_due_lots(${acct}::bigint)`;
}
async function openDispute(sessionId: string) {
  const ch = await chargeOf(sessionId);
  const open = (await emulator(`/_emulator/charges/${ch}/dispute`, { outcome: 'open', deliver: false })).events;
  for (const e of open) assert.ok((await deliverWithRetries(e)).status < 300);
}

// ============================================================ 2. an unrelated expiry under an open dispute

Deno.test('a dispute open over the credits for any model: an expiry of credits for another model (50 of 1,050, the balance still above every hold) leaves a gateway call in flight its whole hold and it captures its cost from it, nothing past it', async () => {
  const [m, z] = await models(2);
  const id = await newUser();
  const token = await userToken(id);
  const co = await buy(token, 'mini'); // 5,000 for any model
  const acct = await until('paid', async () => {
    const r =
      await testDb`select id::text from billing.accounts where user_id = ${id} and org_id is null and balance > 0`;
    return r[0]?.id as string | undefined;
  });
  assert.equal((await grantLot(id, '1000', 'promo_grant', { applies_to: [z] })).status, 201);
  assert.equal((await grantLot(id, '50', 'promo_grant', { applies_to: [z], expires_at: soon() })).status, 201);
  const call = chat(token, m, 'words=60 first_byte_delay=6000', 4000);
  const [before] = await until('call held', async () => (await callHolds(id)).length === 1 && await callHolds(id));
  await openDispute(co.session_id);
  const disputed = await state(acct);
  await expireLot(acct, '50'); // only z may spend these: neither the call nor the dispute could
  const [after] = await callHolds(id);
  const s = await state(acct);
  assert.equal((await call).status, 200);
  const [c] = await settledCalls(id);
  // The hold kept whole pays the whole price: no excess charged past it (the frozen credits it
  // reserved are its own until it ends).
  assert.deepEqual(
    {
      hold: `${after?.status} ${after?.held}`,
      balance: s.balance,
      held: s.held,
      overage: c.overage,
      end: (await state(acct)).balance,
    },
    {
      hold: `active ${before.held}`,
      balance: '6000',
      held: disputed.held,
      overage: '0',
      end: String(Number((6000 - Number(c.charged)).toFixed(9))),
    },
    JSON.stringify({ before, disputed, after, s, c }),
  );
  await invariants();
});

// ============================================================ 2. a balance shortfall on lists: which hold gives way

Deno.test("an expiry of 40 credits for any model under a student's own hold: a gateway call whose own list (20 credits for its model) is untouched keeps its whole hold, the student's hold shrinks by the 40 it reserved of them", async () => {
  const [y] = await models(1);
  const id = await newUser();
  assert.equal((await grantLot(id, '10', 'promo_grant')).status, 201);
  assert.equal((await grantLot(id, '40', 'promo_grant', { expires_at: soon() })).status, 201);
  assert.equal((await grantLot(id, '20', 'promo_grant', { applies_to: [y] })).status, 201);
  const token = await userToken(id);
  const acct = await ownAccount(id);
  const own = await hold(token, '45');
  assert.equal(own.status, 201, own.text);
  const call = chat(token, y, 'words=60 first_byte_delay=5000', 2000);
  const [before] = await until('call held', async () => (await callHolds(id)).length === 1 && await callHolds(id));
  assert.ok(Number(before.held) <= 20, before.held);
  await expireLot(acct, '40');
  const [after] = await callHolds(id);
  const s = await state(acct);
  assert.equal((await call).status, 200);
  const [c] = await settledCalls(id);
  const [{ own_held }] = await testDb`select trim_scale(amount)::text as own_held from billing.holds
    where account_id = ${acct} and purpose = 'user'`;
  // The student's hold of 45 reserved the 40 due soonest and 5 of the 10 (spending order); the 40
  // expire whole and it shrinks by them to 5 (docs/credit-lots.md § Spending order 7). The call's
  // reservation (the rest of the 10, then its own list) is untouched.
  // The call's price fits in its untouched hold: nothing past it.
  assert.deepEqual(
    { call: after?.held, own: own_held, balance: s.balance, overage: c.overage },
    { call: before.held, own: '5', balance: '30', overage: '0' },
    JSON.stringify({ before, after, s, c }),
  );
  await invariants();
});

// ============================================================ 1. charges racing a short call's capture

Deno.test("a dispute freezes the credits for any model while a call runs on a shared list: its buyer's 12 charges are refused (403), and the call captures its cost in full from its reservation", async () => {
  const [m, s] = await models(2);
  const id = await newUser();
  const token = await userToken(id);
  const co = await buy(token, 'mini');
  const acct = await until('paid', async () => {
    const r =
      await testDb`select id::text from billing.accounts where user_id = ${id} and org_id is null and balance > 0`;
    return r[0]?.id as string | undefined;
  });
  assert.equal((await grantLot(id, '5', 'promo_grant', { applies_to: [m, s] })).status, 201);
  const call = chat(token, m, 'words=60 first_byte_delay=5000', 4000);
  const [before] = await until('call held', async () => (await callHolds(id)).length === 1 && await callHolds(id));
  await openDispute(co.session_id);
  // The buyer is suspended while the dispute is open; the call's hold, placed before, finishes
  // normally from what it reserved (docs/credit-lots.md § Refunds, disputes and debt 3-4).
  const rs = await Promise.all(Array.from({ length: 12 }, () => charge(token, s, 1)));
  for (const r of rs) assert.equal(r.status, 403, r.text);
  assert.equal((await call).status, 200);
  const [c] = await settledCalls(id);
  const st = await state(acct);
  assert.ok(Number(before.held) > 0, JSON.stringify(before));
  assert.deepEqual(
    { overage: c.overage, balance: st.balance },
    { overage: '0', balance: String(Number((5005 - Number(c.charged)).toFixed(9))) },
    JSON.stringify({ before, c, st }),
  );
  await invariants();
});

// ============================================================ 3. sponsor codes on 12 lists racing a pool's gateway holds

Deno.test("twelve sponsor codes for the model 12 lists share, issued and revoked (or closed) while four gateway calls hold a pool school's lists: every call captures in full, and the credits come back on their own lists", async () => {
  const ms = await models(13);
  const shared = ms[12];
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', null);
  for (let i = 0; i < 12; i++) await orgGrant(org, '10', 'promo_grant', [ms[i], shared]);
  const [{ id: wallet }] =
    await testDb`select id::text from billing.accounts where org_id = ${org} and member_id is null`;
  const calls = Array.from({ length: 4 }, (_, i) => chat(ada.token, ms[i], 'words=60 first_byte_delay=4000', 2000));
  await until(
    'four calls held',
    async () => (await callHolds(ada.id)).filter((h) => h.status === 'active').length === 4,
  );
  const heldByCalls = (await callHolds(ada.id)).reduce((n, h) => n + Number(h.held), 0);
  const issued = await Promise.all(
    Array.from({ length: 12 }, () => issue(owner.token, org, { credits: '9', user_id: ada.id, applies_to: [shared] })),
  );
  const ids = issued.filter((r) => r.status === 201).map((r) => (r.body.data as { id: string }).id);
  for (const r of issued) assert.ok(r.status === 201 || r.status === 402, r.text);
  await Promise.all(
    ids.slice(0, 6).map((c) => api(`/orgs/${org}/sponsor-codes/${c}`, { token: owner.token, method: 'DELETE' })),
  );
  await testDb`update billing.codes set valid_from = now() - interval '2 days', valid_until = now() - interval '1 second'
    where id = any(${ids.slice(6)}::uuid[])`;
  await testDb`select billing.close_expired_sponsor_codes(1000)`;
  for (const a of await Promise.all(calls)) assert.equal(a.status, 200, a.text);
  const rows = await settledCalls(ada.id);
  const spent = rows.reduce((n, c) => n + Number(c.charged), 0);
  const off = await testDb`select n.id, n.applies_to, w.applies_to as was from billing.lots n
    join billing.lots a on a.id = n.moved_from join billing.lots w on w.id = a.moved_from
    where n.account_id = ${wallet} and n.applies_to is distinct from w.applies_to`;
  const s = await state(wallet);
  assert.deepEqual(
    { codes: ids.length, overage: rows.map((c) => c.overage), off: [...off], held: s.held, balance: s.balance },
    {
      codes: Math.floor((120 - heldByCalls) / 9), // the codes take what the four holds leave, across lists
      overage: ['0', '0', '0', '0'], // each call's price within its hold
      off: [],
      held: '0',
      balance: String(Number((120 - spent).toFixed(9))),
    },
    JSON.stringify(rows),
  );
  await invariants();
});

// ============================================================ 2. a refund (no bound given) under an open dispute

Deno.test('a dispute open over the credits for any model: a refund of 1¢ (10 credits) of another purchase shrinks two gateway calls in flight by at most the 10 the balance lost', async () => {
  const [m, z, other] = await models(3);
  const id = await newUser();
  const token = await userToken(id);
  const p1 = await buy(token, 'mini');
  const p2 = await buy(token, 'mini');
  const acct = await ownAccount(id);
  await until('paid', async () => (await state(acct)).balance === '10000');
  assert.equal((await grantLot(id, '1000', 'promo_grant', { applies_to: [z] })).status, 201);
  const debit = await charge(token, other, 5000); // the credits for any model down to 5,000
  assert.equal(debit.status, 201, debit.text);
  const calls = [1, 2].map(() => chat(token, m, 'words=60 first_byte_delay=6000', 4000));
  const before = await until('calls held', async () => (await callHolds(id)).length === 2 && await callHolds(id));
  await openDispute(p1.session_id);
  const disputed = await state(acct);
  const refund = await api('/checkout/refunds', {
    token: await adminToken(),
    headers: key(),
    body: { purchase_id: p2.purchase_id, amount_cents: 1 },
  });
  assert.equal(refund.status, 202, refund.text);
  await until('refunded', async () => Number((await state(acct)).balance) === Number(disputed.balance) - 10);
  const after = await callHolds(id);
  const given = before.reduce((n, h) => n + Number(h.held), 0) -
    after.reduce((n, h) => n + (h.status === 'active' ? Number(h.held) : 0), 0);
  for (const a of await Promise.all(calls)) assert.equal(a.status, 200, a.text);
  const rows = await settledCalls(id);
  const figures = JSON.stringify({ before, disputed, after, given, rows });
  assert.ok(Number(given.toFixed(9)) <= 10, `the calls gave ${given} for a refund of 10: ${figures}`);
  await invariants();
});
