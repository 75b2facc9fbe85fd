// The example student page's ask box, in Chromium against the local stack: the answer streams
// through the AI gateway, the hold shows while it runs, the exact charge after (priced from the
// stand-in provider's own count), and the balance drops by exactly that; a student who cannot
// cover the hold is told how much the question may use and nothing is charged.
import assert from 'node:assert/strict';
import { assertReadable, browserTest, signInWithToken } from '../support/browser.ts';
import { fund, newUser, testDb, userToken } from '../support/helpers.ts';

browserTest(
  'a student asks through the gateway: the hold shows while it streams, the exact charge after',
  async (browser) => {
    const id = await newUser();
    await fund(id, '50');
    const page = await browser.newPage();
    await signInWithToken(page, await userToken(id));
    await page.locator('#ask-prompt').fill('What is a prime number? #standin words=30 delay=40');
    await page.locator('#ask').click();
    await page.locator('#ask-status', { hasText: 'Holding up to' }).waitFor();
    await page.locator('#ask-status', { hasText: 'Charged' }).waitFor();
    assert.match(await page.locator('#ask-answer').textContent() ?? '', /word30/);
    const [call] =
      await testDb`select trim_scale(charged)::text as charged from billing.ai_calls where user_id = ${id}`;
    assert.match(await page.locator('#ask-status').textContent() ?? '', new RegExp(`Charged ${call.charged} credits`));
    const [a] = await testDb`select trim_scale(balance)::text as b, held from billing.accounts where user_id = ${id}`;
    assert.equal(a.b, String(50 - Number(call.charged)));
    assert.equal(Number(a.held), 0);
    await page.locator('#ledger', { hasText: 'AI answer (gpt-4o-mini)' }).waitFor();
    await assertReadable(page, 'asked');
  },
);

browserTest(
  'a student who cannot cover the hold is told what the question may use, and nothing is charged',
  async (browser) => {
    const id = await newUser();
    const page = await browser.newPage();
    await signInWithToken(page, await userToken(id));
    await page.locator('#ask').click();
    await page.locator('#ask-status', { hasText: 'may use up to' }).waitFor();
    const [c] =
      await testDb`select count(*)::int as n from billing.ai_calls where user_id = ${id} and status = 'charged'`;
    assert.equal(c.n, 0);
  },
);
