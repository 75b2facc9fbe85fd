// A capture ends its hold in its own account write (capture_hold → post_user_transfer p_release →
// post_transfers folds the held change into the balance update). Attacked as students: the same
// hold captured many times at once (amounts and keys mixed), capture racing release, the TTL and
// the sweep, a refund and a dispute taking credits back from under the hold, expired lots under it,
// credits for some models, a school's pool and allowance, and AI calls over a small balance. Each
// asserts exact balances and held amounts, then the ledger's invariants. Funding and Stripe events
// are set up as the platform would; every attack goes through HTTP with students' tokens.
import assert from 'node:assert/strict';
import { ask, student as aiStudent } from '../support/ai.ts';
import {
  api,
  assertLedgerInvariants,
  backdateLot,
  holdsLapse,
  key,
  newUser,
  student,
  sweepExpiredHolds,
  testDb,
  userToken,
} from '../support/helpers.ts';
import { grantLot } from '../support/lots.ts';
import { batch, codeOf, dataOf, type Json, outcomesOf, spendWith, usageEvent } from '../support/money.ts';
import { accountOf, person, school } from '../support/orgs.ts';
import { walletOf } from '../support/orgs.ts';
import { buy, chargeOf, emulator, pays } from '../support/purchases.ts';

type Res = Awaited<ReturnType<typeof api>>;

const hold = (token: string, amount: string, ttl = 600) =>
  api('/credits/holds', { token, headers: key(), body: { amount, ttl_seconds: ttl } });
const act = (token: string, id: unknown, action: 'capture' | 'release', body: Json = {}, k = crypto.randomUUID()) =>
  api(`/credits/holds/${id}/${action}`, { token, headers: { 'idempotency-key': k }, body });
const holdIdOf = (r: Res) => {
  assert.equal(r.status, 201, r.text);
  return dataOf(r).hold_id as string;
};

/** The user's own account as the ledger has it. */
const own = async (user: string) =>
  (await testDb`select trim_scale(balance)::text as balance, trim_scale(held)::text as held
    from billing.accounts where user_id = ${user}`)[0];
/** A hold's status and captured amount. */
const holdRow = async (id: string) =>
  (await testDb`select status, trim_scale(amount)::text as amount, trim_scale(captured_amount)::text as captured
    from billing.holds where id = ${id}`)[0];
/** Capture transfers written for a hold. */
const capturesOf = async (id: string) =>
  (await testDb`select trim_scale(amount)::text as amount from billing.transfers
    where kind = 'hold_capture' and hold_id = ${id}`).map((r) => r.amount as string);

Deno.test('twenty captures of one hold at once, amounts mixed: one capture, the others replay or 409', async () => {
  const s = await student('100');
  const id = holdIdOf(await hold(s.token, '10'));
  const amounts = [undefined, '10', '3', '7', '0.5'];
  const answers = await Promise.all(
    Array.from({ length: 20 }, (_, i) => act(s.token, id, 'capture', amounts[i % 5] ? { amount: amounts[i % 5] } : {})),
  );
  const row = await holdRow(id);
  assert.equal(row.status, 'captured');
  assert.deepEqual(await capturesOf(id), [row.captured], 'one capture transfer, of the captured amount');
  for (const r of answers) {
    if (r.status === 200) assert.equal(dataOf(r).captured, row.captured, r.text);
    else assert.deepEqual([r.status, codeOf(r)], [409, 'HOLD_ALREADY_CAPTURED'], r.text);
  }
  const won = (100 - Number(row.captured)).toString();
  assert.deepEqual(await own(s.id), { balance: won, held: '0' });
  await assertLedgerInvariants();
});

