// School wallets over real HTTP: an organisation invites students by email, is granted credits,
// funds allowances; members spend them through /credits/usage before their own; the usage
// report shows an admin everyone and a member only themselves; removal takes effect at once;
// a capped pool stays exact under parallel spending; answers never show a pool's balance and
// keys never cross wallets; a refund or dispute reaches credits moved into an allowance, moved
// lots keep their provenance, and funding and sweeping allowances is no new revenue; the ledger's
// invariants hold throughout.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  assertPlatformBalances,
  env,
  fund,
  key,
  newUser,
  testDb,
} from '../support/helpers.ts';
import { codeOf, dataOf, ledgerOf, spendWith, transfersUnder } from '../support/money.ts';
import { person, school, usage, verifyOrg, walletOf } from '../support/orgs.ts';
import { balanceOf, buy, chargeOf, emulator, pays } from '../support/purchases.ts';

const payer = async (transferId: string) =>
  (await testDb`select a.org_id, a.member_id, a.user_id from billing.transfers t
                join billing.accounts a on a.id = t.from_account_id where t.id = ${transferId}`)[0];

Deno.test('an organisation invites, funds allowances, and its members spend them before their own', async () => {
  const [owner, ada, bo, outsider] = await Promise.all(['owner', 'ada', 'bo', 'outsider'].map(person));
  const org = await school(owner, [ada, bo]);

  // An invitation answers only to its address; its email is queued (the link is derived when sent).
  const invited = await api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: 'late@school.test' } });
  const { id } = invited.body.data as { id: string };
  const [mail] = await testDb`select payload from billing.notification_outbox
                              where template = 'org_invitation' and dedupe_key = ${'org-invitation:' + id}`;
  assert.deepEqual(mail.payload, { invitation_id: id });
  const stolen = await api('/orgs/invitations/accept', {
    token: outsider.token,
    body: { token: (invited.body.data as { token: string }).token },
  });
  assert.equal(stolen.status, 404);
  assert.equal((stolen.body.error as { code: string }).code, 'INVITATION_NOT_FOUND');

  // Members cannot fund themselves or act as admins; another organisation's admin cannot see this one.
  const self = await api(`/orgs/${org}/allowances`, { token: ada.token, body: { amount: '10' }, headers: key() });
  assert.equal(self.status, 403);
  assert.equal((self.body.error as { code: string }).code, 'ORG_FORBIDDEN');
  const other = await person('other-admin');
  await api('/orgs', { token: other.token, body: { name: 'Other Academy' } });
  const foreign = await api(`/orgs/${org}/members`, { token: other.token });
  assert.equal(foreign.status, 404);

  const idem = key();
  const funded = await api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount: '40' }, headers: idem });
  assert.equal(funded.status, 201, funded.text);
  const again = await api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount: '40' }, headers: idem });
  assert.equal(
    (again.body.data as { wallet: { available: string } }).wallet.available,
    '20',
    'a retry funds nobody twice',
  );

  await fund(ada.id, '5');
  const charged = await usage(ada.token);
  assert.equal(charged.status, 201, charged.text);
  const paidBy = await payer((charged.body.data as { transfer_id: string }).transfer_id);
  assert.deepEqual([paidBy.org_id, paidBy.member_id], [org, ada.id], 'the allowance paid, not her own credits');

  // Reporting: the admin sees both members, a member only herself; CSV too.
  await usage(bo.token);
  const range = `from=2026-01-01T00:00:00Z&to=2100-01-01T00:00:00Z`;
  const all = await api(`/orgs/${org}/usage?${range}`, { token: owner.token });
  assert.deepEqual(
    new Set((all.body.data as { items: { member_id: string }[] }).items.map((r) => r.member_id)),
    new Set([ada.id, bo.id]),
  );
  const mine = await api(`/orgs/${org}/usage?${range}`, { token: ada.token });
  assert.deepEqual((mine.body.data as { items: { member_id: string }[] }).items.map((r) => r.member_id), [ada.id]);
  const csv = await api(`/orgs/${org}/usage?${range}&format=csv`, { token: owner.token });
  assert.match(csv.text, /^period_start,member_id,member_email,model,credits,charges\n/);
  assert.equal(csv.text.trim().split('\n').length, 3);
  const ledger = await api(`/orgs/${org}/ledger`, { token: ada.token });
  assert.equal(ledger.status, 403, 'the wallet ledger is for admins');

  // Removal takes effect at once: the allowance sweeps back, the next charge is her own.
  const removed = await api(`/orgs/${org}/members/${ada.id}`, { method: 'DELETE', token: owner.token });
  assert.equal(removed.status, 200, removed.text);
  const after = await usage(ada.token);
  assert.equal(after.status, 201, after.text);
  assert.equal((await payer((after.body.data as { transfer_id: string }).transfer_id)).user_id, ada.id);
  const [{ n }] = await testDb`select count(*)::int as n from billing.org_members where user_id = ${ada.id} and active`;
  assert.equal(n, 0);
  await assertLedgerInvariants();
});

