// Credit lots: spending order, allocations in the ledger, expiry into breakage with warnings
// first (credits that expire under a hold are spent by nothing: a release and a new hold, a
// capture, the fast path, racing or not), refunds and
// disputes that take back their own purchase's lots, and debt.
import assert from 'node:assert/strict';
import type { Balance, LedgerPage, Lot, LotPage } from '../../supabase/functions/_shared/contract/index.ts';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  backdateLot,
  env,
  key,
  newUser,
  reportUsage,
  spend,
  student,
  testDb,
  userToken,
} from '../support/helpers.ts';
import { batch, dataOf, spendWith, sweep, usageEvent } from '../support/money.ts';
import { balanceOf, buy, chargeOf, emulator } from '../support/purchases.ts';

const data = <T>(r: { body: Record<string, unknown> }) => r.body.data as T;

/** An admin grant through the API, with the lot it should create. */
async function grant(userId: string, amount: string, lot: Record<string, unknown>, kind = 'adjustment') {
  const r = await api('/credits/grants', {
    token: await adminToken(),
    headers: key(),
    body: { user_id: userId, amount, reason: 'lots test', kind, lot },
  });
  assert.equal(r.status, 201, r.text);
  return data<{ lot_id: string }>(r).lot_id;
}

const lots = async (token: string) => data<LotPage>(await api('/credits/lots', { token })).items;
const remaining = (all: Lot[]) => Object.fromEntries(all.map((l) => [l.id, l.remaining]));
const inDays = (d: number) => new Date(Date.now() + d * 86_400_000).toISOString();

Deno.test('spending order: priority, then earliest expiry, then oldest; each entry names the lots it drew', async () => {
  const s = await student();
  const paid = await grant(s.id, '100', { category: 'paid', cost_cents: '1000' });
  const promoForever = await grant(s.id, '50', { category: 'promotional', expires_at: null });
  const promoSoon = await grant(s.id, '30', { category: 'promotional', expires_at: inDays(10) });
  const promoLater = await grant(s.id, '20', { category: 'promotional', expires_at: inDays(20) });

  await spend(s.token, 60);
  assert.deepEqual(remaining(await lots(s.token)), {
    [paid]: '100',
    [promoForever]: '40',
    [promoSoon]: '0',
    [promoLater]: '0',
  }, 'promotional before paid; within a priority, the earliest expiry first, no expiry last');
  const [usage] = data<LedgerPage>(await api('/credits/ledger?limit=1', { token: s.token })).items;
  assert.deepEqual(
    usage.lots,
    [
      { lot_id: promoSoon, amount: '30' },
      { lot_id: promoLater, amount: '20' },
      { lot_id: promoForever, amount: '10' },
    ].sort((a, b) => Number(a.lot_id) - Number(b.lot_id)),
  );

  // A lower priority number goes first whatever its category.
  const first = await grant(s.id, '5', { category: 'paid', priority: 0, cost_cents: '50' });
  await spend(s.token, 7);
  const after = remaining(await lots(s.token));
  assert.equal(after[first], '0');
  assert.equal(after[promoForever], '38');
  await assertLedgerInvariants();
});

Deno.test("GET /credits/lots lists the caller's lots newest first with a cursor, and nobody else's", async () => {
  const s = await student();
  const other = await student();
  const ids = [];
  for (const amount of ['1', '2', '3']) ids.push(await grant(s.id, amount, { category: 'promotional' }));
  await grant(other.id, '9', {});
  const page1 = data<LotPage>(await api('/credits/lots?limit=2', { token: s.token }));
  assert.deepEqual(page1.items.map((l) => l.id), [ids[2], ids[1]]);
  assert.equal(page1.items[0].source, 'adjustment');
  assert.equal(page1.items[0].expires_at, null, 'an adjustment does not expire unless the admin says so');
  const page2 = data<LotPage>(await api(`/credits/lots?limit=2&cursor=${page1.next_cursor}`, { token: s.token }));
  assert.deepEqual(page2.items.map((l) => l.id), [ids[0]]);
  assert.equal(page2.next_cursor, null);
  assert.equal((await api('/credits/lots')).status, 401);
});

