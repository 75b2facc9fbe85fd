// The official openai and Anthropic SDKs in a page, in Chromium, as docs/ai-gateway.md § Integrate
// writes them (`dangerouslyAllowBrowser`, the student's token as the key): from an allowed origin
// each carries a three-turn chat through the gateway, streamed, every turn answered and charged
// the rate card's price of the usage the SDK reported, the balance down by exactly their sum.
// Each SDK sends headers of its own (x-stainless-*, anthropic-*, x-api-key): a preflight that did
// not allow them would fail every call as "Connection error." From an unlisted origin it still does.
import assert from 'node:assert/strict';
import type { Browser, Page } from 'playwright-core';
import { balanceOf, callsOf, cardPrice, priceOf, type ReportedUsage } from '../support/ai.ts';
import { browserTest, bundleForBrowser, servePage } from '../support/browser.ts';
import { fund, newUser, testDb, userToken, withGateway } from '../support/helpers.ts';

type Chat = { turns: { answer: string; usage: Record<string, number> }[]; error?: string };
type Sdk = 'chatWithOpenAI' | 'chatWithAnthropic';

const prompts = [
  'What is a prime number? #standin words=6',
  'And a composite one? #standin words=9',
  'Give an example of each. #standin words=4',
];

/** Runs `sdk`'s chat in the page at `origin`, against the gateway at `functionsUrl`. */
async function chatIn(page: Page, origin: string, sdk: Sdk, functionsUrl: string, token: string): Promise<Chat> {
  await page.goto(`${origin}/`);
  await page.waitForFunction(`typeof globalThis.${sdk} === "function"`);
  return await page.evaluate(
    ([name, url, t, p]) =>
      (globalThis as unknown as Record<string, (u: string, t: string, p: string[]) => Promise<unknown>>)[name](
        url,
        t,
        p,
      ),
    [sdk, functionsUrl, token, prompts] as const,
  ) as Chat;
}

/** Waits until the gateway settled `n` calls of the user, and returns them oldest first. */
async function settledCalls(userId: string, n: number) {
  for (let i = 0; i < 200; i++) {
    const calls = await callsOf(userId);
    if (calls.length === n && calls.every((c) => c.status !== 'held')) return calls.reverse();
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${userId}'s ${n} calls did not settle`);
}

/** Every turn answered and charged its usage's card price; the balance fell by exactly their sum. */
async function assertChargedExactly(
  userId: string,
  chat: Chat,
  price: (usage: Record<string, number>) => Promise<string>,
) {
  assert.equal(chat.error, undefined);
  assert.equal(chat.turns.length, 3);
  chat.turns.forEach((t, i) => assert.match(t.answer, new RegExp(`word${[6, 9, 4][i]}`), `turn ${i + 1}: ${t.answer}`));
  const calls = await settledCalls(userId, 3);
  const prices = await Promise.all(chat.turns.map((t) => price(t.usage)));
  assert.deepEqual(
    calls.map((c) => [c.status, c.usage_source, c.charged]),
    prices.map((p) => ['charged', 'provider', p]),
  );
  // Each turn's prompt carried the earlier answers: the provider read a longer conversation each time.
  const inputs = chat.turns.map((t) => t.usage.prompt_tokens ?? t.usage.input_tokens);
  assert.ok(inputs[0] < inputs[1] && inputs[1] < inputs[2], `prompts did not grow: ${inputs}`);
  const [r] = await testDb`select trim_scale(1000 - ${await balanceOf(userId)}::numeric)::text as spent,
    trim_scale((select sum(p::numeric) from unnest(${prices}::text[]) p))::text as priced`;
  assert.equal(r.spent, r.priced);
}

/**
 * A student with 1,000 credits, the page bundling both SDKs served on two origins, and a gateway
 * whose CORS_ALLOWED_ORIGINS lists only the first.
 */
async function withSdkPages(
  browser: Browser,
  fn: (
    s: { id: string; token: string; page: Page; allowed: string; unlisted: string; functionsUrl: string },
  ) => Promise<void>,
) {
  const id = await newUser();
  await fund(id, '1000');
  const [js, token] = await Promise.all([bundleForBrowser(new URL('ai-sdks-page.ts', import.meta.url)), userToken(id)]);
  const [allowed, unlisted] = [servePage(js), servePage(js)];
  try {
    await withGateway({ CORS_ALLOWED_ORIGINS: allowed.origin }, async (functionsUrl) => {
      const page = await browser.newPage();
      await fn({ id, token, page, allowed: allowed.origin, unlisted: unlisted.origin, functionsUrl });
    });
  } finally {
    await Promise.all([allowed.close(), unlisted.close()]);
  }
}

browserTest(
  'the openai SDK in a page carries a three-turn chat through the gateway, each turn charged its usage exactly',
  (browser) =>
    withSdkPages(browser, async ({ id, token, page, allowed, unlisted, functionsUrl }) => {
      const chat = await chatIn(page, allowed, 'chatWithOpenAI', functionsUrl, token);
      await assertChargedExactly(id, chat, (u) => priceOf('gpt-4o-mini', u as unknown as ReportedUsage));
      // From an origin the gateway does not list, the browser stops the call at its preflight.
      const refused = await chatIn(page, unlisted, 'chatWithOpenAI', functionsUrl, token);
      assert.match(refused.error ?? '', /Connection error/);
      assert.equal((await callsOf(id)).length, 3);
    }),
);

browserTest(
  'the Anthropic SDK in a page carries a three-turn chat through the gateway, each turn charged its usage exactly',
  (browser) =>
    withSdkPages(browser, async ({ id, token, page, allowed, unlisted, functionsUrl }) => {
      const chat = await chatIn(page, allowed, 'chatWithAnthropic', functionsUrl, token);
      await assertChargedExactly(id, chat, (u) =>
        cardPrice('claude-haiku-4-5', {
          input: u.input_tokens,
          cached: u.cache_read_input_tokens ?? 0,
          write: u.cache_creation_input_tokens ?? 0,
          output: u.output_tokens,
        }));
      // From an origin the gateway does not list, the browser stops the call at its preflight.
      const refused = await chatIn(page, unlisted, 'chatWithAnthropic', functionsUrl, token);
      assert.match(refused.error ?? '', /Connection error/);
      assert.equal((await callsOf(id)).length, 3);
    }),
);
