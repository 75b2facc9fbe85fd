// Attack round 12 (helper-13) on round 11's fix (#55): billing.plan_lot_draw plans a gateway
// call's or job's capture in two tiers (every dispute counted, then, for the rest, without the
// disputes that came after the captured hold). Outside tester: a student's token; purchases,
// grants and disputes (Stripe emulator) only as setup; the database for reading (and for time
// passing: backdated lots). Each scenario asserts exact amounts, then the core's invariants.
import assert from 'node:assert/strict';
import { assertLedgerInvariants, backdateLot, testDb, until } from '../support/helpers.ts';
import { creditPerToken } from '../support/ai.ts';
import {
  activeDisputes,
  chargeTokens,
  chat,
  coreInvariants,
  dispute,
  drawnBy,
  figures,
  loseBothDisputes,
  twoPurchases,
} from '../support/disputed.ts';
import { orgGrant } from '../support/lots.ts';
import { person, school } from '../support/orgs.ts';
import { buy } from '../support/purchases.ts';

/** Slow calls for m, each held before P2's dispute opens while they run; returns their costs once charged. */
async function callsAcrossNewerDispute(id: string, token: string, m: string, p2: string, n: number) {
  const calls = Array.from({ length: n }, (_, i) => chat(token, m, `words=30 first_byte_delay=${3000 + 200 * i}`, 40));
  await until('the calls held', async () => {
    const [r] = await testDb`select count(*)::int as n from billing.holds h join billing.ai_calls c on c.hold_id = h.id
      where c.user_id = ${id} and h.status = 'active'`;
    return r.n === n;
  });
  await dispute(p2, 'open');
  await until('the newer dispute held', async () => (await activeDisputes(id)) === 2);
  const rs = await Promise.all(calls);
  assert.deepEqual(rs.map((r) => r.status), Array(n).fill(200), rs.map((r) => r.text).join('\n'));
  return await until('the calls charged', async () => {
    const xs = await testDb`select c.id, c.status, trim_scale(c.charged)::text as charged, c.transfer_id,
        trim_scale(c.unbilled)::text as unbilled
      from billing.ai_calls c where c.user_id = ${id} order by c.created_at`;
    return xs.length === n && xs.every((x) => x.status === 'charged') && xs;
  });
}

// ============================================================ 1. two disputes: one older, one newer than the call

Deno.test("a call held between two disputes is paid first by what leaves both whole (its model's credits), then only from the newer dispute's cover: the older one lost leaves no debt, the newer lost too leaves exactly the work under way's reach", async () => {
  const { m, id, token, p1, p2 } = await twoPurchases('20');
  // 10,030: 10,010 for any model (10 paid of P2, 10,000 promotional), 20 for m; P1's 5,000 frozen.
  const [c] = await callsAcrossNewerDispute(id, token, m, p2, 1);
  const cost = Number(c.charged);
  assert.ok(cost > 30 && cost < 111, c.charged);
  assert.equal(c.unbilled, null);
  // Both disputes now hold 10,000 of the 10,010 for any model: 10 spare, then the 20 for m, then
  // (tier 2, without P2's dispute that came after the call) the rest from the promotion.
  assert.deepEqual(await drawnBy([c.transfer_id]), [
    { from: 'for_m', amount: '20' },
    { from: 'promo', amount: String(cost - 20) },
  ]);
  const [{ n }] =
    await testDb`select count(*)::int as n from billing.lot_allocations x where x.transfer_id = ${c.transfer_id}`;
  assert.equal(n, 2, 'a lot taken in both tiers is one allocation');
  // The older dispute lost: it takes its 5,000, which the call never reached.
  await dispute(p1, 'lost');
  const afterOld = await until('the older dispute lost', async () => {
    const f = await figures(id);
    return f.held === '5000' && (await activeDisputes(id)) === 1 && f;
  });
  assert.deepEqual(
    { balance: afterOld.balance, for_any: afterOld.for_any, for_some: afterOld.for_some, in_debt: afterOld.in_debt },
    { balance: String(5030 - cost), for_any: String(5030 - cost), for_some: '0', in_debt: false },
  );
  // The newer dispute lost as well: it finds 5,030 − cost of its 5,000 plus the spare... the work
  // under way reached exactly cost − 30 of its cover.
  await dispute(p2, 'lost');
  const end = await until('the newer dispute lost', async () => {
    const f = await figures(id);
    return f.held === '0' && f;
  });
  assert.deepEqual(
    { balance: end.balance, for_any: end.for_any, for_some: end.for_some, in_debt: end.in_debt },
    { balance: String(30 - cost), for_any: '0', for_some: '0', in_debt: true },
  );
  await coreInvariants([id]);
});

