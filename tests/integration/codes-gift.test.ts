// Gift codes through the real path: a student buys a gift (Checkout, the Stripe emulator, signed
// webhooks), another redeems it and gets a paid lot at the buyer's price, linked to the purchase.
// A refund or a lost dispute of the gift reaches its credits wherever they are: in the code's
// escrow before redemption (the code then gives only what is left, or nothing), in the
// redeemer's account after it (what was spent is owed by the buyer, as for any moved credits),
// in a hold the redeemer parked them in (it finishes; what it spent the buyer owes), or in a
// redemption racing it. A gift goes to one redeemer, and its Idempotency-Key is never an
// ordinary checkout's.
import assert from 'node:assert/strict';
import type { LotPage } from '../../supabase/functions/_shared/contract/index.ts';
import {
  api,
  assertLedgerInvariants,
  drainOutbox,
  env,
  functionsUrl,
  reportUsage,
  spend,
  student,
  sweepExpiredHolds,
  testDb,
} from '../support/helpers.ts';
import { codeOf, dataOf } from '../support/money.ts';
import { person } from '../support/orgs.ts';
import { balanceOf, chargeOf, emulator } from '../support/purchases.ts';
import { balance, buyGift, redeem } from '../support/codes.ts';

const refund = async (sessionId: string, cents: number) =>
  emulator(`/_emulator/charges/${await chargeOf(sessionId)}/refund`, { amount: cents });
const dispute = async (sessionId: string, outcome: 'open' | 'won' | 'lost') =>
  emulator(`/_emulator/charges/${await chargeOf(sessionId)}/dispute`, { outcome });

Deno.test("a paid gift credits nobody until redeemed; the redeemer gets a paid lot at the buyer's price", async () => {
  const buyer = await student();
  const friend = await student();
  const g = await buyGift(buyer.token, 'starter'); // 9,990 credits for 999¢
  assert.equal((await balanceOf(buyer.token)).balance, '0', 'the buyer is not credited');
  assert.match(g.code, /^[0-9A-Z]{5}(-[0-9A-Z]{5}){3}$/);
  const r = await redeem(friend.token, g.code);
  assert.equal(r.status, 200, r.text);
  assert.equal(dataOf(r).credits, '9990');
  assert.equal(dataOf(r).kind, 'gift');
  const [lot] =
    await testDb`select l.category, trim_scale(l.cost_cents)::text as cost, l.purchase_id, l.moved_from is not null as moved
                             from billing.lots l join billing.accounts a on a.id = l.account_id where a.user_id = ${friend.id}`;
  assert.deepEqual({ ...lot }, { category: 'paid', cost: '999', purchase_id: g.purchase_id, moved: true });
  const again = await redeem((await student()).token, g.code);
  assert.equal(codeOf(again), 'CODE_NOT_REDEEMABLE', 'a gift is redeemed once');
  // The buyer's email carries the code; the outbox row does not.
  const [mail] =
    await testDb`select payload from billing.notification_outbox where template = 'gift_code' and user_id = ${buyer.id}`;
  assert.ok(mail, 'the gift email is queued');
  assert.ok(!JSON.stringify(mail.payload).includes(g.code.replaceAll('-', '')));
  await assertLedgerInvariants();
});

Deno.test('a full refund of a gift after its redeemer spent part takes back the rest; the buyer owes what was spent', async () => {
  const buyer = await student();
  const friend = await student();
  const g = await buyGift(buyer.token, 'starter');
  await redeem(friend.token, g.code);
  await spend(friend.token, 990);
  await refund(g.session_id, 999);
  assert.equal((await balanceOf(friend.token)).balance, '0', "the gift's remaining 9,000 credits are taken back");
  assert.equal((await balanceOf(buyer.token)).balance, '-990', 'the buyer owes what the gift paid for');
  await assertLedgerInvariants();
});

