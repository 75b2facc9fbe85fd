// Guessing codes as a student would: many wrong codes at once, so that every request reads the
// failed-guess count before any of them is recorded.
import assert from 'node:assert/strict';
import { api, testDb } from '../helpers.ts';
import { codeOf, dataOf } from '../money.ts';
import { key, person, school } from '../orgs.ts';
import { redeem, student } from '../codes.ts';

const wrong = (i: number) => `ZZZZZ-ZZZZZ-ZZZZZ-ZZZ${String(i).padStart(2, '0')}`;

// Found by this test: redeem_code counts the caller's failed guesses from code_attempts, and a
// refusal is recorded only after its transaction rolled back (run_money_request), so requests in
// flight together all read the same count. With 9 failures on the record, 10 wrong codes sent at
// once (the route's Redis limit allows 10 a minute) were all tried: 19 an hour where 10 are meant.
// The per-address limit (30 an hour) fell the same way to many accounts sending together.
// run_money_request now takes billing.lock_code_guesses (the user's, then the address's advisory
// lock) before the redemption, held until the refusal's record commits.
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
