// Guessing codes: however many wrong codes are sent at once, a student's failed guesses (and an
// address's) stay within the hourly limit, and someone else's code answers as an unknown one.
import assert from 'node:assert/strict';
import { api, key, student, testDb } from '../support/helpers.ts';
import { codeOf, dataOf } from '../support/money.ts';
import { person, school } from '../support/orgs.ts';
import { redeem } from '../support/codes.ts';

const wrong = (i: number) => `ZZZZZ-ZZZZZ-ZZZZZ-ZZZ${String(i).padStart(2, '0')}`;

// redeem_code counts the caller's failed guesses from code_attempts, and a refusal is recorded
// only after its transaction rolled back (run_code_request). So that requests in flight together
// do not all read the same count (10 wrong codes at once, which the route's Redis limit allows,
// on top of 9 failures would make 19 an hour where 10 are meant; many accounts sending together
// would pass the per-address limit of 30 the same way), run_code_request takes
// billing.lock_code_guesses (the user's, then the address's advisory lock) before the redemption
// and holds it until the refusal's record commits.
Deno.test('wrong codes sent at once never take a student past 10 failed guesses an hour', async () => {
  // Six students, each with 9 failed guesses on the record from earlier this hour (what nine wrong
  // redemptions record), each sending 10 wrong codes at once: enough requests in flight that they
  // overlap in the database (one student's 10 alone are often served one after another here).
  const users = await Promise.all(Array.from({ length: 6 }, () => student()));
  for (const s of users) {
    await testDb`insert into billing.code_attempts (user_id, hash_prefix, outcome, created_at)
      select ${s.id}, 'aaaaaaaaaaaa', 'CODE_NOT_FOUND', now() - interval '30 minutes' from generate_series(1, 9)`;
  }
  const rs = await Promise.all(users.flatMap((s) => Array.from({ length: 10 }, (_, i) => redeem(s.token, wrong(i)))));
  const tried = users.map((_, u) => rs.slice(u * 10, u * 10 + 10).filter((r) => codeOf(r) === 'CODE_NOT_FOUND').length);
  assert.ok(rs.every((r) => r.status === 404 || r.status === 429), rs.map((r) => r.status).join(' '));
  assert.ok(tried.every((n) => n <= 1), `wrong codes looked up past each student's ninth failure: ${tried}`);
});

Deno.test("someone else's sponsor code answers as an unknown code, counts as a failed guess and names no code", async () => {
  const owner = await person('owner');
  const named = await person('named');
  const org = await school(owner, [named], 'allowance', '100');
  const issued = await api(`/orgs/${org}/sponsor-codes`, {
    token: owner.token,
    headers: key(),
    body: { credits: '10', user_id: named.id },
  });
  const { code } = dataOf(issued) as { code: string };
  const s = await student();
  const theirs = await redeem(s.token, code);
  const unknown = await redeem(s.token, wrong(0));
  assert.equal(theirs.status, 404, theirs.text);
  assert.deepEqual(theirs.body.error, unknown.body.error, 'the same answer as for a code that does not exist');
  const rows = await testDb`select outcome, code_id from billing.code_attempts where user_id = ${s.id} order by id`;
  assert.deepEqual(rows.map((r) => ({ ...r })), [
    { outcome: 'CODE_NOT_FOUND', code_id: null },
    { outcome: 'CODE_NOT_FOUND', code_id: null },
  ]);
});
