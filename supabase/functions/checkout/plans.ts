// Plans: subscribing through Checkout (mode=subscription), changing plan, cancelling at the
// period's end, and Stripe's customer portal. No credits move here: they come from invoice.paid
// (billing.sync_subscription), never from a redirect or an answer of these routes.
import { sql } from '../_shared/adapters/db.ts';
import { AppError } from '../_shared/errors.ts';
import { type Effect, scopedKey } from '../_shared/http/idempotency.ts';
import { formatCredits } from '../_shared/values/money.ts';
import { automaticTax, sessionExpiresAt, stripe, stripeCall } from '../_shared/adapters/stripe.ts';
import type { CheckoutEnv, Subscribe } from './schemas.ts';
import { redirectUrl } from './sessions.ts';

/** A plan version's row: `id` is the version's (what Stripe's metadata names), `family` the plan's. */
type PlanRow = {
  id: string;
  family: string;
  version: number;
  name: string;
  stripe_price_id: string | null;
  price_cents: number;
  currency: string;
  billing_interval: 'month' | 'year';
  credits: string;
  rollover: string;
  rollover_limit: string | null;
};

export const planJson = (p: PlanRow) => ({
  id: p.family,
  version: p.version,
  name: p.name,
  price_cents: p.price_cents,
  currency: p.currency,
  interval: p.billing_interval,
  credits: formatCredits(p.credits),
  rollover: { rule: p.rollover, limit: p.rollover_limit === null ? null : formatCredits(p.rollover_limit) },
});

export const listPlans = () => sql<PlanRow[]>`select * from billing.list_plans()`;

/** The version of plan `family` on sale now. */
async function planOnSale(family: string): Promise<PlanRow> {
  const [p] = await sql<PlanRow[]>`select * from billing.get_plan_on_sale(${family})`;
  if (!p) throw new AppError('not_found', 'PLAN_NOT_FOUND', 'No such plan on sale.');
  return p;
}

/** A plan version by its row id, on sale or not (what a subscription was sold at). */
async function planVersion(id: string): Promise<PlanRow> {
  const [p] = await sql<PlanRow[]>`select * from billing.get_plan(${id})`;
  if (!p) throw new AppError('not_found', 'PLAN_NOT_FOUND', 'No such plan.');
  return p;
}

type SubscriptionRow = {
  id: string;
  plan_id: string;
  status: string;
  stripe_session_id: string | null;
  session_url: string | null;
  session_expires_at: Date | null;
  created_at: Date;
};

const subscriptionJson = (s: SubscriptionRow) => ({
  subscription_id: s.id,
  plan_id: s.plan_id.split('.')[0], // the plan's id (its version's is `<id>.v<n>`)
  status: s.status,
  session_id: s.stripe_session_id,
  url: s.session_url,
  expires_at: s.session_expires_at?.toISOString() ?? null,
});

