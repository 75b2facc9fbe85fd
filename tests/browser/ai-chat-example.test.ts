// The Next.js example's chat (examples/nextjs: lib/chat.tsx with useChat, app/api/chat/route.ts
// with streamText) in Chromium. Next.js itself does not run here: the same route handler is
// served by a small Deno server beside the page, the same component mounted on its own, both at
// the AI SDK versions the example pins (tests/support/next-example.ts). A student without credits
// reads the gateway's sentence (what was needed, what is available) and a link to buy; a funded
// student's chat answers turn after turn, each charged exactly the rate card's price of its usage.
import assert from 'node:assert/strict';
import type { Browser } from 'playwright-core';
import { activeHolds, callsOf, cardPrice, refusalsOf } from '../support/ai.ts';
import { browserTest } from '../support/browser.ts';
import { env, fund, newUser, userToken } from '../support/helpers.ts';
import { serveChatExample } from '../support/next-example.ts';

/** The chat page of a student (with `credits`), its /api/chat the example's route handler. */
async function chatPage(browser: Browser, credits: string) {
  const id = await newUser();
  if (credits !== '0') await fund(id, credits);
  const [app, token] = await Promise.all([serveChatExample(env('SUPABASE_URL')), userToken(id)]);
  const page = await browser.newPage();
  await page.goto(`${app.origin}/?token=${encodeURIComponent(token)}`);
  const send = async (text: string) => {
    await page.getByPlaceholder('Ask anything').fill(text);
    await page.getByRole('button', { name: 'Send' }).click();
  };
  return { id, page, send, close: app.close };
}

browserTest(
  "the example chat shows a student without credits the gateway's sentence and a link to buy",
  async (browser) => {
    const { id, page, send, close } = await chatPage(browser, '0');
    try {
      await send('What is a prime number?');
      const alert = page.getByRole('alert');
      await alert.waitFor();
      assert.match(
        await alert.textContent() ?? '',
        /^Not enough credits for this request: it needs \d+(\.\d+)? credits and 0 are available\. Buy credits, or ask for a shorter answer\. Buy credits$/,
      );
      assert.equal(await alert.getByRole('link', { name: 'Buy credits' }).getAttribute('href'), '/credits');
      assert.deepEqual((await refusalsOf(id)).map((r) => r.failure), ['INSUFFICIENT_CREDITS']);
      assert.equal((await callsOf(id)).length, 0);
    } finally {
      await close();
    }
  },
);

browserTest(
  "the example chat carries a funded student's three-turn chat, each turn charged exactly",
  async (browser) => {
    const { id, page, send, close } = await chatPage(browser, '100');
    try {
      // Each turn's answer is longer than the last: its last word is in no earlier answer.
      for (const [n, words] of [[1, 5], [2, 8], [3, 11]]) {
        await send(`Turn ${n}. #standin words=${words}`);
        await page.locator('[data-role="assistant"]', { hasText: `word${words}` }).waitFor();
      }
      assert.equal(await page.getByRole('alert').count(), 0);
      for (let i = 0; i < 400; i++) {
        const now = await callsOf(id);
        if (now.length === 3 && now.every((c) => c.status !== 'held')) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      const calls = await callsOf(id);
      assert.deepEqual(calls.map((c) => c.status), ['charged', 'charged', 'charged']);
      for (const c of calls) {
        const u = c.usage as Record<string, number>;
        const price = await cardPrice('gpt-4o-mini', {
          input: u.input_tokens,
          cached: u.cached_input_tokens,
          output: u.output_tokens,
          reasoning: u.reasoning_tokens,
        });
        assert.equal(c.charged, price, 'each turn charged exactly the rate card price of its usage');
      }
      assert.equal(await activeHolds(id), 0);
    } finally {
      await close();
    }
  },
);
