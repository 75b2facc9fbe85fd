// Attacking the ledger core a second time, after its first attack's fixes (expiry keys counting a
// lot's earlier expiries, the usage fast path looking its key up first, `sha256:` keys hashed) and
// the writer's single movement written in statements of its own. Outsiders only: students, the
// app's server reporting usage (service role, as reportUsage does), the Stripe emulator's test
// controls, and an admin voiding a charge a student complained about. Each test asserts the
// behaviour that must hold; a failing one is a hole.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  backdateLot,
  fund,
  newUser,
  reportUsage,
  testDb,
  tick,
  userToken,
} from '../helpers.ts';
import { codeOf, dataOf, spendWith, usageBody } from '../money.ts';
import { key, person, school, walletOf } from '../orgs.ts';
import { chargeOf, deliver, emulator, startCheckout } from '../purchases.ts';
import { breakage, renew, subscribeTo } from '../plans.ts';

const student = async (credits?: string) => {
  const id = await newUser();
  if (credits) await fund(id, credits);
  return { id, token: await userToken(id) };
};
const balance = async (token: string) =>
  dataOf(await api('/credits/balance', { token })) as { balance: string; held: string; available: string };
const usageTransfers = async (user: string) =>
  (await testDb`select count(*)::int as n from billing.transfers t join billing.accounts a on a.id = t.from_account_id
                where a.user_id = ${user} and t.kind = 'usage'`)[0].n as number;
const batch = (events: Record<string, unknown>[]) =>
  api('/credits/usage/batch', { token: Deno.env.get('SUPABASE_SERVICE_ROLE_KEY'), body: { events } });
const event = (user: string, id: string, credits: number) => ({
  event_id: id,
  user_id: user,
  ...usageBody(credits),
  occurred_at: new Date().toISOString(),
});
const outcomesOf = (r: Awaited<ReturnType<typeof api>>) =>
  (r.body.data as { outcomes: { status: string; transfer_id?: string; charged?: string }[] }).outcomes;
const voidCharge = async (id: string) =>
  api(`/admin/charges/${id}/void`, { token: await adminToken(), body: { reason: 'the student complained' } });
const lotsOf = async (user: string) =>
  await testDb<{ id: string; category: string; remaining: string }[]>`
    select l.id::text, l.category, trim_scale(l.remaining)::text as remaining from billing.lots l
    join billing.accounts a on a.id = l.account_id where a.user_id = ${user} order by l.id`;
/** Net credits that left one lot as breakage (an expiry's positive rows, an un-expiry's negative ones). */
const expiredOf = async (lot: string) =>
  (await testDb`select trim_scale(coalesce(sum(amount), 0))::text as n from billing.lot_allocations
                where lot_id = ${lot} and kind = 'expiry'`)[0].n as string;
const sweep = () => testDb`select billing.expire_lots(500)`;

// ------------------------------------------------------------ derived keys

const sha256hex = async (text: string) =>
  Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text))))
    .map((b) => b.toString(16).padStart(2, '0')).join('');

Deno.test('hold keys and batch event ids at 300 characters and sha256: look-alikes never merge two requests', async () => {
  const s = await student('100');
  const long = 'h'.repeat(255);
  // 'http:<user>:credits.holds:' is 56 characters: a 244-character key fills 300 exactly.
  const keys = [
    long,
    'sha256:' + await sha256hex(long),
    'b'.repeat(244),
    'b'.repeat(245),
    'SHA256:' + await sha256hex(long),
  ];
  const holds: string[] = [];
  for (const k of keys) {
    const h = await api('/credits/holds', { token: s.token, body: { amount: '5' }, headers: { 'idempotency-key': k } });
    assert.equal(h.status, 201, `${k.length}: ${h.text}`);
    holds.push(dataOf(h).hold_id as string);
  }
  assert.equal(new Set(holds).size, keys.length, 'each key is its own hold');
  // A day later the stored answers are gone: each key finds its own hold through the ledger's key.
  await testDb`delete from billing.idempotency_keys where user_id = ${s.id}`;
  for (const [i, k] of keys.entries()) {
    const again = await api('/credits/holds', {
      token: s.token,
      body: { amount: '5' },
      headers: { 'idempotency-key': k },
    });
    assert.equal(dataOf(again)?.hold_id, holds[i], `${k.length}: ${again.text}`);
  }
  assert.equal((await balance(s.token)).held, '25');
  const e0 = 'e'.repeat(200);
  const events = [e0, 'sha256:' + await sha256hex(e0), 'SHA256:' + await sha256hex(e0)].map((id) => event(s.id, id, 1));
  const first = await batch(events);
  assert.ok(outcomesOf(first).every((o) => o.status === 'applied'), first.text);
  assert.equal(new Set(outcomesOf(first).map((o) => o.transfer_id)).size, 3);
  const second = await batch(events);
  assert.ok(outcomesOf(second).every((o) => o.status === 'duplicate'), second.text);
  assert.equal(await usageTransfers(s.id), 3);
  await assertLedgerInvariants();
});

