// Where a void's credits land (POST /admin/charges/:id/void, docs/pricing.md § Corrections): back
// into the lots the charge drew, so into a lot that has expired since (they expire again, once,
// whatever the sweep does meanwhile), a purchase under dispute (frozen; a lost dispute takes them),
// or one refunded (nothing spendable comes back); and spending, refunds and the sweep racing the
// void create no credits.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  backdateLot,
  fund,
  key,
  reportUsage,
  student,
  testDb,
} from '../support/helpers.ts';
import {
  checkLots,
  codeOf,
  dataOf,
  expiredOf,
  lotsOf,
  report,
  spendWith,
  sweep,
  voidCharge,
} from '../support/money.ts';
import { balanceOf, buy, chargeOf, emulator, startCheckout } from '../support/purchases.ts';
Deno.test('credits a void returns into an expired lot of a disputed purchase expire once the dispute is won', async () => {
  // plus: 24,990 paid (never expire) and a 1,249.5 bonus (promotional, spent first, expires).
  const s = await student();
  const co = await startCheckout(s.token, 'plus');
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });
  const c1 = await report(s.token, crypto.randomUUID(), { model: 'gpt-4o', input_tokens: 20_000, output_tokens: 0 }); // 400
  const c2 = await report(s.token, crypto.randomUUID(), { model: 'gpt-4o', input_tokens: 22_475, output_tokens: 0 }); // 449.5
  assert.equal(c1.status, 201, c1.text);
  assert.equal(c2.status, 201, c2.text);
  const [{ id: bonus }] = await testDb`select l.id::text from billing.lots l
    where l.purchase_id = ${co.purchase_id} and l.category = 'promotional'`;
  assert.equal(
    (await testDb`select trim_scale(remaining)::text as r from billing.lots where id = ${bonus}`)[0].r,
    '400',
    'both charges drew from the bonus',
  );
  await backdateLot(bonus); // time passes: the bonus's last 400 expire
  await testDb`select billing.expire_lots()`;
  const charge = await chargeOf(co.session_id);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  const v = await api(`/admin/charges/${dataOf(c1).transfer_id}/void`, {
    token: await adminToken(),
    body: { reason: 'provider outage' },
  });
  assert.equal(v.status, 200, v.text);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'won' });
  await testDb`select billing.expire_lots()`; // the sweep runs
  // Only the 24,990 paid credits are left: spending 400 more than that must be refused.
  const over = await report(s.token, crypto.randomUUID(), {
    model: 'gpt-4o',
    input_tokens: 25_390 * 50,
    output_tokens: 0,
  });
  assert.equal(over.status, 402, `credits of an expired lot were spent: ${over.text}`);
  const [lot] = await testDb`select trim_scale(remaining)::text as remaining, expires_at <= now() as expired
                             from billing.lots where id = ${bonus}`;
  assert.deepEqual(lot, { remaining: '0', expired: true }, 'the returned 400 expired with their lot');
  assert.equal((await balanceOf(s.token)).balance, '24990', 'only the paid credits are left');
  await assertLedgerInvariants();
});

Deno.test('a lot expired, then voided back charge by charge around sweeps, gives back nothing spendable', async () => {
  const s = await student('100'); // one promotional lot, expiring
  const charges = [];
  for (const credits of [40, 20, 10]) {
    const r = await spendWith(s.token, crypto.randomUUID(), credits);
    assert.equal(r.status, 201, r.text);
    charges.push(dataOf(r).transfer_id as string);
  }
  const [{ id: lot }] = await lotsOf(s.id);
  await backdateLot(lot);
  await sweep(); // 30 expire (the first expiry, keyed by what the lot held)
  await fund(s.id, '25'); // something spendable beside it
  for (const c of charges) {
    const v = await voidCharge(c); // 40 first: the first expiry's amount again is no replay
    assert.equal(v.status, 200, v.text);
    await sweep();
    await assertLedgerInvariants();
  }
  const b = await balanceOf(s.token);
  assert.equal(b.balance, '25', `voided credits of the expired lot came back: ${JSON.stringify(b)}`);
  assert.equal(await expiredOf(lot), '100', 'every credit of the lot ended as breakage');
  const over = await spendWith(s.token, crypto.randomUUID(), 26);
  assert.equal(over.status, 402, over.text);
});

