// The typed client's organisation methods (through real supabase-js) against the running stack:
// an owner creates a school, invites, renames it, funds allowances, caps a pool, reads the
// members, the usage report and the ledger, and buys credits for it through Checkout; a student
// accepts and sees their allowance, another declines. Every answer is checked field by field
// against its contract type: the same fields, no more, each of the JSON kind the type says.
import assert from 'node:assert/strict';
import { createClient } from '@supabase/supabase-js';
import {
  type AllowancesFunded,
  BillingError,
  type CheckoutSession,
  createBillingClient,
  createUsageReporter,
  type Invitation,
  type InvitationAnswer,
  type InvitationList,
  type MemberCap,
  type MemberRemoved,
  type Org,
  type OrgInvitation,
  type OrgLedgerEntry,
  type OrgMember,
  type OrgSummary,
  type OrgUsageRow,
  type OwnershipTransferred,
  type Wallet,
} from '../../client/mod.ts';
import { adminToken, api, env, must, newUser, supabaseUrl, testDb, userToken } from '../support/helpers.ts';
import { key, person } from '../support/orgs.ts';
import { emulator } from '../support/purchases.ts';

const billingFor = (token: string) =>
  createBillingClient(createClient(supabaseUrl, 'anon-key', { accessToken: () => Promise.resolve(token) }), {
    baseDelayMs: 5,
    maxDelayMs: 20,
  });
/** The product's server reporting usage with the service role key (a browser never does). */
const reporter = createUsageReporter(createClient(supabaseUrl, 'anon-key'), env('SUPABASE_SERVICE_ROLE_KEY'));

// ------------------------------------------------------------------ the contract's shapes

type Kind = 'string' | 'credits' | 'time' | 'number' | 'boolean' | 'object' | 'array' | 'null';
/** Every field of T with the JSON kinds it may take: the compiler refuses a missing or extra field. */
type Shape<T> = { [K in keyof T]-?: Kind | Kind[] };

function kindOf(v: unknown): Kind[] {
  if (v === null) return ['null'];
  if (Array.isArray(v)) return ['array'];
  if (typeof v !== 'string') return [typeof v as Kind];
  const kinds: Kind[] = ['string'];
  if (/^-?\d+(\.\d+)?$/.test(v)) kinds.push('credits'); // an exact decimal string
  if (/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(v)) kinds.push('time'); // as toISOString writes it
  return kinds;
}

/** `value` has exactly the fields of its contract type, each of a kind the type allows. */
function assertShape<T>(value: T, shape: Shape<T>, what: string) {
  const fields = value as Record<string, unknown>;
  assert.deepEqual(Object.keys(fields).sort(), Object.keys(shape).sort(), `${what}: the contract's fields`);
  for (const [field, allowed] of Object.entries(shape) as [string, Kind | Kind[]][]) {
    const seen = kindOf(fields[field]);
    const ok = [allowed].flat().some((k) => seen.includes(k));
    assert.ok(ok, `${what}.${field} is ${JSON.stringify(fields[field])}; the contract says ${allowed}`);
  }
}