Deno.test('the same capture under one Idempotency-Key twenty times at once: one transfer, one answer', async () => {
  const s = await student('100');
  const id = holdIdOf(await hold(s.token, '10'));
  const k = crypto.randomUUID();
  const answers = await Promise.all(Array.from({ length: 20 }, () => act(s.token, id, 'capture', { amount: '6' }, k)));
  const ok = answers.filter((r) => r.status === 200);
  for (const r of answers) assert.ok(r.status === 200 || r.status === 409, r.text);
  assert.ok(ok.length >= 1);
  assert.equal(new Set(ok.map((r) => dataOf(r).transfer_id)).size, 1, 'one transfer answered');
  assert.deepEqual(await capturesOf(id), ['6']);
  assert.deepEqual(await own(s.id), { balance: '94', held: '0' });
  await assertLedgerInvariants();
});

Deno.test('capture racing release on ten holds: each ends once, the balance is what the captures took', async () => {
  const s = await student('100');
  const ids = [];
  for (let i = 0; i < 10; i++) ids.push(holdIdOf(await hold(s.token, '10')));
  assert.deepEqual(await own(s.id), { balance: '100', held: '100' });
  const answers = await Promise.all(ids.flatMap((id) => [
    act(s.token, id, 'capture', { amount: '4' }),
    act(s.token, id, 'release'),
  ]));
  let captured = 0;
  for (const [i, id] of ids.entries()) {
    const [c, r] = [answers[2 * i], answers[2 * i + 1]];
    const row = await holdRow(id);
    if (row.status === 'captured') {
      captured++;
      assert.equal(c.status, 200, c.text);
      assert.deepEqual([r.status, codeOf(r)], [409, 'HOLD_ALREADY_CAPTURED'], r.text);
    } else {
      assert.equal(row.status, 'released');
      assert.equal(r.status, 200, r.text);
      assert.deepEqual([c.status, codeOf(c)], [409, 'HOLD_RELEASED'], c.text);
    }
  }
  assert.deepEqual(await own(s.id), { balance: String(100 - 4 * captured), held: '0' });
  await assertLedgerInvariants();
});

Deno.test('a hold past its TTL: not counted before the sweep, never captured, capture racing the sweep', async () => {
  const s = await student('100');
  const id = holdIdOf(await hold(s.token, '60', 1));
  const live = holdIdOf(await hold(s.token, '30'));
  await new Promise((r) => setTimeout(r, 1100));
  const b = dataOf(await api('/credits/balance', { token: s.token }));
  assert.deepEqual([b.balance, b.held, b.available], ['100', '30', '70'], 'the overdue hold no longer counts');
  const [c1, , c2] = await Promise.all([
    act(s.token, id, 'capture', { amount: '60' }),
    testDb`select billing.release_expired_holds(100000)`,
    act(s.token, id, 'capture'),
  ]);
  for (const c of [c1, c2]) assert.deepEqual([c.status, codeOf(c)], [409, 'HOLD_EXPIRED'], c.text);
  // The credits the expired hold reserved are spendable at once: a hold for all that is left.
  const all = holdIdOf(await hold(s.token, '70'));
  const [a, l] = await Promise.all([act(s.token, all, 'capture'), act(s.token, live, 'capture', { amount: '29' })]);
  assert.equal(a.status, 200, a.text);
  assert.equal(l.status, 200, l.text);
  assert.deepEqual(await own(s.id), { balance: '1', held: '0' });
  assert.deepEqual((await holdRow(id)).status, 'expired');
  await assertLedgerInvariants();
});

Deno.test('a lot expiring under a hold: the capture takes what is left of the hold, held ends at 0', async () => {
  const id = await newUser();
  const token = await userToken(id);
  const soon = await grantLot(id, '100', 'promo_grant');
  assert.equal(soon.status, 201, soon.text);
  const lot = String(
    dataOf(soon).lot_id ?? (await testDb`select l.id::text from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.user_id = ${id}`)[0].id,
  );
  assert.equal((await grantLot(id, '50', 'promo_grant')).status, 201);
  const h = holdIdOf(await hold(token, '120'));
  // It reserved the 100 due first and 20 of the 50; the 100 expire whole and the hold shrinks by
  // them (docs/credit-lots.md § Spending order 7): asking for the old amount is refused, the
  // default takes the 20 it still reserves, and the other 30 stay free.
  await backdateLot(lot);
  const big = await act(token, h, 'capture', { amount: '120' });
  assert.deepEqual([big.status, codeOf(big)], [400, 'CAPTURE_EXCEEDS_HOLD'], big.text);
  const c = await act(token, h, 'capture');
  assert.equal(c.status, 200, c.text);
  assert.equal(dataOf(c).captured, '20');
  assert.deepEqual(await own(id), { balance: '30', held: '0' });
  await assertLedgerInvariants();
});