Deno.test('a purchase makes a paid lot at its price and a promotional bonus lot that expires by policy', async () => {
  const s = await student();
  await buy(s.token, 'pro'); // $49.99: 49,990 credits + 4,999 bonus
  const [bonus, credits] = await lots(s.token);
  assert.deepEqual([credits.source, credits.category, credits.amount, credits.expires_at], [
    'purchase',
    'paid',
    '49990',
    null,
  ]);
  assert.deepEqual([bonus.source, bonus.category, bonus.amount], ['promo_grant', 'promotional', '4999']);
  const days = (Date.parse(bonus.expires_at ?? '') - Date.now()) / 86_400_000;
  assert.ok(days > 364 && days <= 365, `bonus expires in 365 days (${days})`);
  const [row] = await testDb`select cost_cents::text as cost from billing.lots where id = ${credits.id}`;
  assert.equal(Number(row.cost), 4999, 'the cost basis is the price paid: 4,999 cents for 49,990 credits');
  const b = data<Balance>(await api('/credits/balance', { token: s.token }));
  assert.deepEqual(b.expiring, { amount: '4999', at: bonus.expires_at });
});

Deno.test("a refund takes back its own purchase's lot, never another grant's bonus credits", async () => {
  const s = await student();
  const gift = await grant(s.id, '500', { category: 'promotional' });
  const co = await buy(s.token, 'starter'); // 9,990 paid credits, no bonus
  await spend(s.token, 300); // promotional first: all from the gift
  // A full refund reverses all 9,990 credits: exactly the purchase's own lot.
  await emulator(`/_emulator/charges/${await chargeOf(co.session_id)}/refund`, { amount: 999 });
  const after = await lots(s.token);
  assert.equal(remaining(after)[gift], '200', 'the gift is untouched');
  assert.equal(after.find((l) => l.source === 'purchase')?.remaining, '0');
  assert.equal((await balanceOf(s.token)).balance, '200');
  await assertLedgerInvariants();
});

Deno.test("a refund of spent credits is debt: other lots settle it, and the next purchase's lot pays the rest", async () => {
  const s = await student();
  const co = await buy(s.token, 'mini');
  await spend(s.token, 5000);
  const gift = await grant(s.id, '1000', { category: 'promotional' });
  await emulator(`/_emulator/charges/${await chargeOf(co.session_id)}/dispute`, { outcome: 'open' });
  await emulator(`/_emulator/charges/${await chargeOf(co.session_id)}/dispute`, { outcome: 'lost' });
  // 5,000 reversed: the purchase's lot is empty, so the gift settles 1,000 and 4,000 is owed.
  assert.equal((await balanceOf(s.token)).balance, '-4000');
  assert.equal(remaining(await lots(s.token))[gift], '0');
  await buy(s.token, 'starter');
  const newest = (await lots(s.token))[0];
  assert.equal(newest.remaining, '5990', '9,990 less the 4,000 debt');
  const [row] = await testDb`select debt_settled::text as settled from billing.lots where id = ${newest.id}`;
  assert.equal(Number(row.settled), 4000);
  await assertLedgerInvariants();
});

Deno.test('while a purchase is disputed its lots freeze and its buyer spends nothing; a lost dispute takes exactly them', async () => {
  const s = await student();
  const co = await buy(s.token, 'mini'); // 5,000 paid
  const gift = await grant(s.id, '300', { category: 'paid', priority: 50, cost_cents: '0' }); // spent after the purchase normally
  await emulator(`/_emulator/charges/${await chargeOf(co.session_id)}/dispute`, { outcome: 'open' });
  const frozen = (await lots(s.token)).find((l) => l.source === 'purchase');
  assert.equal(frozen?.frozen, true);
  // The buyer is suspended while the dispute is open (docs/credit-lots.md § Refunds, disputes and debt 4).
  const refused = await reportUsage('/credits/usage', {
    token: s.token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: 5000, output_tokens: 0 },
  });
  assert.equal(refused.status, 403, refused.text);
  assert.equal(remaining(await lots(s.token))[gift], '300');
  await emulator(`/_emulator/charges/${await chargeOf(co.session_id)}/dispute`, { outcome: 'lost' });
  const after = await lots(s.token);
  assert.equal(remaining(after)[gift], '300', 'the dispute took its own lot, not the gift');
  await spend(s.token, 100); // closed: the gift is spendable
  assert.deepEqual(await balanceOf(s.token), { balance: '200', held: '0', available: '200' });
  await assertLedgerInvariants();
});

