// Holds on accounts with many lists of credits for some models: accounts with
// 12-20 lists and live holds for different models, against refunds and lost disputes (Stripe
// emulator), gateway calls, charges for a model the lists share, allowance sweeps on removal, and
// states where the holds already do not fit (an expiry or a refund under a live hold). Outside
// tester: a student's token, a school the tester creates; admin grants and refunds only as setup.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  backdateLot,
  key,
  newUser,
  sweepExpiredHolds,
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

type Res = Awaited<ReturnType<typeof api>>;
const data = (r: Res) => r.body.data as Record<string, unknown>;

const capture = (token: string, id: string) => api(`/credits/holds/${id}/capture`, { token, headers: key(), body: {} });
const release = (token: string, id: string) => api(`/credits/holds/${id}/release`, { token, headers: key(), body: {} });
/** A gateway chat call, the stand-in steered by `directives`. */

const state = async (accountId: string) =>
  (await testDb`select trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held,
      trim_scale(coalesce((select sum(l.remaining) from billing.lots l where l.account_id = a.id and l.open
        and l.applies_to is null), 0))::text as general
    from billing.accounts a where a.id = ${accountId}`)[0];

/**
 * Credits for some models that paid for what they may not: a charge or capture for another model
 * (or none), a move-less debit, or a refund's / dispute's reversal of a purchase not theirs.
 */
const misuse = async (accounts: string[]) => [
  ...await testDb`
    select x.kind::text, t.metadata ->> 'model' as model, l.applies_to, trim_scale(x.amount)::text as amount
    from billing.lot_allocations x join billing.lots l on l.id = x.lot_id join billing.transfers t on t.id = x.transfer_id
    where l.account_id = any(${accounts}::bigint[]) and x.amount > 0 and l.applies_to is not null and (
      (x.kind in ('usage', 'hold_capture') and not coalesce(billing.lot_pays_for(l.applies_to, t.metadata ->> 'model'), false))
      or (x.kind in ('refund_reversal', 'dispute_reversal')
          and not exists (select 1 from billing.purchases p where p.id = l.purchase_id and p.stripe_charge_id = t.reference)))`,
];

async function invariants(accounts: string[]) {
  assert.deepEqual(await misuse(accounts), [], 'credits for some models paid only for their models');
  await checkLots();
  await assertLedgerInvariants();
}

/** Gateway calls of `userId` settled (none still held): what each charged, and what of it went past its hold. */
async function settledCalls(userId: string) {
  await until(
    'calls settled',
    async () =>
      (await testDb`select count(*)::int as n from billing.ai_calls where user_id = ${userId} and status = 'held'`)[0]
        .n === 0,
  );
  return await testDb`select c.model, c.status, trim_scale(h.amount)::text as held, trim_scale(c.charged)::text as charged,
      trim_scale(coalesce((select t.amount from billing.transfers t
        where t.idempotency_key = 'ai-overage:' || c.id::text), 0))::text as overage
    from billing.ai_calls c join billing.holds h on h.id = c.hold_id where c.user_id = ${userId} and c.status <> 'refused'
    order by c.created_at`;
}
const heldCalls = async (userId: string) =>
  (await testDb`select count(*)::int as n from billing.ai_calls where user_id = ${userId} and status = 'held'`)[0]
    .n as number;

// ============================================================ 4. holds that already do not fit