const WalletShape: Shape<Wallet> = { balance: 'credits', held: 'credits', available: 'credits' };
const SummaryShape: Shape<OrgSummary> = {
  id: 'string',
  name: 'string',
  funding: 'string',
  org_pays_first: 'boolean',
  term_started_at: 'time',
  term_ends_at: ['time', 'null'],
  created_at: 'time',
  ai_content_consent: 'boolean',
  role: 'string',
};
const OrgShape: Shape<Org> = { ...SummaryShape, wallet: ['object', 'null'], allowance: ['object', 'null'] };
const ListedInvitationShape: Shape<Invitation> = {
  id: 'string',
  email: 'string',
  role: 'string',
  status: 'string',
  invited_by: 'string',
  created_at: 'time',
  expires_at: 'time',
  answered_at: ['time', 'null'],
};
const InvitationShape: Shape<OrgInvitation> = { ...ListedInvitationShape, org_id: 'string', token: 'string' };
const InvitationListShape: Shape<InvitationList> = { items: 'array', next_cursor: ['string', 'null'] };
const TransferredShape: Shape<OwnershipTransferred> = {
  org_id: 'string',
  owner_id: 'string',
  previous_owner_id: 'string',
  previous_owner_role: 'string',
};
const AnswerShape: Shape<InvitationAnswer> = { org_id: 'string', status: 'string' };
const MemberShape: Shape<OrgMember> = {
  user_id: 'string',
  email: ['string', 'null'],
  role: 'string',
  active: 'boolean',
  joined_at: 'time',
  removed_at: ['time', 'null'],
  allowance: ['object', 'null'],
};
const RemovedShape: Shape<MemberRemoved> = { org_id: 'string', user_id: 'string', active: 'boolean' };
const CapShape: Shape<MemberCap> = { period: 'string', cap: 'credits', spent: 'credits', resets_at: ['time', 'null'] };
const FundedShape: Shape<AllowancesFunded> = { org_id: 'string', funded: 'array', wallet: 'object' };
const FundingShape: Shape<AllowancesFunded['funded'][number]> = {
  user_id: 'string',
  transfer_id: 'string',
  amount: 'credits',
};
const UsageShape: Shape<OrgUsageRow> = {
  member_id: 'string',
  member_email: ['string', 'null'],
  model: ['string', 'null'],
  period_start: 'time',
  credits: 'credits',
  charges: 'number',
};
const LedgerShape: Shape<OrgLedgerEntry> = {
  id: 'string',
  kind: 'string',
  amount: 'credits',
  balance_after: 'credits',
  member_id: ['string', 'null'],
  created_at: 'time',
};
const CheckoutShape: Shape<CheckoutSession> = {
  purchase_id: 'string',
  status: 'string',
  package_id: 'string',
  session_id: ['string', 'null'],
  url: ['string', 'null'],
  expires_at: ['time', 'null'],
  client_temp_id: ['string', 'null'],
  price_cents: 'number',
  currency: 'string',
  credits: 'credits',
  bonus_credits: 'credits',
};

/** An org's answer with its wallet and allowance (when present) checked too. */
function assertOrg(org: Org, what: string) {
  assertShape(org, OrgShape, what);
  if (org.wallet) assertShape(org.wallet, WalletShape, `${what}.wallet`);
  if (org.allowance) assertShape(org.allowance, WalletShape, `${what}.allowance`);
}

// ------------------------------------------------------------------ the methods

