// The typed client (through real supabase-js) against the running stack: lots and the next
// expiry, caps, alerts and auto-recharge, each as the service answers.
import assert from 'node:assert/strict';
import { createClient } from '@supabase/supabase-js';
import { BillingError, createBillingClient } from '../../client/mod.ts';
import { fund, newUser, supabaseUrl, userToken } from '../helpers.ts';

async function billingFor(userId: string) {
  const token = await userToken(userId);
  return createBillingClient(createClient(supabaseUrl, 'anon-key', { accessToken: () => Promise.resolve(token) }), {
    baseDelayMs: 5,
    maxDelayMs: 20,
  });
}

Deno.test('the client reads lots and the next expiry, sets caps and alerts, and types refusals', async () => {
  const id = await newUser();
  await fund(id, '100'); // a promotion: it expires by policy
  const billing = await billingFor(id);
  const { lots } = await billing.lots();
  assert.equal(lots.length, 1);
  assert.deepEqual([lots[0].category, lots[0].remaining], ['promotional', '100']);
  assert.deepEqual((await billing.balance()).expiring, { amount: '100', at: lots[0].expires_at });

  const [cap] = await billing.setCap({ period: 'day', amount: '10' });
  assert.deepEqual([cap.cap, cap.spent], ['10', '0']);
  await billing.recordUsage({ model: 'gpt-4o', input_tokens: 500, output_tokens: 0 });
  assert.equal((await billing.caps())[0].spent, '10');
  await assert.rejects(
    billing.recordUsage({ model: 'gpt-4o', input_tokens: 50, output_tokens: 0 }),
    (e: unknown) => e instanceof BillingError && e.code === 'SPEND_CAP_REACHED' && e.status === 402,
  );
  const alerts = await billing.setLowBalanceAlert({ threshold: '95' });
  assert.deepEqual(alerts.low_balance, { threshold: '95', fired: true }, 'already below: fired at once');
  assert.equal((await billing.setCapAlerts({ period: 'day', model: null, percents: [50] })).caps[0].fired[0], 50);
  await assert.rejects(
    billing.setAutoRecharge({ enabled: true, package_id: 'mini', threshold: '10' }),
    (e: unknown) => e instanceof BillingError && e.code === 'NO_SAVED_CARD' && e.status === 409,
  );
  assert.equal((await billing.autoRecharge()).card_saved, false);
});
