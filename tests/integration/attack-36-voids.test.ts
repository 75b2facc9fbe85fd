// Attacking corrections (#36) as a student: voids that land in a purchase under dispute or
// already refunded, spending while an admin voids, and the summaries after a void
// (docs/pricing.md § Corrections). Only the student's token attacks; the admin does what an
// operator legitimately would (void a charge) to set up the race.
import assert from 'node:assert/strict';
import { adminToken, api, assertLedgerInvariants, fund, newUser, reportUsage, testDb, userToken } from '../helpers.ts';
import { dataOf } from '../money.ts';
import { key, person, school } from '../orgs.ts';
import { balanceOf, buy, chargeOf, emulator } from '../purchases.ts';

/** gpt-4o input: 50 tokens = 1 credit. */
const spend = (token: string, credits: number) =>
  reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: credits * 50, output_tokens: 0 },
  });
const voidCharge = async (id: string) =>
  api(`/admin/charges/${id}/void`, { token: await adminToken(), body: { reason: 'provider outage' } });
const dispute = async (session: string, outcome: 'open' | 'won' | 'lost') =>
  await emulator(`/_emulator/charges/${await chargeOf(session)}/dispute`, { outcome });

async function checkLots(): Promise<void> {
  const [{ check_lots: c }] = await testDb`select billing.check_lots()`;
  const text = JSON.stringify(c);
  for (const k of ['lots', 'expiry', 'accounts', 'transfers']) assert.deepEqual(c[k], [], `check_lots: ${text}`);
  for (
    const d of Object.values(c.deferred_revenue_cents as Record<string, { from_lots: number; from_flows: number }>)
  ) {
    assert.equal(d.from_lots, d.from_flows, `check_lots: ${text}`);
  }
}

Deno.test('a void into a purchase under dispute makes none of it spendable (its hold grows), and a lost dispute takes it all', async () => {
  const id = await newUser();
  const token = await userToken(id);
  const bought = await buy(token, 'mini');
  const charged = await spend(token, 3000);
  assert.equal(charged.status, 201, charged.text);
  await dispute(bought.session_id, 'open'); // freezes the purchase: the 2,000 left are held
  assert.equal((await balanceOf(token)).available, '0');

  const v = await voidCharge(dataOf(charged).transfer_id as string);
  assert.equal(v.status, 200, v.text);
  const during = await balanceOf(token);
  const tried = await spend(token, 1000);
  await dispute(bought.session_id, 'lost');
  const after = await balanceOf(token);
  const facts = JSON.stringify({ during, tried: [tried.status, tried.text], after });
  await assertLedgerInvariants();
  await checkLots();
  assert.equal(during.available, '0', facts);
  assert.equal(
    during.available,
    '0',
    `the 3,000 given back to a frozen purchase are not spendable: ${JSON.stringify(during)}`,
  );
  assert.equal(tried.status, 402, `spending the voided credits of a disputed purchase: ${tried.text}`);
  assert.equal(after.balance, '0', `a lost dispute takes every credit of the purchase: ${JSON.stringify(after)}`);
});

Deno.test('a void after a full refund of the purchase gives back no spendable credits', async () => {
  const id = await newUser();
  const token = await userToken(id);
  const bought = await buy(token, 'mini');
  const charged = await spend(token, 3000);
  assert.equal(charged.status, 201, charged.text);
  const charge = await chargeOf(bought.session_id);
  const [{ amount_cents }] =
    await testDb`select price_cents as amount_cents from billing.purchases where id = ${bought.purchase_id}`;
  await emulator(`/_emulator/charges/${charge}/refund`, { amount: Number(amount_cents) });
  const refunded = await balanceOf(token);

  const v = await voidCharge(dataOf(charged).transfer_id as string);
  assert.equal(v.status, 200, v.text);
  const after = await balanceOf(token);
  const tried = await spend(token, 1);
  await assertLedgerInvariants();
  await checkLots();
  assert.ok(
    Number(after.available) <= Math.max(Number(refunded.available), 0),
    `refunded ${JSON.stringify(refunded)}, voided ${JSON.stringify(after)}`,
  );
  assert.equal(tried.status, 402, `spent credits of a purchase refunded in full: ${tried.text}`);
});

Deno.test('spending while an admin voids earlier charges creates no credits', async () => {
  const id = await newUser();
  await fund(id, '100');
  const token = await userToken(id);
  const charges: string[] = [];
  for (let i = 0; i < 8; i++) {
    const r = await spend(token, 10);
    assert.equal(r.status, 201, r.text);
    charges.push(dataOf(r).transfer_id as string);
  }
  const results = await Promise.all([
    ...charges.map((c) => voidCharge(c)),
    ...Array.from({ length: 12 }, () => spend(token, 10)),
  ]);
  assert.ok(results.every((r) => r.status < 500), results.map((r) => r.status).join(','));
  const spent = results.slice(charges.length).filter((r) => r.status === 201).length;
  const b = await balanceOf(token);
  // 100 funded, 80 charged and given back: at most 10 of the 12 later spends fit.
  assert.ok(spent <= 10, `${spent} spends of 10 succeeded`);
  assert.equal(Number(b.balance), 100 - 10 * spent);
  assert.ok(Number(b.balance) >= 0);
  await assertLedgerInvariants();
  await checkLots();
});

