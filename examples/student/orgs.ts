// The organisation view of the example page: a student sees the schools that fund them (their
// allowance, or the shared pool) and answers an invitation from its emailed link
// (#invitation=<token>); an owner or admin sees the wallet, the members with their allowances,
// invites by email, funds every member's allowance, buys credits for the organisation through
// Checkout or asks for them on an invoice (org-invoices.ts), sponsors a student with a code
// (and revokes it), and reads the usage report.
// Everything through the typed client.
/// <reference lib="dom" />
import type { BillingClient, Code, CreditPackage, InvitationPreview, Org, OrgUsageRow } from '../../client/mod.ts';
import { roundedCredits } from './credits.ts';
import { got } from './messages.ts';
import { type Act, el, money, table } from './dom.ts';
import { invoicePart } from './org-invoices.ts';
import { memberUsage } from './member-usage.ts';

type Fail = (err: unknown, retry?: () => void, near?: HTMLElement) => void;

/** What the last action in each organisation did, shown once the view is drawn again. */
const notices = new Map<string, string>();

/** The last 30 days of org-funded spending, newest day first: per day, member and model. */
function usageTable(rows: OrgUsageRow[]) {
  if (rows.length === 0) {
    return el('p', "No spending of the organisation's credits in the last 30 days.", { class: 'muted' });
  }
  return table(
    ['Day', 'Member', 'Model', 'Credits', 'Charges'],
    [...rows].reverse().map((r) => [
      r.period_start.slice(0, 10),
      r.member_email ?? r.member_id,
      r.model ?? 'other',
      roundedCredits(r.credits),
      String(r.charges),
    ]),
    'org-usage',
  );
}

/** An owner's or admin's view of one organisation. */
async function adminView(billing: BillingClient, org: Org, packages: CreditPackage[], reload: () => void, fail: Fail) {
  const box = el('div', '', { class: 'org', 'data-org': org.id });
  const [{ items: members }, { items: usage }, { items: codes }, { items: invoices }] = await Promise.all([
    got(billing.members(org.id)),
    got(billing.orgUsage(org.id)), // the last 30 days, today included
    got(billing.sponsorCodes(org.id)),
    got(billing.orgInvoices(org.id, { limit: 10 })),
  ]);
  const funding = org.funding === 'allowance' ? 'each member spends their allowance' : 'members share the wallet';
  box.append(
    el('h3', org.name),
    el('p', `You are its ${org.role}; ${funding}.`, { class: 'muted' }),
    el('p', `Wallet: ${roundedCredits(org.wallet?.available ?? '0')} credits available`, {
      'data-testid': 'org-wallet',
    }),
  );
  const active = members.filter((m) => m.active);
  box.append(
    table(
      ['Member', 'Role', 'Allowance'],
      active.map((m) => [m.email ?? m.user_id, m.role, m.allowance ? roundedCredits(m.allowance.available) : '—']),
      'org-members',
    ),
    memberUsage(billing, org.id, active),
  );

  // Actions: invite, fund everyone (allowances), buy for the organisation.
  const act: Act = async (button, run, done) => {
    button.disabled = true;
    try {
      await got(run());
      notices.set(org.id, typeof done === 'string' ? done : done());
      reload();
    } catch (err) {
      fail(err, undefined, button);
    } finally {
      button.disabled = false;
    }
  };
  const status = el('p', notices.get(org.id) ?? '', { class: 'muted', role: 'status', 'data-testid': 'org-status' });
  notices.delete(org.id);
  const invite = el('form', '', { class: 'row' });
  const email = el('input', '', { type: 'email', placeholder: 'student@school.edu', 'aria-label': 'email to invite' });
  const inviteButton = el('button', 'Invite');
  invite.append(email, inviteButton);
  invite.onsubmit = (e) => {
    e.preventDefault();
    act(
      inviteButton,
      () => billing.invite(org.id, { email: email.value.trim() }),
      `Invitation sent to ${email.value}.`,
    );
  };
  box.append(invite);
  if (org.funding === 'allowance') {
    const fund = el('form', '', { class: 'row' });
    const amount = el('input', '', {
      inputmode: 'decimal',
      placeholder: 'credits',
      'aria-label': 'credits per member',
    });
    const fundButton = el('button', 'Give every member');
    fund.append(amount, fundButton);
    fund.onsubmit = (e) => {
      e.preventDefault();
      act(fundButton, () => billing.fundAllowances(org.id, { amount: amount.value.trim() }), 'Allowances funded.');
    };
    box.append(fund);
  }
  box.append(sponsorPart(billing, org, codes, act));
  const buy = el('div', '', { class: 'row' });
  const pkg = el('select', '', { 'aria-label': 'package for the organisation' });
  pkg.append(...packages.map((p) => new Option(`${p.name} · ${money(p.price_cents, p.currency)}`, p.id)));
  const buyButton = el('button', 'Buy for the organisation', { class: 'secondary' });
  buyButton.onclick = async () => {
    buyButton.disabled = true;
    try {
      const here = `${location.origin}${location.pathname}`;
      const session = await got(
        billing.startCheckout({ package_id: pkg.value, org_id: org.id, success_url: here }).done,
      );
      if (session.url) location.assign(session.url);
    } catch (err) {
      fail(err, undefined, buyButton);
      buyButton.disabled = false;
    }
  };
  buy.append(pkg, buyButton);
  box.append(
    buy,
    status,
    invoicePart(billing, org, packages, invoices, act),
    el('h4', 'Usage, last 30 days'),
    usageTable(usage),
  );
  return box;
}

