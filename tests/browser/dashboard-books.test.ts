// The dashboard's books in Chromium against the local stack (dashboard-books.ts, docs/accounting.md):
// after a purchase and usage, the Books panel shows today's entry with the totals and the
// reconciliation GET /admin/journal answers, and each CSV flavour downloads (with the session
// cookie alone) starting with its header; an account of the chart edited on the page persists
// across a reload, and a bad code shows the error envelope's message at its field, changing
// nothing; the Account as of lookup shows a student's balance and lots before and after a
// purchase and a charge, at the right instants, and what a lot may pay for when it says.
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { browserTest, legibility } from '../support/browser.ts';
import { adminToken, api, env, newUser, reportUsage, testDb, userToken } from '../support/helpers.ts';
import { dataOf } from '../support/money.ts';
import { key } from '../support/orgs.ts';
import { buy } from '../support/purchases.ts';

const dashboard = `${env('SUPABASE_URL')}/functions/v1/admin/dashboard`;
const artifacts = new URL('../../artifacts/', import.meta.url);
const day = (offset: number) => new Date(Date.now() + offset * 86_400_000).toISOString().slice(0, 10);
/** The database's clock now, to the microsecond, as the API takes an instant. */
const instant = async () =>
  (await testDb`select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as t`)[0]
    .t as string;

type Entry = { date: string; currency: string; reference: string; debit_total: string; credit_total: string };
type Journal = {
  entries: Entry[];
  reconciliation: {
    currency: string;
    items: { item: string; journal: string; revenue_report: string | null; difference: string | null }[];
  }[];
};

async function signIn(page: Page, token: string) {
  await page.goto(dashboard);
  await page.locator('#token').fill(token);
  await page.locator('#use-token').click();
  await page.waitForSelector('body[data-ready="true"]');
}

/** No sideways scrolling, no text under 12 px, none cut off; and a screenshot of `selector`. */
async function assertLegible(page: Page, selector: string, name: string) {
  for (const [width, label] of [[1280, 'desktop'], [390, 'phone']] as const) {
    await page.setViewportSize({ width, height: 900 });
    const seen = await legibility(page);
    assert.ok(seen.overflow <= 0, `${name}, ${label}: scrolls sideways by ${seen.overflow}px`);
    assert.deepEqual(seen.tooSmall, [], `${name}, ${label}: text under 12 px`);
    assert.deepEqual(seen.spilled, [], `${name}, ${label}: text cut off`);
    await page.locator(selector).screenshot({ path: new URL(`${name}-${label}.png`, artifacts).pathname });
  }
}

const grouped = (s: string) => s.replace(/^(\d+)/, (w) => w.replace(/\B(?=(\d{3})+(?!\d))/g, ','));