Deno.test("a lost dispute of a redeemed gift reaches the redeemer's credits (held while open, then reversed)", async () => {
  const buyer = await student();
  const friend = await student();
  const g = await buyGift(buyer.token, 'starter');
  await redeem(friend.token, g.code);
  await spend(friend.token, 90);
  await dispute(g.session_id, 'open');
  const held = await balanceOf(friend.token);
  assert.equal(held.available, '0', 'what is left of the gift is frozen while disputed');
  await dispute(g.session_id, 'lost');
  assert.equal((await balanceOf(friend.token)).balance, '0');
  assert.equal((await balanceOf(buyer.token)).balance, '-90');
  await assertLedgerInvariants();
});

Deno.test('a disputed gift suspends its buyer and freezes what the redeemer has left, holding nothing; won, both are free', async () => {
  const buyer = await student('50');
  const friend = await student();
  const g = await buyGift(buyer.token, 'starter');
  await redeem(friend.token, g.code);
  await spend(friend.token, 30);
  await dispute(g.session_id, 'open');
  const [b, f] = [await balanceOf(buyer.token), await balanceOf(friend.token)];
  assert.deepEqual([b.held, f.held, f.available], ['0', '0', '0'], "no hold: the friend's 9,960 are frozen");
  const refused = await reportUsage('/credits/usage', {
    token: buyer.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { model: 'gpt-4o', input_tokens: 50, output_tokens: 0 },
  });
  assert.equal(codeOf(refused), 'ACCOUNT_DISPUTED', 'the buyer is suspended while the dispute is open');
  await dispute(g.session_id, 'won');
  assert.deepEqual([(await balanceOf(buyer.token)).available, (await balanceOf(friend.token)).available], [
    '50',
    '9960',
  ]);
  await spend(buyer.token, 1);
  await assertLedgerInvariants();
});

Deno.test('a gift refunded before redemption gives only what is left, and nothing once fully refunded', async () => {
  const buyer = await student();
  const g = await buyGift(buyer.token, 'starter');
  await refund(g.session_id, 500); // about half
  const friend = await student();
  const r = await redeem(friend.token, g.code);
  assert.equal(r.status, 200, r.text);
  assert.equal(dataOf(r).credits, String(9990 - Math.floor(9990 * 500 / 999)));
  assert.equal((await balanceOf(buyer.token)).balance, '0', 'the buyer owes nothing: the escrow paid the refund');

  const g2 = await buyGift(buyer.token, 'mini');
  await refund(g2.session_id, 500);
  const none = await redeem(friend.token, g2.code);
  assert.equal(none.status, 409, none.text);
  assert.equal((none.body.error as { details: { reason: string } }).details.reason, 'refunded');
  assert.equal((await balanceOf(buyer.token)).balance, '0');
  await assertLedgerInvariants();
});

Deno.test('a gift under dispute cannot be redeemed; won, it can', async () => {
  const buyer = await student();
  const g = await buyGift(buyer.token, 'mini');
  await dispute(g.session_id, 'open');
  const friend = await student();
  const frozen = await redeem(friend.token, g.code);
  assert.equal(codeOf(frozen), 'CODE_NOT_REDEEMABLE', frozen.text);
  assert.equal((frozen.body.error as { details: { reason: string } }).details.reason, 'on hold', 'not "disputed"');
  await dispute(g.session_id, 'won');
  const r = await redeem(friend.token, g.code);
  assert.equal(r.status, 200, r.text);
  assert.equal(dataOf(r).credits, '5000');
  const lots = (await api('/credits/lots', { token: friend.token })).body.data as LotPage;
  assert.equal(lots.items[0].frozen, false);
  await assertLedgerInvariants();
});

Deno.test('the buyer reads the gift code again; nobody else can read the purchase', async () => {
  const buyer = await student();
  const g = await buyGift(buyer.token, 'mini');
  const again = await api(`/checkout/sessions/${g.purchase_id}`, { token: buyer.token });
  assert.equal((again.body.data as { gift: { code: string } }).gift.code, g.code);
  const other = await api(`/checkout/sessions/${g.purchase_id}`, { token: (await student()).token });
  assert.equal(other.status, 404);
});

