// The student page prices an AI job before it starts (examples/student/credits.ts) from the rate
// card it reads through the Data API; the jobs function holds billing.price_usage of the same
// worst case. The two must agree to the last digit, or the page would show a wrong price.
import assert from 'node:assert/strict';
import { jobPrice, type RateCard } from '../../examples/student/credits.ts';
import { testDb } from '../support/helpers.ts';

Deno.test("the page's job price equals what the jobs function holds, for every model", async () => {
  const cards = await testDb<(RateCard & { model: string })[]>`
    select model, usd_per_million_input::text, usd_per_million_output::text, markup::text from billing_api.rate_cards`;
  assert.ok(cards.length > 0, 'there are rate cards to compare');
  const prompts = ['Explain compound interest to a first-year student', '🙂 émoji and ünïcode', 'x'.repeat(5000)];
  for (const card of cards) {
    for (const prompt of prompts) {
      const tokens = new TextEncoder().encode(prompt).length + 16;
      const [{ same, held }] = await testDb`
        select amount = ${jobPrice(card, prompt, 256)}::numeric as same, amount::text as held
        from billing.price_usage(${card.model}, ${tokens}, 256)`;
      assert.equal(same, true, `${card.model}, ${prompt.length} chars: the page ≠ the hold ${held}`);
    }
  }
});