browserTest(
  "the Books panel shows a day's totals and reconciliation as the JSON route has them, and downloads each CSV",
  async (browser) => {
    const token = await userToken(await newUser());
    await buy(token, 'starter');
    const spent = await reportUsage('/credits/usage', {
      token,
      headers: key(),
      body: { model: 'gpt-4o', input_tokens: 123 * 50, output_tokens: 0 },
    });
    assert.equal(spent.status, 201, spent.text);
    const admin = await adminToken();
    const [from, to] = [day(0), day(1)];

    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await signIn(page, admin);
    await page.locator('#books-from').fill(from);
    await page.locator('#books-to').fill(to);
    await page.locator('#books-currency').fill('usd');
    // The page's answer and the route's, read one after the other: nothing else runs meanwhile but
    // the ticker, so they agree unless it moved something in between (then both are read again).
    let json: Journal | null = null;
    for (let attempt = 0; attempt < 3; attempt++) {
      await page.locator('#books-show').click();
      await page.waitForSelector('#books[data-ready="true"]');
      const r = await api(`/admin/journal?from=${from}&to=${to}&currency=usd&format=json`, { token: admin });
      assert.equal(r.status, 200, r.text);
      json = dataOf(r) as unknown as Journal;
      const shown = page.locator(`#books tr[data-date="${from}"][data-currency="usd"]`);
      const e = json.entries.find((x) => x.date === from && x.currency === 'usd');
      assert.ok(e, 'today has a usd entry');
      if (
        await shown.getAttribute('data-debit') === e.debit_total &&
        await shown.getAttribute('data-credit') === e.credit_total
      ) break;
    }
    assert.ok(json);
    const entry = json.entries.find((x) => x.date === from && x.currency === 'usd') as Entry;
    assert.equal(entry.debit_total, entry.credit_total, 'the day balances');
    assert.ok(Number(entry.debit_total) > 0, 'the purchase and usage are in it');
    const row = page.locator(`#books tr[data-date="${from}"][data-currency="usd"]`);
    assert.equal(await row.getAttribute('data-debit'), entry.debit_total);
    assert.equal(await row.getAttribute('data-credit'), entry.credit_total);
    const rowText = (await row.textContent()) ?? '';
    assert.ok(
      rowText.includes(`${entry.reference}${grouped(entry.debit_total)}${grouped(entry.credit_total)}balanced`),
      rowText,
    );
    assert.equal(await page.locator('#books tr[data-date]').count(), json.entries.length, 'a row per day and currency');

    // The reconciliation: each item's journal, report and difference as the route answers them.
    const recon = json.reconciliation.find((r) => r.currency === 'usd');
    assert.ok(recon);
    for (const item of recon.items) {
      const tr = page.locator(`#books-recon table[data-currency="usd"] tr[data-item="${item.item}"]`);
      assert.deepEqual(
        [
          await tr.getAttribute('data-journal'),
          await tr.getAttribute('data-report'),
          await tr.getAttribute('data-difference'),
        ],
        [item.journal, item.revenue_report ?? '', item.difference ?? ''],
        item.item,
      );
    }
    const gmv = recon.items.find((i) => i.item === 'gmv_cents');
    assert.ok(gmv && Number(gmv.journal) > 0);
    const gmvText = (await page.locator('#books-recon tr[data-item="gmv_cents"]').textContent()) ?? '';
    const dollars = `${grouped(String(Math.floor(Number(gmv.journal) / 100)))}.${gmv.journal.slice(-2)}`;
    assert.ok(gmvText.startsWith(`Credit sales (GMV)${dollars}${dollars}0`), gmvText);

    // Each flavour: a file named as the server names it, its header first, today's journal in it.
    const headers = {
      plain: 'date,reference,currency,account_code,account_name,account,source,description,debit,credit',
      xero:
        '*Narration,*Date,Description,*AccountCode,*TaxRate,*Amount,TrackingName1,TrackingOption1,TrackingName2,TrackingOption2',
      qbo: 'Journal No.,Journal Date,Account Name,Debits,Credits,Description,Name',
    };
    for (const [flavour, header] of Object.entries(headers)) {
      const [download] = await Promise.all([
        page.waitForEvent('download'),
        page.locator(`#books-downloads button[data-flavour="${flavour}"]`).click(),
      ]);
      assert.equal(download.suggestedFilename(), `journal-${from}-${to}-${flavour}.csv`);
      const text = await Deno.readTextFile(await download.path());
      const [first, ...rows] = text.split('\r\n');
      assert.equal(first, header, flavour);
      assert.ok(rows.length > 1, `${flavour}: lines follow the header`);
      const mark = flavour === 'xero' ? `USD journal for ${from}` : entry.reference;
      assert.ok(text.includes(mark), `${flavour} has today's journal`);
    }
    assert.equal(await page.locator('#books .bad').count(), 0, 'no download failed');
    await assertLegible(page, '#books-section', 'dashboard-books');
  },
);

browserTest(
  'an account edited in the chart persists across a reload; a bad code shows the error at its field and changes nothing',
  async (browser) => {
    const admin = await adminToken();
    type Account = { key: string; code: string; name: string };
    const chart = async () => (dataOf(await api('/admin/journal/accounts', { token: admin })).items as Account[]);
    const before = (await chart()).find((a) => a.key === 'stripe_fees') as Account;
    const code = `T-${crypto.randomUUID().slice(0, 6)}`;
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const input = (field: string) => page.locator(`#chart tr[data-key="stripe_fees"] input[name="${field}"]`);
    try {
      await signIn(page, admin);
      await input('code').waitFor();
      assert.equal(await input('code').inputValue(), before.code);
      await input('code').fill(code);
      await input('name').fill(`${before.name} (test)`);
      await page.locator('#chart-save').click();
      await page.locator('#chart-status', { hasText: 'Saved.' }).waitFor();

      await page.reload();
      await page.waitForSelector('body[data-ready="true"]');
      await input('code').waitFor();
      assert.equal(await input('code').inputValue(), code, 'the new code, read back after a reload');
      assert.equal(await input('name').inputValue(), `${before.name} (test)`);
      const saved = (await chart()).find((a) => a.key === 'stripe_fees');
      assert.deepEqual([saved?.code, saved?.name], [code, `${before.name} (test)`]);

      // A code Xero cannot take: the envelope's message, the field marked, nothing saved.
      await input('code').fill('has space');
      await page.locator('#chart-save').click();
      await page.locator('#chart-error').waitFor();
      assert.match(
        (await page.locator('#chart-error').textContent()) ?? '',
        /^VALIDATION_FAILED: accounts\.0\.code must be 1 to 10 letters, digits, dots, hyphens or underscores/,
      );
      assert.equal(await input('code').getAttribute('aria-invalid'), 'true');
      assert.equal(await page.locator('#chart input[aria-invalid]').count(), 1, 'only that field is marked');
      assert.equal(
        (await chart()).find((a) => a.key === 'stripe_fees')?.code,
        code,
        'a refused change changed nothing',
      );
      await assertLegible(page, '#chart-form', 'dashboard-chart');
    } finally {
      const r = await api('/admin/journal/accounts', {
        method: 'PUT',
        token: admin,
        body: { accounts: [{ key: 'stripe_fees', code: before.code, name: before.name }] },
      });
      assert.equal(r.status, 200, r.text);
    }
  },
);

