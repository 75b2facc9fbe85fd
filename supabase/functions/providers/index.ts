// B2B provider payments through Stripe Connect: providers and their Express onboarding,
// payments to a provider as destination charges with the platform's fee, refunds, payouts,
// and the daily reconciliation. Money moves only in SQL, from webhooks (see stripe-webhook).
import { createApp, ok } from '../_shared/http/app.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { requireAdmin, requireAdminUnless } from '../_shared/http/require-admin.ts';
import { requireUser } from '../_shared/http/require-user.ts';
import type { AppContext } from '../_shared/app-env.ts';
import { accountState } from '../_shared/adapters/connect.ts';
import { jsonb, sql } from '../_shared/adapters/db.ts';
import { pageOf } from '../_shared/values/page.ts';
import { lazyEnv, reportAtStart } from '../_shared/env.ts';
import { AppError } from '../_shared/errors.ts';
import { featureFlag } from '../_shared/http/feature-flag.ts';
import { idempotent, scopedKey } from '../_shared/http/idempotency.ts';
import { hasCronSecret } from '../_shared/http/secrets.ts';
import { stripe, stripeCall } from '../_shared/adapters/stripe.ts';
import { readJson, readQuery } from '../_shared/http/validate.ts';
import { isUuid } from '../_shared/values/query.ts';
import { createPayment, paymentJson, type PaymentRow, providerJson, type ProviderRow } from './payments.ts';
import {
  CreatePaymentSchema,
  CreateProviderSchema,
  ListSchema,
  ProvidersEnvSchema,
  ReconciliationQuerySchema,
  ReconciliationRunSchema,
  RefundPaymentSchema,
} from './schemas.ts';
import { advanceReconciliation } from './reconciliation.ts';

const env = lazyEnv(ProvidersEnvSchema);
reportAtStart(stripe); // a missing or wrong-mode key is logged at start and answered with 503
const app = createApp('providers');

app.use('*', featureFlag(() => env().FEATURE_B2B_PROVIDER_PAYMENTS, 'Provider payments'));

const notFound = () => new AppError('not_found', 'PROVIDER_NOT_FOUND', 'No such provider.');

/** The provider in the path, if the caller owns it or is an admin; anyone else gets a 404. */
async function providerOf(c: AppContext): Promise<ProviderRow> {
  const id = c.req.param('id') ?? '';
  if (!isUuid(id)) throw notFound();
  const user = currentUser(c);
  const [p] = await sql<
    ProviderRow[]
  >`select * from billing.provider_for(${id}, ${user.id}, ${user.isAdmin}) where id is not null`;
  if (!p) throw notFound();
  return p;
}

app.post('/', requireUser, async (c) => {
  const body = await readJson(c, CreateProviderSchema);
  const user = currentUser(c);
  if (body.owner_user_id && body.owner_user_id !== user.id) {
    if (!user.isAdmin) {
      throw new AppError('forbidden', 'FORBIDDEN', 'Only administrators create providers for other users.');
    }
    // The token's claim may outlive the role: an admin now, in the database.
    await sql`select billing.assert_user_standing(${user.id}, true)`;
  }
  return idempotent(c, 'providers.create', body, async (key) => {
    let [p] = await sql<ProviderRow[]>`select * from billing.begin_provider(${
      body.owner_user_id ?? user.id
    }, ${key}, ${body.name},
        ${body.email}, ${body.country})`;
    if (!p.stripe_account_id) {
      const provider = p;
      // Stripe's idempotency key is the provider's: a retry reaches the same account.
      const account = await stripeCall(() =>
        stripe().client.accounts.create({
          type: 'express',
          country: provider.country,
          email: provider.email,
          capabilities: { card_payments: { requested: true }, transfers: { requested: true } },
          metadata: { provider_id: provider.id },
        }, { idempotencyKey: `connect-account:${provider.id}` })
      );
      await sql`select billing.attach_provider_account(${provider.id}, ${account.id})`;
      await sql`select billing.sync_provider_account(${jsonb(accountState(account))})`;
      [p] = await sql<ProviderRow[]>`select * from billing.get_provider(${provider.id})`;
    }
    return { status: 201, data: providerJson(p) };
  });
});

// Reconciliation routes come before /:id.
app.get('/reconciliation', requireAdmin, async (c) => {
  const { date } = readQuery(c, ReconciliationQuerySchema);
  const [{ result }] = await sql`select billing.reconciliation_of(${date}::date) as result`;
  if (!result) {
    throw new AppError('not_found', 'RECONCILIATION_NOT_FOUND', `No reconciliation has run for ${date}.`);
  }
  return ok(c, result);
});

/**
 * Scheduled daily (pg_cron → pg_net with the cron secret) for yesterday; admins may run any day.
 * Pages through Stripe for a few seconds: 200 with the result when done, else 202 and the next call resumes.
 */