Deno.test('each organisation method of the client answers what its contract type says', async () => {
  // The owner signed up without an email address (as a phone sign-in does): members() says null.
  const ownerId = await newUser();
  const [ada, bob] = await Promise.all([person('client-ada'), person('client-bob')]);
  const admin = billingFor(await userToken(ownerId));
  const student = billingFor(ada.token);

  const org = await must(admin.createOrg({ name: 'Client Academy' }));
  assertOrg(org, 'createOrg');
  assert.deepEqual([org.role, org.funding, org.org_pays_first, org.wallet, org.allowance], [
    'owner',
    'allowance',
    true,
    { balance: '0', held: '0', available: '0' },
    null,
  ]);
  const renamed = await must(admin.updateOrg(org.id, { name: 'Client Academy II', org_pays_first: false }));
  assertOrg(renamed, 'updateOrg');
  assert.deepEqual([renamed.name, renamed.org_pays_first], ['Client Academy II', false]);
  const { items: listed } = await must(admin.orgs());
  listed.forEach((o, i) => assertShape(o, SummaryShape, `orgs[${i}]`));
  assert.deepEqual(listed.map((o) => [o.id, o.role, o.name]), [[org.id, 'owner', 'Client Academy II']]);

  // Invitations: Ada accepts hers; Bob declines his; nobody answers another's.
  const invitation = await must(admin.invite(org.id, { email: ada.email }));
  assertShape(invitation, InvitationShape, 'invite');
  assert.deepEqual([invitation.status, invitation.role, invitation.email], ['pending', 'member', ada.email]);
  assert.match(invitation.token, /^[A-Za-z0-9_-]{43}$/);
  const accepted = await must(student.acceptInvitation(invitation.token));
  assertShape(accepted, AnswerShape, 'acceptInvitation');
  assert.deepEqual(accepted, { org_id: org.id, status: 'accepted' });
  const toBob = await must(admin.invite(org.id, { email: bob.email, role: 'admin' }));
  assert.equal(
    (await student.declineInvitation(toBob.token)).error?.code,
    'INVITATION_NOT_FOUND',
    'only the addressee can answer',
  );
  const declined = await must(billingFor(bob.token).declineInvitation(toBob.token));
  assertShape(declined, AnswerShape, 'declineInvitation');
  assert.deepEqual(declined, { org_id: org.id, status: 'declined' });
  const [bobs] = await testDb`select status from billing.org_invitations where id = ${toBob.id}`;
  assert.equal(bobs.status, 'declined');

  // The admin lists the invitations, newest first, and revokes one.
  const toCarol = await must(admin.invite(org.id, { email: `carol-${crypto.randomUUID().slice(0, 8)}@school.test` }));
  const page = await must(admin.invitations(org.id, { limit: 2 }));
  assertShape(page, InvitationListShape, 'invitations');
  page.items.forEach((i, n) => assertShape(i, ListedInvitationShape, `invitations[${n}]`));
  assert.deepEqual(page.items.map((i) => [i.id, i.status]), [[toCarol.id, 'pending'], [toBob.id, 'declined']]);
  const rest = await must(admin.invitations(org.id, { cursor: page.next_cursor ?? '' }));
  assert.deepEqual(rest.items.map((i) => i.id), [invitation.id]);
  const revoked = await must(admin.revokeInvitation(org.id, toCarol.id));
  assertShape(revoked, ListedInvitationShape, 'revokeInvitation');
  assert.equal(revoked.status, 'revoked');

  // A platform admin grants 100; the owner funds every member's allowance with 30.
  const granted = await api(`/orgs/${org.id}/grants`, {
    token: await adminToken(),
    body: { amount: '100', reason: 'client test' },
    headers: key(),
  });
  assert.equal(granted.status, 201, granted.text);
  const funded = await must(admin.fundAllowances(org.id, { amount: '30' }));
  assertShape(funded, FundedShape, 'fundAllowances');
  assertShape(funded.wallet, WalletShape, 'fundAllowances.wallet');
  funded.funded.forEach((f, i) => assertShape(f, FundingShape, `fundAllowances.funded[${i}]`));
  assert.deepEqual(funded.funded.map((f) => [f.user_id, f.amount]), [[ada.id, '30']]);
  assert.equal(funded.wallet.available, '70');
  const [transfer] = await testDb`select idempotency_key from billing.transfers where id = ${
    funded.funded[0].transfer_id
  }`;
  assert.match(transfer.idempotency_key, /^allowance:[0-9a-f-]{36}:/, 'the client sent an Idempotency-Key');
  const seen = await must(student.org(org.id));
  assertOrg(seen, 'org (as a member)');
  assert.deepEqual([seen.role, seen.wallet, seen.allowance], ['member', null, {
    balance: '30',
    held: '0',
    available: '30',
  }], 'a member sees their allowance, not the wallet');
  const refused = await student.fundAllowances(org.id, { amount: '1' });
  assert.deepEqual([refused.data, refused.error?.code, refused.error?.status], [null, 'ORG_FORBIDDEN', 403]);
  assert.ok(refused.error instanceof BillingError);

  // The organisation pays after the student's own credits (org_pays_first: false); she has none.
  const charged = await must(
    reporter.recordUsage({ user_id: ada.id, model: 'gpt-4o-mini', input_tokens: 1000, output_tokens: 1000 }),
  );
  const { items: members } = await must(admin.members(org.id));
  members.forEach((m, i) => {
    assertShape(m, MemberShape, `members[${i}]`);
    if (m.allowance) assertShape(m.allowance, WalletShape, `members[${i}].allowance`);
  });
  assert.deepEqual(members.map((m) => [m.user_id, m.email, m.role]), [
    [ownerId, null, 'owner'],
    [ada.id, ada.email, 'member'],
  ]);
  assert.equal(members[1].allowance?.balance, String(30 - Number(charged.charged)));
  const { items: usage } = await must(admin.orgUsage(org.id, { from: '2026-01-01', to: '2100-01-01T00:00:00Z' }));
  usage.forEach((r, i) => assertShape(r, UsageShape, `orgUsage[${i}]`));
  assert.deepEqual(usage.map((r) => [r.member_id, r.member_email, r.model, r.credits, r.charges]), [[
    ada.id,
    ada.email,
    'gpt-4o-mini',
    charged.charged,
    1,
  ]]);
  const monthly = await must(admin.orgUsage(org.id, {
    from: '2026-01-01T00:00:00Z',
    to: '2100-01-01T00:00:00Z',
    period: 'month',
  }));
  assert.match(monthly.items[0].period_start, /^\d{4}-\d\d-01T00:00:00\.000Z$/, 'a month starts on its first day');
  assert.equal((await must(student.orgUsage(org.id))).items.length, 1, 'the last 30 days by default');
  const csv = await must(admin.orgUsage(org.id, { format: 'csv' }));
  assert.equal(csv.split('\n')[0], 'period_start,member_id,member_email,model,credits,charges');
  assert.ok(csv.includes(`,${ada.id},${ada.email},gpt-4o-mini,`), csv);

  // The ledger, newest first, a page at a time (the cursor is the last entry's id).
  const { items: ledger } = await must(admin.orgLedger(org.id, { limit: 10 }));
  ledger.forEach((e, i) => assertShape(e, LedgerShape, `orgLedger[${i}]`));
  assert.deepEqual(ledger.map((e) => [e.kind, e.amount, e.member_id]), [
    ['allowance', '-30', ada.id],
    ['adjustment', '100', null],
  ]);
  const first = await must(admin.orgLedger(org.id, { limit: 1 }));
  const next = await must(admin.orgLedger(org.id, { limit: 1, cursor: first.next_cursor ?? '' }));
  assert.deepEqual([first.items[0].id, next.items.map((e) => e.id)], [ledger[0].id, [ledger[1].id]]);

  // Buying for the organisation: startCheckout with org_id; paid, the credits land in its wallet.
  const pending = admin.startCheckout({ package_id: 'mini', org_id: org.id });
  const session = await must(pending.done);
  assertShape(session, CheckoutShape, 'startCheckout (org)');
  assert.equal(session.client_temp_id, pending.tempId);
  const [purchase] = await testDb`select org_id, user_id from billing.purchases where id = ${session.purchase_id}`;
  assert.deepEqual([purchase.org_id, purchase.user_id], [org.id, ownerId]);
  await emulator(`/_emulator/checkout/sessions/${session.session_id}/pay`, { outcome: 'succeeded' });
  const credits = Number(session.credits) + Number(session.bonus_credits);
  assert.equal((await must(admin.org(org.id))).wallet?.balance, String(70 + credits));
  assert.equal((await must(admin.balance())).balance, '0', "the buyer's own account gets nothing");

  // A pool caps each member.
  assertOrg(await must(admin.updateOrg(org.id, { funding: 'pool' })), 'updateOrg (pool)');
  const { items: caps } = await must(admin.setMemberCap(org.id, ada.id, { period: 'week', amount: '5' }));
  caps.forEach((c, i) => assertShape(c, CapShape, `setMemberCap[${i}]`));
  assert.deepEqual(caps.map((c) => [c.period, c.cap, c.spent]), [['week', '5', '0']]);
  const none = await must(admin.setMemberCap(org.id, ada.id, { period: 'week', amount: null }));
  assert.deepEqual(none.items, [], 'null removes it');

  const removed = await must(admin.removeMember(org.id, ada.id));
  assertShape(removed, RemovedShape, 'removeMember');
  assert.deepEqual(removed, { org_id: org.id, user_id: ada.id, active: false });
  assert.equal((await student.org(org.id)).error?.code, 'ORG_NOT_FOUND');
  const [{ n }] = await testDb`select count(*)::int as n from billing.org_members where org_id = ${org.id} and active`;
  assert.equal(n, 1, 'only the owner is left');
  assert.equal((await admin.transferOwnership(org.id, ada.id)).error?.code, 'MEMBER_NOT_FOUND');
  const kept = await must(admin.transferOwnership(org.id, ownerId));
  assertShape(kept, TransferredShape, 'transferOwnership');
  assert.deepEqual([kept.owner_id, kept.previous_owner_role], [ownerId, 'owner'], 'to themselves: nothing changes');
});