Deno.test('an expiry under a student hold on 20 lists: the hold gives way to what expired, and a list no hold may use stays spendable', async () => {
  const ms = await models(21);
  const id = await newUser();
  assert.equal((await grantLot(id, '10', 'promo_grant')).status, 201);
  const soon = new Date(Date.now() + 86_400_000).toISOString();
  assert.equal((await grantLot(id, '40', 'promo_grant', { expires_at: soon })).status, 201);
  for (let i = 0; i < 20; i++) {
    assert.equal((await grantLot(id, '5', 'promo_grant', { applies_to: [ms[i]] })).status, 201);
  }
  const token = await userToken(id);
  const acct = await ownAccount(id);
  const h = await hold(token, '50'); // all 50 credits for any model
  assert.equal(h.status, 201, h.text);
  const [{ lot }] = await testDb`select id::text as lot from billing.lots where account_id = ${acct} and amount = 40`;
  await backdateLot(lot);
  // The minute sweep expires the 40 held credits (a refused request would roll its own expiry back).
  await testDb`select billing.expire_due_lots(${acct}::bigint)`;
  const worse = await charge(token, ms[20], 1); // only credits for any model pay ms[20]: they are all held
  assert.equal(worse.status, 402, worse.text);
  // ms[3]'s 5 credits can never pay a student's hold: taking them leaves it as payable as it was.
  const unrelated = await charge(token, ms[3], 5);
  const s = await state(acct);
  // The hold may keep only what can pay it (10), and the lists no hold may use stay spendable.
  assert.deepEqual({ ...s, unrelated: unrelated.status }, {
    balance: '105',
    held: '10',
    general: '10',
    unrelated: 201,
  });
  await invariants([acct]);
});

Deno.test('holds short by 40 after an expiry on 20 lists: a charge that would take from what the student hold still has is refused, whatever the list (what Hall already lacks is not made worse)', async () => {
  const ms = await models(21);
  const id = await newUser();
  assert.equal((await grantLot(id, '10', 'promo_grant')).status, 201);
  const soon = new Date(Date.now() + 86_400_000).toISOString();
  assert.equal((await grantLot(id, '40', 'promo_grant', { expires_at: soon })).status, 201);
  for (let i = 0; i < 20; i++) {
    assert.equal((await grantLot(id, '5', 'promo_grant', { applies_to: [ms[i], ms[20]] })).status, 201);
  }
  const token = await userToken(id);
  const acct = await ownAccount(id);
  assert.equal((await hold(token, '50')).status, 201);
  const [{ lot }] = await testDb`select id::text as lot from billing.lots where account_id = ${acct} and amount = 40`;
  await backdateLot(lot);
  await testDb`select billing.expire_due_lots(${acct}::bigint)`;
  // Racing: charges for the model every list shares, a second hold, a move-less debit of 1.
  const rs = await Promise.all([
    ...Array.from({ length: 12 }, () => charge(token, ms[20], 5)),
    hold(token, '1'),
    api('/credits/usage', { token, headers: key(), body: { amount: '1' } }),
  ]);
  const ok = rs.slice(0, 12).filter((r) => r.status === 201).length;
  assert.equal(rs[12].status, 402, rs[12].text);
  // The 10 for any model stay whole, held for the student's hold, whatever the lists pay.
  const [{ general }] = await testDb`select trim_scale(coalesce(sum(remaining), 0))::text as general
    from billing.lots where account_id = ${acct} and open and applies_to is null`;
  assert.equal(general, '10');
  const s = await state(acct);
  assert.equal(s.balance, String(110 - 5 * ok - (rs[13].status === 201 ? 1 : 0)));
  await invariants([acct]);
});

// ============================================================ 1. a refund under live holds on 20 lists

Deno.test('a refund of the credits under a student hold on 20 lists: the hold keeps its reservation until it ends, then the refund takes it back; the lists stay spendable and the reversal takes none of them', async () => {
  const ms = await models(20);
  const id = await newUser();
  const token = await userToken(id);
  const co = await buy(token, 'mini'); // 5,000 for any model
  await until('paid', async () => (await testDb`select 1 from billing.accounts where user_id = ${id}`).length > 0);
  for (let i = 0; i < 20; i++) {
    assert.equal((await grantLot(id, '5', 'promo_grant', { applies_to: [ms[i]] })).status, 201);
  }
  const acct = await ownAccount(id);
  const h = await hold(token, '4000');
  assert.equal(h.status, 201, h.text);
  // The refund races charges for the lists' models and the capture of the hold.
  const [refund, ...rs] = await Promise.all([
    api('/checkout/refunds', { token: await adminToken(), headers: key(), body: { purchase_id: co.purchase_id } }),
    ...Array.from({ length: 10 }, (_, i) => charge(token, ms[i], 2)),
  ]);
  assert.equal(refund.status, 202, refund.text);
  // The refund takes the 1,000 free credits at once; the 4,000 the hold reserved stay its own until
  // it ends (docs/credit-lots.md § Refunds, disputes and debt 1).
  await until('the refund', async () => (await state(acct)).general === '4000');
  const ok = rs.filter((r) => r.status === 201).length;
  const s = await state(acct);
  assert.deepEqual([s.balance, s.held], [String(4100 - 2 * ok), '4000']);
  const rel = await release(token, data(h).hold_id as string);
  assert.equal(rel.status, 200, rel.text);
  // Released: the refund takes back what it returned, at the minute's tick. Every credit left is
  // for one model.
  await sweepExpiredHolds();
  const after = await state(acct);
  assert.deepEqual({ balance: after.balance, held: after.held, general: after.general }, {
    balance: String(100 - 2 * ok),
    held: '0',
    general: '0',
  });
  assert.equal((await capture(token, data(h).hold_id as string)).status, 409, 'a released hold captures nothing');
  assert.equal((await charge(token, ms[19], 5)).status, 201, 'the lists stay spendable');
  await invariants([acct]);
});