/**
 * Sponsor codes: credits set aside from the wallet for one student (by email), the code shown
 * once in the status line; the codes issued so far, and Revoke for those not yet redeemed.
 */
function sponsorPart(billing: BillingClient, org: Org, codes: Code[], act: Act) {
  const part = el('div', '', { 'data-testid': 'org-sponsor' });
  const form = el('form', '', { class: 'row' });
  const email = el('input', '', {
    type: 'email',
    placeholder: 'student@school.edu',
    'aria-label': 'student to sponsor',
  });
  const credits = el('input', '', { inputmode: 'decimal', placeholder: 'credits', 'aria-label': 'credits to give' });
  const issue = el('button', 'Sponsor', { class: 'secondary' });
  form.append(email, credits, issue);
  let made = '';
  form.onsubmit = (e) => {
    e.preventDefault();
    const to = email.value.trim();
    act(
      issue,
      async () => {
        const r = await billing.issueSponsorCode(org.id, { email: to, credits: credits.value.trim() });
        made = r.data?.code ?? '';
        return r;
      },
      () => `Code for ${to}: ${made}. Shown once: give it to them.`,
    );
  };
  part.append(el('h4', 'Sponsor a student'), form);
  if (codes.length === 0) return part;
  const rows = el('table', '', { 'data-testid': 'org-sponsor-codes' });
  rows.append(el('tr'));
  for (const h of ['For', 'Credits', 'Status', '']) rows.rows[0].append(el('th', h));
  for (const c of codes) {
    const tr = el('tr');
    tr.append(
      el('td', c.for_email ?? c.for_user ?? '', { 'data-label': 'For' }),
      el('td', roundedCredits(c.credits), { 'data-label': 'Credits' }),
      el('td', c.status, { 'data-label': 'Status' }),
    );
    const cell = el('td');
    if (c.status === 'active') {
      const revoke = el('button', 'Revoke', { class: 'secondary' });
      revoke.onclick = () =>
        act(revoke, () => billing.revokeSponsorCode(org.id, c.id), 'Code revoked: its credits are back.');
      cell.append(revoke);
    }
    tr.append(cell);
    rows.append(tr);
  }
  part.append(rows);
  return part;
}

