// A gift code's redeemer is never told of the buyer's dispute (issue #77, disputes rules 4–5):
// what a lost dispute takes back of the redeemed gift is shown in the redeemer's own ledger, and
// that entry must not name a dispute nor carry the buyer's Stripe charge. An organisation's member
// whose allowance came from a disputed purchase sees nothing of it either.
import assert from 'node:assert/strict';
import { api, functionsUrl, spend } from '../support/helpers.ts';
import { chargeOf } from '../support/purchases.ts';
import { giftRedeemed, loseDispute, openDispute } from '../support/disputed.ts';
import { accountOf, schoolAllowanceFunded } from '../support/orgs.ts';
import { reservationInvariants } from '../support/reserved.ts';

Deno.test("a lost gift dispute: the redeemer's ledger (JSON and CSV) never names a dispute nor the buyer's charge", async () => {
  const { s, t, g } = await giftRedeemed();
  await spend(t.token, 100);
  await openDispute(g.session_id);
  await loseDispute(g.session_id);
  const charge = await chargeOf(g.session_id);

  const page = await api('/credits/ledger', { token: t.token });
  assert.equal(page.status, 200, page.text);
  const items = (page.body.data as { items: { kind: string; amount: string; reference: string | null }[] }).items;
  // The gift's 4,900 left are taken back (the redeemer is not billed beyond them)...
  assert.ok(items.some((e) => e.amount === '-4900'), page.text);
  // ...under no word a redeemer could read as the buyer's chargeback.
  assert.doesNotMatch(page.text, /disput/i, `the redeemer's ledger names the dispute: ${page.text}`);
  assert.ok(!page.text.includes(charge), `the redeemer's ledger carries the buyer's charge ${charge}: ${page.text}`);

  const csv = await (await fetch(`${functionsUrl}/credits/ledger?format=csv`, {
    headers: { authorization: `Bearer ${t.token}` },
  })).text();
  assert.doesNotMatch(csv, /disput/i, csv);
  assert.ok(!csv.includes(charge), csv);
  await reservationInvariants([s.id, t.id]);
});

// Held (coverage): a member's own ledger shows nothing of the school's lost dispute.
Deno.test("a lost dispute of a school's purchase: the member's ledger names no dispute", async () => {
  const { owner, member, org, purchase: p } = await schoolAllowanceFunded();
  await openDispute(p.session_id);
  await loseDispute(p.session_id);
  const page = await api('/credits/ledger', { token: member.token });
  assert.equal(page.status, 200, page.text);
  assert.doesNotMatch(page.text, /disput/i, page.text);
  assert.deepEqual({ ...await accountOf(org, member.id) }, { balance: '0', held: '0' });
  await reservationInvariants([owner.id, member.id]);
});
