// The dashboard's Packages and plans forms, its margins for a model without a provider price, and
// its Organisations table, in Chromium against the local stack: an admin creates a package, makes
// a new version and retires it from the page; a model sold without a provider price reads
// "unknown", never 100%; an organisation with a long name and a large purchase keeps its table
// inside its own box, and the page never scrolls sideways, at 1280 and 390 px. Screenshots go to
// artifacts/.
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { browserTest, legibility } from '../support/browser.ts';
import { adminToken, api, env, fund, newUser, reportUsage, testDb, userToken } from '../support/helpers.ts';
import { emulator } from '../support/purchases.ts';
import { key, person, school, usage } from '../support/orgs.ts';

const dashboard = `${env('SUPABASE_URL')}/functions/v1/admin/dashboard`;
const artifacts = new URL('../../artifacts/', import.meta.url);

async function signIn(page: Page, token: string) {
  await page.goto(dashboard);
  await page.locator('#token').fill(token);
  await page.locator('#use-token').click();
  await page.waitForSelector('body[data-ready="true"]');
}

/** An organisation whose name has a 60-letter word, buying the largest package for its pool. */
async function plantOrganisation() {
  const [owner, member] = await Promise.all([person('wide-owner'), person('wide-member')]);
  const org = await school(owner, [member], 'pool', null);
  const name = `Académie ${'Internationale'.repeat(4)}${crypto.randomUUID().slice(0, 4)} des Sciences Appliquées`;
  await api(`/orgs/${org}`, { method: 'PATCH', token: owner.token, body: { name } });
  const co = await api('/checkout/sessions', {
    token: owner.token,
    body: { package_id: 'max', org_id: org },
    headers: key(),
  });
  await emulator(`/_emulator/checkout/sessions/${(co.body.data as { session_id: string }).session_id}/pay`);
  assert.equal((await usage(member.token)).status, 201);
  return name;
}

/** A model sold through a rate card with no provider price: its cost is unknown. */
async function plantUnpricedModel() {
  const model = `dash-unpriced-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from)
    values (${model}, 1, 1, 1, 2, now() - interval '1 hour')`;
  const user = await newUser();
  await fund(user, '1000');
  const r = await reportUsage('/credits/usage', {
    token: await userToken(user),
    headers: key(),
    body: { model, input_tokens: 100_000, output_tokens: 100_000 },
  });
  assert.equal(r.status, 201, r.text);
  return model;
}

/** No sideways scrolling; the Organisations table inside its section, scrolling in its own box when wider. */
async function assertOrganisationsFit(page: Page, width: number, name: string) {
  await page.setViewportSize({ width, height: 900 });
  const seen = await legibility(page);
  assert.ok(seen.overflow <= 0, `${name}: the page scrolls sideways by ${seen.overflow}px`);
  const box = await page.evaluate(() => {
    const table = document.querySelector('#orgs table') as HTMLElement;
    const wrapper = table.parentElement as HTMLElement;
    const section = document.querySelector('#orgs')?.closest('section') as HTMLElement;
    const [t, w, s] = [table, wrapper, section].map((e) => e.getBoundingClientRect());
    return {
      scrolls: getComputedStyle(wrapper).overflowX === 'auto',
      wrapperInSection: w.left >= s.left - 1 && w.right <= s.right + 1,
      tableFits: t.width <= w.width + 1,
      reachable: wrapper.scrollWidth >= Math.floor(t.width),
    };
  });
  assert.ok(box.scrolls, `${name}: the table has a box of its own that scrolls`);
  assert.ok(box.wrapperInSection, `${name}: the box stays inside its section`);
  assert.ok(box.tableFits || box.reachable, `${name}: every column can be reached`);
  assert.deepEqual(seen.spilled, [], `${name}: text cut off`);
  await page.screenshot({ path: new URL(`${name}.png`, artifacts).pathname, fullPage: true });
}

browserTest(
  'packages from the dashboard, unknown margins, and the Organisations table at 1280 and 390 px',
  async (browser) => {
    const orgName = await plantOrganisation();
    const model = await plantUnpricedModel();
    const admin = await adminToken();
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('dialog', (d) => d.accept('retired from the dashboard test'));
    await signIn(page, admin);
    assert.equal(await page.locator('#error').isHidden(), true, (await page.locator('#error').textContent()) ?? '');

    // The Organisations table: the long name is in it, and it fits or scrolls in its own box.
    await page.waitForSelector(`#orgs tr:has-text("${orgName.slice(0, 20)}")`);
    await assertOrganisationsFit(page, 1280, 'dashboard-orgs-desktop');
    await assertOrganisationsFit(page, 390, 'dashboard-orgs-phone');
    await page.setViewportSize({ width: 1280, height: 900 });

    // Margins: the unpriced model reads "unknown", never 100%.
    const row = page.locator(`#margins tr[data-model="${model}"]`);
    await row.waitFor();
    const text = ((await row.textContent()) ?? '').trim();
    assert.match(text, /unknown/, text);
    assert.doesNotMatch(text, /100%/, text);

    // A package from the form, a new version, then retired with the button (or, should the test
    // fail half-way, by the API: other tests list what is on sale).
    const id = `dash-pack-${crypto.randomUUID().slice(0, 8)}`;
    try {
      await packageFromTheForms(page, id);
    } finally {
      await api(`/admin/packages/${id}/retire`, { token: admin, body: { reason: 'dashboard test cleanup' } });
    }
  },
);

async function packageFromTheForms(page: Page, id: string) {
  const form = page.locator('#catalog-form');
  await form.locator('[name=id]').fill(id);
  await form.locator('[name=name]').fill('Dashboard pack');
  await form.locator('[name=price_cents]').fill('1500');
  await form.locator('[name=credits]').fill('15000');
  await form.locator('[name=reason]').fill('made in the dashboard');
  await page.locator('#catalog-save').click();
  const item = page.locator(`#catalog tr[data-package="${id}"]`);
  await item.waitFor({ state: 'attached' });
  assert.equal(await item.getAttribute('data-version'), '1');

  await form.locator('[name=action]').selectOption('change');
  await form.locator('[name=id]').fill(id);
  await form.locator('[name=price_cents]').fill('1700');
  await form.locator('[name=reason]').fill('a new price');
  await page.locator('#catalog-save').click();
  await page.waitForSelector(`#catalog tr[data-package="${id}"][data-version="2"]`, { state: 'attached' });
  const [saved] =
    await testDb`select version, price_cents, stripe_price_id from billing.credit_packages where id = ${id}`;
  assert.deepEqual([saved.version, saved.price_cents, typeof saved.stripe_price_id], [2, 1700, 'string']);
  await assertOrganisationsFit(page, 390, 'dashboard-catalog-phone');
  await page.setViewportSize({ width: 1280, height: 900 });

  await page.locator(`#catalog button[data-retire="packages"][data-id="${id}"]`).click();
  await page.waitForSelector(`#catalog tr[data-package="${id}"][data-active="false"]`, { state: 'attached' });
  const [gone] = await testDb`select active from billing.credit_packages where id = ${id}`;
  assert.equal(gone.active, false);
  assert.equal(await page.locator('#error').isHidden(), true, (await page.locator('#error').textContent()) ?? '');
}