/** A member's view: who pays, and what is left of their allowance. */
function memberView(org: Org) {
  const box = el('div', '', { class: 'org', 'data-org': org.id });
  const order = org.org_pays_first ? 'before your own credits' : 'after your own credits';
  const what = org.funding === 'allowance'
    ? `Your allowance: ${roundedCredits(org.allowance?.available ?? '0')} credits`
    : 'You spend from its shared pool, within the limits it sets.';
  box.append(
    el('h3', org.name),
    el('p', `${org.name} pays for your AI usage ${order}.`, { class: 'muted' }),
    el('p', what),
  );
  return box;
}

/** The invitation token in the address (#invitation=<token>, from the emailed link), if any. */
export const invitationToken = () => /^#invitation=([A-Za-z0-9_-]{43})$/.exec(location.hash)?.[1];

/** "You have been invited to join Lakeside School …", or why the link no longer works. */
function invitationWords(preview: InvitationPreview | null): string {
  if (!preview) return 'You have been invited to join an organisation that pays for your credits.';
  const as = preview.role === 'admin' ? ' as an admin' : '';
  if (preview.status !== 'pending') {
    return `This invitation to ${preview.org_name} can no longer be answered: it was ${preview.status}.`;
  }
  return `${preview.org_name} has invited you to join${as}: it pays for your credits.`;
}

/**
 * The invitation card for a signed-out student: which organisation invites them, and that they
 * sign in first (with the address the invitation was sent to) to answer it.
 */
export async function invitationNotice(billing: BillingClient, token: string): Promise<HTMLElement> {
  const { data } = await billing.previewInvitation(token);
  const box = el('div', '', { class: 'invitation', 'data-testid': 'invitation' });
  box.append(el('p', invitationWords(data)));
  if (!data || data.status === 'pending') {
    box.append(el('p', 'Sign in first, with the email address the invitation was sent to; then accept it here.', {
      class: 'muted',
    }));
  }
  return box;
}

/** An invitation from the emailed link: accept or decline, then it leaves the address bar. */
async function invitationPrompt(billing: BillingClient, token: string, reload: () => void, fail: Fail) {
  const { data: preview } = await billing.previewInvitation(token);
  const box = el('div', '', { class: 'invitation', 'data-testid': 'invitation' });
  const accept = el('button', 'Accept');
  const decline = el('button', 'Decline', { class: 'secondary' });
  const answer = (yes: boolean, button: HTMLElement) => async () => {
    try {
      await got(yes ? billing.acceptInvitation(token) : billing.declineInvitation(token));
      history.replaceState(null, '', location.pathname + location.search);
      reload();
    } catch (err) {
      fail(err, undefined, button);
    }
  };
  accept.onclick = answer(true, accept);
  decline.onclick = answer(false, decline);
  const row = el('div', '', { class: 'row' });
  row.append(accept, decline);
  box.append(el('p', invitationWords(preview)));
  if (!preview || preview.status === 'pending') box.append(row);
  return box;
}

/** Renders the organisations section (hidden when the student belongs to none and has no invitation). */
export async function showOrgs(billing: BillingClient, section: HTMLElement, fail: Fail): Promise<void> {
  const reload = () => void showOrgs(billing, section, fail).catch((err) => fail(err));
  const token = invitationToken();
  const [{ items: orgs }, { items: packages }] = await Promise.all([got(billing.orgs()), got(billing.packages())]);
  const body = section.querySelector('.orgs-body') as HTMLElement;
  const views = await Promise.all(orgs.map(async (o) => {
    const full = await got(billing.org(o.id)); // with the wallet (admins) or the caller's allowance
    return full.role === 'member' ? memberView(full) : adminView(billing, full, packages, reload, fail);
  }));
  body.replaceChildren(...(token ? [await invitationPrompt(billing, token, reload, fail)] : []), ...views);
  section.hidden = views.length === 0 && !token;
}