// ============================================================ 2. two calls under way across the newer dispute

Deno.test("two calls held before a newer dispute opened: the first one's capture is paid by its model's credits and the 10 spare before the newer dispute's cover, as a lone call's is: both disputes lost leave no debt beside untouched credits for the model", async () => {
  const { m, id, token, p1, p2 } = await twoPurchases('100');
  // 10,110: 10,010 for any model, 100 for m; P1's 5,000 frozen. A (about 60) finishes first, B
  // (a few words) last; both hold 111, placed before P2's dispute freezes the other 5,000.
  const calls = [
    chat(token, m, 'words=30 first_byte_delay=3000', 40),
    chat(token, m, 'words=1 first_byte_delay=6000', 40),
  ];
  await until('the calls held', async () => {
    const [r] = await testDb`select count(*)::int as n from billing.holds h join billing.ai_calls c on c.hold_id = h.id
      where c.user_id = ${id} and h.status = 'active'`;
    return r.n === 2;
  });
  await dispute(p2, 'open');
  await until('the newer dispute held', async () => (await activeDisputes(id)) === 2);
  const rs = await Promise.all(calls);
  assert.deepEqual(rs.map((r) => r.status), [200, 200], rs.map((r) => r.text).join('\n'));
  const cs = await until('the calls charged', async () => {
    const xs =
      await testDb`select trim_scale(c.charged)::text as charged, c.transfer_id, trim_scale(c.unbilled)::text as unbilled
      from billing.ai_calls c where c.user_id = ${id} order by c.created_at`;
    return xs.length === 2 && xs.every((x) => x.charged !== null && x.transfer_id !== null) && xs;
  });
  // A (30 words) and B (a few) may have been held in either order: the dearer one is A.
  const [a, b] = cs.map((c) => Number(c.charged)).sort((x, y) => y - x);
  assert.ok(a > 30 && b < a && a + b < 110, JSON.stringify(cs));
  const drawn = await drawnBy(cs.map((c) => c.transfer_id));
  const end = await loseBothDisputes(id, p1, p2);
  // A lone call across the newer dispute takes the 10 spare, then the credits for m, then the cover
  // (test 1). With B under way beside it, the plan with every dispute counted is already short of
  // B's hold, so it finds nothing; the second tier then takes A whole from the promotion, the
  // newer dispute's cover, while 100 for m sit idle: B is paid from them later, and the lost
  // dispute leaves a debt of a − 10 beside 100 − b for m.
  assert.deepEqual(
    {
      drawn,
      end: { balance: end.balance, for_any: end.for_any, for_some: end.for_some, in_debt: end.in_debt },
    },
    {
      // Between them: the 10 spare, the rest from the credits for m (which call takes which is the plan's).
      drawn: [{ from: 'for_m', amount: String(a + b - 10) }, { from: 'promo', amount: '10' }],
      end: { balance: String(110 - a - b), for_any: '0', for_some: String(110 - a - b), in_debt: false },
    },
    JSON.stringify({ cs, end }),
  );
  await coreInvariants([id]);
});

// ============================================================ 3. the model's credits expire under the call

Deno.test("credits for the call's model expiring while it runs across a newer dispute: its hold gives way only by what expired, the capture takes the 10 spare then the newer dispute's cover, never the older's", async () => {
  const { m, id, token, p1, p2, lotForM } = await twoPurchases('20');
  const call = chat(token, m, 'words=30 first_byte_delay=4000', 40);
  await until('the call held', async () => {
    const [r] = await testDb`select count(*)::int as n from billing.holds h join billing.ai_calls c on c.hold_id = h.id
      where c.user_id = ${id} and h.status = 'active'`;
    return r.n === 1;
  });
  await dispute(p2, 'open');
  await until('the newer dispute held', async () => (await activeDisputes(id)) === 2);
  await backdateLot(lotForM);
  await testDb`select billing.expire_lots(500)`;
  const [h] = await testDb`select trim_scale(h.amount)::text as amount, h.status from billing.holds h
    join billing.ai_calls c on c.hold_id = h.id where c.user_id = ${id}`;
  // The 20 that expired are taken from what the three holds reserve beyond the balance (by at most
  // what expired, billing.fit_holds), as on any account: the call's hold, the newest, keeps 91.
  assert.deepEqual({ ...h }, { amount: '91', status: 'active' });
  assert.equal((await call).status, 200);
  const c = await until('the call charged', async () => {
    const [x] = await testDb`select c.status, trim_scale(c.charged)::text as charged, c.transfer_id,
        trim_scale(c.unbilled)::text as unbilled from billing.ai_calls c where c.user_id = ${id}`;
    return x.status === 'charged' && x;
  });
  const cost = Number(c.charged);
  assert.equal(c.unbilled, null);
  assert.deepEqual(await drawnBy([c.transfer_id]), [{ from: 'promo', amount: String(cost) }]);
  await dispute(p1, 'lost');
  await until('the older dispute lost', async () => (await activeDisputes(id)) === 1);
  await dispute(p2, 'won');
  const end = await until('the newer dispute won', async () => {
    const f = await figures(id);
    return f.held === '0' && f;
  });
  assert.deepEqual(
    { balance: end.balance, for_any: end.for_any, for_some: end.for_some, in_debt: end.in_debt },
    { balance: String(5010 - cost), for_any: String(5010 - cost), for_some: '0', in_debt: false },
  );
  await coreInvariants([id]);
});