Deno.test('the gift email reaches the buyer only, with the code the buyer reads on the purchase', async () => {
  const buyer = await person('gift-buyer');
  const g = await buyGift(buyer.token, 'mini');
  await drainOutbox();
  const catcher = env('POSTMARK_API_BASE');
  const { messages } = await (await fetch(`${catcher}/_catcher/messages`)).json();
  const mine = (messages as Array<{ To: string; Subject: string; TextBody: string }>).filter((m) =>
    m.To === buyer.email && m.Subject === 'Your ScholarLink gift code'
  );
  assert.equal(mine.length, 1, JSON.stringify(messages.slice(-3)));
  assert.ok(mine[0].TextBody.includes(g.code), 'the code to give');
  assert.match(mine[0].TextBody, /5,000 credits/);
});

Deno.test('nobody can have a gift code emailed on request: /notify/send refuses the gift_code template', async () => {
  const body = JSON.stringify({
    template: 'gift_code',
    to: 'someone@example.test',
    data: { code_id: crypto.randomUUID() },
    idempotency_key: `gift-${crypto.randomUUID()}`,
  });
  const t = Math.floor(Date.now() / 1000);
  const enc = new TextEncoder();
  const key = await crypto.subtle.importKey(
    'raw',
    enc.encode(env('NOTIFY_WEBHOOK_SECRET').split(',')[0]),
    { name: 'HMAC', hash: 'SHA-256' },
    false,
    ['sign'],
  );
  const mac = new Uint8Array(await crypto.subtle.sign('HMAC', key, enc.encode(`${t}.${body}`)));
  const v1 = Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join('');
  const r = await fetch(`${functionsUrl}/notify/send`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-signature': `t=${t},v1=${v1}` },
    body,
  });
  const answer = await r.json();
  assert.equal(r.status, 400, JSON.stringify(answer));
  assert.equal(answer.error.code, 'UNKNOWN_TEMPLATE');
});

Deno.test('one gift redeemed by two accounts at once goes to exactly one', async () => {
  const buyer = await student();
  const g = await buyGift(buyer.token, 'mini');
  const [a, b] = [await student(), await student()];
  const rs = await Promise.all([redeem(a.token, g.code), redeem(b.token, g.code), redeem(a.token, g.code)]);
  const won = [await balance(a.token), await balance(b.token)];
  assert.deepEqual(won.sort(), ['0', '5000'], rs.map((r) => r.text).join('\n'));
  assert.ok(rs.filter((r) => r.status !== 200).every((r) => codeOf(r) === 'CODE_NOT_REDEEMABLE'));
  await assertLedgerInvariants();
});

// take_back_purchase waits for the lots' accounts before it lists the purchase's lots, so a
// redemption committing meanwhile cannot move the credits out of its sight (the refund would
// be taken from the buyer as debt while the redeemer kept the gift).
Deno.test("a full refund or a lost dispute racing a redemption of the gift leaves nobody the gift's credits", async () => {
  for (let i = 0; i < 4; i++) {
    const buyer = await student();
    const friend = await student();
    const g = await buyGift(buyer.token, 'mini');
    const charge = await chargeOf(g.session_id);
    await Promise.all([
      redeem(friend.token, g.code),
      i % 2
        ? emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' })
        : emulator(`/_emulator/charges/${charge}/refund`, { amount: 500 }),
    ]);
    assert.equal(await balance(friend.token), '0');
    assert.equal(await balance(buyer.token), '0', 'nothing was spent, so nothing is owed');
  }
  await assertLedgerInvariants();
});

