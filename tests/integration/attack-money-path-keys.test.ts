// More outside attacks on the money-path diet (20261125000100), students' tokens only: one
// Idempotency-Key across routes and across a student's two accounts, an allowance member racing
// one key over what the allowance and their own account hold; after each, the ledger invariants
// and the platform side (platform_balances, derived from transfers) balancing every tracked account.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, fund, newUser, testDb, userToken } from '../helpers.ts';
import { key, person, school } from '../orgs.ts';
import { codeOf, dataOf, spendWith } from '../money.ts';
import { buy, chargeOf, emulator } from '../purchases.ts';

const balance = async (token: string) => dataOf(await api('/credits/balance', { token }));

/** Platform accounts keep no entries now: Σ platform_balances + Σ tracked balances must be 0. */
async function assertPlatformBalances() {
  const [r] = await testDb`select trim_scale((select coalesce(sum(balance), 0) from billing.platform_balances)
    + (select coalesce(sum(balance), 0) from billing.accounts where code is null))::text as total`;
  assert.equal(r.total, '0', 'platform_balances + tracked balances');
  await assertLedgerInvariants();
}

Deno.test("one Idempotency-Key on every route and on both of a student's accounts: each use is its own", async () => {
  const ids = [await newUser(), await newUser()];
  const [a, b] = await Promise.all(ids.map(async (id) => ({ id, token: await userToken(id) })));
  await Promise.all([fund(a.id, '100'), fund(b.id, '100')]);
  const k = crypto.randomUUID();
  for (const s of [a, b]) {
    const [u, h] = await Promise.all([
      spendWith(s.token, k, 3),
      api('/credits/holds', {
        token: s.token,
        headers: { 'idempotency-key': k },
        body: { amount: '10', ttl_seconds: 600 },
      }),
    ]);
    assert.equal(u.status, 201, u.text);
    assert.equal(h.status, 201, h.text);
    const hold = dataOf(h).hold_id as string;
    // Capture and release with the same key, in parallel, 10 each: one of them wins, no 5xx.
    const rs = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        api(`/credits/holds/${hold}/${i % 2 ? 'release' : 'capture'}`, {
          token: s.token,
          headers: { 'idempotency-key': k },
          body: i % 2 ? {} : { amount: '4' },
        })),
    );
    for (const r of rs) assert.ok(r.status < 500, r.text);
    const [{ status }] = await testDb`select status from billing.holds where id = ${hold}`;
    const captured = status === 'captured';
    const bal = await balance(s.token);
    assert.deepEqual([bal.balance, bal.held], [captured ? '93' : '97', '0'], `${status}: ${JSON.stringify(bal)}`);
    assert.equal(
      (await testDb`select count(*)::int as n from billing.transfers where hold_id = ${hold}`)[0].n,
      captured ? 1 : 0,
    );
  }
  // The other account's key never answered for this one.
  const [t] = await testDb`select count(distinct from_account_id)::int as n from billing.transfers
    where idempotency_key in (${`http:${a.id}:credits.usage:${k}`}, ${`http:${b.id}:credits.usage:${k}`})`;
  assert.equal(t.n, 2);
  await assertPlatformBalances();
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
  assert.equal((await balance(second.token)).balance, '5', 'her own account paid nothing');
  await assertPlatformBalances();
});

Deno.test('spending races a refund while the bonus is due, unswept: only what expired is forgiven, the spent is owed', async () => {
  const id = await newUser();
  const s = { id, token: await userToken(id) };
  const co = await buy(s.token, 'pro'); // 49,990 paid + a 4,999 bonus
  // Time passes for the bonus (its lot is due; the minute sweep has not run).
  await testDb`with l as (update billing.lots set expires_at = now() - interval '1 second'
                          where purchase_id = ${co.purchase_id} and category = 'promotional' returning account_id, expires_at)
               update billing.accounts a set next_expiry = l.expires_at from l where a.id = l.account_id`;
  const charge = await chargeOf(co.session_id);
  const [spends] = await Promise.all([
    Promise.all(Array.from({ length: 10 }, () => spendWith(s.token, crypto.randomUUID(), 1000))),
    emulator(`/_emulator/charges/${charge}/refund`, { amount: 4999 }),
  ]);
  const spent = spends.filter((r) => r.status === 201).length * 1000;
  for (const r of spends) assert.ok(r.status === 201 || codeOf(r) === 'INSUFFICIENT_CREDITS', r.text);
  const [p] =
    await testDb`select trim_scale(bonus_expiry_forgiven)::text as bonus, trim_scale(credits_expiry_forgiven)::text as paid
    from billing.purchases where id = ${co.purchase_id}`;
  // The bonus expired whole (a spend settles due lots before it draws): all of it forgiven, no
  // paid credit; every credit spent is owed.
  assert.deepEqual(p, { bonus: '4999', paid: '0' });
  assert.equal((await balance(s.token)).balance, String(-spent));
  await assertPlatformBalances();
});