Deno.test('a pooled wallet keeps every member within their cap under parallel spending', async () => {
  const owner = await person('owner');
  const members = await Promise.all([1, 2, 3, 4, 5].map((i) => person(`m${i}`)));
  const org = await school(owner, members, 'pool');
  const [{ price }] = await testDb`select (billing.price_usage('gpt-4o-mini', 1000, 1000)).amount::text as price`;
  // Each member may spend three charges a day from the pool (and has nothing of their own).
  const cap = (Number(price) * 3).toFixed(18);
  for (const m of members) {
    const set = await api(`/orgs/${org}/members/${m.id}/cap`, {
      method: 'PUT',
      token: owner.token,
      body: { period: 'day', amount: cap },
    });
    assert.equal(set.status, 200, set.text);
  }
  const results = await Promise.all(members.flatMap((m) => Array.from({ length: 6 }, () => usage(m.token))));
  assert.equal(results.filter((r) => r.status === 201).length, 15, 'exactly three charges per member');
  const refused = results.filter((r) => r.status === 402);
  assert.equal(refused.length, 15);
  const wallets = (refused[0].body.error as { details: { wallets: { cap?: unknown }[] } }).details.wallets;
  assert.ok(wallets.some((w) => w.cap), 'the 402 names the cap that stopped the pool paying');
  const [{ spent }] = await testDb`select count(*)::int as spent from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id where a.org_id = ${org} and t.kind = 'usage'`;
  assert.equal(spent, 15);
  await assertLedgerInvariants();
});

