// A refund whose spent part the buyer owes claims what their live hold reserved (docs/credit-lots.md
// § Refunds, disputes and debt). When the reserved lot then expires, the claim cannot be taken:
// it is owed again (then debt) at pg_cron's minute tick that takes the claims back, never forgiven
// by the expiry, which forgives only the refund's own take-back of that lot. The balance a student
// reads before the sweep posts the expiry already shows the expiry. Students' tokens over HTTP,
// the Stripe emulator's signed webhooks; the database is read for figures and made to pass the
// lot's expiry.
import assert from 'node:assert/strict';
import {
  api,
  assertLedgerInvariants,
  backdateLot,
  fund,
  holdsLapse,
  key,
  newUser,
  reportUsage,
  testDb,
  userToken,
} from '../support/helpers.ts';
import { balanceOf, buy, chargeOf, emulator } from '../support/purchases.ts';

/** A student who bought `plus` (24,990 credits and a 1,249.5 bonus, spent first), and its bonus lot. */
async function plusBuyer() {
  const user = await newUser();
  const token = await userToken(user);
  const co = await buy(token, 'plus');
  const [bonus] = await testDb`select l.id::text from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.user_id = ${user} and l.category = 'promotional'`;
  return { user, token, session: co.session_id, bonus: bonus.id as string };
}

/** Usage of exactly `input` gpt-4o-mini tokens (0.0006 credits each) and `output` (0.0024 each). */
async function use(token: string, input: number, output: number) {
  const r = await reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model: 'gpt-4o-mini', input_tokens: input, output_tokens: output },
  });
  assert.equal(r.status, 201, r.text);
}

async function hold(token: string, amount: string) {
  const r = await api('/credits/holds', { token, headers: key(), body: { amount, ttl_seconds: 3600 } });
  assert.equal(r.status, 201, r.text);
  return (r.body.data as { hold_id: string }).hold_id;
}

const refundAll = async (session: string) => emulator(`/_emulator/charges/${await chargeOf(session)}/refund`, {});
/** The balance and held amount a student reads (in debt, nothing is available). */
const owed = async (token: string) => {
  const { balance, held } = await balanceOf(token);
  return { balance, held };
};
const sweep = () => testDb`select billing.expire_lots(100000)`;
/** pg_cron's minute tick that takes back what refunds claimed of ended holds and expired lots. */
const tick = () => testDb`select billing.take_back_due_claims(100000)`;

Deno.test('a claim on a reservation whose lot expires is owed again at the tick, the expiry read before and after the sweep', async () => {
  const s = await plusBuyer();
  await hold(s.token, '1'); // reserves 1 of the bonus
  await use(s.token, 313946, 441722); // 1,248.5004: the bonus's free 1,248.5, then 0.0004 of the paid credits
  await refundAll(s.session);
  // Paid: 24,989.9996 taken, the 0.0004 spent owed: it claims the hold's reservation of the bonus.
  // Bonus: 0.9996 waits on the hold, the 1,248.5004 spent is debt.
  assert.deepEqual(await owed(s.token), { balance: '-1247.5004', held: '1' });

  await backdateLot(s.bonus);
  // The bonus expires whole: the hold ends with nothing.
  const expected = { balance: '-1248.5004', held: '0' };
  assert.deepEqual(await owed(s.token), expected, 'as the sweep will leave it');
  await sweep();
  assert.deepEqual(await owed(s.token), expected, 'after the sweep');
  // The tick: the hold's 0.9996 take-back is forgiven, the 0.0004 claim is owed.
  await tick();
  assert.deepEqual(await owed(s.token), { balance: '-1248.5008', held: '0' }, 'after the tick');
  await assertLedgerInvariants();
});

Deno.test('a claim on an expiring lot is owed at the tick after the expiry even while its hold lives on', async () => {
  const s = await plusBuyer();
  await use(s.token, 2_080_000, 0); // 1,248 of the bonus: 1.5 free
  const h = await hold(s.token, '2'); // the bonus's 1.5, then 0.5 of the paid credits
  await use(s.token, 0, 1); // 0.0024 of the paid credits
  await refundAll(s.session);
  // Paid: 24,989.4976 free taken, 0.5 waits on the hold, the 0.0024 spent claims the bonus's
  // reservation. Bonus: 1.4976 waits on the hold, the 1,248 spent is debt.
  assert.deepEqual(await owed(s.token), { balance: '-1246.0024', held: '2' });

  await backdateLot(s.bonus);
  await sweep();
  // 1.5 expired under the hold, which keeps the paid 0.5; the claim is owed at the tick.
  assert.deepEqual(await owed(s.token), { balance: '-1247.5024', held: '0.5' });
  await tick();
  assert.deepEqual(await owed(s.token), { balance: '-1247.5048', held: '0.5' });

  const r = await api(`/credits/holds/${h}/release`, { token: s.token, headers: key(), body: {} });
  assert.equal(r.status, 200, r.text);
  // Released, the paid 0.5 stays reserved for the refund, which the tick takes; nothing else is owed.
  assert.deepEqual(await owed(s.token), { balance: '-1247.5048', held: '0.5' });
  await tick();
  assert.deepEqual(await owed(s.token), { balance: '-1248.0048', held: '0' });
  const [{ pending }] = await testDb`select count(*)::int as pending from billing.lot_take_backs t
    join billing.accounts a on a.id = t.buyer_id where a.user_id = ${s.user}`;
  assert.equal(pending, 0, 'no take-back is left');
  await assertLedgerInvariants();
});

