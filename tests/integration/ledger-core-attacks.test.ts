// Attacking the ledger core (one writer, the usage fast path, allocations without foreign keys,
// operator-owned prices) as outsiders: students, their second accounts, organisations they make,
// and the platform's other parties played honestly (the app's server reporting usage, Stripe's
// emulator, an admin voiding a charge). Each test asserts the behaviour that must hold; a failing
// one is a hole.
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
  userToken,
} from '../helpers.ts';
import { codeOf, dataOf, spendWith, usageBody } from '../money.ts';
import { key, person, school, walletOf } from '../orgs.ts';
import { chargeOf, emulator, startCheckout } from '../purchases.ts';

const student = async (credits?: string) => {
  const id = await newUser();
  if (credits) await fund(id, credits);
  return { id, token: await userToken(id) };
};
const report = (token: string, k: string, body: Record<string, unknown>) =>
  reportUsage('/credits/usage', { token, headers: { 'idempotency-key': k }, body });
const balance = async (token: string) =>
  dataOf(await api('/credits/balance', { token })) as { balance: string; held: string; available: string };
const usageTransfers = async (user: string) =>
  (await testDb`select count(*)::int as n from billing.transfers t join billing.accounts a on a.id = t.from_account_id
                where a.user_id = ${user} and t.kind = 'usage'`)[0].n as number;
const sha256hex = async (s: string) =>
  Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(s))))
    .map((b) => b.toString(16).padStart(2, '0')).join('');

// ------------------------------------------------------------ the fast path against the general one

Deno.test('a request under a charged key with an unknown model is refused as key reuse, and the charge still replays', async () => {
  const s = await student('100');
  const k = crypto.randomUUID();
  const first = await spendWith(s.token, k, 10); // the fast path: the transfer is the record
  assert.equal(first.status, 201, first.text);
  const other = await report(s.token, k, { model: 'no-such-model', input_tokens: 1, output_tokens: 1 });
  const retry = await spendWith(s.token, k, 10);
  assert.equal(retry.status, 201, `the first request, retried, answers its charge: ${retry.text}`);
  assert.equal(codeOf(other), 'IDEMPOTENCY_KEY_REUSED', `another request under a used key: ${other.text}`);
  assert.equal(dataOf(retry).transfer_id, dataOf(first).transfer_id);
  assert.equal((await balance(s.token)).balance, '90');
  await assertLedgerInvariants();
});

Deno.test('a zero-priced request under a charged key is refused as key reuse, not answered "charged 0"', async () => {
  const s = await student('100');
  const k = crypto.randomUUID();
  const first = await spendWith(s.token, k, 10);
  assert.equal(first.status, 201, first.text);
  const zero = await report(s.token, k, { model: 'gpt-4o', input_tokens: 0, output_tokens: 0 });
  const retry = await spendWith(s.token, k, 10);
  assert.equal(retry.status, 201, `the first request, retried, answers its charge: ${retry.text}`);
  assert.equal(codeOf(zero), 'IDEMPOTENCY_KEY_REUSED', `another request under a used key: ${zero.text}`);
  assert.equal(dataOf(retry).transfer_id, dataOf(first).transfer_id);
  await assertLedgerInvariants();
});

Deno.test("two different Idempotency-Keys are two charges, even when one is the other's sha256: form", async () => {
  const s = await student('100');
  const long = 'k'.repeat(255);
  const lookalike = 'sha256:' + await sha256hex(long);
  const a = await spendWith(s.token, long, 10);
  const b = await spendWith(s.token, lookalike, 10);
  assert.equal(a.status, 201, a.text);
  assert.equal(b.status, 201, b.text);
  assert.notEqual(dataOf(b).transfer_id, dataOf(a).transfer_id, 'a second usage report under another key is charged');
  assert.equal(await usageTransfers(s.id), 2);
  assert.equal((await balance(s.token)).balance, '80');
  await assertLedgerInvariants();
});