Deno.test('credits voided into a disputed, expired bonus expire after the dispute is won, then later voids expire at once', async () => {
  // plus: 24,990 paid (never expire) and a 1,249.5 bonus (promotional, spent first, expires).
  const s = await student();
  const co = await startCheckout(s.token, 'plus');
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });
  const charges: string[] = [];
  for (const tokens of [20_000, 15_000, 12_475]) { // 400, 300, 249.5: 300 of the bonus left
    const r = await reportUsage('/credits/usage', {
      token: s.token,
      headers: key(),
      body: { model: 'gpt-4o', input_tokens: tokens, output_tokens: 0 },
    });
    assert.equal(r.status, 201, r.text);
    charges.push(dataOf(r).transfer_id as string);
  }
  const [{ id: bonus }] = await testDb`select l.id::text from billing.lots l
    where l.purchase_id = ${co.purchase_id} and l.category = 'promotional'`;
  await backdateLot(bonus);
  await sweep(); // 300 expire: key expiry:<bonus>:300
  const charge = await chargeOf(co.session_id);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  // 300 come back into the frozen bonus: the same amount its first expiry took.
  const v1 = await voidCharge(charges[1]);
  assert.equal(v1.status, 200, v1.text);
  await sweep(); // frozen: waits
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'won' });
  await sweep(); // thawed: the 300 expire under a key of their own
  await assertLedgerInvariants();
  assert.equal((await balanceOf(s.token)).balance, '24990', 'the 300 given back expired with their lot');
  for (const c of [charges[0], charges[2]]) {
    const v = await voidCharge(c);
    assert.equal(v.status, 200, v.text);
    await sweep();
  }
  await assertLedgerInvariants();
  assert.equal((await balanceOf(s.token)).balance, '24990', 'only the paid credits are left');
  assert.equal(await expiredOf(bonus), '1249.5');
  const over = await reportUsage('/credits/usage', {
    token: s.token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: 24_991 * 50, output_tokens: 0 },
  });
  assert.equal(over.status, 402, `credits of the expired bonus were spent: ${over.text}`);
});

Deno.test('a full refund and a void of the spent credits at once converge: nothing owed, nothing left', async () => {
  for (let run = 0; run < 3; run++) {
    const s = await student();
    const co = await startCheckout(s.token, 'mini'); // 5,000 paid credits
    await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });
    const spent = await spendWith(s.token, crypto.randomUUID(), 1000);
    assert.equal(spent.status, 201, spent.text);
    const charge = await chargeOf(co.session_id);
    const [, v] = await Promise.all([
      emulator(`/_emulator/charges/${charge}/refund`, {}),
      voidCharge(dataOf(spent).transfer_id as string),
    ]);
    assert.equal(v.status, 200, v.text);
    await assertLedgerInvariants();
    assert.equal(
      (await balanceOf(s.token)).balance,
      '0',
      `run ${run}: the refund took back the 5,000, the void gave 1,000 back`,
    );
  }
});

Deno.test('the sweep and voids into an expired lot at once: each returned credit expires once, none twice', async () => {
  for (let run = 0; run < 3; run++) {
    const s = await student('100');
    const charges: string[] = [];
    for (const credits of [30, 30, 10]) {
      const r = await spendWith(s.token, crypto.randomUUID(), credits);
      charges.push(dataOf(r).transfer_id as string);
    }
    await fund(s.id, '5');
    const [{ id: lot }] = await lotsOf(s.id);
    await backdateLot(lot);
    await Promise.all([
      sweep(),
      ...charges.map((c) => voidCharge(c)),
      sweep(),
      spendWith(s.token, crypto.randomUUID(), 5),
    ]);
    await sweep();
    await assertLedgerInvariants();
    assert.equal(await expiredOf(lot), '100', `run ${run}`);
    const b = await balanceOf(s.token);
    assert.ok(b.balance === '5' || b.balance === '0', `run ${run}: ${JSON.stringify(b)}`);
  }
});

