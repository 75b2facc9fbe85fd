// A student's streamed answer is charged however many of their own holds fall due while it
// streams. Any student may place holds on their own account (POST /credits/holds) with a TTL of
// their choosing, from one second; holds placed over the minutes before with TTLs lined up fall
// due one after another. A call's finish that meets its account fell due (a finish never settles
// itself, billing.lock_holder) is sent again with billing.settle_holder in front of it in one
// statement: it charges the answer the student already read, never leaves the call held until
// the sweep marks it GATEWAY_LOST, uncharged.
import assert from 'node:assert/strict';
import { gatewayUrl, student } from '../support/ai.ts';
import { api, assertLedgerInvariants, key, testDb } from '../support/helpers.ts';

/**
 * `n` holds of a millionth of a credit on the student's own account, placed as the route places
 * them (billing.reserve_credits), their TTLs lined up to fall due one every `everyMs` from
 * `startInMs` on.
 */
async function ownHoldsFallingDue(userId: string, n: number, startInMs: number, everyMs: number) {
  for (let i = 0; i < n; i += 100) {
    await testDb`select billing.reserve_credits(${userId}::uuid, 0.000001, ${`own:${userId}:`} || j, 86400)
      from generate_series(${i}::int, ${Math.min(i + 100, n) - 1}::int) j`;
  }
  await testDb.begin(async (tx) => {
    await tx`select 1 from billing.accounts where user_id = ${userId} for update`;
    await tx`update billing.holds h set expires_at = clock_timestamp() + make_interval(secs => (${startInMs}
        + ${everyMs} * (split_part(h.idempotency_key, ':', 3))::int) / 1000.0)
      where h.idempotency_key like ${`own:${userId}:%`} and h.status = 'active'`;
    await tx`update billing.accounts a set next_hold_expiry = (select min(h.expires_at) from billing.holds h
      where h.account_id = a.id and h.status = 'active') where a.user_id = ${userId}`;
  });
}

Deno.test("a streamed answer is charged though the student's own holds fall due while it streams", async () => {
  const s = await student('1000');
  // The route takes a one-second hold of a millionth of a credit.
  const h = await api('/credits/holds', {
    token: s.token,
    headers: key(),
    body: { amount: '0.000001', ttl_seconds: 1 },
  });
  assert.equal(h.status, 201, h.text);

  // From 600 ms on, one of 3,000 holds falls due every millisecond for 3 seconds; the call begins
  // before that (nothing due), and its answer streams on into it.
  await ownHoldsFallingDue(s.id, 3000, 600, 1);
  const res = await fetch(`${gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json', ...key() },
    body: JSON.stringify({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'hi #standin words=40 delay=25' }],
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  const body = await res.text();
  assert.match(body, /word40/, 'the student read the whole answer');

  // Past the window (and the gateway's retries), the call is charged, its hold ended.
  await new Promise((r) => setTimeout(r, 4000));
  const [c] = await testDb`select c.status, c.failure, trim_scale(coalesce(c.charged, 0))::text as charged,
      h.status as hold_status from billing.ai_calls c left join billing.holds h on h.id = c.hold_id
    where c.user_id = ${s.id} and c.status <> 'refused' order by c.created_at desc limit 1`;
  await assertLedgerInvariants();
  assert.equal(
    c.status,
    'charged',
    `the call read in full is ${c.status} (hold ${c.hold_status}), charged ${c.charged}`,
  );
  assert.ok(Number(c.charged) > 0);
});