Deno.test("a gift parked in its redeemer's hold finishes normally after a lost dispute: what it spent is the buyer's debt", async () => {
  const buyer = await student();
  const alt = await student(); // the buyer's second account
  const g = await buyGift(buyer.token, 'mini'); // 5,000 credits
  assert.equal((await redeem(alt.token, g.code)).status, 200);
  const h = await api('/credits/holds', {
    token: alt.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: {
      amount: '5000',
      ttl_seconds: 600,
    },
  });
  assert.equal(h.status, 201, h.text);
  await emulator(`/_emulator/charges/${await chargeOf(g.session_id)}/dispute`, { outcome: 'lost' });
  const c = await api(`/credits/holds/${dataOf(h).hold_id}/capture`, {
    token: alt.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { amount: '5000' },
  });
  assert.equal(c.status, 200, 'a hold that reserved the credits before the dispute finishes normally');
  assert.equal((await balanceOf(alt.token)).balance, '0');
  await sweepExpiredHolds(); // the minute's tick records what the hold spent of the lost gift
  assert.equal((await balanceOf(buyer.token)).balance, '-5000', 'the buyer owes what the hold spent');
  await assertLedgerInvariants();
});

Deno.test('a gift redeemed by its own buyer and then refunded leaves nothing behind', async () => {
  const buyer = await student();
  const g = await buyGift(buyer.token, 'mini');
  const r = await redeem(buyer.token, g.code);
  assert.equal(r.status, 200, r.text);
  await emulator(`/_emulator/charges/${await chargeOf(g.session_id)}/refund`, { amount: 500 });
  assert.equal((await balanceOf(buyer.token)).balance, '0');
  const again = await redeem((await student()).token, g.code);
  assert.equal(codeOf(again), 'CODE_NOT_REDEEMABLE', again.text);
  await assertLedgerInvariants(); // check_lots included
});

// begin_checkout does not compare `gift` when it finds the purchase a key made; the request's
// hash (the Idempotency-Key contract) refuses the other kind first.
Deno.test("a gift's Idempotency-Key reused for an ordinary checkout is 409 IDEMPOTENCY_KEY_REUSED", async () => {
  const s = await student();
  const k = { 'idempotency-key': crypto.randomUUID() };
  const gift = await api('/checkout/sessions', {
    token: s.token,
    headers: k,
    body: { package_id: 'mini', gift: true },
  });
  assert.equal(gift.status, 201, gift.text);
  const plain = await api('/checkout/sessions', { token: s.token, headers: k, body: { package_id: 'mini' } });
  assert.equal(plain.status, 409, `an ordinary checkout answered the gift's session: ${plain.text}`);
  assert.equal(codeOf(plain), 'IDEMPOTENCY_KEY_REUSED');
});

Deno.test("an ordinary checkout's Idempotency-Key reused for a gift is 409 IDEMPOTENCY_KEY_REUSED", async () => {
  const s = await student();
  const k = { 'idempotency-key': crypto.randomUUID() };
  const plain = await api('/checkout/sessions', { token: s.token, headers: k, body: { package_id: 'mini' } });
  assert.equal(plain.status, 201, plain.text);
  const gift = await api('/checkout/sessions', {
    token: s.token,
    headers: k,
    body: { package_id: 'mini', gift: true },
  });
  assert.equal(codeOf(gift), 'IDEMPOTENCY_KEY_REUSED', gift.text);
});

Deno.test('a gift whose checkout expired unpaid never shows a code', async () => {
  const s = await student();
  const r = await api('/checkout/sessions', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { package_id: 'mini', gift: true },
  });
  const co = dataOf(r) as { purchase_id: string; session_id: string };
  const exp = await fetch(`${env('STRIPE_API_BASE')}/_emulator/checkout/sessions/${co.session_id}/expire`, {
    method: 'POST',
    body: '{}',
  });
  await exp.body?.cancel();
  const st = await api(`/checkout/sessions/${co.purchase_id}`, { token: s.token });
  const gift = (st.body.data as { gift: { code: string | null; status: string } }).gift;
  assert.equal(gift.code, null, st.text);
  assert.notEqual(gift.status, 'active', st.text);
});
