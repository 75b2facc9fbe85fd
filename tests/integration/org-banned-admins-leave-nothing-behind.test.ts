// A banned owner or admin (a banned or deleted owner/admin acts in no
// organisation, and nothing they issued speaks for them: billing.speaks_for_org): what a banned
// person left behind that still moves the school's credits, and good users the rule must not refuse.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, jobOf, key, testDb, tick } from '../support/helpers.ts';
import { codeOf } from '../support/money.ts';
import { issue, redeem } from '../support/codes.ts';
import { accountOf, join, person, school } from '../support/orgs.ts';
import { emulator, startCheckout } from '../support/purchases.ts';
import { openInvoice, pay } from '../support/invoices.ts';

/** Bans `userId` until `until` (the dashboard's "ban user"): the token they hold lives on. */
const ban = (userId: string, until = "now() + interval '1 day'") =>
  testDb.unsafe(`update auth.users set banned_until = ${until} where id = $1`, [userId]);

const personalBalance = async (userId: string) =>
  (await testDb`select coalesce(trim_scale(sum(a.balance))::text, '0') as b from billing.accounts a
    where a.user_id = ${userId} and a.org_id is null`)[0].b as string;

// ============================================================ holes

Deno.test("a banned member's job queued on the school's pool does not start after the ban: nothing is spent for them", async () => {
  const owner = await person('owner');
  const member = await person('member');
  const org = await school(owner, [member], 'pool', '1000');
  // Queued behind a backlog (as school-wallets-holds.test.ts queues it): reserved from the pool,
  // not yet claimed by a worker.
  const [{ id }] = await testDb`select id from billing.enqueue_job(${member.id}, 'ai_completion',
    '{"model": "gpt-4o", "prompt": "hello world", "max_tokens": 1000}'::jsonb, ${crypto.randomUUID()}, null, 60.54)`;
  assert.deepEqual(await accountOf(org, null), { balance: '1000', held: '60.54' });
  await ban(member.id);
  await tick();
  // A banned user acts in no organisation (require_org_role), and a member removed has their
  // queued school-paid jobs cancelled (remove_member): a ban must not leave the worker spending
  // the pool for them. Root cause: billing.claim_jobs (63-jobs.sql) and the worker never look at
  // the job's user's standing; only the routes (the money routes' statements, the gateway) do.
  const job = await jobOf(id);
  const wallet = await accountOf(org, null);
  assert.equal(
    job.status,
    'cancelled',
    `the banned member's job ran: ${JSON.stringify(job)}, pool ${JSON.stringify(wallet)}`,
  );
  assert.deepEqual(wallet, { balance: '1000', held: '0' }, 'nothing held, nothing spent');
});

// ============================================================ held (passing checks)

Deno.test('a member invitation a now-banned owner sent is refused too; the ban passed, it is accepted', async () => {
  const owner = await person('owner');
  const pupil = await person('pupil');
  const org = await school(owner, [], 'pool', '100');
  const inv = await api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: pupil.email } });
  assert.equal(inv.status, 201, inv.text);
  const token = (inv.body.data as { token: string }).token;
  await ban(owner.id);
  const r = await api('/orgs/invitations/accept', { token: pupil.token, body: { token } });
  assert.equal(r.status, 409, r.text);
  assert.equal(codeOf(r), 'INVITATION_CLOSED');
  const [m] = await testDb`select count(*)::int as n from billing.org_members
    where org_id = ${org} and user_id = ${pupil.id} and active`;
  assert.equal(m.n, 0);
  // A ban that has passed refuses nothing: the same invitation, still pending, is accepted.
  await ban(owner.id, "now() - interval '1 second'");
  const ok = await api('/orgs/invitations/accept', { token: pupil.token, body: { token } });
  assert.equal(ok.status, 200, ok.text);
  const [n] = await testDb`select role from billing.org_members
    where org_id = ${org} and user_id = ${pupil.id} and active`;
  assert.equal(n.role, 'member');
});

Deno.test("an owner whose co-admin is banned: the owner's code and invitation work, the sweep voids only the admin's code", async () => {
  const owner = await person('owner');
  const admin = await person('admin');
  const pupil = await person('pupil');
  const late = await person('late');
  const org = await school(owner, [pupil], 'allowance', '100');
  await join(owner.token, org, admin, 'admin');
  const byAdmin = await issue(admin.token, org, { credits: '30', user_id: pupil.id });
  assert.equal(byAdmin.status, 201, byAdmin.text);
  const inv = await api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: late.email } });
  assert.equal(inv.status, 201, inv.text);
  await ban(admin.id);
  const byOwner = await issue(owner.token, org, { credits: '20', user_id: pupil.id });
  assert.equal(byOwner.status, 201, byOwner.text);
  assert.equal((await accountOf(org, null)).balance, '50');
  // The sweep voids the banned admin's code (its escrow back to the wallet), not the owner's.
  await testDb`select billing.close_expired_sponsor_codes(1000)`;
  const statuses = await testDb`select c.created_by, c.status from billing.codes c where c.org_id = ${org}`;
  assert.deepEqual(
    statuses.map((s) => `${s.created_by === owner.id ? 'owner' : 'admin'}:${s.status}`).sort(),
    ['admin:void', 'owner:active'],
  );
  assert.equal((await accountOf(org, null)).balance, '80');
  const theirs = await redeem(pupil.token, (byAdmin.body.data as { code: string }).code);
  assert.equal(theirs.status, 409, theirs.text);
  assert.equal(codeOf(theirs), 'CODE_NOT_REDEEMABLE');
  const mine = await redeem(pupil.token, (byOwner.body.data as { code: string }).code);
  assert.equal(mine.status, 200, mine.text);
  assert.equal(await personalBalance(pupil.id), '20');
  const ok = await api('/orgs/invitations/accept', {
    token: late.token,
    body: { token: (inv.body.data as { token: string }).token },
  });
  assert.equal(ok.status, 200, ok.text);
  await assertLedgerInvariants();
});

Deno.test("an org Checkout and an org invoice a now-banned admin started credit the school's wallet, never the admin", async () => {
  const owner = await person('owner');
  const admin = await person('admin');
  const org = await school(owner, [], 'pool', null);
  await join(owner.token, org, admin, 'admin');
  const co = await startCheckout(admin.token, 'starter', crypto.randomUUID(), org);
  const inv = await openInvoice(admin.token, org);
  await ban(admin.id);
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });
  await pay(inv);
  const bought = await testDb`select p.origin, p.status, p.org_id, trim_scale(p.credits + p.bonus_credits)::text as c
    from billing.purchases p where p.user_id = ${admin.id} order by p.origin`;
  assert.deepEqual(bought.map((p) => [p.origin, p.status, p.org_id]), [
    ['checkout', 'paid', org],
    ['invoice', 'paid', org],
  ]);
  const total = bought.reduce((s, p) => s + Number(p.c), 0);
  assert.equal(Number((await accountOf(org, null)).balance), total);
  assert.equal(await personalBalance(admin.id), '0');
  // The banned admin still cannot touch what arrived.
  const r = await api(`/orgs/${org}/allowances`, { token: admin.token, headers: key(), body: { amount: '1' } });
  assert.equal(r.status, 401, r.text);
  await assertLedgerInvariants();
});