/** The first test's claim: the hold reserves 1 of the bonus, the 0.0004 the buyer spent claims it. */
async function claimOnBonus() {
  const s = await plusBuyer();
  const h = await hold(s.token, '1');
  await use(s.token, 313946, 441722);
  await refundAll(s.session);
  assert.deepEqual(await owed(s.token), { balance: '-1247.5004', held: '1' });
  return { ...s, hold: h };
}
/** The hold's TTL set `seconds` after the bonus's expiry (before it when negative), both past. */
const holdLapses = (hold: string, bonus: string, seconds: number) =>
  holdsLapse(
    testDb`h.id = ${hold}`,
    testDb`(select l.expires_at from billing.lots l where l.id = ${bonus}) + make_interval(secs => ${seconds})`,
  );

Deno.test('a hold released after its lot fell due, before the sweep, pays no claim with the expired credits', async () => {
  const s = await claimOnBonus();
  await backdateLot(s.bonus);
  const r = await api(`/credits/holds/${s.hold}/release`, { token: s.token, headers: key(), body: {} });
  assert.equal(r.status, 200, r.text);
  // The bonus expired first, taking the hold's 1 with it, as the sweep leaves it.
  assert.deepEqual(await owed(s.token), { balance: '-1248.5004', held: '0' });
  await sweep();
  assert.deepEqual(await owed(s.token), { balance: '-1248.5004', held: '0' }, 'the sweep changes nothing');
  await tick(); // the claim is owed
  assert.deepEqual(await owed(s.token), { balance: '-1248.5008', held: '0' }, 'the tick');
  await assertLedgerInvariants();
});

Deno.test('a hold whose TTL passed after its lot expired ends after the expiry, whichever sweep runs first', async () => {
  for (const sweepFirst of ['holds', 'lots']) {
    const s = await claimOnBonus();
    await backdateLot(s.bonus);
    await holdLapses(s.hold, s.bonus, 0.5);
    assert.deepEqual(await owed(s.token), { balance: '-1248.5004', held: '0' }, 'read before either sweep');
    if (sweepFirst === 'holds') await testDb`select billing.release_expired_holds(100000)`;
    else await sweep();
    assert.deepEqual(await owed(s.token), { balance: '-1248.5004', held: '0' }, `${sweepFirst} swept first`);
    await tick(); // the claim is owed
    assert.deepEqual(await owed(s.token), { balance: '-1248.5008', held: '0' }, 'the tick');
  }
  await assertLedgerInvariants();
});

Deno.test('a hold whose TTL passed before its lot expired returned live credits: kept for the claims, the expiry leaves them, and the tick pays the claim from them', async () => {
  const s = await claimOnBonus();
  await backdateLot(s.bonus);
  await holdLapses(s.hold, s.bonus, -0.5);
  // The hold's 1 came back while the bonus lived, kept for the claims (0.9996 the refund's, 0.0004
  // the claim's) in a claims hold: the bonus's expiry leaves it.
  const kept = { balance: '-1247.5004', held: '1' };
  assert.deepEqual(await owed(s.token), kept, 'read before the sweep');
  await sweep();
  assert.deepEqual(await owed(s.token), kept, 'after the sweep');
  await tick();
  assert.deepEqual(
    await owed(s.token),
    { balance: '-1248.5004', held: '0' },
    'the tick: 0.9996 to the refund, 0.0004 to the claim',
  );
  await assertLedgerInvariants();
});

// Owed again as rule 2 says: the buyer's free credits for any model, then what their other live
// holds reserved (taken when that hold ends: the balance does not move yet), then debt.
Deno.test("a claim owed again at its lot's expiry is paid from another hold's reservation after the tick, read before the sweep as after", async () => {
  const user = await newUser();
  const token = await userToken(user);
  const co = await buy(token, 'plus'); // 24,990 paid, a 1,249.5 bonus spent first
  await fund(user, '2000'); // a promotional grant for any model, spent after the bonus
  const [bonus] = await testDb`select l.id::text from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.user_id = ${user} and l.category = 'promotional' and l.purchase_id is not null`;
  await hold(token, '1'); // 1 of the bonus
  await use(token, 313946, 441722); // 1,248.5004: the bonus's free 1,248.5, then 0.0004 of the grant
  const other = await hold(token, '1999.9996'); // the rest of the grant
  await use(token, 0, 1); // 0.0024 of the paid credits
  await emulator(`/_emulator/charges/${await chargeOf(co.session_id)}/refund`, {});
  // The paid lot's spent 0.0024 claims the first hold's reservation of the bonus; the bonus's
  // spent 1,248.5 claims the other hold's reservation of the grant (751.4972 of it left unclaimed).

  await backdateLot(bonus.id);
  const read = await balanceOf(token);
  await testDb`select billing.expire_lots(100000)`;
  const swept = await balanceOf(token);
  // The bonus expires under the first hold; at the tick its 0.9976 take-back is forgiven and the
  // 0.0024 claim owed again: no free credits, so it claims 0.0024 more of the other hold's reservation.
  assert.deepEqual(swept, { balance: '1999.9996', held: '1999.9996', available: '0' }, 'the sweep');
  assert.deepEqual(read, swept, 'read before the sweep, as the sweep leaves it');

  // Released, the other hold pays both claims: 1,248.5048 of the 1,999.9996 it returns, at the tick.
  const r = await api(`/credits/holds/${other}/release`, { token, headers: key(), body: {} });
  assert.equal(r.status, 200, r.text);
  await tick();
  assert.deepEqual(await balanceOf(token), { balance: '751.4948', held: '0', available: '751.4948' });
  await assertLedgerInvariants();
});