Deno.test('a refund racing the capture of a hold over a purchase: one of the two orders, exactly', async () => {
  const s = await student();
  const session = (await buy(s.token, 'mini')).session_id;
  const id = holdIdOf(await hold(s.token, '4500'));
  const charge = await chargeOf(session);
  const [c] = await Promise.all([
    act(s.token, id, 'capture'),
    emulator(`/_emulator/charges/${charge}/refund`, { amount: 300 }),
  ]);
  assert.equal(c.status, 200, c.text);
  const row = await holdRow(id);
  // Captured first: 4,500 spent, then the refund takes 3,000 back (500 left, 2,500 of debt);
  // refunded first: the hold gave way to the 2,000 left, all of it captured.
  const expected = row.captured === '4500' ? { balance: '-2500', held: '0' } : { balance: '0', held: '0' };
  assert.ok(['4500', '2000'].includes(row.captured), JSON.stringify(row));
  assert.equal(dataOf(c).captured, row.captured);
  assert.deepEqual(await own(s.id), expected);
  await assertLedgerInvariants();
});

Deno.test('a dispute racing the capture of a hold over a purchase: the capture spends what its hold reserved, never the frozen free credits', async () => {
  const s = await student();
  const session = (await buy(s.token, 'mini')).session_id;
  const id = holdIdOf(await hold(s.token, '4000'));
  const charge = await chargeOf(session);
  const [c] = await Promise.all([
    act(s.token, id, 'capture'),
    emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' }),
  ]);
  const row = await holdRow(id);
  const [d] =
    await testDb`select trim_scale(coalesce(sum(l.remaining - l.reserved), 0))::text as frozen from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.user_id = ${s.id} and l.frozen`;
  if (row.status === 'captured') {
    // Captured first: 4,000 spent, the dispute freezes the 1,000 left.
    assert.equal(c.status, 200, c.text);
    assert.equal(row.captured, '4000');
    assert.deepEqual([await own(s.id), d.frozen], [{ balance: '1000', held: '0' }, '1000']);
  } else {
    // Frozen first: the buyer is suspended (403), and the hold keeps what it reserved; only the
    // 1,000 no hold reserved are frozen free credits.
    assert.equal(row.status, 'active', JSON.stringify(row));
    assert.deepEqual([c.status, codeOf(c)], [403, 'ACCOUNT_DISPUTED'], c.text);
    assert.deepEqual([await own(s.id), d.frozen], [{ balance: '5000', held: '4000' }, '1000']);
  }
  // What no hold reserved is frozen: none of it is available.
  assert.equal(dataOf(await api('/credits/balance', { token: s.token })).available, '0');
  await assertLedgerInvariants();
});

Deno.test("a member's holds on a pooled wallet: captures racing releases, the wallet pays exactly what was captured", async () => {
  const [admin, member] = await Promise.all(['admin', 'member'].map(person));
  const org = await school(admin, [member], 'pool', '100');
  const ids = (await Promise.all(Array.from({ length: 10 }, () => hold(member.token, '10')))).map(holdIdOf);
  assert.deepEqual(await accountOf(org, null), { balance: '100', held: '100' });
  const answers = await Promise.all(ids.flatMap((id) => [
    act(member.token, id, 'capture', { amount: '6' }),
    act(member.token, id, 'capture', { amount: '2.5' }),
    act(member.token, id, 'release'),
  ]));
  let spent = 0;
  for (const [i, id] of ids.entries()) {
    const row = await holdRow(id);
    const mine = answers.slice(3 * i, 3 * i + 3);
    assert.equal(mine.filter((r) => r.status === 200).length, 1, mine.map((r) => r.text).join(' | '));
    if (row.status === 'captured') spent += Number(row.captured);
    else assert.equal(row.status, 'released');
  }
  assert.deepEqual(await accountOf(org, null), { balance: String(100 - spent), held: '0' });
  assert.equal((await walletOf(admin.token, org)).balance, String(100 - spent));
  await assertLedgerInvariants();
});

