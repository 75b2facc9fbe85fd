// The example page's organisation view in Chromium, against the local stack: an owner sees the
// wallet and members, invites by email, funds every member's allowance, buys credits for the
// organisation through the emulator's hosted Checkout or on an invoice, and reads the usage report; a member sees
// their allowance and none of the admin controls; an invitation link is accepted on the page.
// Each view is checked for what a person sees at desktop and phone width.
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { browserTest, legibility } from '../support/browser.ts';
import { api, env, functionsUrl, testDb } from '../support/helpers.ts';
import { person, school, usage } from '../support/orgs.ts';
import { roundedCredits } from '../../examples/student/credits.ts';
import { emulator } from '../support/purchases.ts';
import { approveInvoicing } from '../support/invoices.ts';

const pageUrl = env('STUDENT_PAGE_URL');
const apiBase = functionsUrl.replace(/\/functions\/v1$/, '');
const artifacts = new URL('../../artifacts/', import.meta.url);

async function signIn(page: Page, token: string, hash = '') {
  await page.goto(`${pageUrl}?api=${encodeURIComponent(apiBase)}`);
  await page.locator('#token').fill(token);
  await page.locator('#use-token').click();
  await page.waitForSelector('body[data-ready="true"]');
  if (hash) {
    await page.goto(`${pageUrl}${hash}`);
    await page.waitForSelector('body[data-ready="true"]');
  }
}

async function assertLegible(page: Page, name: string) {
  for (const [width, label] of [[1280, 'desktop'], [390, 'phone']] as const) {
    await page.setViewportSize({ width, height: 844 });
    const seen = await legibility(page);
    assert.ok(seen.overflow <= 0, `${name}, ${label}: scrolls sideways by ${seen.overflow}px`);
    assert.deepEqual(seen.tooSmall, [], `${name}, ${label}: text under 12 px`);
    assert.deepEqual(seen.spilled, [], `${name}, ${label}: text cut off`);
    await page.screenshot({ path: new URL(`org-${name}-${label}.png`, artifacts).pathname, fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 844 });
}

const text = async (page: Page, selector: string) => (await page.locator(selector).first().textContent())?.trim() ?? '';
/** What an organisation account holds in the database: its wallet (member null) or a member's allowance. */
const balanceOf = async (org: string, member: string | null) =>
  (await testDb`select trim_scale(balance)::text as b from billing.accounts
                where org_id = ${org} and member_id is not distinct from ${member}::uuid`)[0]?.b;
/** The cells of a table's body rows, as shown. */
const cells = (page: Page, testId: string) =>
  page.locator(`[data-testid="${testId}"] tr:has(td)`).evaluateAll((rows) =>
    rows.map((r) => [...(r as unknown as { cells: { textContent: string }[] }).cells].map((c) => c.textContent))
  );

browserTest('an owner runs the organisation from the page; a member sees only their allowance', async (browser) => {
  const [owner, ada] = await Promise.all([person('page-owner'), person('page-ada')]);
  const org = await school(owner, [ada], 'allowance', '100');
  const renamed = await api(`/orgs/${org}`, {
    method: 'PATCH',
    token: owner.token,
    body: { name: 'Riverside College' },
  });
  assert.equal(renamed.status, 200, renamed.text);

  const page = await browser.newPage();
  await signIn(page, owner.token);
  await page.locator('#orgs:not([hidden])').waitFor();
  assert.match(await text(page, '#orgs h3'), /Riverside College/);
  assert.equal(await text(page, '[data-testid="org-wallet"]'), 'Wallet: 100 credits available');
  assert.deepEqual(await cells(page, 'org-members'), [[owner.email, 'owner', '—'], [ada.email, 'member', '—']]);

  // Invite by email: the invitation exists, addressed to them.
  await page.getByLabel('email to invite').fill('newcomer@school.test');
  await page.getByRole('button', { name: 'Invite' }).click();
  await page.locator('[data-testid="org-status"]', { hasText: 'Invitation sent' }).waitFor();
  const [invited] =
    await testDb`select status from billing.org_invitations where org_id = ${org} and email = 'newcomer@school.test'`;
  assert.equal(invited?.status, 'pending');

  // Fund every member: 10 credits each, from the wallet.
  await page.getByLabel('credits per member').fill('10');
  await page.getByRole('button', { name: 'Give every member' }).click();
  await page.locator('[data-testid="org-wallet"]', { hasText: 'Wallet: 90 credits available' }).waitFor();
  assert.deepEqual([await balanceOf(org, null), await balanceOf(org, ada.id)], ['90', '10'], 'in the database too');
  assert.deepEqual(await cells(page, 'org-members'), [[owner.email, 'owner', '—'], [ada.email, 'member', '10']]);

  // Ada spends from her allowance; the owner's report shows it: one row for the day, her and the model.
  const spent = await usage(ada.token);
  assert.equal(spent.status, 201, spent.text);
  const day = new Date().toISOString().slice(0, 10);
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]');
  const head = await page.locator('[data-testid="org-usage"] th').allTextContents();
  assert.deepEqual(head, ['Day', 'Member', 'Model', 'Credits', 'Charges']);
  const charged = roundedCredits((spent.body.data as { charged: string }).charged);
  assert.deepEqual(await cells(page, 'org-usage'), [[day, ada.email, 'gpt-4o-mini', charged, '1']]);
  await assertLegible(page, 'owner');

  // Buy mini for the organisation through hosted Checkout: the wallet grows by 5,000.
  await page.getByLabel('package for the organisation').selectOption('mini');
  await page.getByRole('button', { name: 'Buy for the organisation' }).click();
  await page.waitForURL(/\/_emulator\/checkout\/cs_test_/);
  await page.locator('#pay').click();
  await page.waitForURL((u) => u.href.startsWith(pageUrl) && u.searchParams.has('session_id'));
  await page.locator('#notice', { hasText: 'Payment received' }).waitFor();
  await page.locator('[data-testid="org-wallet"]', { hasText: 'Wallet: 5,090 credits available' }).waitFor();
  assert.equal(await text(page, '#balance'), '0', "the owner's own balance is untouched");

  // The member's view: her allowance, no admin controls.
  const member = await browser.newPage();
  await signIn(member, ada.token);
  await member.locator('#orgs:not([hidden])').waitFor();
  assert.match(await text(member, '#orgs'), /Riverside College pays for your AI usage before your own credits/);
  assert.match(await text(member, '#orgs'), /Your allowance: 7 credits/);
  for (const control of ['Invite', 'Give every member', 'Buy for the organisation']) {
    assert.equal(await member.getByRole('button', { name: control }).count(), 0, `no ${control} for a member`);
  }
  assert.equal(await member.locator('[data-testid="org-wallet"]').count(), 0);
  await assertLegible(member, 'member');
});