Deno.test('a refusal, a top-up, then the same request: the stored refusal answers, nothing is charged', async () => {
  const s = await student('5');
  const k = crypto.randomUUID();
  const refused = await spendWith(s.token, k, 10);
  assert.equal(refused.status, 402, refused.text);
  await fund(s.id, '100');
  const retry = await spendWith(s.token, k, 10);
  assert.equal(retry.status, 402, `the retry answers the stored refusal: ${retry.text}`);
  assert.equal(retry.headers.get('idempotent-replayed') ?? 'true', 'true');
  assert.equal(await usageTransfers(s.id), 0);
  assert.equal((await balance(s.token)).balance, '105');
});

Deno.test('a charged key retried after the student set a cap, and after removing it, replays the one charge', async () => {
  const s = await student('100');
  const k = crypto.randomUUID();
  const first = await spendWith(s.token, k, 10);
  assert.equal(first.status, 201, first.text);
  const cap = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '15' } });
  assert.equal(cap.status, 200, cap.text);
  const capped = await spendWith(s.token, k, 10);
  assert.equal(capped.status, 201, capped.text);
  assert.equal(
    dataOf(capped).transfer_id,
    dataOf(first).transfer_id,
    "the general path found the fast path's transfer",
  );
  const otherBody = await spendWith(s.token, k, 11);
  assert.equal(codeOf(otherBody), 'IDEMPOTENCY_KEY_REUSED', otherBody.text);
  const off = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: null } });
  assert.equal(off.status, 200, off.text);
  const again = await spendWith(s.token, k, 10);
  assert.equal(again.status, 201, again.text);
  assert.equal(dataOf(again).transfer_id, dataOf(first).transfer_id);
  // A key the general path charged (under the cap), retried once the cap is gone.
  const cap2 = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '50' } });
  assert.equal(cap2.status, 200, cap2.text);
  const k2 = crypto.randomUUID();
  const general = await spendWith(s.token, k2, 5);
  assert.equal(general.status, 201, general.text);
  await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: null } });
  const fastRetry = await spendWith(s.token, k2, 5);
  assert.equal(dataOf(fastRetry).transfer_id, dataOf(general).transfer_id, fastRetry.text);
  const fastOther = await spendWith(s.token, k2, 6);
  assert.equal(codeOf(fastOther), 'IDEMPOTENCY_KEY_REUSED', fastOther.text);
  assert.equal(await usageTransfers(s.id), 2);
  assert.equal((await balance(s.token)).balance, '85');
  await assertLedgerInvariants();
});

Deno.test('the same usage request 20 times at once, and 5 others under its key, make one charge', async () => {
  const s = await student('100');
  const k = crypto.randomUUID();
  const all = await Promise.all([
    ...Array.from({ length: 20 }, () => spendWith(s.token, k, 7)),
    ...Array.from({ length: 5 }, (_, i) => spendWith(s.token, k, 8 + i)),
  ]);
  const ok = all.slice(0, 20);
  assert.ok(ok.every((r) => r.status === 201), ok.map((r) => r.status).join());
  assert.equal(new Set(ok.map((r) => dataOf(r).transfer_id)).size, 1);
  assert.ok(
    all.slice(20).every((r) => codeOf(r) === 'IDEMPOTENCY_KEY_REUSED'),
    all.slice(20).map((r) => r.text).join(),
  );
  assert.equal(await usageTransfers(s.id), 1);
  assert.equal((await balance(s.token)).balance, '93');
  await assertLedgerInvariants();
});