Deno.test("a member's hold on their allowance captured twenty times at once: the allowance pays once", async () => {
  const [admin, member] = await Promise.all(['admin', 'member'].map(person));
  const org = await school(admin, [member], 'allowance', '1000');
  const funded = await api(`/orgs/${org}/allowances`, { token: admin.token, headers: key(), body: { amount: '50' } });
  assert.equal(funded.status, 201, funded.text);
  const id = holdIdOf(await hold(member.token, '50'));
  const answers = await Promise.all(
    Array.from({ length: 20 }, (_, i) => act(member.token, id, 'capture', i % 2 ? { amount: '50' } : { amount: '20' })),
  );
  const row = await holdRow(id);
  for (const r of answers) {
    if (r.status === 200) assert.equal(dataOf(r).captured, row.captured, r.text);
    else assert.deepEqual([r.status, codeOf(r)], [409, 'HOLD_ALREADY_CAPTURED'], r.text);
  }
  assert.deepEqual(await capturesOf(id), [row.captured]);
  assert.deepEqual(await accountOf(org, member.id), { balance: String(50 - Number(row.captured)), held: '0' });
  assert.deepEqual(await accountOf(org, null), { balance: '950', held: '0' });
  await assertLedgerInvariants();
});

Deno.test('credits for some models under a hold: a capture draws credits for any model, never the restricted ones', async () => {
  const id = await newUser();
  const token = await userToken(id);
  assert.equal((await grantLot(id, '50', 'promo_grant', { applies_to: ['gpt-4o-mini*'] })).status, 201);
  assert.equal((await grantLot(id, '30', 'promo_grant')).status, 201);
  // A hold for no model may reserve only what pays for anything.
  const over = await hold(token, '31');
  assert.deepEqual([over.status, codeOf(over)], [402, 'INSUFFICIENT_CREDITS'], over.text);
  const ids = (await Promise.all(Array.from({ length: 3 }, () => hold(token, '10')))).map(holdIdOf);
  const answers = await Promise.all(
    ids.flatMap((h) => [act(token, h, 'capture'), act(token, h, 'capture', { amount: '10' })]),
  );
  for (const r of answers) assert.equal(r.status, 200, r.text);
  assert.deepEqual(await own(id), { balance: '50', held: '0' });
  const lots = await testDb`select trim_scale(l.remaining)::text as remaining, l.applies_to from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.user_id = ${id} order by l.id`;
  assert.deepEqual(lots.map((l) => [l.remaining, l.applies_to]), [['50', ['gpt-4o-mini*']], ['0', null]]);
  await assertLedgerInvariants();
});