browserTest(
  'the Account as of lookup shows a balance before and after a purchase and a charge, at the right instants',
  async (browser) => {
    const user = await newUser();
    const token = await userToken(user);
    const before = await instant();
    await buy(token, 'mini'); // 5,000 credits
    const bought = await instant();
    const charged = await reportUsage('/credits/usage', {
      token,
      headers: key(),
      body: { model: 'gpt-4o', input_tokens: 100 * 50, output_tokens: 0 },
    });
    assert.equal(charged.status, 201, charged.text);
    const after = await instant();

    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await signIn(page, await adminToken());
    const lookUp = async (at: string) => {
      await page.locator('#as-of-user').fill(user);
      await page.locator('#as-of-at').fill(at);
      await page.locator('#as-of').evaluate((e) => (e.innerHTML = ''));
      await page.locator('#as-of-show').click();
      await page.locator('#as-of > *').first().waitFor();
      return {
        balance: await page.locator('#as-of [data-kpi="as_of_balance"]').getAttribute('data-value'),
        text: ((await page.locator('#as-of').textContent()) ?? '').trim(),
        lots: await page.locator('#as-of tr[data-lot] td[data-remaining]').evaluateAll((tds) =>
          tds.map((td) => td.getAttribute('data-remaining'))
        ),
      };
    };

    const was = await lookUp(before);
    assert.equal(was.balance, '0', was.text);
    assert.match(was.text, /^0 credits at .* UTCheld 0 · available 0No lots then\.$/);
    assert.deepEqual(was.lots, []);

    const then = await lookUp(bought);
    assert.equal(then.balance, '5000', then.text);
    assert.match(then.text, new RegExp(`^5,000 credits at ${bought.slice(0, 19).replace('T', ' ')} UTC`));
    assert.deepEqual(then.lots, ['5000'], 'the purchase lot, whole');
    assert.match(then.text, /purchase\s*paid/);

    const now = await lookUp(after);
    assert.equal(now.balance, '4900', now.text);
    assert.deepEqual(now.lots, ['4900']);

    // A bare date-time is UTC; not a UUID or in the future: the route's refusal, shown in place.
    const bare = await lookUp(bought.slice(0, -1)); // no Z
    assert.equal(bare.balance, '5000', 'a date-time without an offset reads as UTC');
    await page.locator('#as-of-user').fill('not-a-user');
    await page.locator('#as-of-show').click();
    await page.locator('#as-of .bad', { hasText: 'VALIDATION_FAILED' }).waitFor();
    await page.locator('#as-of-user').fill(user);
    await page.locator('#as-of-at').fill(new Date(Date.now() + 3_600_000).toISOString());
    await page.locator('#as-of-show').click();
    await page.locator('#as-of .bad', { hasText: /VALIDATION_FAILED: at must not be in the future/ }).waitFor();

    // What a lot may pay for (applies_to; null: any model).
    const granted = await api('/credits/grants', {
      token: await adminToken(),
      headers: key(),
      body: {
        user_id: user,
        amount: '10',
        reason: 'a course',
        kind: 'promo_grant',
        lot: { applies_to: ['claude-haiku-4-5', 'gpt-4o-mini*'] },
      },
    });
    assert.equal(granted.status, 201, granted.text);
    await lookUp(new Date().toISOString());
    assert.equal(
      (await page.locator('#as-of tr[data-lot] td.notes').first().textContent())?.trim(),
      'only for: claude-haiku-4-5, gpt-4o-mini*',
    );
    await assertLegible(page, '#as-of', 'dashboard-as-of');
  },
);
