// The deploy rehearsal, with money: the functions `supabase functions deploy` uploaded, each
// started alone with only the hosted environment, behind Stripe webhook endpoints made as
// docs/deploy.md says (./scripts/stripe-webhook-endpoint against a Stripe emulator of its own,
// which delivers an event only to the endpoints that list it, as Stripe does). A purchase, an
// auto-recharge, a refund, a dispute and a provider payout must each converge through those
// endpoints alone: nothing here calls a route that converges on read.
import assert from 'node:assert/strict';
import { connectEvents, platformEvents } from '../../supabase/functions/stripe-webhook/events.ts';
import { env, newAdmin, newUser, testDb, tick, until, userToken } from '../support/helpers.ts';
import {
  denoDir,
  deployedUploads,
  freePort,
  platformEnv,
  projectSecrets,
  root,
  type Running,
  startFunction,
} from './rehearsal.ts';

const stripeKey = env('STRIPE_SECRET_KEY');
// Every local caller shares 127.0.0.1: the local env's raised per-address limits (scripts/lib.sh), not Stripe's or hosted's.
const sharedAddressLimits = [
  'RATE_LIMIT_IP_PER_MIN',
  'VELOCITY_IP_SESSIONS_PER_10_MIN',
  'VELOCITY_IP_AMOUNT_CENTS_PER_24_H',
  'RATE_LIMIT_STRIPE_WEBHOOK_PER_MIN',
];

/** A Stripe emulator with no endpoint at all: only what the script makes receives events. */
async function startStripe(): Promise<{ url: string; stop(): Promise<void> }> {
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: ['run', '-A', `${root}/scripts/local/stripe-emulator/main.ts`],
    cwd: root,
    clearEnv: true,
    env: {
      PATH: Deno.env.get('PATH') ?? '/usr/bin:/bin',
      HOME: Deno.env.get('HOME') ?? '/tmp',
      DENO_DIR: await denoDir(),
      STRIPE_EMULATOR_PORT: String(port),
      STRIPE_SECRET_KEY: stripeKey,
      STRIPE_EMULATOR_BACKOFF_MS: '100',
    },
    stdout: 'null',
    stderr: 'null',
  }).spawn();
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    try {
      child.kill('SIGTERM');
    } catch { /* already gone */ }
    await child.status;
  };
  await until('the rehearsal Stripe emulator', () => fetch(`${url}/_emulator/healthz`).then((r) => r.ok, () => false))
    .catch(async (err) => {
      await stop();
      throw err;
    });
  return { url, stop };
}

/** ./scripts/stripe-webhook-endpoint as an operator runs it: the key, the URL, nothing else. */
async function endpointScript(url: string, stripeApiBase: string) {
  const out = await new Deno.Command(`${root}/scripts/stripe-webhook-endpoint`, {
    args: ['--url', url],
    clearEnv: true,
    env: {
      PATH: Deno.env.get('PATH') ?? '/usr/bin:/bin',
      HOME: Deno.env.get('HOME') ?? '/tmp',
      STRIPE_SECRET_KEY: stripeKey,
      STRIPE_API_BASE: stripeApiBase,
    },
    stdout: 'piped',
    stderr: 'piped',
  }).output();
  const text = new TextDecoder();
  const stdout = text.decode(out.stdout);
  assert.equal(out.code, 0, text.decode(out.stderr));
  return {
    secrets: Object.fromEntries([...stdout.matchAll(/^(STRIPE_\w+_SECRET)=(whsec_\w+)$/gm)].map((m) => [m[1], m[2]])),
    stdout,
    stderr: text.decode(out.stderr),
  };
}