Deno.test('the usage summary after a void of a charge with every kind nets credits, requests and tokens', async () => {
  const model = `kinds-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from, usd_per_million_cached_input, usd_per_million_reasoning, usd_per_image, usd_per_audio_second)
    values (${model}, 1, 2, 8, 2, now() - interval '1 minute', 0.5, 12, 0.04, 0.006)`;
  const id = await newUser();
  await fund(id, '1000');
  const token = await userToken(id);
  const usage = {
    model,
    input_tokens: 1000,
    output_tokens: 500,
    cached_input_tokens: 4000,
    reasoning_tokens: 250,
    images: 3,
    audio_seconds: 10,
  };
  // Caller metadata cannot plant token counts: a ledger-owned key is refused, nothing charged.
  const planted = await reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { ...usage, metadata: { input_tokens: 999999, note: 'x' } },
  });
  assert.equal(planted.status, 400, planted.text);
  const r = await reportUsage('/credits/usage', { token, headers: key(), body: { ...usage, metadata: { note: 'x' } } });
  assert.equal(r.status, 201, r.text);
  assert.equal(dataOf(r).charged, '382');
  assert.equal((await voidCharge(dataOf(r).transfer_id as string)).status, 200);
  const today = new Date().toISOString().slice(0, 10);
  const tomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
  const sum = await api(`/credits/usage/summary?from=${today}&to=${tomorrow}`, { token });
  assert.equal(sum.status, 200, sum.text);
  const totals = dataOf(sum).totals as Record<string, unknown>;
  assert.equal(totals.credits, '0', JSON.stringify(totals));
  assert.equal(totals.requests, 0, JSON.stringify(totals));
  const text = JSON.stringify(dataOf(sum));
  assert.ok(!/999999|"-\d/.test(text), `no caller counts, no negatives: ${text}`);
  assert.equal((await balanceOf(token)).balance, '1000');
  await assertLedgerInvariants();
});

Deno.test("a school member cannot read another member's usage summary, nor an outsider any", async () => {
  const [owner, ada, bob, eve] = await Promise.all(['owner', 'ada', 'bob', 'eve'].map(person));
  const org = await school(owner, [ada, bob], 'pool', '100');
  const used = await reportUsage('/credits/usage', {
    token: ada.token,
    headers: key(),
    body: { model: 'gpt-4o-mini', input_tokens: 1000, output_tokens: 1000 },
  });
  assert.equal(used.status, 201, used.text);
  for (const [who, token] of [['bob', bob.token], ['eve', eve.token]] as const) {
    const r = await api(`/orgs/${org}/members/${ada.id}/usage/summary`, { token });
    assert.ok([403, 404].includes(r.status), `${who}: ${r.status} ${r.text}`);
    assert.ok(!r.text.includes('"credits":"0.'), r.text);
  }
  const own = await api(`/orgs/${org}/members/${bob.id}/usage/summary`, { token: bob.token });
  assert.equal(own.status, 200, own.text);
  const admin = await api(`/admin/charges/${dataOf(used).transfer_id}/void`, {
    token: ada.token,
    body: { reason: 'mine' },
  });
  assert.equal(admin.status, 403, admin.text);
});

// The void lands in the allowance that paid; the every-minute sweep (sweep_ended_terms, run here
// as pg_cron would) returns what sits in the allowance of someone no longer a member.
Deno.test("a removed member's voided allowance charge goes back to the school within the sweep's minute", async () => {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'allowance', '1000');
  const funded = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: key(),
    body: { user_id: ada.id, amount: '100' },
  });
  assert.equal(funded.status, 201, funded.text);
  const used = await reportUsage('/credits/usage', {
    token: ada.token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: 1500, output_tokens: 0 }, // 30 credits
  });
  assert.equal(used.status, 201, used.text);
  assert.deepEqual(dataOf(used).paid_by, { org_id: org }, used.text);
  const removed = await api(`/orgs/${org}/members/${ada.id}`, { method: 'DELETE', token: owner.token });
  assert.equal(removed.status, 200, removed.text);

  const v = await voidCharge(dataOf(used).transfer_id as string);
  assert.equal(v.status, 200, v.text);
  await testDb`select billing.sweep_ended_terms(100)`;
  const [stranded] = await testDb`select trim_scale(a.balance)::text as balance from billing.accounts a
    where a.org_id = ${org} and a.member_id = ${ada.id}`;
  await assertLedgerInvariants();
  await checkLots();
  assert.equal(stranded.balance, '0', `${stranded.balance} credits sit in a removed member's allowance`);
});