const allowanceOf = async (org: string, member: string) =>
  (await testDb`select trim_scale(a.balance)::text as b from billing.accounts a
                where a.org_id = ${org} and a.member_id = ${member}`)[0]?.b as string | undefined;

Deno.test('allowance keys at 300 characters and sha256: look-alikes: each key funds once per member, retries fund nothing', async () => {
  const [owner, ada, bob] = await Promise.all(['owner', 'ada', 'bob'].map(person));
  const org = await school(owner, [ada, bob], 'allowance', '1000');
  // 'allowance:<org>:' is 47 characters and ':<member>' 37: a 216-character key fills 300 exactly.
  const long = 'a'.repeat(255);
  const keys = ['a'.repeat(216), 'a'.repeat(217), long, 'sha256:' + await sha256hex(long + ':' + ada.id)];
  for (const k of keys) {
    for (let i = 0; i < 2; i++) {
      const r = await api(`/orgs/${org}/allowances`, {
        token: owner.token,
        headers: { 'idempotency-key': k },
        body: { amount: '10' },
      });
      assert.equal(r.status, 201, `${k.length}: ${r.text}`);
    }
  }
  assert.equal(await allowanceOf(org, ada.id), '40', 'four keys, four fundings each, none twice');
  assert.equal(await allowanceOf(org, bob.id), '40');
  assert.equal((await walletOf(owner.token, org)).balance, '920');
  await assertLedgerInvariants();
});

// ------------------------------------------------------------ expiry keys across voids and disputes

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
  const b = await balance(s.token);
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
  assert.equal((await balance(s.token)).balance, '24990', 'the 300 given back expired with their lot');
  for (const c of [charges[0], charges[2]]) {
    const v = await voidCharge(c);
    assert.equal(v.status, 200, v.text);
    await sweep();
  }
  await assertLedgerInvariants();
  assert.equal((await balance(s.token)).balance, '24990', 'only the paid credits are left');
  assert.equal(await expiredOf(bonus), '1249.5');
  const over = await reportUsage('/credits/usage', {
    token: s.token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: 24_991 * 50, output_tokens: 0 },
  });
  assert.equal(over.status, 402, `credits of the expired bonus were spent: ${over.text}`);
});

/** Time passes: the student's open plan lots are past their expiry (the sweep has not run). */
async function periodEnds(userId: string): Promise<void> {
  await testDb`with l as (update billing.lots x set expires_at = now() - interval '1 hour'
                          from billing.plan_lots pl join billing.accounts a on true
                          where pl.lot_id = x.id and a.id = x.account_id and a.user_id = ${userId} and x.open
                          returning x.account_id, x.expires_at)
               update billing.accounts a set next_expiry = (select min(expires_at) from l) from l where a.id = l.account_id`;
}