Deno.test('a lost dispute racing 30 charges on 16 lists: no hold, its buyer refused while it is open, its frozen lots pay nothing, and its reversal takes none of the lists', async () => {
  const ms = await models(18);
  const id = await newUser();
  const token = await userToken(id);
  for (let i = 0; i < 16; i++) {
    assert.equal((await grantLot(id, '10', 'promo_grant', { applies_to: [ms[i], ms[16]] })).status, 201);
  }
  const co = await buy(token, 'mini');
  const acct = await ownAccount(id);
  await until('paid', async () => (await state(acct)).general === '5000');
  const ch = await chargeOf(co.session_id);
  const open = (await emulator(`/_emulator/charges/${ch}/dispute`, { outcome: 'open', deliver: false })).events;
  for (const e of open) assert.ok((await deliverWithRetries(e)).status < 300);
  const lost = (await emulator(`/_emulator/charges/${ch}/dispute`, { outcome: 'lost', deliver: false })).events;
  // A dispute places no hold: it freezes the purchase's lot and suspends its buyer.
  assert.deepEqual({ ...await state(acct) }, { balance: '5160', held: '0', general: '5000' });
  // ms[17] is on no list: only the frozen purchase could pay it. The rest are the lists' models.
  const rs = await Promise.all([
    ...Array.from({ length: 30 }, (_, i) => charge(token, i % 2 ? ms[16] : ms[i % 16], 3)),
    ...Array.from({ length: 4 }, () => charge(token, ms[17], 1)),
    ...[...lost, ...lost].map(deliverWithRetries),
  ]);
  const st = rs.map((r) => (r as { status: number }).status);
  // While the dispute is open the buyer is refused (403); once lost, a list's own model may find
  // its list spent by the shared model first (spending order): 201 or 402. Nothing pays ms[17].
  for (const x of st.slice(0, 30)) assert.ok([201, 402, 403].includes(x), JSON.stringify(st));
  for (const x of st.slice(30, 34)) assert.ok([402, 403].includes(x), JSON.stringify(st));
  for (const x of st.slice(34)) assert.ok(x < 300);
  const ok = st.slice(0, 30).filter((x) => x === 201).length;
  // Lost: the 5,000 back from the purchase's own lot; the lists keep 160 less the charges of 3.
  assert.deepEqual({ ...await state(acct) }, { balance: String(160 - 3 * ok), held: '0', general: '0' });
  await invariants([acct]);
});

// ============================================================ 2. gateway holds on 12 lists racing charges for the shared model