Deno.test('expiry: the sweep moves what is left to breakage, held credits too (the hold gives way), and warns first', async () => {
  const s = await student();
  const lot = await grant(s.id, '100', { category: 'promotional', expires_at: inDays(5) });
  // The 7-day warning only (the lot never had 30 days), once.
  assert.ok(await testDb`select billing.queue_expiry_warnings(100000)`);
  await testDb`select billing.queue_expiry_warnings(100000)`;
  const warnings = await testDb`select dedupe_key, payload from billing.notification_outbox where user_id = ${s.id}
    and template = 'credits_expiring'`;
  assert.deepEqual(warnings.map((w) => w.dedupe_key), [`expiry-warning:${lot}:7`]);
  assert.equal(warnings[0].payload.amount, '100');

  const hold = await api('/credits/holds', { token: s.token, headers: key(), body: { amount: '40' } });
  assert.equal(hold.status, 201, hold.text);
  await backdateLot(lot);
  await testDb`select billing.expire_lots(100000)`;
  assert.deepEqual(await balanceOf(s.token), { balance: '0', held: '0', available: '0' }, 'held credits expire too');
  const [given] = await testDb`select status, metadata ->> 'given_amount' as given from billing.holds
                               where id = ${data<{ hold_id: string }>(hold).hold_id}`;
  assert.deepEqual(given, { status: 'released', given: '40' }, 'the hold gave way to the expiry');
  await testDb`select billing.expire_lots(100000)`; // a rerun changes nothing
  assert.equal((await balanceOf(s.token)).balance, '0');
  const release = await api(`/credits/holds/${data<{ hold_id: string }>(hold).hold_id}/release`, {
    token: s.token,
    headers: key(),
    body: {},
  });
  assert.equal(release.status, 200, 'releasing it after is a no-op');
  const expiries = await testDb`select t.amount::text as amount, t.kind from billing.transfers t
    join billing.lot_allocations la on la.transfer_id = t.id where la.lot_id = ${lot} and t.kind = 'expiry' order by t.id`;
  assert.deepEqual(expiries.map((e) => Number(e.amount)), [100]);
  assert.equal(data<Balance>(await api('/credits/balance', { token: s.token })).expiring, null);
  await assertLedgerInvariants();
});

Deno.test('admin grants: a cost on promotional credits, a past expiry or a bad priority are refused and change nothing', async () => {
  const s = await student();
  const admin = await adminToken();
  for (
    const lot of [
      { category: 'promotional', cost_cents: '100' },
      { expires_at: new Date(Date.now() - 1000).toISOString() },
      { priority: 1001 },
      { category: 'gold' },
    ]
  ) {
    const r = await api('/credits/grants', {
      token: admin,
      headers: key(),
      body: { user_id: s.id, amount: '10', reason: 'bad lot', lot },
    });
    assert.equal(r.status, 400, `${JSON.stringify(lot)}: ${r.text}`);
  }
  assert.deepEqual(await lots(s.token), []);
  assert.equal((await balanceOf(s.token)).balance, '0');
});

Deno.test('parallel debits, batch events, expiry sweeps and refunds on one account never double-spend a lot', async () => {
  const s = await student();
  const co = await buy(s.token, 'starter');
  for (let i = 0; i < 5; i++) {
    const lot = await grant(s.id, '200', { category: 'promotional', expires_at: inDays(1 + i) });
    if (i < 2) await backdateLot(lot);
  }
  const batch = () =>
    api('/credits/usage/batch', {
      token: env('SUPABASE_SERVICE_ROLE_KEY'),
      body: {
        events: Array.from({ length: 20 }, () => ({
          event_id: crypto.randomUUID(),
          user_id: s.id,
          model: 'gpt-4o',
          input_tokens: 500,
          output_tokens: 0,
          occurred_at: new Date().toISOString(),
        })),
      },
    });
  const work = [
    ...Array.from({ length: 40 }, () =>
      reportUsage('/credits/usage', {
        token: s.token,
        headers: key(),
        body: { model: 'gpt-4o', input_tokens: 2500, output_tokens: 0 },
      })),
    batch(),
    batch(),
    testDb`select billing.expire_lots(100000)`,
    emulator(`/_emulator/charges/${await chargeOf(co.session_id)}/refund`, { amount: 500 }),
    testDb`select billing.expire_lots(100000)`,
  ];
  await Promise.all(work);
  const [row] = await testDb`select a.balance::text as balance, (select coalesce(sum(l.remaining), 0)::text
    from billing.lots l where l.account_id = a.id) as lots, (select count(*)::int from billing.lots l
    where l.account_id = a.id and l.remaining < 0) as negative from billing.accounts a where a.user_id = ${s.id}`;
  assert.equal(Number(row.lots), Math.max(Number(row.balance), 0));
  assert.equal(row.negative, 0);
  await assertLedgerInvariants();
});