Deno.test('planted request_hash, request_id and held_after in usage metadata are refused and never reach the record', async () => {
  const s = await student('100');
  for (const planted of ['request_hash', 'request_id', 'held_after']) {
    const r = await report(s.token, crypto.randomUUID(), { ...usageBody(1), metadata: { [planted]: '90' } });
    assert.equal(r.status, 400, `${planted}: ${r.text}`);
  }
  // Below the API (a server calling SQL as the functions do): the ledger drops them.
  const k = crypto.randomUUID();
  const args = {
    ...usageBody(10),
    metadata: { request_hash: 'x', request_id: 'forged', held_after: '-1000', note: 'n' },
  };
  const [r1] = await testDb`select * from billing.run_money_request(${s.id}, 'credits.usage', ${k}, 'h1', 'req-1',
                              ${testDb.json(args)}, 201)`;
  assert.equal(r1.status, 201, JSON.stringify(r1));
  const [t] = await testDb`select metadata from billing.transfers where id = ${r1.data.transfer_id}`;
  assert.equal(t.metadata.request_hash, 'h1');
  assert.equal(t.metadata.request_id, 'req-1');
  assert.equal(t.metadata.held_after, undefined);
  const [r2] = await testDb`select * from billing.run_money_request(${s.id}, 'credits.usage', ${k}, 'h1', 'req-2',
                              ${testDb.json(args)}, 201)`;
  assert.equal(r2.replayed, true);
  assert.equal(r2.data.available, '90', 'the replay answers what was available, not a planted figure');
  await assertLedgerInvariants();
});

// ------------------------------------------------------------ races on one account

Deno.test('usage, holds, captures, releases and a Stripe refund at once on one account keep the ledger whole', async () => {
  const s = await student();
  const co = await startCheckout(s.token, 'mini');
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });
  const charge = await chargeOf(co.session_id);
  const holds = await Promise.all(
    Array.from({ length: 4 }, () => api('/credits/holds', { token: s.token, body: { amount: '300' }, headers: key() })),
  );
  const ids = holds.filter((h) => h.status === 201).map((h) => dataOf(h).hold_id as string);
  await Promise.all([
    ...Array.from({ length: 12 }, () => spendWith(s.token, crypto.randomUUID(), 100)),
    ...ids.slice(0, 2).map((h) =>
      api(`/credits/holds/${h}/capture`, { token: s.token, body: { amount: '200' }, headers: key() })
    ),
    ...ids.slice(2).map((h) => api(`/credits/holds/${h}/release`, { token: s.token, body: {}, headers: key() })),
    emulator(`/_emulator/charges/${charge}/refund`, { amount: 500 }),
  ]);
  const b = await balance(s.token);
  assert.equal(
    Number(b.balance) <= 0,
    true,
    `a full refund took back what was left (or made it debt): ${JSON.stringify(b)}`,
  );
  await assertLedgerInvariants();
});

// ------------------------------------------------------------ holds and spending against expiry

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
  assert.equal((await balance(s.token)).balance, '0');
  await assertLedgerInvariants();
});

// ------------------------------------------------------------ a void into an expired lot during a dispute

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
  assert.equal((await balance(s.token)).balance, '24990', 'only the paid credits are left');
  await assertLedgerInvariants();
});

// ------------------------------------------------------------ organisations across the two paths

Deno.test('a key the fast path charged, retried after the student joined a school, replays: the wallet pays nothing', async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  await fund(ada.id, '100');
  const k = crypto.randomUUID();
  const first = await spendWith(ada.token, k, 10);
  assert.equal(first.status, 201, first.text);
  const org = await school(owner, [ada], 'pool', '100');
  const retry = await spendWith(ada.token, k, 10);
  assert.equal(retry.status, 201, retry.text);
  assert.equal(dataOf(retry).transfer_id, dataOf(first).transfer_id);
  assert.equal((await walletOf(owner.token, org)).balance, '100', 'the school paid nothing for a replay');
  assert.equal((await balance(ada.token)).balance, '90');
  await assertLedgerInvariants();
});

Deno.test("a member's charge the school paid, retried after removal and after the stored answer expired, never charges the student", async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  await fund(ada.id, '100');
  const org = await school(owner, [ada], 'pool', '100');
  const k = crypto.randomUUID();
  const first = await spendWith(ada.token, k, 10);
  assert.equal(first.status, 201, first.text);
  assert.equal((await walletOf(owner.token, org)).balance, '90', 'the pool paid');
  const removed = await api(`/orgs/${org}/members/${ada.id}`, { method: 'DELETE', token: owner.token });
  assert.equal(removed.status, 200, removed.text);
  const within = await spendWith(ada.token, k, 10);
  assert.equal(dataOf(within)?.transfer_id, dataOf(first).transfer_id, within.text);
  // A day passes: the stored answer expires (and is swept); the transfer stays.
  await testDb`delete from billing.idempotency_keys where user_id = ${ada.id}`;
  const later = await spendWith(ada.token, k, 10);
  assert.ok(later.status === 201 || codeOf(later) === 'IDEMPOTENCY_KEY_REUSED', later.text);
  assert.equal((await balance(ada.token)).balance, '100', "the student's own account was never charged");
  assert.equal(await usageTransfers(ada.id), 0);
  await assertLedgerInvariants();
});

