// A school's pool that fell due (a member's hold past its TTL, a lot past its expiry) is settled
// by whichever member's call comes first (billing.settle_spender, in front of its begin asked again):
// members' calls racing on it all go ahead, the overdue hold ends once, the lot expires once, no
// call is paid with the expired credits, and an Idempotency-Key sent twice at once across the
// settle step is one call, charged once.
import assert from 'node:assert/strict';
import { gatewayUrl } from '../support/ai.ts';
import { adminToken, api, assertLedgerInvariants, backdateLot, holdsLapse, key, testDb } from '../support/helpers.ts';
import { person, school } from '../support/orgs.ts';

const chat = (token: string, k: string, i: number) =>
  fetch(`${gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': k },
    body: JSON.stringify({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: `hi ${i} #standin words=2` }],
      max_tokens: 8,
    }),
  });

const poolFacts = async (org: string) =>
  (await testDb`select trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held, a.next_hold_expiry,
      (select count(*)::int from billing.transfers t where t.from_account_id = a.id and t.kind = 'expiry') as expiries,
      (select count(*)::int from billing.holds h where h.account_id = a.id and h.status = 'expired') as expired_holds,
      (select count(*)::int from billing.holds h where h.account_id = a.id and h.status = 'active') as live_holds,
      trim_scale(1000 - (select coalesce(sum(c.charged), 0) from billing.ai_calls c where c.org_id = a.org_id))::text
        as unexpired_less_charges
    from billing.accounts a where a.org_id = ${org} and a.member_id is null`)[0];

/** A pool school of four members: 1,000 credits, a lot of 50 past its expiry and one member's hold of 1 past its TTL. */
async function fallenDuePool() {
  const owner = await person('owner');
  const members = [await person('m0'), await person('m1'), await person('m2'), await person('m3')];
  const org = await school(owner, members, 'pool', '1000');
  const g = await api(`/orgs/${org}/grants`, {
    token: await adminToken(),
    body: { amount: '50', reason: 'pilot' },
    headers: key(),
  });
  assert.equal(g.status, 201, g.text);
  const [lot] = await testDb`select l.id::text from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.org_id = ${org} and a.member_id is null order by l.id desc limit 1`;
  const held = await api('/credits/holds', {
    token: members[0].token,
    headers: key(),
    body: { amount: '1', ttl_seconds: 600 },
  });
  assert.equal(held.status, 201, held.text);
  // The hold reserved from the 1,000 (the older lot): captured never, it lapses; the 50 expire.
  await holdsLapse(testDb`h.id = ${(held.body.data as { hold_id: string }).hold_id}`);
  await backdateLot(lot.id);
  return { org, members };
}

Deno.test("members' calls racing on a pool that fell due all go ahead, and end what fell due once", async () => {
  const { org, members } = await fallenDuePool();
  const res = await Promise.all(
    Array.from({ length: 16 }, (_, i) => chat(members[i % 4].token, crypto.randomUUID(), i)),
  );
  const statuses = await Promise.all(
    res.map(async (r) => `${r.status} ${r.status === 200 ? '' : await r.text()}`.trim()),
  );
  assert.deepEqual(statuses, Array(16).fill('200'));
  const f = await poolFacts(org);
  assert.equal(f.expiries, 1, 'the lot past its expiry expired once');
  assert.equal(f.expired_holds, 1, 'the overdue hold ended once');
  assert.equal(f.live_holds, 0);
  assert.equal(f.held, '0');
  assert.equal(f.next_hold_expiry, null, 'nothing held: nothing can fall due');
  // 1,050 granted: the 50 expired, the lapsed hold captured nothing; every call paid from the 1,000.
  assert.equal(f.balance, f.unexpired_less_charges);
  await assertLedgerInvariants();
});

Deno.test('one key sent twice at once across the settle step is one call, charged once', async () => {
  const { org, members } = await fallenDuePool();
  const k = crypto.randomUUID();
  const [a, b] = await Promise.all([chat(members[1].token, k, 1), chat(members[1].token, k, 1)]);
  const answers = [a.status, b.status].sort();
  await a.text();
  await b.text();
  // One goes ahead; the other is its replay or told the key is in use (409), never a second call.
  assert.ok(answers[0] === 200 && [200, 409].includes(answers[1]), JSON.stringify(answers));
  const calls = await testDb`select status, trim_scale(charged)::text as charged from billing.ai_calls
    where user_id = ${members[1].id} and status <> 'refused'`;
  assert.deepEqual(calls.map((c) => c.status), ['charged']);
  const after = await chat(members[1].token, k, 1);
  assert.equal(after.status, 200, 'a replay answers the call again');
  await after.text();
  assert.equal(
    (await testDb`select count(*)::int as n from billing.ai_calls where user_id = ${members[1].id}
    and status = 'charged'`)[0].n,
    1,
    'and charges nothing more',
  );
  assert.equal((await poolFacts(org)).expired_holds, 1);
  await assertLedgerInvariants();
});