Deno.test('AI calls, holds, captures and usage in parallel over a small balance: the balance is exactly what each took', async () => {
  const s = await aiStudent('30');
  const model = 'gpt-4o-mini';
  const calls = Array.from(
    { length: 6 },
    () =>
      s.openai.chat.completions.create({ model, messages: ask('#standin words=5 delay=30'), max_tokens: 20 }).then(
        () => 'ok',
        (e) => String(e.status),
      ),
  );
  const holds = Array.from({ length: 6 }, async () => {
    const h = await hold(s.token, '4');
    if (h.status !== 201) return { held: h.status, captured: '0' };
    const [c] = await Promise.all([
      act(s.token, dataOf(h).hold_id, 'capture', { amount: '3' }),
      act(s.token, dataOf(h).hold_id, 'capture', { amount: '3' }),
    ]);
    assert.equal(c.status, 200, c.text);
    return { held: 201, captured: dataOf(c).captured as string };
  });
  const usage = Array.from({ length: 6 }, () => spendWith(s.token, crypto.randomUUID(), 2));
  const [ai, captures, used] = await Promise.all([Promise.all(calls), Promise.all(holds), Promise.all(usage)]);
  for (const r of ai) assert.ok(r === 'ok' || r === '402', r);
  for (const r of used) assert.ok(r.status === 201 || r.status === 402, r.text);
  const capturedTotal = captures.reduce((n, c) => n + Number(c.captured), 0);
  const usedTotal = 2 * used.filter((r) => r.status === 201).length;
  const [x] = await testDb`select trim_scale(30 - coalesce(sum(c.charged), 0) - ${
    capturedTotal + usedTotal
  }::numeric)::text as expected,
      (select trim_scale(balance)::text from billing.accounts where user_id = ${s.id}) as balance,
      (select trim_scale(held)::text from billing.accounts where user_id = ${s.id}) as held
    from billing.ai_calls c where c.user_id = ${s.id}`;
  assert.deepEqual([x.balance, x.held], [x.expected, '0'], JSON.stringify({ ai, captures, usedTotal }));
  await assertLedgerInvariants();
});

Deno.test('a refund leaves a hold what it reserved, then captures of 1,500 race: spent once, and the refund takes the rest back when the hold ends', async () => {
  const s = await student();
  const session = (await buy(s.token, 'mini')).session_id;
  const id = holdIdOf(await hold(s.token, '4500'));
  // A refund of 3,000 credits takes the 500 free at once; what the hold reserved is taken back
  // when it ends (docs/credit-lots.md § Refunds, disputes and debt 1).
  await emulator(`/_emulator/charges/${await chargeOf(session)}/refund`, { amount: 300 });
  assert.deepEqual([await holdRow(id), await own(s.id)], [
    { status: 'active', amount: '4500', captured: null },
    { balance: '4500', held: '4500' },
  ]);
  const answers = await Promise.all(Array.from({ length: 5 }, () => act(s.token, id, 'capture', { amount: '1500' })));
  for (const r of answers) assert.equal(r.status, 200, r.text);
  const over = await act(s.token, id, 'capture', { amount: '2001' });
  assert.deepEqual([over.status, codeOf(over)], [409, 'HOLD_ALREADY_CAPTURED'], over.text);
  assert.deepEqual(await capturesOf(id), ['1500']);
  // What the refund claimed of the 3,000 the hold returned stays reserved until the minute's tick.
  assert.deepEqual(await own(s.id), { balance: '3000', held: '2500' });
  await sweepExpiredHolds();
  // 4,500 − 1,500 captured − the 2,500 the refund still took from the 3,000 the hold returned.
  assert.deepEqual(await own(s.id), { balance: '500', held: '0' });
  await assertLedgerInvariants();
});

Deno.test('a full refund after most was spent takes the balance below zero: the hold gives way and captures nothing', async () => {
  const s = await student();
  const session = (await buy(s.token, 'mini')).session_id;
  assert.equal((await spendWith(s.token, crypto.randomUUID(), 4000)).status, 201);
  const id = holdIdOf(await hold(s.token, '1000'));
  const refund = emulator(`/_emulator/charges/${await chargeOf(session)}/refund`, {});
  const [c] = await Promise.all([act(s.token, id, 'capture', { amount: '600' }), refund]);
  const row = await holdRow(id);
  if (row.status === 'captured') {
    // Captured first: 600 spent of the 1,000, then the reversal takes 5,000 from 400.
    assert.equal(c.status, 200, c.text);
    assert.deepEqual(await own(s.id), { balance: '-4600', held: '0' });
  } else {
    assert.equal(row.status, 'released', JSON.stringify(row));
    assert.deepEqual([c.status, codeOf(c)], [409, 'HOLD_RELEASED'], c.text);
    assert.deepEqual(await own(s.id), { balance: '-4000', held: '0' });
  }
  const again = await hold(s.token, '1');
  assert.deepEqual([again.status, codeOf(again)], [402, 'INSUFFICIENT_CREDITS'], again.text);
  await assertLedgerInvariants();
});

