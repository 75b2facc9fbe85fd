// The typed client (through real supabase-js) against the running stack: lots and the next
// expiry, caps, alerts and auto-recharge, each as the service answers.
import assert from 'node:assert/strict';
import { createClient } from '@supabase/supabase-js';
import { BillingError, createBillingClient, createUsageReporter } from '../../client/mod.ts';
import { env, fund, must, newUser, supabaseUrl, userToken } from '../support/helpers.ts';

async function billingFor(userId: string) {
  const token = await userToken(userId);
  return createBillingClient(createClient(supabaseUrl, 'anon-key', { accessToken: () => Promise.resolve(token) }), {
    baseDelayMs: 5,
    maxDelayMs: 20,
  });
}

/** The product's server reporting usage with the service role key (a browser never does). */
const usage = createUsageReporter(createClient(supabaseUrl, 'anon-key'), env('SUPABASE_SERVICE_ROLE_KEY'), {
  baseDelayMs: 5,
  maxDelayMs: 20,
});

Deno.test('the client reads lots and the next expiry, sets caps and alerts, and types refusals', async () => {
  const id = await newUser();
  await fund(id, '100'); // a promotion: it expires by policy
  const billing = await billingFor(id);
  const { items: lots } = await must(billing.lots());
  assert.equal(lots.length, 1);
  assert.deepEqual([lots[0].category, lots[0].remaining], ['promotional', '100']);
  assert.deepEqual((await must(billing.balance())).expiring, { amount: '100', at: lots[0].expires_at });

  const [cap] = (await must(billing.setCap({ period: 'day', amount: '10' }))).items;
  assert.deepEqual([cap.cap, cap.spent], ['10', '0']);
  await must(usage.recordUsage({ user_id: id, model: 'gpt-4o', input_tokens: 500, output_tokens: 0 }));
  assert.equal((await must(billing.caps())).items[0].spent, '10');
  // Refusals are answered, not thrown; the code narrows details to the documented ones.
  const { data, error } = await usage.recordUsage({ user_id: id, model: 'gpt-4o', input_tokens: 50, output_tokens: 0 });
  assert.equal(data, null);
  assert.ok(error instanceof BillingError);
  assert.equal(error.status, 402);
  if (error.code !== 'SPEND_CAP_REACHED') assert.fail(`expected SPEND_CAP_REACHED, got ${error.code}`);
  assert.deepEqual([error.details?.cap, error.details?.period], ['10', 'day']);
  const alerts = await must(billing.setLowBalanceAlert({ threshold: '95' }));
  assert.deepEqual(alerts.low_balance, { threshold: '95', fired: true }, 'already below: fired at once');
  assert.equal((await must(billing.setCapAlerts({ period: 'day', model: null, percents: [50] }))).caps[0].fired[0], 50);
  const noCard = await billing.setAutoRecharge({ enabled: true, package_id: 'mini', threshold: '10' });
  assert.deepEqual([noCard.error?.code, noCard.error?.status], ['NO_SAVED_CARD', 409]);
  assert.equal((await must(billing.autoRecharge())).card_saved, false);
});