app.post('/reconciliation/run', requireAdminUnless(hasCronSecret), async (c) => {
  const body = await readJson(c, ReconciliationRunSchema);
  const outcome = await advanceReconciliation(body.date ?? null);
  if (outcome.finished) return ok(c, outcome.result);
  return ok(c, outcome.progress, 202, { 'Retry-After': '1' });
});

app.get('/:id', requireUser, async (c) => {
  const p = await providerOf(c);
  const balances = await sql<{ currency: string; amount_cents: string }[]>`
      select currency, amount_cents::text as amount_cents from billing.get_provider_balances(${p.id}) order by currency`;
  return ok(c, { ...providerJson(p), balances: balances.map((b) => ({ ...b, amount_cents: Number(b.amount_cents) })) });
});

app.post('/:id/onboarding-link', requireUser, async (c) => {
  const p = await providerOf(c);
  if (!p.stripe_account_id) throw notFound();
  const account = p.stripe_account_id;
  const link = await stripeCall(() =>
    stripe().client.accountLinks.create({
      account,
      type: 'account_onboarding',
      return_url: env().PROVIDER_ONBOARDING_RETURN_URL,
      refresh_url: env().PROVIDER_ONBOARDING_REFRESH_URL,
    })
  );
  return ok(c, { url: link.url, expires_at: new Date(link.expires_at * 1000).toISOString() }, 201);
});

app.post('/:id/payments', requireUser, async (c) => {
  const p = await providerOf(c);
  const body = await readJson(c, CreatePaymentSchema);
  return idempotent(
    c,
    'providers.payments',
    { provider_id: p.id, ...body },
    (key) => createPayment(p, currentUser(c).id, body, key, env()),
  );
});

app.get('/:id/payments', requireUser, async (c) => {
  const p = await providerOf(c);
  const q = readQuery(c, ListSchema);
  const rows = await sql<PaymentRow[]>`select * from billing.list_provider_payments(${p.id}, ${q.limit + 1}, ${
    q.cursor ?? null
  })`;
  return ok(c, pageOf(rows, q.limit, (r) => r.created_at.toISOString(), paymentJson));
});

app.get('/:id/payouts', requireUser, async (c) => {
  const p = await providerOf(c);
  const q = readQuery(c, ListSchema);
  const rows = await sql<
    {
      id: string;
      status: string;
      amount_cents: string;
      currency: string;
      failure_code: string | null;
      arrival_date: Date | null;
      stripe_created_at: Date;
    }[]
  >`
      select * from billing.list_provider_payouts(${p.id}, ${q.limit + 1}, ${q.cursor ?? null})`;
  return ok(
    c,
    pageOf(rows, q.limit, (r) => r.stripe_created_at.toISOString(), (r) => ({
      payout_id: r.id,
      status: r.status,
      amount_cents: Number(r.amount_cents),
      currency: r.currency,
      failure_code: r.failure_code,
      arrival_date: r.arrival_date?.toISOString() ?? null,
      created_at: r.stripe_created_at.toISOString(),
    })),
  );
});

/** Ops refund a provider payment: the fee goes back pro rata and the transfer is reversed. */
app.post('/:id/payments/:paymentId/refunds', requireAdmin, async (c) => {
  const p = await providerOf(c);
  const paymentId = c.req.param('paymentId');
  const body = await readJson(c, RefundPaymentSchema);
  return idempotent(c, 'providers.refunds', { paymentId, ...body }, async (key) => {
    const [pay] = isUuid(paymentId)
      ? await sql<
        PaymentRow[]
      >`select * from billing.provider_payment_by_id(${p.id}, ${paymentId}) where id is not null`
      : [];
    if (!pay) throw new AppError('not_found', 'PAYMENT_NOT_FOUND', 'No such payment.');
    if (pay.status !== 'paid' || !pay.stripe_charge_id) {
      throw new AppError(
        'conflict',
        'PAYMENT_NOT_REFUNDABLE',
        `The payment is ${pay.status}; only paid payments can be refunded.`,
      );
    }
    const charge = pay.stripe_charge_id;
    // Money moves when Stripe's charge.refunded / application_fee.refunded arrive, not here.
    const refund = await stripeCall(() =>
      stripe().client.refunds.create(
        {
          charge,
          refund_application_fee: true,
          reverse_transfer: true,
          ...(body.amount_cents ? { amount: body.amount_cents } : {}),
        },
        { idempotencyKey: scopedKey(`provider-refund:${pay.id}:`, key, 255) },
      )
    );
    return {
      status: 202,
      data: { refund_id: refund.id, payment_id: pay.id, amount_cents: refund.amount, status: refund.status },
    };
  });
});

export default { fetch: app.fetch };
if (import.meta.main) Deno.serve(app.fetch);