Deno.test("batch ingestion charges each member's events in their spending order, exactly as /credits/usage", async () => {
  const owner = await person('owner');
  const [ada, bo] = await Promise.all([person('ada'), person('bo')]);
  const org = await school(owner, [ada, bo], 'pool', '100');
  const [{ price }] =
    await testDb`select trim_scale((billing.price_usage('gpt-4o-mini', 1000, 1000)).amount)::text as price`;
  // Ada may spend two events' worth from the pool a day; Bo is uncapped; Ada has one of her own.
  const cap = await api(`/orgs/${org}/members/${ada.id}/cap`, {
    method: 'PUT',
    token: owner.token,
    body: { period: 'day', amount: (Number(price) * 2).toFixed(18) },
  });
  assert.equal(cap.status, 200, cap.text);
  await fund(ada.id, price);
  const plain = await newUser();
  await fund(plain, '100');
  const event = (user: string) => ({
    event_id: crypto.randomUUID(),
    user_id: user,
    model: 'gpt-4o-mini',
    input_tokens: 1000,
    output_tokens: 1000,
    occurred_at: new Date().toISOString(),
  });
  const events = [event(ada.id), event(bo.id), event(ada.id), event(plain), event(ada.id), event(ada.id)];
  const service = { authorization: `Bearer ${env('SUPABASE_SERVICE_ROLE_KEY')}` };
  const r = await api('/credits/usage/batch', { headers: service, body: { events } });
  assert.equal(r.status, 200, r.text);
  type Outcome = { status: string; org_id?: string; balance?: string; wallets?: { wallet: string }[] };
  const o = (r.body.data as { outcomes: Outcome[] }).outcomes;
  // Ada: the pool twice (her cap), then her own credits, then nothing is left anywhere.
  assert.deepEqual(o.map((x) => [x.status, x.org_id ?? (x.balance === undefined ? null : 'own')]), [
    ['applied', org],
    ['applied', org],
    ['applied', org],
    ['applied', 'own'],
    ['applied', 'own'],
    ['insufficient', null],
  ]);
  assert.deepEqual(o[5].wallets?.map((w) => w.wallet), ['organisation', 'personal']);
  // The replay changes nothing and reports duplicates.
  const again = await api('/credits/usage/batch', { headers: service, body: { events } });
  assert.deepEqual(
    (again.body.data as { outcomes: Outcome[] }).outcomes.map((x) => x.status),
    ['duplicate', 'duplicate', 'duplicate', 'duplicate', 'duplicate', 'insufficient'],
  );
  const [{ pooled }] = await testDb`select count(*)::int as pooled from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id where a.org_id = ${org} and t.member_id = ${ada.id}`;
  assert.equal(pooled, 2);
  await assertLedgerInvariants();
});

Deno.test('parallel batches and single charges of pooled members keep every cap exact, without deadlocks', async () => {
  const owner = await person('owner');
  const members = await Promise.all([1, 2, 3, 4].map((i) => person(`p${i}`)));
  const org = await school(owner, members, 'pool', '100');
  const [{ price }] =
    await testDb`select trim_scale((billing.price_usage('gpt-4o-mini', 1000, 1000)).amount)::text as price`;
  for (const m of members) {
    const set = await api(`/orgs/${org}/members/${m.id}/cap`, {
      method: 'PUT',
      token: owner.token,
      body: { period: 'day', amount: (Number(price) * 3).toFixed(18) },
    });
    assert.equal(set.status, 200, set.text);
  }
  const service = { authorization: `Bearer ${env('SUPABASE_SERVICE_ROLE_KEY')}` };
  const batch = () =>
    api('/credits/usage/batch', {
      headers: service,
      body: {
        // Members in a different order in each batch: the locks are still taken in one order.
        events: [...members].sort(() => Math.random() - 0.5).flatMap((m) =>
          [1, 2].map(() => ({
            event_id: crypto.randomUUID(),
            user_id: m.id,
            model: 'gpt-4o-mini',
            input_tokens: 1000,
            output_tokens: 1000,
            occurred_at: new Date().toISOString(),
          }))
        ),
      },
    });
  const results = await Promise.all([
    ...[1, 2, 3, 4].map(batch),
    ...members.flatMap((m) => [usage(m.token), usage(m.token)]),
  ]);
  for (const r of results) assert.ok(r.status === 200 || r.status === 201 || r.status === 402, r.text);
  const spent = await testDb`select t.member_id, count(*)::int as n from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id where a.org_id = ${org} group by t.member_id`;
  assert.deepEqual(spent.map((s) => s.n), [3, 3, 3, 3], 'three pooled charges per member, whoever asked');
  await assertLedgerInvariants();
});