Deno.test('a period swept, a charge of it voided, then the renewal: only the cap comes back from breakage, and later voids expire', async () => {
  const s = await student();
  const plan = await subscribeTo(s.token, 'basic_monthly'); // 10,000 a period; up to 2,000 roll over
  const charges: string[] = [];
  for (let i = 0; i < 3; i++) {
    const r = await spendWith(s.token, crypto.randomUUID(), 2000);
    assert.equal(r.status, 201, r.text);
    charges.push(dataOf(r).transfer_id as string);
  }
  const late = await renew(plan.stripe_subscription, 'paid', false); // period 2 charged, webhooks late
  await periodEnds(s.id);
  await sweep(); // 4,000 expire
  const v1 = await voidCharge(charges[0]); // 2,000 back into the expired lot: breakage at once
  assert.equal(v1.status, 200, v1.text);
  assert.equal((await balance(s.token)).balance, '0');
  for (const e of late.events) assert.equal((await deliver(e)).status, 200);
  await assertLedgerInvariants();
  assert.equal((await balance(s.token)).balance, '12000', 'period 2 and the 2,000 the rule rolls, no more');
  assert.equal(await breakage(s.id), '4000');
  for (const c of charges.slice(1)) {
    const v = await voidCharge(c);
    assert.equal(v.status, 200, v.text);
    await sweep();
  }
  await assertLedgerInvariants();
  assert.equal(
    (await balance(s.token)).balance,
    '12000',
    'charges of the ended period voided late give nothing spendable',
  );
  assert.equal(await breakage(s.id), '8000');
});

// ------------------------------------------------------------ the writer's two branches

Deno.test('one event alone and the same events in a batch draw the same lots, and voids give them back', async () => {
  // Two students with the same lots: 10 promotional (spent first), then 30 more promotional.
  const a = await student('10');
  const b = await student('10');
  await fund(a.id, '30');
  await fund(b.id, '30');
  // a: each event its own batch (the writer's single movement); b: all in one batch.
  const credits = [7, 6, 9];
  const ida = credits.map(() => crypto.randomUUID());
  for (let i = 0; i < credits.length; i++) {
    const r = await batch([event(a.id, ida[i], credits[i])]);
    assert.equal(outcomesOf(r)[0].status, 'applied', r.text);
  }
  const rb = await batch(credits.map((c) => event(b.id, crypto.randomUUID(), c)));
  assert.ok(outcomesOf(rb).every((o) => o.status === 'applied'), rb.text);
  const drawn = async (user: string) =>
    (await testDb`select array_agg(trim_scale(la.amount)::text order by t.id, l.id) as d
                  from billing.lot_allocations la join billing.transfers t on t.id = la.transfer_id
                  join billing.lots l on l.id = la.lot_id join billing.accounts x on x.id = l.account_id
                  where x.user_id = ${user} and t.kind = 'usage'`)[0].d;
  assert.deepEqual(await drawn(a.id), await drawn(b.id));
  assert.deepEqual(await drawn(a.id), ['7', '3', '3', '9'], 'the second event spans both lots');
  const entries = async (user: string) =>
    (await testDb`select array_agg(trim_scale(e.balance_after)::text || '@' || e.account_version order by e.id) as e
                  from billing.entries e join billing.accounts x on x.id = e.account_id where x.user_id = ${user}`)[0]
      .e;
  assert.deepEqual(await entries(a.id), await entries(b.id));
  // The spanning charge voided on both sides.
  for (const user of [a.id, b.id]) {
    const [{ id }] =
      await testDb`select t.id::text from billing.transfers t join billing.accounts x on x.id = t.from_account_id
      where x.user_id = ${user} and t.kind = 'usage' order by t.id offset 1 limit 1`;
    const v = await voidCharge(id);
    assert.equal(v.status, 200, v.text);
  }
  assert.deepEqual((await lotsOf(a.id)).map((l) => l.remaining), (await lotsOf(b.id)).map((l) => l.remaining));
  assert.deepEqual((await lotsOf(a.id)).map((l) => l.remaining), ['3', '21']);
  await assertLedgerInvariants();
});

Deno.test('one event id sent 10 times in batches and as an Idempotency-Key 10 times at once: one charge on each path', async () => {
  const s = await student('100');
  const id = crypto.randomUUID();
  const all = await Promise.all([
    ...Array.from({ length: 10 }, () => batch([event(s.id, id, 4)])),
    ...Array.from({ length: 10 }, () => spendWith(s.token, id, 4)),
  ]);
  const batches = all.slice(0, 10);
  const singles = all.slice(10);
  assert.ok(batches.every((r) => r.status === 200), batches.map((r) => r.text).join('\n'));
  const applied = batches.map((r) => outcomesOf(r)[0]).filter((o) => o.status === 'applied');
  assert.equal(applied.length, 1, batches.map((r) => r.text).join('\n'));
  assert.ok(singles.every((r) => r.status === 201), singles.map((r) => r.text).join('\n'));
  assert.equal(new Set(singles.map((r) => dataOf(r).transfer_id)).size, 1);
  assert.equal(await usageTransfers(s.id), 2);
  assert.equal((await balance(s.token)).balance, '92');
  await assertLedgerInvariants();
});