// Why: remove_member lists the member's active holds before it locks the
// school's account, then releases each; a capture committed in between makes release_hold raise
// HOLD_ALREADY_CAPTURED and the whole removal answers 409: the member stays, and can keep spending.
Deno.test("an admin removes a member while the member captures their holds: the removal succeeds, the school's credits exact", async () => {
  const [admin, member] = await Promise.all(['admin', 'member'].map(person));
  const org = await school(admin, [member], 'pool', '100');
  const ids = (await Promise.all(Array.from({ length: 8 }, () => hold(member.token, '10')))).map(holdIdOf);
  const [removed, ...caps] = await Promise.all([
    api(`/orgs/${org}/members/${member.id}`, { method: 'DELETE', token: admin.token }),
    ...ids.map((id) => act(member.token, id, 'capture', { amount: '6' })),
  ]);
  let spent = 0;
  for (const [i, id] of ids.entries()) {
    const row = await holdRow(id);
    if (row.status === 'captured') {
      assert.equal(caps[i].status, 200, caps[i].text);
      spent += 6;
    } else {
      assert.equal(row.status, 'released', JSON.stringify(row));
      assert.ok([404, 409].includes(caps[i].status), caps[i].text);
    }
  }
  assert.deepEqual(await accountOf(org, null), { balance: String(100 - spent), held: '0' });
  await assertLedgerInvariants();
  assert.equal(removed.status, 200, `the removal answered ${removed.text}`);
  const [m] = await testDb`select active from billing.org_members where org_id = ${org} and user_id = ${member.id}`;
  assert.equal(m.active, false, 'the member is removed');
});

Deno.test('a usage batch racing captures over a small balance: each event and capture paid once, exactly', async () => {
  const s = await student('30');
  const ids = (await Promise.all(Array.from({ length: 3 }, () => hold(s.token, '5')))).map(holdIdOf);
  const events = Array.from({ length: 10 }, () => usageEvent(s.id, crypto.randomUUID(), 2));
  const [b1, b2, ...caps] = await Promise.all([
    batch(events),
    batch(events),
    ...ids.flatMap((id) => [act(s.token, id, 'capture', { amount: '5' }), act(s.token, id, 'capture')]),
  ]);
  for (const c of caps) assert.equal(c.status, 200, c.text);
  assert.equal(b1.status, 200, b1.text);
  assert.equal(b2.status, 200, b2.text);
  const applied = new Set(
    [...outcomesOf(b1), ...outcomesOf(b2)].flatMap((o, i) =>
      o.status === 'applied' || o.status === 'duplicate' || o.status === 'replayed' ? [events[i % 10].event_id] : []
    ),
  );
  const [{ n }] =
    await testDb`select count(*)::int as n from billing.transfers t join billing.accounts a on a.id = t.from_account_id
    where a.user_id = ${s.id} and t.kind = 'usage'`;
  // 15 held and captured; the batch could charge 2 at a time from the 15 left: 7 events.
  assert.equal(n, 7, JSON.stringify(outcomesOf(b1)));
  assert.ok(applied.size >= 7);
  assert.deepEqual(await own(s.id), { balance: '1', held: '0' });
  await assertLedgerInvariants();
});

Deno.test('AI calls for a model beside user holds on credits for some models: each paid by its own credits', async () => {
  const id = await newUser();
  const token = await userToken(id);
  assert.equal((await grantLot(id, '50', 'promo_grant', { applies_to: ['gpt-4o-mini*'] })).status, 201);
  assert.equal((await grantLot(id, '30', 'promo_grant')).status, 201);
  const openai = (await aiStudent('0')).openai.withOptions({ apiKey: token });
  const calls = Array.from(
    { length: 4 },
    () =>
      openai.chat.completions.create({
        model: 'gpt-4o-mini',
        messages: ask('#standin words=5 delay=20'),
        max_tokens: 20,
      })
        .then(() => 'ok', (e) => String(e.status)),
  );
  const holds = Array.from({ length: 3 }, async () => {
    const h = await hold(token, '10');
    assert.equal(h.status, 201, h.text);
    const c = await act(token, dataOf(h).hold_id, 'capture');
    assert.equal(c.status, 200, c.text);
  });
  const [ai] = await Promise.all([Promise.all(calls), Promise.all(holds)]);
  assert.deepEqual(ai, ['ok', 'ok', 'ok', 'ok']);
  const [x] =
    await testDb`select trim_scale(50 - sum(c.charged))::text as mini from billing.ai_calls c where c.user_id = ${id}`;
  const lots = await testDb`select trim_scale(l.remaining)::text as remaining from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.user_id = ${id} order by l.id`;
  assert.deepEqual(lots.map((l) => l.remaining), [x.mini, '0']);
  assert.deepEqual(await own(id), { balance: x.mini, held: '0' });
  await assertLedgerInvariants();
});

