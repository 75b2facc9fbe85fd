// Gift codes through the real path: a student buys a gift (Checkout, the Stripe emulator, signed
// webhooks), another redeems it and gets a paid lot at the buyer's price, linked to the purchase.
// A refund or a lost dispute of the gift reaches its credits wherever they are: in the code's
// escrow before redemption (the code then gives only what is left, or nothing), in the
// redeemer's account after it (what was spent is owed by the buyer, as for any moved credits).
import assert from 'node:assert/strict';
import type { LotPage } from '../../supabase/functions/_shared/contract/index.ts';
import { api, assertLedgerInvariants, drainOutbox, env, functionsUrl, spend, testDb } from '../helpers.ts';
import { person } from '../orgs.ts';
import { codeOf, dataOf } from '../money.ts';
import { chargeOf, emulator } from '../purchases.ts';
import { buyGift, redeem, student } from '../codes.ts';

const balance = async (
  token: string,
) => ((await api('/credits/balance', { token })).body.data as { balance: string; available: string });
const refund = async (sessionId: string, cents: number) =>
  emulator(`/_emulator/charges/${await chargeOf(sessionId)}/refund`, { amount: cents });
const dispute = async (sessionId: string, outcome: 'open' | 'won' | 'lost') =>
  emulator(`/_emulator/charges/${await chargeOf(sessionId)}/dispute`, { outcome });

Deno.test("a paid gift credits nobody until redeemed; the redeemer gets a paid lot at the buyer's price", async () => {
  const buyer = await student();
  const friend = await student();
  const g = await buyGift(buyer.token, 'starter'); // 9,990 credits for 999¢
  assert.equal((await balance(buyer.token)).balance, '0', 'the buyer is not credited');
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
  assert.equal((await balance(friend.token)).balance, '0', "the gift's remaining 9,000 credits are taken back");
  assert.equal((await balance(buyer.token)).balance, '-990', 'the buyer owes what the gift paid for');
  await assertLedgerInvariants();
});

Deno.test("a lost dispute of a redeemed gift reaches the redeemer's credits (held while open, then reversed)", async () => {
  const buyer = await student();
  const friend = await student();
  const g = await buyGift(buyer.token, 'starter');
  await redeem(friend.token, g.code);
  await spend(friend.token, 90);
  await dispute(g.session_id, 'open');
  const held = await balance(friend.token);
  assert.equal(held.available, '0', 'what is left of the gift is frozen while disputed');
  await dispute(g.session_id, 'lost');
  assert.equal((await balance(friend.token)).balance, '0');
  assert.equal((await balance(buyer.token)).balance, '-90');
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
  assert.equal((await balance(buyer.token)).balance, '0', 'the buyer owes nothing: the escrow paid the refund');

  const g2 = await buyGift(buyer.token, 'mini');
  await refund(g2.session_id, 500);
  const none = await redeem(friend.token, g2.code);
  assert.equal(none.status, 409, none.text);
  assert.equal((none.body.error as { details: { reason: string } }).details.reason, 'refunded');
  assert.equal((await balance(buyer.token)).balance, '0');
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