Deno.test('a lost dispute after a void into the expired bonus (before or during the dispute) leaves owed exactly what was spent', async () => {
  for (const voidDuring of [false, true]) {
    const s = await student();
    const co = await startCheckout(s.token, 'plus'); // 24,990 paid + 1,249.5 bonus
    await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });
    const c1 = await reportUsage('/credits/usage', {
      token: s.token,
      headers: key(),
      body: { model: 'gpt-4o', input_tokens: 20_000, output_tokens: 0 }, // 400
    });
    const c2 = await reportUsage('/credits/usage', {
      token: s.token,
      headers: key(),
      body: { model: 'gpt-4o', input_tokens: 22_475, output_tokens: 0 }, // 449.5
    });
    assert.equal(c1.status, 201, c1.text);
    assert.equal(c2.status, 201, c2.text);
    const [{ id: bonus }] = await testDb`select l.id::text from billing.lots l
      where l.purchase_id = ${co.purchase_id} and l.category = 'promotional'`;
    await backdateLot(bonus);
    await sweep(); // the bonus's last 400 expire
    const charge = await chargeOf(co.session_id);
    if (!voidDuring) assert.equal((await voidCharge(dataOf(c1).transfer_id as string)).status, 200);
    await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
    if (voidDuring) assert.equal((await voidCharge(dataOf(c1).transfer_id as string)).status, 200);
    await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
    await sweep();
    await assertLedgerInvariants();
    // Everything bought is taken back; the 400 of c1 were given back; c2's 449.5 were spent.
    assert.equal((await balanceOf(s.token)).balance, '-449.5', `void ${voidDuring ? 'during' : 'before'} the dispute`);
  }
});

const dispute = async (session: string, outcome: 'open' | 'won' | 'lost') =>
  await emulator(`/_emulator/charges/${await chargeOf(session)}/dispute`, { outcome });

Deno.test('a void into a purchase under dispute gives back frozen credits, and a lost dispute takes it all', async () => {
  const { token } = await student();
  const bought = await buy(token, 'mini');
  const charged = await spendWith(token, crypto.randomUUID(), 3000);
  assert.equal(charged.status, 201, charged.text);
  await dispute(bought.session_id, 'open'); // freezes the purchase's 2,000 left; the buyer is suspended
  assert.equal((await balanceOf(token)).available, '0');

  const v = await voidCharge(dataOf(charged).transfer_id as string);
  assert.equal(v.status, 200, v.text);
  const during = await balanceOf(token);
  const tried = await spendWith(token, crypto.randomUUID(), 1000);
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
  assert.equal(tried.status, 403, `spending the voided credits of a disputed purchase: ${tried.text}`);
  assert.equal(codeOf(tried), 'ACCOUNT_DISPUTED');
  assert.equal(after.balance, '0', `a lost dispute takes every credit of the purchase: ${JSON.stringify(after)}`);
});

Deno.test('a void after a full refund of the purchase gives back no spendable credits', async () => {
  const { token } = await student();
  const bought = await buy(token, 'mini');
  const charged = await spendWith(token, crypto.randomUUID(), 3000);
  assert.equal(charged.status, 201, charged.text);
  const charge = await chargeOf(bought.session_id);
  const [{ amount_cents }] =
    await testDb`select price_cents as amount_cents from billing.purchases where id = ${bought.purchase_id}`;
  await emulator(`/_emulator/charges/${charge}/refund`, { amount: Number(amount_cents) });
  const refunded = await balanceOf(token);

  const v = await voidCharge(dataOf(charged).transfer_id as string);
  assert.equal(v.status, 200, v.text);
  const after = await balanceOf(token);
  const tried = await spendWith(token, crypto.randomUUID(), 1);
  await assertLedgerInvariants();
  await checkLots();
  assert.ok(
    Number(after.available) <= Math.max(Number(refunded.available), 0),
    `refunded ${JSON.stringify(refunded)}, voided ${JSON.stringify(after)}`,
  );
  assert.equal(tried.status, 402, `spent credits of a purchase refunded in full: ${tried.text}`);
});

Deno.test('spending while an admin voids earlier charges creates no credits', async () => {
  const { token } = await student('100');
  const charges: string[] = [];
  for (let i = 0; i < 8; i++) {
    const r = await spendWith(token, crypto.randomUUID(), 10);
    assert.equal(r.status, 201, r.text);
    charges.push(dataOf(r).transfer_id as string);
  }
  const results = await Promise.all([
    ...charges.map((c) => voidCharge(c)),
    ...Array.from({ length: 12 }, () => spendWith(token, crypto.randomUUID(), 10)),
  ]);
  assert.ok(results.every((r) => r.status < 500), results.map((r) => r.status).join(','));
  const spent = results.slice(charges.length).filter((r) => r.status === 201).length;
  const b = await balanceOf(token);
  // 100 funded, 80 charged and given back: at most 10 of the 12 later spends fit.
  assert.ok(spent <= 10, `${spent} spends of 10 succeeded`);
  assert.equal(Number(b.balance), 100 - 10 * spent);
  await assertLedgerInvariants();
  await checkLots();
});
