// Sponsor codes named by email: redeemed only by the account whose confirmed auth.users address it
// is, never by a token that claims the address, an account whose address only looks like it once
// Postgres lower-cases it (the Kelvin sign K, U+212A, lower-cases to an ASCII k), or an address
// nobody confirmed.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, testDb, userToken } from '../support/helpers.ts';
import { codeOf, dataOf } from '../support/money.ts';
import { person, school, walletOf } from '../support/orgs.ts';
import { balance, issue, redeem } from '../support/codes.ts';

/** `email` is invited to join `org` as a member (a sponsor code may name an invitee). */
async function invite(token: string, org: string, email: string) {
  const r = await api(`/orgs/${org}/invitations`, { token, body: { email } });
  assert.equal(r.status, 201, r.text);
}

/** A user whose auth.users address is `email` (as Supabase Auth stores it), confirmed unless told. */
async function account(email: string, confirmed = true) {
  const id = crypto.randomUUID();
  await testDb`insert into auth.users (id, email, email_confirmed_at)
    values (${id}, ${email}, ${confirmed ? new Date() : null})`;
  return { id, email, token: await userToken(id, { claims: { email } }) };
}

Deno.test("a token claiming the named address does not redeem someone else's sponsor code (the server reads auth.users)", async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', '100');
  const victim = `kim-${crypto.randomUUID().slice(0, 8)}@school.test`;
  await invite(owner.token, org, victim);
  const { code } = dataOf(await issue(owner.token, org, { credits: '40', email: victim })) as { code: string };
  const attacker = await person('attacker');
  const forged = await userToken(attacker.id, { claims: { email: victim } });
  const r = await redeem(forged, code);
  assert.equal(r.status, 404, r.text);
  assert.equal(codeOf(r), 'CODE_NOT_FOUND');
  assert.equal(await balance(forged), '0');
  assert.equal((await walletOf(owner.token, org)).balance, '60');
});

// Postgres lower-cases U+212A KELVIN SIGN to an ASCII 'k' (and U+0130 to 'i'), so lower() would
// let '\u212Aim-…@school.test' redeem the code named for 'kim-…@school.test': redeem_code compares
// addresses with ASCII-only case folding (billing.ascii_lower).
Deno.test('a look-alike address (Kelvin sign K) does not redeem a sponsor code named for another student', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', '100');
  const tag = crypto.randomUUID().slice(0, 8);
  const victim = `kim-${tag}@school.test`;
  await invite(owner.token, org, victim);
  const { code } = dataOf(await issue(owner.token, org, { credits: '40', email: victim })) as { code: string };
  const attacker = await account(`\u212Aim-${tag}@school.test`);
  const r = await redeem(attacker.token, code);
  assert.equal(await balance(attacker.token), '0', `the look-alike account was given the code: ${r.text}`);
  assert.equal(r.status, 404, r.text);
  await assertLedgerInvariants();
});

// Two accounts may lower-case alike: issue_sponsor_code asks whether any account the address
// names is an owner or admin (a lookup expecting one row would raise, and a student who
// registered the look-alike of a classmate's address would stop every organisation from
// sponsoring that classmate by email).
Deno.test('a look-alike account does not make issuing a sponsor code by email a 5xx', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', '100');
  const tag = crypto.randomUUID().slice(0, 8);
  await account(`kim-${tag}@school.test`);
  await account(`\u212Aim-${tag}@school.test`);
  await invite(owner.token, org, `kim-${tag}@school.test`);
  const r = await issue(owner.token, org, { credits: '40', email: `kim-${tag}@school.test` });
  assert.ok(r.status < 500, r.text);
  assert.equal(r.status, 201, r.text);
});

// An address counts only once email_confirmed_at is set (the code is not found until then): where
// a project lets people in before they confirm (confirmations off, or an identity provider that
// does not verify), anyone could otherwise register the named address and take the code.
Deno.test('an account whose address is not confirmed does not redeem a sponsor code named for that address', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', '100');
  const victim = `sam-${crypto.randomUUID().slice(0, 8)}@school.test`;
  await invite(owner.token, org, victim);
  const { code } = dataOf(await issue(owner.token, org, { credits: '40', email: victim })) as { code: string };
  const squatter = await account(victim, false);
  const r = await redeem(squatter.token, code);
  assert.equal(await balance(squatter.token), '0', `an unconfirmed address was given the code: ${r.text}`);
  assert.notEqual(r.status, 200, r.text);
});

Deno.test('sponsor addresses and notes Postgres refuses, or that are not ASCII, are 400 and nothing is set aside', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', '100');
  const bodies = [
    { credits: '5', email: '\u212Aim@school.test' },
    { credits: '5', email: 'kim@school.test\u0000' },
    { credits: '5', email: 'kim\ud800@school.test' },
    { credits: '5', email: `${'a'.repeat(330)}@school.test` },
    { credits: '5', email: 'kim@school.test', note: 'hi\u0000' },
    { credits: '5', email: 'kim@school.test', note: 'hi\ud800' },
  ];
  for (const body of bodies) {
    const r = await issue(owner.token, org, body);
    assert.equal(r.status, 400, `${JSON.stringify(body)}: ${r.text}`);
  }
  assert.equal((await walletOf(owner.token, org)).balance, '100');
});

Deno.test('a sponsor code named by email is redeemed by that address only; anyone else finds no such code', async () => {
  const owner = await person('owner');
  const student = await person('student');
  const other = await person('other');
  const org = await school(owner, [student], 'allowance', '100');
  const r = await issue(owner.token, org, { credits: '10', email: student.email.toUpperCase() });
  const { code } = dataOf(r) as { code: string };
  const stolen = await redeem(other.token, code);
  assert.equal(stolen.status, 404, stolen.text);
  assert.equal(codeOf(stolen), 'CODE_NOT_FOUND');
  const byOwner = await redeem(owner.token, code);
  assert.equal(codeOf(byOwner), 'CODE_NOT_FOUND', 'not even its issuer');
  assert.equal((await redeem(student.token, code)).status, 200);
});