/** POST /checkout/subscriptions: a hosted Checkout Session that starts the plan once paid. */
export async function subscribe(
  userId: string,
  body: Subscribe,
  requestKey: string,
  env: CheckoutEnv,
): Promise<Effect> {
  const successUrl = redirectUrl(body.success_url, env.CHECKOUT_SUCCESS_URL, env, 'success_url');
  const cancelUrl = redirectUrl(body.cancel_url, env.CHECKOUT_CANCEL_URL, env, 'cancel_url');
  const onSale = await planOnSale(body.plan_id);
  const [sub] = await sql<
    SubscriptionRow[]
  >`select * from billing.begin_subscription(${userId}, ${onSale.id}, ${requestKey})`;
  if (sub.stripe_session_id) return { status: 200, data: subscriptionJson(sub) };
  // The version the subscription began at (a retry after a price change keeps it).
  const plan = await planVersion(sub.plan_id);
  // One open plan Checkout per student: the others (another plan, another tab) expire first, so
  // two plans cannot both be paid. One already completed is refused when its webhook comes.
  const others = await sql<
    { id: string }[]
  >`select billing.close_other_subscription_sessions(${userId}, ${sub.id}) as id`;
  for (const { id } of others) {
    await stripeCall(() => stripe().client.checkout.sessions.expire(id)).catch((err) => {
      if (!(err instanceof AppError) || err.code !== 'STRIPE_ERROR') throw err; // not open any more
    });
  }
  // Our ids ride on the subscription's metadata: every invoice snapshots it, so each says
  // which plan it billed. Only this service (the secret key) can set it.
  const metadata = { subscription_id: sub.id, user_id: userId, plan_id: plan.id };
  const session = await stripeCall(() =>
    stripe().client.checkout.sessions.create({
      mode: 'subscription',
      line_items: [{
        quantity: 1,
        ...plan.stripe_price_id ? { price: plan.stripe_price_id } : {
          price_data: {
            currency: plan.currency,
            unit_amount: plan.price_cents,
            recurring: { interval: plan.billing_interval },
            product_data: { name: `${plan.name}: ${formatCredits(plan.credits)} credits a ${plan.billing_interval}` },
          },
        },
      }],
      client_reference_id: sub.id,
      metadata,
      // Automatic tax on the session carries over to the subscription and every invoice it makes.
      subscription_data: { metadata },
      ...automaticTax(),
      success_url: `${successUrl}${successUrl.includes('?') ? '&' : '?'}session_id={CHECKOUT_SESSION_ID}`,
      cancel_url: cancelUrl,
      expires_at: sessionExpiresAt(sub.created_at, 35 * 60), // as a credit Checkout's (sessions.ts)
    }, { idempotencyKey: `subscription-session:${sub.id}` })
  );
  if (!session.url) throw new AppError('server', 'STRIPE_ERROR', 'Stripe returned a session without a URL.');
  const [attached] = await sql<
    SubscriptionRow[]
  >`select * from billing.attach_subscription_session(${sub.id}, ${session.id}, ${session.url},
      ${new Date(session.expires_at * 1000)})`;
  return { status: 201, data: subscriptionJson(attached ?? sub) };
}

export type PlanState = {
  subscription_id: string;
  plan_id: string;
  plan_version: number;
  plan_version_id: string;
  status: string;
  current_period_start: string | null;
  current_period_end: string | null;
  cancel_at_period_end: boolean;
  stripe_subscription_id: string;
  stripe_customer_id: string | null;
  plan_credits_left: string;
};

/** The caller's plan (the live one, else the latest), or null. */
export async function currentPlan(userId: string): Promise<PlanState | null> {
  const [{ s }] = await sql<{ s: PlanState | null }[]>`select billing.get_subscription(${userId}) as s`;
  return s;
}

async function livePlan(userId: string): Promise<PlanState> {
  const s = await currentPlan(userId);
  if (!s || !['active', 'past_due', 'trialing'].includes(s.status)) {
    throw new AppError('not_found', 'NO_PLAN', 'You have no live plan.');
  }
  return s;
}

export const publicPlan = (s: PlanState | null) =>
  s && {
    subscription_id: s.subscription_id,
    plan_id: s.plan_id,
    plan_version: s.plan_version,
    status: s.status,
    current_period_start: s.current_period_start,
    current_period_end: s.current_period_end,
    cancel_at_period_end: s.cancel_at_period_end,
    plan_credits_left: formatCredits(s.plan_credits_left),
  };

/**
 * Another plan: more credits now (Stripe invoices the prorated difference at once, and that
 * invoice's invoice.paid grants the difference in credits), fewer from the next period (no
 * money back, no credits taken: the current period was paid for).
 */