// ------------------------------------------------------------ the batch against single requests

const batch = (events: Record<string, unknown>[]) =>
  api('/credits/usage/batch', { token: Deno.env.get('SUPABASE_SERVICE_ROLE_KEY'), body: { events } });
const event = (user: string, id: string, credits: number) => ({
  event_id: id,
  user_id: user,
  ...usageBody(credits),
  occurred_at: new Date().toISOString(),
});

Deno.test('one batch sent 8 times at once, with a repeat inside it, charges each event once', async () => {
  const s = await student('100');
  const ids = Array.from({ length: 5 }, () => crypto.randomUUID());
  const events = [...ids.map((id) => event(s.id, id, 3)), event(s.id, ids[0], 3)];
  const answers = await Promise.all(Array.from({ length: 8 }, () => batch(events)));
  assert.ok(answers.every((a) => a.status === 200), answers.map((a) => a.text).join('\n'));
  assert.equal(await usageTransfers(s.id), 5);
  assert.equal((await balance(s.token)).balance, '85');
  for (const a of answers) {
    const outcomes = (a.body.data as { outcomes: { status: string; transfer_id?: string }[] }).outcomes;
    assert.equal(outcomes[5].status, 'duplicate');
    assert.equal(outcomes[5].transfer_id, outcomes[0].transfer_id, 'a repeat names what its first occurrence wrote');
  }
  await assertLedgerInvariants();
});

Deno.test('batches and single usage requests racing on one account never overdraw it', async () => {
  const s = await student('100');
  await Promise.all([
    ...Array.from({ length: 8 }, () => spendWith(s.token, crypto.randomUUID(), 10)),
    ...Array.from({ length: 3 }, () => batch(Array.from({ length: 4 }, () => event(s.id, crypto.randomUUID(), 10)))),
    ...Array.from(
      { length: 3 },
      () => api('/credits/holds', { token: s.token, body: { amount: '10' }, headers: key() }),
    ),
  ]);
  const b = await balance(s.token);
  assert.ok(Number(b.balance) >= 0 && Number(b.available) >= 0, JSON.stringify(b));
  const [{ spent }] = await testDb`select coalesce(sum(t.amount), 0)::numeric as spent from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id where a.user_id = ${s.id} and t.kind = 'usage'`;
  assert.equal(Number(spent) + Number(b.balance), 100);
  await assertLedgerInvariants();
});

// ------------------------------------------------------------ prices and reads

Deno.test('a student reaches no admin catalogue route, and reads only their own expiries', async () => {
  const s = await student('100');
  const other = await student('50');
  const routes: [string, unknown][] = [
    ['/admin/catalog', undefined],
    ['/admin/packages', { id: 'cheap', name: 'Cheap', price_cents: 100, credits: '100000', reason: 'mine' }],
    ['/admin/packages/mini/versions', { price_cents: 1, reason: 'mine' }],
    ['/admin/packages/mini/retire', { reason: 'mine' }],
    ['/admin/plans/student-monthly/versions', { price_cents: 1, reason: 'mine' }],
  ];
  for (const [path, body] of routes) {
    const r = await api(path, { token: s.token, body, headers: key() });
    assert.equal(r.status, 403, `${path}: ${r.text}`);
  }
  const mine = await api(`/credits/expiries?user_id=${other.id}`, { token: s.token });
  assert.ok(mine.status === 200 || mine.status === 400, mine.text);
  if (mine.status === 200) {
    const items = (mine.body.data as { items: { credits: string }[] }).items;
    assert.ok(items.every((i) => i.credits !== '50'), `another student's expiries: ${mine.text}`);
  }
});