// Why: balance_of answers as billing.settled would leave the account (due lots expired and the
// holds that reserved them shrunk by their part, in the order they fell due: the lot was
// backdated to before the overdue hold's TTL, so its expiry takes that hold's 60 whole, and the
// live 60 reserved 40 of it, so it shrinks to 20), and a capture finds the same; it once counted
// the overdue 60, gave the live hold way whole, and answered 409 HOLD_RELEASED.
Deno.test('the balance read before any sweep, with an overdue hold and a due lot under a live one, is what a capture then finds', async () => {
  const id = await newUser();
  const token = await userToken(id);
  const due = await grantLot(id, '100', 'promo_grant');
  assert.equal(due.status, 201, due.text);
  assert.equal((await grantLot(id, '50', 'promo_grant')).status, 201);
  const [{ lot }] = await testDb`select min(l.id)::text as lot from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.user_id = ${id}`;
  const overdue = holdIdOf(await hold(token, '60'));
  const live = holdIdOf(await hold(token, '60'));
  // The lot fell due (a second ago) before the overdue hold's TTL passed (half a second ago).
  await backdateLot(lot);
  await holdsLapse(testDb`h.id = ${overdue}`, testDb`now() - interval '0.5 second'`);
  // 50 left; the overdue 60 no longer counts; the live 60 reserved 40 of the due lot and 20 of
  // the other: it shrinks to 20.
  const b = dataOf(await api('/credits/balance', { token }));
  assert.deepEqual([b.balance, b.held, b.available], ['50', '20', '30'], JSON.stringify(b));
  const c = await act(token, live, 'capture');
  assert.equal(c.status, 200, c.text);
  assert.deepEqual([dataOf(c).captured, dataOf(c).balance, dataOf(c).available], ['20', '30', '30']);
  assert.equal((await holdRow(overdue)).status, 'released', 'given to the expiry before its TTL');
  assert.deepEqual(await own(id), { balance: '30', held: '0' });
  await assertLedgerInvariants();
});

Deno.test("a dispute of the school's purchase racing a member's capture on the pool: the hold captures what it reserved, the free credits freeze", async () => {
  const [admin, member] = await Promise.all(['admin', 'member'].map(person));
  const org = await school(admin, [member], 'pool', null);
  const session = await pays(admin.token, { package_id: 'mini', org_id: org });
  const id = holdIdOf(await hold(member.token, '3000'));
  const [c] = await Promise.all([
    act(member.token, id, 'capture'),
    emulator(`/_emulator/charges/${await chargeOf(session)}/dispute`, { outcome: 'open' }),
  ]);
  // In either order: an organisation's purchase suspends no one, and a hold placed before the
  // dispute finishes normally (docs/credit-lots.md § Refunds, disputes and debt 3, 4).
  assert.equal(c.status, 200, c.text);
  assert.equal((await holdRow(id)).status, 'captured');
  assert.deepEqual(await accountOf(org, null), { balance: '2000', held: '0' });
  // The 2,000 left are frozen: nothing more can be held.
  const more = await hold(member.token, '1');
  assert.deepEqual([more.status, codeOf(more)], [402, 'INSUFFICIENT_CREDITS'], more.text);
  await assertLedgerInvariants();
});
