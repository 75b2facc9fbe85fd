// The example student page's "Your AI calls", in Chromium against the local stack: a student's
// own latest calls through the gateway (model, tokens by kind, cost, outcome and code), never
// another student's; a call asked from the page joins the list once it is settled; a student
// without calls sees the empty state. Readable at desktop and phone width (a screenshot of the
// phone's goes to artifacts/).
import assert from 'node:assert/strict';
import type { Page } from 'playwright-core';
import { assertReadable, browserTest, signInWithToken } from '../support/browser.ts';
import { ask, callsOf, settled, student } from '../support/ai.ts';
import { roundedCredits } from '../../examples/student/credits.ts';

const artifacts = new URL('../../artifacts/', import.meta.url);

const rowText = async (page: Page, id: string) =>
  ((await page.locator(`#ai-calls tr[data-call="${id}"]`).textContent()) ?? '').trim();

browserTest('a student sees their own latest AI calls, and never another student’s', async (browser) => {
  const me = await student('100');
  const other = await student('100');
  await me.openai.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: ask('hello #standin words=7 reasoning=2'),
    max_tokens: 40,
  });
  await assert.rejects(
    me.openai.chat.completions.create({ model: 'gpt-4o-mini', messages: ask('#standin fail=500'), max_tokens: 40 }),
  );
  await other.openai.chat.completions.create({
    model: 'gpt-4o',
    messages: ask('mine #standin words=3'),
    max_tokens: 40,
  });
  const [failed, charged] = await callsOf(me.id);
  const [theirs] = await callsOf(other.id);
  assert.deepEqual([charged.status, failed.status, theirs.status], ['charged', 'failed', 'charged']);

  const page = await browser.newPage();
  await signInWithToken(page, me.token);
  await page.locator('#ai-calls table[data-testid="ai-calls"]').waitFor();
  assert.equal(await page.locator('#ai-calls tr[data-call]').count(), 2, 'only the student’s own two calls');
  assert.equal(await page.locator(`#ai-calls tr[data-call="${theirs.id}"]`).count(), 0, 'not another student’s');
  assert.equal(
    await page.locator('#ai-calls tr[data-call]').first().getAttribute('data-call'),
    failed.id,
    'the latest first',
  );
  assert.match(
    await rowText(page, charged.id),
    new RegExp(
      `gpt-4o-mini${charged.usage.input_tokens} in / ${charged.usage.output_tokens} out, 2 reasoning` +
        `${roundedCredits(charged.charged).replace('.', '\\.')} creditsAnswered$`,
    ),
  );
  assert.match(await rowText(page, failed.id), /gpt-4o-mini—0 creditsFailed: nothing charged \(PROVIDER_ERROR_500\)$/);

  // Asked from the page: the call joins the list, charged, once the stream is settled.
  await page.locator('#ask-prompt').fill('What is a prime number? #standin words=4');
  await page.locator('#ask').click();
  await page.locator('#ask-status', { hasText: 'Charged' }).waitFor();
  const asked = await settled(me.id);
  await page.locator(`#ai-calls tr[data-call="${asked.id}"][data-outcome="charged"]`).waitFor();
  assert.match(await rowText(page, asked.id), /creditsAnswered$/);
  await assertReadable(page, 'ai calls');
  await page.locator('#ai-calls-section').screenshot({
    path: new URL('student-ai-calls-phone.png', artifacts).pathname,
  });
});

browserTest('a student without AI calls is told so', async (browser) => {
  const { token } = await student('0');
  const page = await browser.newPage();
  await signInWithToken(page, token);
  await page.locator('#ai-calls', { hasText: 'No AI calls yet' }).waitFor();
});