Deno.test('credits that expired under a hold are not spent by the fast path, a capture, or a new hold', async () => {
  const s = await student('100'); // promotional: a lot that expires
  const hold = await api('/credits/holds', { token: s.token, body: { amount: '60' }, headers: key() });
  assert.equal(hold.status, 201, hold.text);
  const [{ id: lot }] =
    await testDb`select l.id::text from billing.lots l join billing.accounts a on a.id = l.account_id
                                     where a.user_id = ${s.id}`;
  await backdateLot(lot);
  const spent = await spendWith(s.token, crypto.randomUUID(), 10);
  assert.equal(spent.status, 402, `the fast path spent expired credits: ${spent.text}`);
  const cap = await api(`/credits/holds/${dataOf(hold).hold_id}/capture`, { token: s.token, body: {}, headers: key() });
  assert.notEqual(cap.status, 200, `a capture spent expired credits: ${cap.text}`);
  const again = await api('/credits/holds', { token: s.token, body: { amount: '10' }, headers: key() });
  assert.equal(again.status, 402, `a new hold reserved expired credits: ${again.text}`);
  assert.equal((await balanceOf(s.token)).balance, '0');
  await assertLedgerInvariants();
});

Deno.test('a hold over credits that expire, captured while usage and new holds race it, spends only what is left', async () => {
  for (let run = 0; run < 3; run++) {
    const s = await student('60'); // promotional: expires
    const admin = await adminToken();
    const paid = await api('/credits/grants', {
      token: admin,
      headers: key(),
      body: { user_id: s.id, amount: '40', reason: 'support credit', kind: 'adjustment' }, // never expires
    });
    assert.equal(paid.status, 201, paid.text);
    const hold = await api('/credits/holds', { token: s.token, body: { amount: '90' }, headers: key() });
    assert.equal(hold.status, 201, hold.text);
    const [promo] = await testDb`select l.id::text from billing.lots l join billing.accounts a on a.id = l.account_id
                                 where a.user_id = ${s.id} and l.expires_at is not null`;
    await backdateLot(promo.id);
    const holdId = dataOf(hold).hold_id as string;
    const answers = await Promise.all([
      api(`/credits/holds/${holdId}/capture`, { token: s.token, body: {}, headers: key() }),
      api(`/credits/holds/${holdId}/capture`, { token: s.token, body: { amount: '30' }, headers: key() }),
      spendWith(s.token, crypto.randomUUID(), 15),
      spendWith(s.token, crypto.randomUUID(), 15),
      batch([usageEvent(s.id, crypto.randomUUID(), 15)]),
      api('/credits/holds', { token: s.token, body: { amount: '20' }, headers: key() }),
      sweep(),
    ]);
    const b = await balanceOf(s.token);
    const [{ held }] = await testDb`select trim_scale(coalesce(sum(h.amount), 0))::text as held from billing.holds h
      join billing.accounts a on a.id = h.account_id where a.user_id = ${s.id} and h.status = 'active'`;
    assert.equal(b.available, String(Number(b.balance) - Number(held)), `run ${run}: ${JSON.stringify({ b, held })}`);
    const [{ spent }] = await testDb`select coalesce(sum(t.amount), 0)::numeric as spent from billing.transfers t
      join billing.accounts a on a.id = t.from_account_id
      where a.user_id = ${s.id} and t.kind in ('usage', 'hold_capture')`;
    assert.ok(
      Number(spent) <= 40,
      `run ${run}: ${spent} spent of 40 unexpired credits (${
        answers.map((r) => 'status' in r ? r.status : '').join()
      })`,
    );
    assert.equal(Number(spent) + Number(b.balance), 40, `run ${run}`);
    await assertLedgerInvariants();
  }
});

Deno.test('credits of an expired lot cannot be spent by releasing and re-holding them, nor by capturing a hold', async () => {
  const s = { id: await newUser() };
  const token = await userToken(s.id);
  const admin = await adminToken();
  const at = new Date(Date.now() + 2_000).toISOString();
  const g = await api('/credits/grants', {
    token: admin,
    headers: key(),
    body: { user_id: s.id, amount: '100', reason: 'trial', lot: { category: 'promotional', expires_at: at } },
  });
  assert.equal(g.status, 201, g.text);
  const held = await api('/credits/holds', { token, headers: key(), body: { amount: '100', ttl_seconds: 600 } });
  assert.equal(held.status, 201, held.text);
  const holdId = (held.body.data as { hold_id: string }).hold_id;
  await new Promise((r) => setTimeout(r, 2_500));

  const captured = await api(`/credits/holds/${holdId}/capture`, { token, body: {} });
  assert.notEqual(captured.status, 200, 'an expired lot under a hold is not captured');
  assert.equal((await balanceOf(token)).balance, '0', 'it expired, held or not');
  const again = await api('/credits/holds', { token, headers: key(), body: { amount: '1', ttl_seconds: 600 } });
  assert.equal(again.status, 402, 'and cannot be held again');
  const [{ n }] = await testDb`select count(*)::int as n from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id where a.user_id = ${s.id} and t.kind = 'hold_capture'`;
  assert.equal(n, 0);
  await assertLedgerInvariants();
});
