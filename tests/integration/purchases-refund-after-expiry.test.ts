// Refunds and lost disputes of a purchase whose credits partly expired, through the real webhook
// path (Stripe emulator, signed events, the minute sweep): what expired already left as breakage
// and is forgiven, never taken again from the buyer's other credits or as debt; what was spent
// is still owed; the outcome is the same whether the expiry ran before or after. Then what a
// student can try with their own token: moving an expiry, a hold over the expiring bonus, a
// refund while that hold is active.
import assert from 'node:assert/strict';
import type { LotPage } from '../../supabase/functions/_shared/contract/index.ts';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  assertPlatformBalances,
  key,
  newUser,
  spend,
  student,
  sweepExpiredHolds,
  testDb,
  userToken,
} from '../support/helpers.ts';
import { codeOf, spendWith } from '../support/money.ts';
import { person, school, usage, verifyOrg, walletOf } from '../support/orgs.ts';
import { balanceOf, buy, chargeOf, emulator } from '../support/purchases.ts';

/** 1,000 paid credits (100¢) spent after everything else: the credits a double take-back would reach. */
async function gift(userId: string) {
  const r = await api('/credits/grants', {
    token: await adminToken(),
    headers: key(),
    body: {
      user_id: userId,
      amount: '1000',
      reason: 'refund after expiry',
      kind: 'adjustment',
      lot: { category: 'paid', cost_cents: '100', priority: 50 },
    },
  });
  assert.equal(r.status, 201, r.text);
}

/**
 * Time passes for a purchase's bonus: its lot and every lot its credits were moved into are due
 * at one instant (a moved lot keeps its source's expiry); `sweep`: the minute job runs.
 */
async function expireBonus(purchaseId: string, sweep = true) {
  await testDb`with l as (update billing.lots set expires_at = now() - interval '1 second'
                          where purchase_id = ${purchaseId} and category = 'promotional' returning account_id, expires_at)
               update billing.accounts a set next_expiry = l.expires_at from l where a.id = l.account_id`;
  if (sweep) await testDb`select billing.expire_lots(100000)`;
}

const forgiven = async (purchaseId: string) =>
  (await testDb`select trim_scale(credits_expiry_forgiven)::text as credits, trim_scale(bonus_expiry_forgiven)::text as bonus
                from billing.purchases where id = ${purchaseId}`)[0];
const refund = async (sessionId: string, cents: number) =>
  emulator(`/_emulator/charges/${await chargeOf(sessionId)}/refund`, { amount: cents });
const dispute = async (sessionId: string, outcome: 'open' | 'lost') =>
  emulator(`/_emulator/charges/${await chargeOf(sessionId)}/dispute`, { outcome });

Deno.test('a full refund after the bonus expired takes the paid credits only: the other credits stay, no debt', async () => {
  const s = await student();
  const co = await buy(s.token, 'pro'); // 49,990 credits for 4,999¢ + a 4,999 bonus
  await gift(s.id);
  await expireBonus(co.purchase_id);
  assert.equal((await balanceOf(s.token)).balance, '50990', 'the bonus expired');

  await refund(co.session_id, 4999);
  assert.deepEqual(await balanceOf(s.token), { balance: '1000', held: '0', available: '1000' });
  const lots = (await api('/credits/lots', { token: s.token })).body.data as LotPage;
  assert.deepEqual(lots.items.map((l) => [l.source, l.remaining]), [['adjustment', '1000'], ['promo_grant', '0'], [
    'purchase',
    '0',
  ]]);
  assert.deepEqual(await forgiven(co.purchase_id), { credits: '0', bonus: '4999' });
  const status = await api(`/checkout/sessions/${co.purchase_id}`, { token: s.token });
  assert.equal((status.body.data as { amount_refunded_cents: number }).amount_refunded_cents, 4999);
  await assertLedgerInvariants();
});