Deno.test("a student's second account in their own pooled school: answers never show the pool, keys never cross wallets", async () => {
  const [owner, second] = await Promise.all(['owner', 'second'].map(person));
  const org = await school(owner, [second], 'pool', '12345.678');
  await fund(second.id, '7');
  const own = async () => dataOf(await api('/credits/balance', { token: second.token }));
  // The same key used by the owner (personal spending) and by the member (pool spending).
  const k = crypto.randomUUID();
  await fund(owner.id, '50');
  const ownerSpend = await spendWith(owner.token, k, 2);
  assert.equal(ownerSpend.status, 201, ownerSpend.text);
  assert.equal(dataOf(ownerSpend).paid_by, 'self');
  const rs = await Promise.all(Array.from({ length: 10 }, () => spendWith(second.token, k, 20)));
  for (const r of rs) {
    assert.equal(r.status, 201, r.text);
    // A pool figure has a decimal point (ids, keys and times may hold the same digits).
    assert.ok(!/12345\.|12325\.|\.678/.test(r.text), `the pool's balance is not in the answer: ${r.text}`);
  }
  assert.equal(new Set(rs.map((r) => JSON.stringify(dataOf(r)))).size, 1);
  const d = dataOf(rs[0]);
  const mine = await own();
  assert.deepEqual(d.paid_by, { org_id: org });
  assert.deepEqual([d.balance, d.available], [mine.balance, mine.available]);
  assert.equal(mine.balance, '7', 'the pool paid, not the personal account');
  assert.equal(await transfersUnder(second.id, 'credits.usage', k), 1);
  assert.equal(await transfersUnder(owner.id, 'credits.usage', k), 1);
  // The pool drained below a charge: the same key still answers what it did; too much is a 402
  // that names no pool balance and leaves nothing behind.
  const before = await ledgerOf(second.id);
  const tooMuch = await spendWith(second.token, crypto.randomUUID(), 20000);
  assert.equal(tooMuch.status, 402, tooMuch.text);
  assert.ok(!/12345\.|12325\.|\.678/.test(tooMuch.text), tooMuch.text);
  assert.deepEqual(await ledgerOf(second.id), before);
  // A hold from the pool: the member's own balance in the answer.
  const h = await api('/credits/holds', {
    token: second.token,
    headers: key(),
    body: { amount: '100', ttl_seconds: 600 },
  });
  assert.equal(h.status, 201, h.text);
  assert.deepEqual([dataOf(h).balance, dataOf(h).org_id], ['7', org]);
  const c = await api(`/credits/holds/${dataOf(h).hold_id}/capture`, {
    token: second.token,
    headers: key(),
    body: { amount: '1' },
  });
  assert.equal(c.status, 200, c.text);
  assert.ok(!/12345\.|1232[45]\.|12225\.|\.678/.test(c.text), c.text);
  assert.deepEqual([dataOf(c).balance, dataOf(c).org_id], ['7', org]);
  await assertLedgerInvariants();
});

Deno.test('an allowance member races one key over the allowance, then over what is left: one charge each, no pool balance', async () => {
  const [owner, second] = await Promise.all(['owner', 'second'].map(person));
  const org = await school(owner, [second], 'allowance', '5000');
  const funded = await api(`/orgs/${org}/allowances`, { token: owner.token, headers: key(), body: { amount: '50' } });
  assert.equal(funded.status, 201, funded.text);
  await fund(second.id, '5');
  // 20 × one key for 30: the allowance (50) pays once.
  const k = crypto.randomUUID();
  const rs = await Promise.all(Array.from({ length: 20 }, () => spendWith(second.token, k, 30)));
  for (const r of rs) assert.equal(r.status, 201, r.text);
  assert.equal(new Set(rs.map((r) => JSON.stringify(dataOf(r)))).size, 1);
  for (const r of rs) assert.ok(!/4950|5000/.test(r.text), `no wallet balance: ${r.text}`);
  assert.deepEqual(dataOf(rs[0]).paid_by, { org_id: org });
  // 20 left in the allowance and 5 of her own: 30 more is refused everywhere, the same answer
  // 20 times, nothing written; the allowance and her account are untouched.
  const k2 = crypto.randomUUID();
  const before = await testDb`select id, trim_scale(balance)::text as b, version from billing.accounts
    where user_id = ${second.id} or member_id = ${second.id} order by id`;
  const refused = await Promise.all(Array.from({ length: 20 }, () => spendWith(second.token, k2, 30)));
  for (const r of refused) assert.equal(codeOf(r), 'INSUFFICIENT_CREDITS', r.text);
  assert.equal(new Set(refused.map((r) => r.text)).size, 1);
  assert.ok(!/4950|5000/.test(refused[0].text), refused[0].text);
  assert.deepEqual(
    await testDb`select id, trim_scale(balance)::text as b, version from billing.accounts
      where user_id = ${second.id} or member_id = ${second.id} order by id`,
    before,
  );
  assert.equal(
    (await testDb`select count(*)::int as n from billing.transfers
      where idempotency_key = ${`http:${second.id}:credits.usage:${k2}`}`)[0].n,
    0,
  );
  // Within reach (20 in the allowance): paid once, from the allowance, with another key.
  const k3 = crypto.randomUUID();
  const ok = await Promise.all(Array.from({ length: 20 }, () => spendWith(second.token, k3, 20)));
  for (const r of ok) assert.equal(r.status, 201, r.text);
  assert.equal(new Set(ok.map((r) => JSON.stringify(dataOf(r)))).size, 1);
  assert.equal((await balanceOf(second.token)).balance, '5', 'her own account paid nothing');
  await assertPlatformBalances();
});