export async function changePlan(userId: string, planId: string, requestKey: string): Promise<Effect> {
  const s = await livePlan(userId);
  // Until the period's invoice is paid, a plan change would buy a share of a period that is
  // itself unpaid: the card is updated (portal) and the renewal paid first.
  if (s.status !== 'active' && s.status !== 'trialing') {
    throw new AppError('conflict', 'PLAN_PAST_DUE', 'Your plan has an unpaid invoice: update your card first.', {
      details: { status: s.status },
    });
  }
  // From the version it renews at (on sale or not) to the version of `planId` on sale now; the
  // same plan at a newer price is no change: a subscription keeps the price it was sold at.
  const [from, to] = [await planVersion(s.plan_version_id), await planOnSale(planId)];
  if (from.family === to.family) return { status: 200, data: publicPlan(s) };
  if (from.billing_interval !== to.billing_interval || from.currency !== to.currency) {
    throw new AppError('validation', 'PLAN_CHANGE_NOT_ALLOWED', 'Change to a plan billed at the same interval.', {
      field: 'plan_id',
    });
  }
  const upgrade = Number(to.credits) > Number(from.credits);
  // Back up to a plan this period was already paid for (a downgrade waits for the renewal, so
  // the period still has the credits): Stripe charges nothing now, and nothing is granted.
  const [paid] = await sql<{ credits: string }[]>`select * from billing.get_period_plan_credits(${s.subscription_id})`;
  const charged = upgrade && !(paid && Number(to.credits) <= Number(paid.credits));
  const client = stripe().client;
  const current = await stripeCall(() => client.subscriptions.retrieve(s.stripe_subscription_id));
  const item = current.items.data[0];
  await stripeCall(() =>
    client.subscriptions.update(s.stripe_subscription_id, {
      items: [{
        id: item.id,
        ...to.stripe_price_id ? { price: to.stripe_price_id } : {
          price_data: {
            currency: to.currency,
            unit_amount: to.price_cents,
            recurring: { interval: to.billing_interval },
            product: typeof item.price.product === 'string' ? item.price.product : item.price.product.id,
          },
        },
      }],
      metadata: { plan_id: to.id },
      // A plan started before Stripe Tax was turned on is taxed from its next invoice on.
      ...(stripe().env.STRIPE_AUTOMATIC_TAX ? { automatic_tax: { enabled: true } } : {}),
      proration_behavior: charged ? 'always_invoice' : 'none',
      // An upgrade whose payment fails changes nothing (Stripe keeps the update pending).
      ...(charged ? { payment_behavior: 'pending_if_incomplete' as const } : {}),
    }, { idempotencyKey: scopedKey(`plan-change:${s.subscription_id}:`, requestKey, 255) })
  );
  return {
    status: 202,
    data: { ...publicPlan(s), plan_id: to.family, plan_version: to.version, change: upgrade ? 'upgrade' : 'downgrade' },
  };
}

/** Cancels at the period's end: the plan's credits last until then; nothing is refunded. */
export async function cancelPlan(userId: string, requestKey: string): Promise<Effect> {
  const s = await livePlan(userId);
  await stripeCall(() =>
    stripe().client.subscriptions.update(s.stripe_subscription_id, { cancel_at_period_end: true }, {
      idempotencyKey: scopedKey(`plan-cancel:${s.subscription_id}:`, requestKey, 255),
    })
  );
  return { status: 202, data: { ...publicPlan(s), cancel_at_period_end: true } };
}

/** Stripe's customer portal for the caller's card and plan. */
export async function portal(
  userId: string,
  returnUrl: string | undefined,
  env: CheckoutEnv,
): Promise<{ url: string }> {
  const s = await currentPlan(userId);
  if (!s?.stripe_customer_id) throw new AppError('not_found', 'NO_PLAN', 'You have no plan.');
  const customer = s.stripe_customer_id;
  const session = await stripeCall(() =>
    stripe().client.billingPortal.sessions.create({
      customer,
      return_url: redirectUrl(returnUrl, env.CHECKOUT_SUCCESS_URL, env, 'return_url'),
    })
  );
  return { url: session.url };
}