Deno.test('six gateway calls for six lists racing 60 charges for the model 12 lists share: every call captures its cost in full from its own list, held and balance exact', async () => {
  const ms = await models(13);
  const shared = ms[12];
  const id = await newUser();
  for (let i = 0; i < 12; i++) {
    assert.equal((await grantLot(id, '20', 'promo_grant', { applies_to: [shared, ms[i]] })).status, 201);
  }
  const token = await userToken(id);
  const acct = await ownAccount(id);
  const calls = Array.from({ length: 6 }, (_, i) => chat(token, ms[i], 'words=400 first_byte_delay=1500'));
  await until('six calls held', async () => (await heldCalls(id)) === 6);
  const [{ held }] = await testDb`select trim_scale(held)::text as held from billing.accounts where id = ${acct}`;
  const rs = await Promise.all(Array.from({ length: 60 }, () => charge(token, shared, 5)));
  const ok = rs.filter((r) => r.status === 201).length;
  for (const r of rs) assert.ok(r.status === 201 || r.status === 402, r.text);
  // The shared model may take all but what the six holds need, in whole charges of 5.
  assert.equal(ok, Math.floor((240 - Number(held)) / 5), `held ${held}`);
  const answers = await Promise.all(calls);
  for (const a of answers) assert.equal(a.status, 200, a.text);
  const rows = await settledCalls(id);
  // Each call's price fits in what its hold reserved of its own list: nothing charged past it.
  for (const c of rows) assert.deepEqual([c.status, c.overage], ['charged', '0'], JSON.stringify(c));
  const [{ spent }] = await testDb`select trim_scale(sum(charged))::text as spent from billing.ai_calls
    where user_id = ${id}`;
  const s = await state(acct);
  assert.deepEqual([s.balance, s.held], [String(Number((240 - 5 * ok - Number(spent)).toFixed(9))), '0']);
  await invariants([acct]);
});

// ============================================================ 3. a removal's sweep racing calls and charges on 20 lists

Deno.test("a member removed while four gateway calls run on her 20-list allowance: the sweep leaves what the calls need, they capture in full, and the swept credits regain the wallet's lists", async () => {
  const ms = await models(21);
  const shared = ms[20];
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'allowance', null);
  await orgGrant(org, '100', 'promo_grant');
  for (let i = 0; i < 20; i++) await orgGrant(org, '10', 'promo_grant', [ms[i], shared]);
  const fund = (amount: string, applies_to?: string[]) =>
    api(`/orgs/${org}/allowances`, {
      token: owner.token,
      headers: key(),
      body: { amount, user_id: ada.id, ...(applies_to ? { applies_to } : {}) },
    });
  assert.equal((await fund('10')).status, 201);
  for (let i = 0; i < 20; i++) {
    const r = await fund('10', [ms[i], shared]);
    assert.equal(r.status, 201, r.text);
  }
  const [{ id: allowance }] =
    await testDb`select id::text from billing.accounts where org_id = ${org} and member_id = ${ada.id}`;
  const [{ id: wallet }] =
    await testDb`select id::text from billing.accounts where org_id = ${org} and member_id is null`;
  const calls = Array.from({ length: 4 }, (_, i) => chat(ada.token, ms[i], 'words=400 first_byte_delay=1500'));
  await until('four calls held', async () => (await heldCalls(ada.id)) === 4);
  const [removed, ...rs] = await Promise.all([
    api(`/orgs/${org}/members/${ada.id}`, { token: owner.token, headers: key(), method: 'DELETE' }),
    ...Array.from({ length: 10 }, () => charge(ada.token, shared, 3)),
  ]);
  assert.ok(removed.status < 300, removed.text);
  for (const a of await Promise.all(calls)) assert.equal(a.status, 200, a.text);
  for (const c of await settledCalls(ada.id)) {
    assert.deepEqual([c.status, c.overage], ['charged', '0'], JSON.stringify(c));
  }
  const s = await state(allowance);
  assert.equal(s.held, '0');
  // Swept credits are the wallet's again, as they were: each with its source's source's list.
  const off = await testDb`select n.id, n.applies_to, w.applies_to as was from billing.lots n
    join billing.transfers t on t.id = n.grant_transfer_id and t.kind = 'allowance_sweep'
    join billing.lots a on a.id = n.moved_from join billing.lots w on w.id = a.moved_from
    where n.account_id = ${wallet} and n.applies_to is distinct from w.applies_to`;
  assert.deepEqual([...off], []);
  console.log('removal sweep:', {
    charges: rs.map((r) => r.status).join(','),
    allowance: s,
    wallet: await state(wallet),
  });
  await invariants([allowance, wallet]);
});