// ------------------------------------------------------------ holds, captures and usage against expiry

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
      batch([event(s.id, crypto.randomUUID(), 15)]),
      api('/credits/holds', { token: s.token, body: { amount: '20' }, headers: key() }),
      sweep(),
    ]);
    const b = await balance(s.token);
    assert.ok(Number(b.balance) >= 0 && Number(b.available) >= 0, `run ${run}: ${JSON.stringify(b)}`);
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

Deno.test('a dispute opened while usage, a batch and a void race on the account keeps every credit accounted for', async () => {
  const s = await student();
  const co = await startCheckout(s.token, 'mini');
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });
  const first = await spendWith(s.token, crypto.randomUUID(), 100);
  assert.equal(first.status, 201, first.text);
  const charge = await chargeOf(co.session_id);
  await Promise.all([
    emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' }),
    ...Array.from({ length: 6 }, () => spendWith(s.token, crypto.randomUUID(), 50)),
    batch(Array.from({ length: 4 }, () => event(s.id, crypto.randomUUID(), 25))),
    voidCharge(dataOf(first).transfer_id as string),
    api('/credits/holds', { token: s.token, body: { amount: '10' }, headers: key() }),
  ]);
  await assertLedgerInvariants();
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
  await assertLedgerInvariants();
  const b = await balance(s.token);
  assert.ok(Number(b.balance) <= 0, `a lost dispute took back what was left of the purchase: ${JSON.stringify(b)}`);
  const again = await spendWith(s.token, crypto.randomUUID(), 1);
  assert.equal(again.status, 402, again.text);
  assert.equal(codeOf(again), 'INSUFFICIENT_CREDITS');
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
      (await balance(s.token)).balance,
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
    const b = await balance(s.token);
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
    assert.equal((await balance(s.token)).balance, '-449.5', `void ${voidDuring ? 'during' : 'before'} the dispute`);
  }
});

// ------------------------------------------------------------ a job's hold, a dispute and an expiry

Deno.test('a job queued before a dispute still pays for its work when a credit of the account expires meanwhile', async () => {
  const s = await student();
  const co = await startCheckout(s.token, 'mini'); // 5,000 paid credits (never expire)
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });
  await fund(s.id, '1'); // one promotional credit, expiring
  // A metered job queued behind others (as the jobs tests queue one): its estimate held now.
  const job = await testDb.begin(async (sql) => {
    const [j] = await sql`select id from billing.enqueue_job(${s.id}, 'ai_completion',
      ${
      JSON.stringify({ model: 'gpt-4o', prompt: 'one two three four five six seven eight', max_tokens: 100 })
    }::text::jsonb,
      ${crypto.randomUUID()}, null, 5)`;
    await sql`update billing.jobs set run_after = now() + interval '1 hour' where id = ${j.id}`;
    return j.id as string;
  });
  const charge = await chargeOf(co.session_id);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' }); // a job's hold is work under way: it stays
  const [{ id: promo }] =
    await testDb`select l.id::text from billing.lots l join billing.accounts a on a.id = l.account_id
                                      where a.user_id = ${s.id} and l.expires_at is not null`;
  await backdateLot(promo); // time passes: the one promotional credit is due
  await testDb`update billing.jobs set run_after = now() where id = ${job}`;
  await tick();
  const [done] = await testDb`select status from billing.jobs where id = ${job}`;
  assert.equal(done.status, 'completed');
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'won' });
  await assertLedgerInvariants();
  // 8 in × $5/M + 8 out × $15/M, × 4, in credits: 0.64 (the jobs tests' figure). One credit expired:
  // the hold gives way by that much at most, and the work is paid.
  const [paid] = await testDb`select coalesce(sum(t.amount), 0)::text as n from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id where a.user_id = ${s.id} and t.kind in ('hold_capture', 'usage')`;
  assert.equal(Number(paid.n), 0.64, `the job's work was not paid: ${JSON.stringify(await balance(s.token))}`);
  assert.equal((await balance(s.token)).balance, '4999.36');
});