Deno.test('a dispute reaches credits moved into an allowance: frozen at once, taken back when lost', async () => {
  // A student's own organisation and second account.
  const [me, alt] = await Promise.all(['me', 'alt'].map(person));
  const org = await school(me, [alt], 'allowance', null);
  await verifyOrg(org); // its wallet answers for its purchases
  const session_id = await pays(me.token, { package_id: 'mini', org_id: org });
  const funded = await api(`/orgs/${org}/allowances`, { token: me.token, body: { amount: '5000' }, headers: key() });
  assert.equal(funded.status, 201, funded.text);
  assert.equal(
    (await spendWith(alt.token, crypto.randomUUID(), 100)).status,
    201,
    'the member spends before any dispute',
  );

  const charge = await chargeOf(session_id);
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  const after = await spendWith(alt.token, crypto.randomUUID(), 100);
  assert.equal(after.status, 402, 'nothing of the disputed purchase is spendable once the dispute opens');
  const hold = await api('/credits/holds', {
    token: alt.token,
    headers: key(),
    body: { amount: '10', ttl_seconds: 60 },
  });
  assert.equal(hold.status, 402, 'nor can it be held');
  const [allowance] = await testDb`select trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held
    from billing.accounts a where a.org_id = ${org} and a.member_id = ${alt.id}`;
  assert.deepEqual(allowance, { balance: '4900', held: '0' }, 'frozen, not held');

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
  const session_id = await pays(me.token, { package_id: 'mini', org_id: org });
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
  const { purchase_id: purchase } = await buy(me.token, 'mini', org);
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
  await buy(me.token, 'mini', org);
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

Deno.test("a member's 402 from a pooled wallet shows their cap's room, never the organisation's balance", async () => {
  const [admin, member] = await Promise.all(['admin', 'member'].map(person));
  const org = await school(admin, [member], 'pool', '12345.678');
  const cap = await api(`/orgs/${org}/members/${member.id}/cap`, {
    method: 'PUT',
    token: admin.token,
    body: { period: 'day', amount: '30' },
  });
  assert.equal(cap.status, 200, cap.text);
  const refused = await spendWith(member.token, crypto.randomUUID(), 50);
  assert.equal(refused.status, 402, refused.text);
  assert.ok(!refused.text.includes('12345.'), `the pool's balance is not in the answer: ${refused.text}`);
  const pool = (refused.body.error as { details: { wallets: Record<string, unknown>[] } }).details.wallets
    .find((w) => w.wallet === 'organisation');
  assert.equal(pool?.available, undefined);
  assert.equal(pool?.reason, 'cap');
});