browserTest('an invitation link is answered on the page: accepted, the organisation appears', async (browser) => {
  const [owner, carol] = await Promise.all([person('link-owner'), person('link-carol')]);
  const org = await school(owner, [], 'pool', null);
  const invited = await api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: carol.email } });
  const { token } = invited.body.data as { token: string };
  const page = await browser.newPage();
  await signIn(page, carol.token, `#invitation=${token}`);
  await page.locator('[data-testid="invitation"]').waitFor();
  await page.getByRole('button', { name: 'Accept' }).click();
  await page.locator('#orgs', { hasText: 'You spend from its shared pool' }).waitFor();
  assert.equal(new URL(page.url()).hash, '', 'the token leaves the address bar');
  const [m] =
    await testDb`select role, active from billing.org_members where org_id = ${org} and user_id = ${carol.id}`;
  assert.deepEqual([m.role, m.active], ['member', true]);
});

browserTest(
  'an admin asks for an invoice on the page; it is listed with its PDF, and paid it fills the wallet',
  async (browser) => {
    const owner = await person('invoice-owner');
    const org = await school(owner, [], 'allowance', null);
    await approveInvoicing(org);
    const page = await browser.newPage();
    await signIn(page, owner.token);
    await page.locator('#orgs:not([hidden])').waitFor();
    assert.match(await text(page, '[data-testid="org-invoice"]'), /No invoices yet/);

    await page.getByLabel('package to invoice').selectOption('mini');
    await page.getByLabel('packages').fill('2');
    await page.getByLabel('PO number').fill('PO-88');
    await page.getByLabel('payment terms').selectOption('45');
    await page.getByLabel('address').fill('1 Lake Road');
    await page.getByLabel('city').fill('Springfield');
    await page.getByLabel('postal code').fill('12345');
    await page.getByRole('button', { name: 'Request invoice' }).click();
    await page.locator('[data-testid="org-status"]', { hasText: 'Invoice sent to your confirmed email address' })
      .waitFor();
    const due = new Date(Date.now() + 45 * 86_400_000).toISOString().slice(0, 10);
    const today = new Date().toISOString().slice(0, 10);
    const row = [today, 'Mini × 2 (10,000 credits)', 'PO-88', 'open', '$10.00', due, 'Pay PDF'];
    assert.deepEqual((await cells(page, 'org-invoices'))[0].map((c) => c?.replace(/\s+/g, ' ')), row);
    const pdf = await page.getByRole('link', { name: 'PDF' }).getAttribute('href');
    assert.equal((await fetch(pdf ?? '').then((r) => r.text())).slice(0, 5), '%PDF-');
    await assertLegible(page, 'invoices');

    // The school pays by bank transfer: the row reads paid, the wallet has the credits.
    const [inv] = await testDb`select stripe_invoice_id from billing.org_invoices where org_id = ${org}`;
    await emulator(`/_emulator/invoices/${inv.stripe_invoice_id}/pay`, { method: 'customer_balance' });
    await page.reload();
    await page.waitForSelector('body[data-ready="true"]');
    await page.locator('[data-testid="org-wallet"]', { hasText: 'Wallet: 10,000 credits available' }).waitFor();
    assert.equal((await cells(page, 'org-invoices'))[0][3], 'paid');
  },
);