Deno.test('partial refunds and a lost dispute end the same whether the bonus expired before or after', async () => {
  // Both spend 3,000 (from the bonus, promotional first); `early`'s bonus expires at once,
  // `late`'s only after the dispute is lost.
  const [early, late] = [await student(), await student()];
  const bought = [await buy(early.token, 'pro'), await buy(late.token, 'pro')];
  for (const s of [early, late]) await spend(s.token, 3000);
  await expireBonus(bought[0].purchase_id);
  assert.equal((await balanceOf(early.token)).balance, '49990');

  // Half: 25,000 paid and 2,500 bonus; the bonus has 1,999 left or expired, so 501 is owed.
  for (const co of bought) await refund(co.session_id, 2500);
  assert.deepEqual(await balanceOf(early.token), await balanceOf(late.token));
  assert.equal((await balanceOf(early.token)).balance, '24489');

  // The rest is disputed: the lots freeze (nothing held), then are taken; both owe the 3,000 spent.
  for (const co of bought) await dispute(co.session_id, 'open');
  assert.deepEqual(await balanceOf(early.token), { balance: '24489', held: '0', available: '0' });
  assert.deepEqual(await balanceOf(late.token), await balanceOf(early.token));
  for (const co of bought) await dispute(co.session_id, 'lost');
  await expireBonus(bought[1].purchase_id);
  for (const s of [early, late]) {
    assert.deepEqual(await balanceOf(s.token), { balance: '-3000', held: '0', available: '-3000' });
  }
  assert.deepEqual(await forgiven(bought[0].purchase_id), { credits: '0', bonus: '1999' });
  assert.deepEqual(await forgiven(bought[1].purchase_id), { credits: '0', bonus: '0' });
  await assertLedgerInvariants();
});

Deno.test("an organisation's lost dispute forgives the bonus that expired in a member's allowance, not what she spent", async () => {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'allowance', null);
  await verifyOrg(org); // its wallet answers for its purchases
  const co = await api('/checkout/sessions', {
    token: owner.token,
    body: { package_id: 'pro', org_id: org },
    headers: key(),
  });
  assert.equal(co.status, 201, co.text);
  const { session_id, purchase_id } = co.body.data as { session_id: string; purchase_id: string };
  await emulator(`/_emulator/checkout/sessions/${session_id}/pay`, { outcome: 'succeeded' });

  // 6,000 to Ada: the bonus (spent first) and 1,001 paid credits. She spends 3 of the bonus; the
  // rest of it expires in her allowance.
  const funded = await api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount: '6000' }, headers: key() });
  assert.equal(funded.status, 201, funded.text);
  assert.equal((await usage(ada.token)).status, 201);
  await expireBonus(purchase_id);
  const allowance = async () =>
    (await testDb`select trim_scale(balance)::text as balance, trim_scale(held)::text as held from billing.accounts
                  where org_id = ${org} and member_id = ${ada.id}`)[0];
  assert.deepEqual(await allowance(), { balance: '1001', held: '0' });

  // Open: the purchase's lots freeze where they are, the allowance's 1,001 and the wallet's 48,989
  // (nothing is held).
  await dispute(session_id, 'open');
  assert.deepEqual(await allowance(), { balance: '1001', held: '0' });
  assert.deepEqual(await walletOf(owner.token, org), { balance: '48989', held: '0', available: '0' });
  await dispute(session_id, 'lost');
  assert.deepEqual(await allowance(), { balance: '0', held: '0' });
  assert.deepEqual(await walletOf(owner.token, org), { balance: '-3', held: '0', available: '-3' }, 'only the 3 spent');
  assert.deepEqual(await forgiven(purchase_id), { credits: '0', bonus: '4996' });
  await assertLedgerInvariants();
});

// ---------------------------------------------------------------- a student's attempts (their own token only)

Deno.test('a student cannot move an expiry: lots are read-only to them and grants with a lot are for admins', async () => {
  const s = await student();
  const co = await buy(s.token, 'pro');
  const grant = await api('/credits/grants', {
    token: s.token,
    headers: key(),
    body: {
      user_id: s.id,
      amount: '1',
      reason: 'mine',
      lot: { expires_at: new Date(Date.now() + 1000).toISOString() },
    },
  });
  assert.equal(grant.status, 403, grant.text);
  // Through the Data API (PostgREST runs as `authenticated` with the student's claims).
  await assert.rejects(
    testDb.begin(async (sql) => {
      await sql`select set_config('request.jwt.claims', ${JSON.stringify({ sub: s.id, role: 'authenticated' })}, true)`;
      await sql`set local role authenticated`;
      await sql`update billing.lots set expires_at = now() where purchase_id = ${co.purchase_id}`;
    }),
    /permission denied for table lots/,
  );
  const [{ n }] = await testDb`select count(*)::int as n from billing.lots where purchase_id = ${co.purchase_id}
                               and (expires_at is null or expires_at > now() + interval '364 days')`;
  assert.equal(n, 2, 'both lots keep their expiry');
});

