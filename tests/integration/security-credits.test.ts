// Credit lots, caps and school wallets hold against a student with their own tokens, a second
// account of theirs and an organisation they create: caps an admin set stay, disputes and refunds
// reach credits moved into allowances, moved lots keep their provenance, expired credits stay spent.
import assert from 'node:assert/strict';
import type { SpendCap } from '../../supabase/functions/_shared/contract/index.ts';
import { adminToken, api, assertLedgerInvariants, fund, newUser, reportUsage, testDb, userToken } from '../helpers.ts';
import { key, person, school, walletOf } from '../orgs.ts';
import { balanceOf, chargeOf, emulator } from '../purchases.ts';

const code = (r: { body: { error?: unknown } }) => (r.body.error as { code: string } | undefined)?.code;

/** gpt-4o input: 50 tokens = 1 credit. */
const spend = (token: string, credits: number, model = 'gpt-4o') =>
  reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model, input_tokens: credits * 50, output_tokens: 0 },
  });

async function student(credits = '1000') {
  const id = await newUser();
  await fund(id, credits);
  return { id, token: await userToken(id) };
}

Deno.test('a student cannot lift, delete or reset a cap an admin set; their own stricter cap applies beside it', async () => {
  const s = await student();
  const admin = await adminToken();
  const byAdmin = await api(`/credits/caps/users/${s.id}`, {
    method: 'PUT',
    token: admin,
    body: { period: 'day', amount: '50' },
  });
  assert.equal(byAdmin.status, 200, byAdmin.text);
  assert.equal((await spend(s.token, 40)).status, 201);

  // The attack: the student "sets" the same cap higher, removes it, and re-sends it in another time zone.
  const lifted = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '1000' } });
  assert.equal(lifted.status, 200, lifted.text);
  const removed = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: null } });
  assert.equal(removed.status, 200, removed.text);
  const moved = await api('/credits/caps', {
    method: 'PUT',
    token: s.token,
    body: { period: 'day', amount: '1000', time_zone: 'Pacific/Kiritimati' },
  });
  assert.equal(moved.status, 200, moved.text);
  const caps = (moved.body.data as { items: SpendCap[] }).items;
  assert.deepEqual(caps.map((c) => [c.set_by, c.cap, c.spent]), [['admin', '50', '40'], ['self', '1000', '0']]);

  const refused = await spend(s.token, 20);
  assert.equal(refused.status, 402, 'the admin cap still binds');
  assert.equal(code(refused), 'SPEND_CAP_REACHED');
  assert.equal((refused.body.error as { details: { cap: string } }).details.cap, '50');
  assert.equal((await balanceOf(s.token)).balance, '960');

  // A stricter cap of the student's own applies too: the strictest wins (the admin's has 10 left).
  await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '4' } });
  const own = await spend(s.token, 5);
  assert.equal(own.status, 402);
  assert.equal((own.body.error as { details: { cap: string } }).details.cap, '4');

  // The admin changing their own cap's time zone keeps what was spent this period.
  const rezoned = await api(`/credits/caps/users/${s.id}`, {
    method: 'PUT',
    token: admin,
    body: { period: 'day', amount: '50', time_zone: 'Asia/Tokyo' },
  });
  assert.equal(rezoned.status, 200, rezoned.text);
  const adminCap = (rezoned.body.data as { items: SpendCap[] }).items.find((c) => c.set_by === 'admin');
  assert.equal(adminCap?.spent, '40', 'a new time zone gives back no room');
  await assertLedgerInvariants();
});

Deno.test('an ai_completion job counts against a per-model cap when its hold is placed and gets back what it did not use', async () => {
  const s = await student();
  await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', model: 'gpt-4o', amount: '20' } });
  const job = (maxTokens: number) =>
    api('/jobs', {
      token: s.token,
      headers: key(),
      body: { type: 'ai_completion', input: { model: 'gpt-4o', prompt: 'hello', max_tokens: maxTokens } },
    });
  // gpt-4o output: 10 credits per 1,000 tokens at the rate card; a job reserving more than the cap is refused.
  const big = await job(4000);
  assert.equal(big.status, 402, big.text);
  assert.equal(code(big), 'SPEND_CAP_REACHED');
  const [{ held }] = await testDb`select coalesce(sum(h.amount), 0)::text as held from billing.holds h
    join billing.accounts a on a.id = h.account_id where a.user_id = ${s.id} and h.status = 'active'`;
  assert.equal(held, '0', 'nothing was held for the refused job');
  const [{ n }] = await testDb`select count(*)::int as n from billing.jobs where user_id = ${s.id}`;
  assert.equal(n, 0, 'and no job was created');

  // A small job fits (6.1 reserved: 5 prompt bytes and 100 output tokens) and counts against the
  // gpt-4o cap: while held in full, once done as what it cost (the worker may finish it first).
  const small = await job(100);
  assert.equal(small.status, 202, small.text);
  const caps = ((await api('/credits/caps', { token: s.token })).body.data as { items: SpendCap[] }).items;
  assert.ok(Number(caps[0].spent) > 0, `the job counts against the model's cap: ${JSON.stringify(caps)}`);
});