Deno.test({
  name:
    'through the endpoints ./scripts/stripe-webhook-endpoint makes, a purchase, an auto-recharge, a refund, a dispute and a provider payout converge',
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const uploads = await deployedUploads();
    const stripe = await startStripe();
    const running: Record<string, Running> = {};
    try {
      const stripeApi = async (path: string, init: RequestInit = {}) => {
        const res = await fetch(`${stripe.url}${path}`, {
          ...init,
          headers: { authorization: `Bearer ${stripeKey}`, ...init.headers },
        });
        assert.ok(res.ok, `${path}: ${res.status}`);
        return await res.json();
      };
      const control = (path: string, body: unknown = {}) =>
        stripeApi(path, { method: 'POST', body: JSON.stringify(body) });

      // docs/deploy.md, step 5: the endpoint first (its secret is a secret of step 6), step 7: the functions.
      const webhookPort = freePort();
      const webhookUrl = `http://127.0.0.1:${webhookPort}/stripe-webhook`;
      const made = await endpointScript(webhookUrl, stripe.url);
      await t.step(
        'the script makes two endpoints with exactly the listed events and prints both secrets once',
        async () => {
          assert.deepEqual(Object.keys(made.secrets).sort(), [
            'STRIPE_CONNECT_WEBHOOK_SECRET',
            'STRIPE_WEBHOOK_SECRET',
          ]);
          const { data } = await stripeApi('/v1/webhook_endpoints');
          const byEvents = (data as { url: string; enabled_events: string[] }[]).map((e) => [e.url, e.enabled_events]);
          assert.deepEqual(byEvents.sort(), [[webhookUrl, connectEvents], [webhookUrl, platformEvents]].sort());
          assert.ok(
            platformEvents.includes('payment_intent.succeeded'),
            'the only event that credits an auto-recharge',
          );
          const again = await endpointScript(webhookUrl, stripe.url);
          assert.deepEqual(again.secrets, {}, 'run again, it updates the endpoints and prints no secret');
          assert.match(again.stderr, /updated .*\(platform\)/);
        },
      );

      const hosted = {
        ...platformEnv(),
        ...await projectSecrets(),
        ...Object.fromEntries(sharedAddressLimits.map((n) => [n, env(n)])),
        STRIPE_API_BASE: stripe.url, // the Stripe stand-in; unset on hosted
        STRIPE_SECRET_KEY: stripeKey,
        ...made.secrets,
      };
      const slugs = ['stripe-webhook', 'checkout', 'credits', 'jobs', 'providers'];
      await Promise.all(slugs.map(async (slug) => {
        const upload = uploads.get(slug);
        assert.ok(upload, `${slug} was uploaded`);
        running[slug] = await startFunction(upload, hosted, slug === 'stripe-webhook' ? webhookPort : undefined);
      }));

      /** A request as it reaches a hosted function: through the platform, which sets the caller's address. */
      const call = async (
        slug: string,
        path: string,
        init: { method?: string; token?: string; body?: unknown } = {},
      ) => {
        const res = await fetch(`${running[slug].url}/${slug}${path}`, {
          method: init.method ?? (init.body === undefined ? 'GET' : 'POST'),
          headers: {
            'cf-connecting-ip': '127.0.0.1',
            'idempotency-key': crypto.randomUUID(),
            ...(init.token ? { authorization: `Bearer ${init.token}` } : {}),
            ...(init.body === undefined ? {} : { 'content-type': 'application/json' }),
          },
          body: init.body === undefined ? undefined : JSON.stringify(init.body),
        });
        const body = await res.json();
        assert.ok(res.status < 300, `${slug}${path}: ${res.status} ${JSON.stringify(body)}`);
        return body.data;
      };
      const balance = async (token: string) => (await call('credits', '/balance', { token })).balance as string;
      const purchase = async (id: string) =>
        (await testDb`select status, stripe_charge_id, amount_refunded_cents::int as refunded, dispute_status
                      from billing.purchases where id = ${id}`)[0];
      const buy = async (token: string, body: Record<string, unknown>) => {
        const session = await call('checkout', '/sessions', { token, body });
        await control(`/_emulator/checkout/sessions/${session.session_id}/pay`, { outcome: 'succeeded' });
        return session.purchase_id as string;
      };

      const studentId = await newUser();
      const student = await userToken(studentId);
      /**
       * The student spends (gpt-4o input: 50 tokens a credit), reported by the product's server
       * with the service role key, then the tick runs, as pg_cron calls it.
       */
      const spendThenTick = async (credits: number) => {
        await call('credits', '/usage', {
          token: env('SUPABASE_SERVICE_ROLE_KEY'),
          body: { user_id: studentId, model: 'gpt-4o', input_tokens: credits * 50, output_tokens: 0 },
        });
        await tick(running.jobs.url);
      };
      let bought = '';
      await t.step('a purchase: checkout.session.completed credits the student', async () => {
        bought = await buy(student, { package_id: 'starter', save_card: true });
        assert.equal((await purchase(bought)).status, 'paid');
        assert.equal(await balance(student), '9990');
      });

      let recharged = '';
      await t.step(
        'an auto-recharge: the tick charges the saved card, payment_intent.succeeded credits it',
        async () => {
          await call('credits', '/auto-recharge', {
            method: 'PUT',
            token: student,
            body: { enabled: true, package_id: 'mini', threshold: '1000' },
          });
          await spendThenTick(9000);
          const [r] = await testDb`select status, purchase_id from billing.recharges where user_id = ${studentId}`;
          assert.equal(r?.status, 'succeeded');
          recharged = r.purchase_id;
          assert.equal((await purchase(recharged)).status, 'paid');
          assert.equal(await balance(student), '5990', '990 + the mini package (5,000)');
        },
      );

      await t.step('a refund: charge.refunded takes the credits back', async () => {
        await call('checkout', '/refunds', {
          token: await userToken(await newAdmin(), { admin: true }),
          body: { purchase_id: recharged },
        });
        assert.equal((await purchase(recharged)).refunded, 500);
        assert.equal(await balance(student), '990');
      });

      await t.step('a dispute: charge.dispute.created and .closed (lost) take the rest of the purchase', async () => {
        const otherId = await newUser();
        const other = await userToken(otherId);
        const id = await buy(other, { package_id: 'mini' });
        assert.equal(await balance(other), '5000');
        await control(`/_emulator/charges/${(await purchase(id)).stripe_charge_id}/dispute`, { outcome: 'lost' });
        assert.equal((await purchase(id)).dispute_status, 'lost');
        assert.equal(await balance(other), '0');
      });

      await t.step(
        'a provider payout: account.updated and payout.paid arrive through the Connect endpoint',
        async () => {
          const owner = await userToken(await newUser());
          const provider = await call('providers', '', {
            token: owner,
            body: { name: 'Ada Lovelace Scholarship Fund', email: 'fund@example.org', country: 'US' },
          });
          await control(`/_emulator/accounts/${provider.stripe_account_id}/onboard`, { outcome: 'complete' });
          const [{ ready }] = await testDb`select charges_enabled and payouts_enabled as ready from billing.providers
            where id = ${provider.provider_id}`;
          assert.equal(ready, true, 'account.updated (a Connect event) arrived');
          const payment = await call('providers', `/${provider.provider_id}/payments`, {
            token: owner,
            body: { amount_cents: 10_000, currency: 'usd', description: 'Tuition award, autumn term' },
          });
          await control(`/_emulator/checkout/sessions/${payment.session_id}/pay`, { outcome: 'succeeded' });
          const [paid] = await testDb`select status from billing.provider_payments where id = ${payment.payment_id}`;
          assert.equal(paid.status, 'paid');
          await control(`/_emulator/accounts/${provider.stripe_account_id}/payouts`, { outcome: 'paid' });
          const payouts = await testDb`select status, amount_cents::int as amount from billing.provider_payouts
                                     where provider_id = ${provider.provider_id}`;
          assert.deepEqual(payouts.map((p) => [p.status, p.amount]), [['paid', 9_700]], '10,000 less the 3% fee');
        },
      );

      await t.step(
        'without payment_intent.succeeded on the endpoint, a recharge charges the card and never credits',
        async () => {
          const [platform] = (await stripeApi('/v1/webhook_endpoints')).data.filter((e: { enabled_events: string[] }) =>
            e.enabled_events.includes('checkout.session.completed')
          );
          const without = platformEvents.filter((e) => e !== 'payment_intent.succeeded');
          await stripeApi(`/v1/webhook_endpoints/${platform.id}`, {
            method: 'POST',
            body: new URLSearchParams(without.map((e, i) => [`enabled_events[${i}]`, e])),
            headers: { 'content-type': 'application/x-www-form-urlencoded' },
          });
          await spendThenTick(100);
          const [last] = await testDb`select r.status, r.payment_intent_id is not null as charged, p.status as purchase
          from billing.recharges r join billing.purchases p on p.id = r.purchase_id
          where r.user_id = ${studentId} order by r.created_at desc limit 1`;
          assert.deepEqual(
            [last.status, last.charged, last.purchase],
            ['submitted', true, 'pending'],
            'charged, never credited',
          );
          assert.equal(await balance(student), '890');
          const restored = await endpointScript(webhookUrl, stripe.url);
          assert.match(restored.stderr, new RegExp(`updated .*\\(platform\\): ${platformEvents.length} events`));
        },
      );
    } finally {
      const logs = await Promise.all(Object.values(running).map(async (r) => `${r.slug}:\n${await r.stop()}`));
      await stripe.stop();
      if (Deno.env.get('REHEARSAL_LOGS')) console.log(logs.join('\n'));
    }
  },
});
