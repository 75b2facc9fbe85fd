// The student page's words (examples/student/): every ledger kind the database has, in words; a
// promo code is not a purchase's bonus; "you need N more" never says less than is needed and
// agrees in number; what a student can spend and what ends when, in sentences.
import assert from 'node:assert/strict';
import { entryWords, transferKinds } from '../../examples/student/ledger-words.ts';
import { studentMessage } from '../../examples/student/messages.ts';
import { creditsUp, sumCredits } from '../../examples/student/credits.ts';
import { expiryText, spendable } from '../../examples/student/balance.ts';
import { BillingError, type Plan } from '../../client/mod.ts';
import type { Expiry, Org } from '../../supabase/functions/_shared/contract/index.ts';

Deno.test("every kind of billing.transfer_kind has words of the page's own, never the raw kind", async () => {
  const sql = await Deno.readTextFile(new URL('../../supabase/schemas/10-ledger.sql', import.meta.url));
  const body = /create type billing\.transfer_kind as enum \(([^;]*)\);/.exec(sql)?.[1] ?? '';
  const kinds = [...body.matchAll(/'([a-z_]+)'/g)].map((m) => m[1]);
  assert.ok(kinds.length >= 16, `read ${kinds.length} kinds`);
  assert.deepEqual([...transferKinds].sort(), [...kinds].sort());
  for (const kind of kinds) {
    for (const amount of ['5', '-5']) {
      const words = entryWords({ kind, amount, reference: null, model: null });
      assert.doesNotMatch(words, /_|Other/, `${kind} ${amount}: ${words}`);
    }
  }
});

Deno.test('a promo code reads as promotional credits, a package bonus as a bonus; a charge names its model', () => {
  assert.equal(entryWords({ kind: 'promo_grant', amount: '25', reference: null, model: null }), 'Promotional credits');
  assert.equal(
    entryWords({ kind: 'promo_grant', amount: '999', reference: 'cs_test_a1', model: null }),
    'Bonus with your purchase',
  );
  assert.equal(
    entryWords({ kind: 'usage', amount: '-2', reference: null, model: 'gpt-4o-mini' }),
    'AI usage (gpt-4o-mini)',
  );
  assert.equal(
    entryWords({ kind: 'hold_capture', amount: '-2', reference: null, model: 'gpt-4o' }),
    'AI answer (gpt-4o)',
  );
});

Deno.test('"you need N more" is rounded up to the cent and agrees in number', () => {
  const need = (required: string, available: string) =>
    studentMessage(
      new BillingError(402, {
        type: 'payment',
        code: 'INSUFFICIENT_CREDITS',
        message: 'Not enough credits.',
        retryable: false,
        details: { required, available },
      }),
    ).text;
  assert.equal(need('1', '0.3466'), 'You need 0.66 more credits', '0.6534 needed');
  assert.equal(need('2', '1'), 'You need 1 more credit');
  assert.equal(need('1.001', '0'), 'You need 1.01 more credits');
  assert.equal(need('1500', '0'), 'You need 1,500 more credits');
  assert.equal(creditsUp('0.000000000000000001'), '0.01', 'never "0"');
  assert.equal(creditsUp('0.6'), '0.6');
});

Deno.test('what a member can spend counts their allowance; a pool says who pays', () => {
  const own = { balance: '0', held: '0', available: '0', expiring: null };
  const org = (funding: 'allowance' | 'pool', allowance: string | null): Org => ({
    id: 'o1',
    name: 'Lakeside School',
    funding,
    org_pays_first: true,
    term_started_at: '2026-09-01T00:00:00.000Z',
    term_ends_at: null,
    created_at: '2026-09-01T00:00:00.000Z',
    ai_content_consent: false,
    role: 'member',
    wallet: null,
    allowance: allowance === null ? null : { balance: allowance, held: '0', available: allowance },
  });
  assert.deepEqual(spendable(own, [org('allowance', '50')]), {
    total: '50',
    parts: ["50 from Lakeside School's allowance", '0 of your own'],
  });
  assert.deepEqual(spendable({ ...own, available: '12.5' }, []), { total: '12.5', parts: [] });
  assert.equal(
    spendable(own, [org('pool', null)]).parts.at(-1),
    'and what Lakeside School pays from its shared pool, within the limits it sets',
  );
  assert.equal(sumCredits('0.1', '0.2', '-0.05'), '0.25');
});

Deno.test("an expiry in words: what ends, what the plan's rule carries over, what a plan that ends loses", () => {
  const basic: Plan = {
    id: 'basic_monthly',
    name: 'Basic',
    price_cents: 999,
    currency: 'usd',
    interval: 'month',
    credits: '10000',
    rollover: { rule: 'up_to_credits', limit: '2000' },
  } as Plan;
  const row = (e: Partial<Expiry>): Expiry => ({
    ends_at: '2026-12-24T00:00:00.000Z',
    source: 'plan',
    credits: '9997',
    rolls_over: '2000',
    expires: '7997',
    plan_id: 'basic_monthly',
    plan_renews: true,
    ...e,
  });
  assert.match(
    expiryText(row({}), basic),
    /: 9,997 plan credits end with this period: 2,000 carry over into the next one \(Basic: up to 2,000 unused credits carry over\), 7,997 expire\.$/,
  );
  assert.match(expiryText(row({ plan_renews: false, rolls_over: '0', expires: '9997' })), /all of them expire\.$/);
  assert.match(expiryText(row({ credits: '500', rolls_over: '500', expires: '0' })), /all of them carry over/);
  assert.match(
    expiryText(
      row({ source: 'promotional', credits: '25', rolls_over: '0', expires: '25', plan_id: null, plan_renews: null }),
    ),
    /: 25 promotional credits expire\.$/,
  );
});