Deno.test('a dispute reaches credits moved into an allowance: frozen at once, taken back when lost', async () => {
  // The attacker's own organisation and second account.
  const [me, alt] = await Promise.all(['me', 'alt'].map(person));
  const org = await school(me, [alt], 'allowance', null);
  const co = await api('/checkout/sessions', {
    token: me.token,
    body: { package_id: 'mini', org_id: org },
    headers: key(),
  });
  assert.equal(co.status, 201, co.text);
  const { session_id } = co.body.data as { session_id: string };
  await emulator(`/_emulator/checkout/sessions/${session_id}/pay`, { outcome: 'succeeded' });
  const funded = await api(`/orgs/${org}/allowances`, { token: me.token, body: { amount: '5000' }, headers: key() });
  assert.equal(funded.status, 201, funded.text);
  assert.equal((await spend(alt.token, 100)).status, 201, 'the member spends before any dispute');

  const charge = await chargeOf(session_id);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  const after = await spend(alt.token, 100);
  assert.equal(after.status, 402, 'nothing of the disputed purchase is spendable once the dispute opens');
  const hold = await api('/credits/holds', {
    token: alt.token,
    headers: key(),
    body: { amount: '10', ttl_seconds: 60 },
  });
  assert.equal(hold.status, 402, 'nor can it be held');
  const [allowance] = await testDb`select trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held
    from billing.accounts a where a.org_id = ${org} and a.member_id = ${alt.id}`;
  assert.deepEqual(allowance, { balance: '4900', held: '4900' });

  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
  const [gone] = await testDb`select trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held
    from billing.accounts a where a.org_id = ${org} and a.member_id = ${alt.id}`;
  assert.deepEqual(gone, { balance: '0', held: '0' }, 'the lost dispute takes back what the allowance still had');
  assert.equal(
    (await walletOf(me.token, org)).balance,
    '-100',
    'the wallet owes only what was spent before the dispute',
  );
  await assertLedgerInvariants();
});

Deno.test('a refund reaches credits moved into an allowance once the wallet has none of them left', async () => {
  const [me, alt] = await Promise.all(['me', 'alt'].map(person));
  const org = await school(me, [alt], 'allowance', null);
  const co = await api('/checkout/sessions', {
    token: me.token,
    body: { package_id: 'mini', org_id: org },
    headers: key(),
  });
  const { session_id } = co.body.data as { session_id: string };
  await emulator(`/_emulator/checkout/sessions/${session_id}/pay`, { outcome: 'succeeded' });
  await api(`/orgs/${org}/allowances`, { token: me.token, body: { amount: '5000' }, headers: key() });
  // A full refund: 5,000 credits back, all of them from the allowance they were moved to.
  await emulator(`/_emulator/charges/${await chargeOf(session_id)}/refund`, { amount: 500 });
  const [a] = await testDb`select trim_scale(a.balance)::text as balance from billing.accounts a
    where a.org_id = ${org} and a.member_id = ${alt.id}`;
  assert.equal(a.balance, '0');
  assert.equal((await walletOf(me.token, org)).balance, '0', 'nothing is left as debt on an abandoned wallet');
  await assertLedgerInvariants();
});