// ============================================================ 4. the same on a school's pool, a member's calls

Deno.test("a member's two calls held on the school's pool before the school's newer purchase is disputed: the school's credits for the model pay them before the newer dispute's cover; both disputes lost leave the pool no debt beside them", async () => {
  const m = await creditPerToken();
  const other = await creditPerToken();
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', null);
  const pool = async () =>
    (await testDb`select trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held,
        trim_scale(coalesce((select sum(l.remaining) from billing.lots l where l.account_id = a.id and l.open
                             and l.applies_to is null), 0))::text as for_any,
        trim_scale(coalesce((select sum(l.remaining) from billing.lots l where l.account_id = a.id and l.open
                             and l.applies_to is not null), 0))::text as for_some,
        billing.in_debt(a) as in_debt, a.id
      from billing.accounts a where a.org_id = ${org} and a.member_id is null`)[0];
  const p1 = await buy(owner.token, 'mini', org);
  await until('P1 paid', async () => (await pool())?.balance === '5000');
  const p2 = await buy(owner.token, 'mini', org);
  await until('P2 paid', async () => (await pool())?.balance === '10000');
  assert.equal((await chargeTokens(ada.token, other, 9990)).status, 201);
  await orgGrant(org, '10000', 'promo_grant');
  await orgGrant(org, '100', 'promo_grant', [m]);
  await dispute(p1.session_id, 'open');
  await until('the older dispute held', async () => (await pool()).held === '5000');
  const poolDisputes = async () =>
    (await testDb`select count(*)::int as n from billing.holds h join billing.accounts a on a.id = h.account_id
      where a.org_id = ${org} and a.member_id is null and h.purpose = 'dispute' and h.status = 'active'`)[0].n;
  const calls = [
    chat(ada.token, m, 'words=30 first_byte_delay=3000', 40),
    chat(ada.token, m, 'words=1 first_byte_delay=6000', 40),
  ];
  await until('the calls held', async () => {
    const [r] = await testDb`select count(*)::int as n from billing.holds h join billing.ai_calls c on c.hold_id = h.id
      where c.user_id = ${ada.id} and h.status = 'active'`;
    return r.n === 2;
  });
  await dispute(p2.session_id, 'open');
  await until('the newer dispute held', async () => (await poolDisputes()) === 2);
  const rs = await Promise.all(calls);
  assert.deepEqual(rs.map((r) => r.status), [200, 200], rs.map((r) => r.text).join('\n'));
  const cs = await until('the calls charged', async () => {
    const xs =
      await testDb`select trim_scale(c.charged)::text as charged, c.transfer_id, trim_scale(c.unbilled)::text as unbilled
      from billing.ai_calls c where c.user_id = ${ada.id} order by c.created_at`;
    return xs.length === 2 && xs.every((x) => x.charged !== null && x.transfer_id !== null) && xs;
  });
  const total = cs.reduce((s, c) => s + Number(c.charged), 0);
  assert.ok(total > 10 && total < 110, JSON.stringify(cs));
  await dispute(p1.session_id, 'lost');
  await until('the older dispute lost', async () => (await poolDisputes()) === 1);
  await dispute(p2.session_id, 'lost');
  const end = await until('the newer dispute lost', async () => {
    const f = await pool();
    return f.held === '0' && f;
  });
  assert.deepEqual(
    { drawn: await drawnBy(cs.map((c) => c.transfer_id)), end: { ...end, id: undefined } },
    {
      drawn: [{ from: 'for_m', amount: String(total - 10) }, { from: 'promo', amount: '10' }],
      end: {
        balance: String(110 - total),
        held: '0',
        for_any: '0',
        for_some: String(110 - total),
        in_debt: false,
        id: undefined,
      },
    },
    JSON.stringify({ cs, end }),
  );
  await assertLedgerInvariants();
});
