// A school's pool is shared: any member may hold its credits (POST /credits/holds lands on the
// pool that pays for them) with a TTL of their choosing, from one second. An AI call's begin
// never settles (billing.begin_ai_call answers {state: 'settle'} when a paying account fell due):
// the gateway asks again with the settle in front of the begin, in one statement, so holds of one
// member falling due one after another on the pool never keep another member's calls from going
// ahead (no 503 ACCOUNT_FELL_DUE for a member who did nothing).
import assert from 'node:assert/strict';
import { gatewayUrl } from '../support/ai.ts';
import { api, assertLedgerInvariants, key, testDb } from '../support/helpers.ts';
import { person, school } from '../support/orgs.ts';

const chat = (token: string, idempotencyKey: string) =>
  fetch(`${gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${token}`,
      'content-type': 'application/json',
      'idempotency-key': idempotencyKey,
    },
    body: JSON.stringify({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'hi #standin words=2' }],
      max_tokens: 8,
    }),
  });

/** The pool's id, held and next_hold_expiry. */
const poolOf = async (org: string) =>
  (await testDb`select a.id::text, trim_scale(a.held)::text as held, a.next_hold_expiry from billing.accounts a
    where a.org_id = ${org} and a.member_id is null`)[0];

/**
 * Mallory's `n` tiny holds on the pool, their TTLs lined up to fall due one every `everyMs` from
 * `startInMs` on: what holds she placed over the minutes before (100 a minute, each TTL chosen so)
 * would look like now. Placed as the route places them (billing.reserve_credits).
 */
async function holdsFallingDue(mallory: string, org: string, n: number, startInMs: number, everyMs: number) {
  for (let i = 0; i < n; i += 50) {
    await testDb`select billing.reserve_credits(${mallory}::uuid, 0.000001, ${`m:${mallory}:`} || j, 86400)
      from generate_series(${i}::int, ${Math.min(i + 50, n) - 1}::int) j`;
  }
  const pool = await poolOf(org);
  await testDb.begin(async (tx) => {
    await tx`select 1 from billing.accounts where id = ${pool.id} for update`;
    await tx`update billing.holds h set expires_at = clock_timestamp() + make_interval(secs => (${startInMs}
        + ${everyMs} * (split_part(h.idempotency_key, ':', 3))::int) / 1000.0)
      where h.idempotency_key like ${`m:${mallory}:%`} and h.status = 'active'`;
    await tx`update billing.accounts a set next_hold_expiry = (select min(h.expires_at) from billing.holds h
      where h.account_id = a.id and h.status = 'active') where a.id = ${pool.id}`;
  });
}

Deno.test("one member's holds falling due one after another on the pool never answer another member 503", async () => {
  const owner = await person('owner');
  const mallory = await person('mallory');
  const ada = await person('ada');
  const org = await school(owner, [mallory, ada], 'pool', '1000');

  // Through the route, a member's hold of a millionth of a credit for one second lands on the pool.
  const h = await api('/credits/holds', {
    token: mallory.token,
    headers: key(),
    body: { amount: '0.000001', ttl_seconds: 1 },
  });
  assert.equal(h.status, 201, h.text);
  assert.equal(
    (await testDb`select a.org_id from billing.holds x join billing.accounts a on a.id = x.account_id
    where x.id = ${(h.body.data as { hold_id: string }).hold_id}`)[0].org_id,
    org,
    'the hold is on the pool',
  );

  // 1,500 of them (0.0015 credits in all), falling due one every 2 ms for 3 seconds from 1 second on.
  await holdsFallingDue(mallory.id, org, 1500, 1000, 2);
  await new Promise((r) => setTimeout(r, 1200));

  // Ada, who holds nothing, calls 20 times meanwhile.
  const answers: string[] = [];
  const refused: string[] = [];
  for (let i = 0; i < 20; i++) {
    const k = crypto.randomUUID();
    const res = await chat(ada.token, k);
    const text = await res.text();
    let code = '';
    try {
      code = JSON.parse(text).error?.code ?? '';
    } catch { /* a body of the provider's */ }
    answers.push(`${res.status} ${code}`.trim());
    if (res.status !== 200) refused.push(k);
    await new Promise((r) => setTimeout(r, 60));
  }

  // Once they all fell due, a refused call's key is free: its retry goes ahead (nothing was
  // stored under it), and the ledger is whole.
  await new Promise((r) => setTimeout(r, 2500));
  for (const k of refused.slice(0, 3)) {
    const res = await chat(ada.token, k);
    assert.equal(res.status, 200, await res.text());
  }
  await assertLedgerInvariants();

  assert.deepEqual(
    answers.filter((a) => a !== '200'),
    [],
    `${refused.length} of ada's 20 calls refused while mallory's holds fell due on the pool`,
  );
});