Deno.test('moving credits keeps each lot as it was: a paid lot moved into an allowance does not start to expire', async () => {
  const [me, alt] = await Promise.all(['me', 'alt'].map(person));
  const org = await school(me, [alt], 'allowance', null);
  // A free grant that expires (the promotional default) and paid credits that never do.
  const g = await api(`/orgs/${org}/grants`, {
    token: await adminToken(),
    headers: key(),
    body: { amount: '10', reason: 'pilot', kind: 'promo_grant' },
  });
  assert.equal(g.status, 201, g.text);
  const purchase = await orgBuys(me.token, org);
  assert.equal(
    (await api(`/orgs/${org}/allowances`, { token: me.token, body: { amount: '5010' }, headers: key() })).status,
    201,
  );
  const lots = await testDb`select l.category, trim_scale(l.amount)::text as amount, l.expires_at, l.purchase_id,
      trim_scale(l.cost_cents)::text as cost_cents
    from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.org_id = ${org} and a.member_id = ${alt.id} order by l.category`;
  assert.deepEqual(
    lots.map((l) => [l.category, l.amount, l.expires_at === null, l.purchase_id, l.cost_cents]),
    [['paid', '5000', true, purchase, '500'], ['promotional', '10', false, null, '0']],
    'the paid lot still never expires; the free one keeps its own expiry',
  );
  await assertLedgerInvariants();
});

Deno.test('funding an allowance and sweeping it back counts no new money in the revenue report', async () => {
  const [me, alt] = await Promise.all(['me', 'alt'].map(person));
  const org = await school(me, [alt], 'allowance', null);
  await orgBuys(me.token, org);
  const [{ t0 }] = await testDb`select clock_timestamp() as t0`;
  assert.equal(
    (await api(`/orgs/${org}/allowances`, { token: me.token, body: { amount: '5000' }, headers: key() })).status,
    201,
  );
  const removed = await api(`/orgs/${org}/members/${alt.id}`, { method: 'DELETE', token: me.token });
  assert.equal(removed.status, 200, removed.text);
  assert.equal((await walletOf(me.token, org)).balance, '5000', 'the allowance swept back');
  const [{ m }] = await testDb`select billing.revenue_metrics(${t0}, now() + interval '1 second') as m`;
  const usd = (m.credit_lots as { currency: string; paid_granted_cents: number }[]).find((x) => x.currency === 'usd');
  assert.equal(usd?.paid_granted_cents ?? 0, 0, 'two moves, no paid credits granted');
});

/** The organisation's admin buys the mini package for it (5,000 credits for 5.00); its purchase id. */
async function orgBuys(token: string, org: string) {
  const co = await api('/checkout/sessions', { token, body: { package_id: 'mini', org_id: org }, headers: key() });
  assert.equal(co.status, 201, co.text);
  const { session_id, purchase_id } = co.body.data as { session_id: string; purchase_id: string };
  await emulator(`/_emulator/checkout/sessions/${session_id}/pay`, { outcome: 'succeeded' });
  return purchase_id;
}

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

Deno.test("a member's 402 from a pooled wallet shows their cap's room, never the organisation's balance", async () => {
  const [admin, member] = await Promise.all(['admin', 'member'].map(person));
  const org = await school(admin, [member], 'pool', '12345.678');
  const cap = await api(`/orgs/${org}/members/${member.id}/cap`, {
    method: 'PUT',
    token: admin.token,
    body: { period: 'day', amount: '30' },
  });
  assert.equal(cap.status, 200, cap.text);
  const refused = await spend(member.token, 50);
  assert.equal(refused.status, 402, refused.text);
  assert.ok(!refused.text.includes('12345'), `the pool's balance is not in the answer: ${refused.text}`);
  const pool = (refused.body.error as { details: { wallets: Record<string, unknown>[] } }).details.wallets
    .find((w) => w.wallet === 'organisation');
  assert.equal(pool?.available, undefined);
  assert.equal(pool?.reason, 'cap');
});

Deno.test('one Idempotency-Key used for grants to two organisations makes two grants, not a replay', async () => {
  const [a, b] = await Promise.all(['a', 'b'].map(person));
  const [orgA, orgB] = [await school(a, [], 'allowance', null), await school(b, [], 'allowance', null)];
  const admin = await adminToken();
  const same = { 'idempotency-key': crypto.randomUUID() };
  for (const org of [orgA, orgB]) {
    const r = await api(`/orgs/${org}/grants`, { token: admin, headers: same, body: { amount: '7', reason: 'pilot' } });
    assert.equal(r.status, 201, r.text);
  }
  assert.equal((await walletOf(a.token, orgA)).balance, '7');
  assert.equal((await walletOf(b.token, orgB)).balance, '7');
});