Deno.test('a hold over the expiring bonus shrinks by what expired; a full refund after it takes what it reserved when it ends, nothing owed', async () => {
  const s = await student();
  const co = await buy(s.token, 'pro');
  await gift(s.id); // 55,989 in all: the bonus 4,999, the purchase's 49,990, the gift's 1,000 (newest)
  // Reserves the bonus (promotional first) and 49,001 of the purchase's paid credits.
  const hold = await api('/credits/holds', { token: s.token, headers: key(), body: { amount: '54000' } });
  assert.equal(hold.status, 201, hold.text);
  const holdId = (hold.body.data as { hold_id: string }).hold_id;
  await expireBonus(co.purchase_id);
  assert.deepEqual(await balanceOf(s.token), { balance: '50990', held: '49001', available: '1989' });

  // The purchase's 989 free go at once; the 49,001 the hold reserved after it ends; the bonus is forgiven.
  await refund(co.session_id, 4999);
  assert.deepEqual(await balanceOf(s.token), { balance: '50001', held: '49001', available: '1000' });
  const released = await api(`/credits/holds/${holdId}/release`, { token: s.token, headers: key(), body: {} });
  assert.equal(released.status, 200, released.text);
  assert.deepEqual(
    await balanceOf(s.token),
    { balance: '50001', held: '49001', available: '1000' },
    'kept for the refund',
  );
  await sweepExpiredHolds(); // the minute's tick takes it back
  assert.deepEqual(await balanceOf(s.token), { balance: '1000', held: '0', available: '1000' }, 'no debt');
  await assertLedgerInvariants();
});

Deno.test('a refund while a hold covers a due, unswept bonus ends as if the expiry had run first', async () => {
  const [swept, unswept] = [await student(), await student()];
  for (const s of [swept, unswept]) {
    const co = await buy(s.token, 'pro');
    await gift(s.id);
    const hold = await api('/credits/holds', { token: s.token, headers: key(), body: { amount: '54000' } });
    assert.equal(hold.status, 201, hold.text);
    await expireBonus(co.purchase_id, s === swept); // the other's is due, and nothing has expired it yet
    await refund(co.session_id, 4999);
  }
  await testDb`select billing.expire_lots(100000)`;
  for (const s of [swept, unswept]) {
    // The hold shrank by the bonus; of the purchase, 989 free went at once, its 49,001 when it ends.
    assert.deepEqual(await balanceOf(s.token), { balance: '50001', held: '49001', available: '1000' });
  }
  await assertLedgerInvariants();
});

Deno.test('spending races a refund while the bonus is due, unswept: only what expired is forgiven, the spent is owed', async () => {
  const id = await newUser();
  const s = { id, token: await userToken(id) };
  const co = await buy(s.token, 'pro'); // 49,990 paid + a 4,999 bonus
  // Time passes for the bonus (its lot is due; the minute sweep has not run).
  await testDb`with l as (update billing.lots set expires_at = now() - interval '1 second'
                          where purchase_id = ${co.purchase_id} and category = 'promotional' returning account_id, expires_at)
               update billing.accounts a set next_expiry = l.expires_at from l where a.id = l.account_id`;
  const charge = await chargeOf(co.session_id);
  const [spends] = await Promise.all([
    Promise.all(Array.from({ length: 10 }, () => spendWith(s.token, crypto.randomUUID(), 1000))),
    emulator(`/_emulator/charges/${charge}/refund`, { amount: 4999 }),
  ]);
  const spent = spends.filter((r) => r.status === 201).length * 1000;
  for (const r of spends) assert.ok(r.status === 201 || codeOf(r) === 'INSUFFICIENT_CREDITS', r.text);
  const [p] =
    await testDb`select trim_scale(bonus_expiry_forgiven)::text as bonus, trim_scale(credits_expiry_forgiven)::text as paid
    from billing.purchases where id = ${co.purchase_id}`;
  // The bonus expired whole (a spend settles due lots before it draws): all of it forgiven, no
  // paid credit; every credit spent is owed.
  assert.deepEqual(p, { bonus: '4999', paid: '0' });
  assert.equal((await balanceOf(s.token)).balance, String(-spent));
  await assertPlatformBalances();
});
