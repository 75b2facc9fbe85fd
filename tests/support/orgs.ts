// Helpers for organisation tests: people with email addresses, and a school whose members
// accepted their emailed invitations, over the real API.
import assert from 'node:assert/strict';
import { adminToken, api, key, reportUsage, testDb, until, userToken } from './helpers.ts';
import { buy } from './purchases.ts';
import { codeOf } from './money.ts';

export { key } from './helpers.ts';

/** A user with a confirmed email address, and a token carrying it (as Supabase Auth issues it). */
export async function person(label: string) {
  const id = crypto.randomUUID();
  const email = `${label}-${id.slice(0, 8)}@school.test`;
  await testDb`insert into auth.users (id, email, email_confirmed_at) values (${id}, ${email}, now())`;
  return { id, email, token: await userToken(id, { claims: { email } }) };
}

/** One metered charge on the caller's behalf (1,000 in / 1,000 out of gpt-4o-mini). */
export const usage = (token: string) =>
  reportUsage('/credits/usage', {
    token,
    body: { model: 'gpt-4o-mini', input_tokens: 1000, output_tokens: 1000 },
    headers: key(),
  });

/**
 * An organisation owned by `owner` with `members` who accepted their emailed invitations,
 * granted `grant` credits by a platform admin (none when null).
 */
export async function school(
  owner: { token: string },
  members: { token: string; email: string }[],
  funding = 'allowance',
  grant: string | null = '100',
) {
  const created = await api('/orgs', { token: owner.token, body: { name: 'Lakeside School', funding } });
  assert.equal(created.status, 201, created.text);
  const org = (created.body.data as { id: string }).id;
  for (const m of members) {
    const invited = await api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: m.email } });
    assert.equal(invited.status, 201, invited.text);
    const { token } = invited.body.data as { token: string };
    const accepted = await api('/orgs/invitations/accept', { token: m.token, body: { token } });
    assert.equal(accepted.status, 200, accepted.text);
  }
  if (grant) {
    const granted = await api(`/orgs/${org}/grants`, {
      token: await adminToken(),
      body: { amount: grant, reason: 'pilot' },
      headers: key(),
    });
    assert.equal(granted.status, 201, granted.text);
  }
  return org;
}

/** `who` is invited to `org` as `role` by its owner and accepts the emailed invitation. */
export async function join(ownerToken: string, org: string, who: { token: string; email: string }, role = 'member') {
  const inv = await api(`/orgs/${org}/invitations`, { token: ownerToken, body: { email: who.email, role } });
  assert.equal(inv.status, 201, inv.text);
  const ok = await api('/orgs/invitations/accept', {
    token: who.token,
    body: { token: (inv.body.data as { token: string }).token },
  });
  assert.equal(ok.status, 200, ok.text);
}

/** The organisation's wallet as its admin sees it. */
export async function walletOf(token: string, org: string) {
  const r = await api(`/orgs/${org}`, { token });
  assert.equal(r.status, 200, r.text);
  return (r.body.data as { wallet: { balance: string; held: string; available: string } }).wallet;
}

/** The balance and held of an organisation's account: its wallet (`member` null) or a member's allowance. */
export const accountOf = async (org: string, member: string | null) =>
  (await testDb`select trim_scale(a.balance)::text as balance, trim_scale(a.held)::text as held
    from billing.accounts a where a.org_id = ${org} and a.member_id is not distinct from ${member}`)[0];

/**
 * A school funding by allowance (verified first when asked) whose owner bought the mini package (5,000 credits in the
 * wallet) and moved `amount` of it into the allowance of its one member.
 */
export async function schoolAllowanceFunded(amount = '2000', verified = false) {
  const owner = await person('owner');
  const member = await person('member');
  const org = await school(owner, [], 'allowance', null);
  if (verified) await verifyOrg(org);
  await join(owner.token, org, member);
  const purchase = await buy(owner.token, 'mini', org);
  await until('the wallet paid', async () => (await accountOf(org, null))?.balance === '5000');
  const moved = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: key(),
    body: { amount, user_id: member.id },
  });
  assert.equal(moved.status, 201, moved.text);
  return { owner, member, org, purchase };
}

/**
 * An operator marks `org` verified (PUT /orgs/:id/verification): its wallet, not the admin who
 * paid, answers for its own purchases at a dispute or refund.
 */
export async function verifyOrg(org: string) {
  const r = await api(`/orgs/${org}/verification`, {
    method: 'PUT',
    token: await adminToken(),
    body: { verified: true },
  });
  assert.equal(r.status, 200, r.text);
}

/** One credit of usage (50 input tokens of gpt-4o), reported by the product's server for `token`'s user. */
export const usageBy = (token: string) =>
  reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: 50, output_tokens: 0 },
  });

/**
 * `payer` creates a school (an operator verifies it first when asked) and buys the mini package
 * (5,000) for its wallet with their card.
 */
export async function schoolBoughtBy(
  payer: { token: string },
  funding: 'allowance' | 'pool' = 'allowance',
  verified = false,
) {
  const org = await school(payer, [], funding, null);
  if (verified) await verifyOrg(org);
  const purchase = await buy(payer.token, 'mini', org);
  await until('the wallet paid', async () => (await accountOf(org, null))?.balance === '5000');
  return { org, purchase };
}

/** `r` is the suspension's refusal: 403 ACCOUNT_DISPUTED. */
export function assertDisputed(r: Awaited<ReturnType<typeof api>>, what: string) {
  assert.equal(r.status, 403, `${what}: ${r.text}`);
  assert.equal(codeOf(r), 'ACCOUNT_DISPUTED', `${what}: ${r.text}`);
}
