// The organisation view of the example page: a student sees the schools that fund them (their
// allowance, or the shared pool) and answers an invitation from its emailed link
// (#invitation=<token>); an owner or admin sees the wallet, the members with their allowances,
// invites by email, funds every member's allowance, buys credits for the organisation through
// Checkout, and reads the usage report. Everything through the typed client.
/// <reference lib="dom" />
import type { BillingClient, CreditPackage, Org, OrgMember, OrgUsageRow } from '../../client/mod.ts';
import { roundedCredits } from './credits.ts';

type Fail = (err: unknown, retry?: () => void) => void;

/** What the last action in each organisation did, shown once the view is drawn again. */
const notices = new Map<string, string>();

/** An element with text (never HTML: names and emails come from users). */
function el<K extends keyof HTMLElementTagNameMap>(tag: K, text = '', attrs: Record<string, string> = {}) {
  const e = document.createElement(tag);
  e.textContent = text;
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function table(head: string[], rows: string[][], testId: string) {
  const t = el('table', '', { 'data-testid': testId });
  t.append(el('tr'));
  for (const h of head) t.rows[0].append(el('th', h));
  for (const r of rows) {
    const tr = el('tr');
    r.forEach((c, i) => tr.append(el('td', c, { 'data-label': head[i] })));
    t.append(tr);
  }
  return t;
}

const money = (cents: number, currency: string) =>
  new Intl.NumberFormat(undefined, { style: 'currency', currency }).format(cents / 100);

/** The last 30 days of org-funded spending, newest day first: per day, member and model. */
function usageTable(rows: OrgUsageRow[], members: OrgMember[]) {
  if (rows.length === 0) {
    return el('p', "No spending of the organisation's credits in the last 30 days.", { class: 'muted' });
  }
  const who = new Map(members.map((m) => [m.user_id, m.email ?? m.user_id]));
  return table(
    ['Day', 'Member', 'Model', 'Credits', 'Charges'],
    [...rows].reverse().map((r) => [
      r.period_start.slice(0, 10),
      who.get(r.member_id) ?? r.member_id,
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
  const [members, usage] = await Promise.all([
    billing.members(org.id),
    billing.orgUsage(org.id, {
      from: new Date(Date.now() - 30 * 86_400_000).toISOString(),
      to: new Date(Date.now() + 60_000).toISOString(),
    }),
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
  box.append(table(
    ['Member', 'Role', 'Allowance'],
    active.map((m) => [m.email ?? m.user_id, m.role, m.allowance ? roundedCredits(m.allowance.available) : '—']),
    'org-members',
  ));

  // Actions: invite, fund everyone (allowances), buy for the organisation.
  const act = async (button: HTMLButtonElement, run: () => Promise<unknown>, done: string) => {
    button.disabled = true;
    try {
      await run();
      notices.set(org.id, done);
      reload();
    } catch (err) {
      fail(err);
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
  const buy = el('div', '', { class: 'row' });
  const pkg = el('select', '', { 'aria-label': 'package for the organisation' });
  pkg.append(...packages.map((p) => new Option(`${p.name} · ${money(p.price_cents, p.currency)}`, p.id)));
  const buyButton = el('button', 'Buy for the organisation', { class: 'secondary' });
  buyButton.onclick = async () => {
    buyButton.disabled = true;
    try {
      const here = `${location.origin}${location.pathname}`;
      const session = await billing.startCheckout({ package_id: pkg.value, org_id: org.id, success_url: here }).done;
      if (session.url) location.assign(session.url);
    } catch (err) {
      fail(err);
      buyButton.disabled = false;
    }
  };
  buy.append(pkg, buyButton);
  box.append(buy, status, el('h4', 'Usage, last 30 days'), usageTable(usage, members));
  return box;
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

/** An invitation from the emailed link: accept or decline, then it leaves the address bar. */
function invitationPrompt(billing: BillingClient, token: string, reload: () => void, fail: Fail) {
  const box = el('div', '', { class: 'invitation', 'data-testid': 'invitation' });
  const accept = el('button', 'Accept');
  const decline = el('button', 'Decline', { class: 'secondary' });
  const answer = (yes: boolean) => async () => {
    try {
      await (yes ? billing.acceptInvitation(token) : billing.declineInvitation(token));
      history.replaceState(null, '', location.pathname + location.search);
      reload();
    } catch (err) {
      fail(err);
    }
  };
  accept.onclick = answer(true);
  decline.onclick = answer(false);
  const row = el('div', '', { class: 'row' });
  row.append(accept, decline);
  box.append(el('p', 'You have been invited to join an organisation that pays for your credits.'), row);
  return box;
}

/** Renders the organisations section (hidden when the student belongs to none and has no invitation). */
export async function showOrgs(billing: BillingClient, section: HTMLElement, fail: Fail): Promise<void> {
  const reload = () => void showOrgs(billing, section, fail).catch((err) => fail(err));
  const token = /^#invitation=([A-Za-z0-9_-]{43})$/.exec(location.hash)?.[1];
  const [orgs, packages] = await Promise.all([billing.orgs(), billing.packages()]);
  const body = section.querySelector('.orgs-body') as HTMLElement;
  const views = await Promise.all(orgs.map(async (o) => {
    const full = await billing.org(o.id); // with the wallet (admins) or the caller's allowance
    return full.role === 'member' ? memberView(full) : adminView(billing, full, packages, reload, fail);
  }));
  body.replaceChildren(...(token ? [invitationPrompt(billing, token, reload, fail)] : []), ...views);
  section.hidden = views.length === 0 && !token;
}
