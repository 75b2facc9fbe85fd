// B2C purchases: packages, hosted Checkout Sessions, the success-page status poll, and
// ops-initiated refunds. Credits move only in billing.sync_purchase (see _shared/domain/purchases.ts).
import { createApp, ok } from '../_shared/http/app.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { requireAdmin } from '../_shared/http/require-admin.ts';
import { requireUser } from '../_shared/http/require-user.ts';
import type { CreditPackage, Page, PurchaseStatus } from '../_shared/contract/index.ts';
import { jsonb, sql } from '../_shared/adapters/db.ts';
import { lazyEnv, reportAtStart } from '../_shared/env.ts';
import { AppError } from '../_shared/errors.ts';
import { featureFlag } from '../_shared/http/feature-flag.ts';
import { idempotent, scopedKey } from '../_shared/http/idempotency.ts';
import { formatCredits } from '../_shared/values/money.ts';
import { whole } from '../_shared/values/page.ts';
import { fetchPurchaseState } from '../_shared/domain/purchases.ts';
import { stripe, stripeCall } from '../_shared/adapters/stripe.ts';
import { knownClientAddress } from '../_shared/http/client-address.ts';
import { readJson } from '../_shared/http/validate.ts';
import { CreateSessionSchema } from '../_shared/contract/checkout.ts';
import {
  CancelPlanSchema,
  ChangePlanSchema,
  CheckoutEnvSchema,
  PortalSchema,
  PurchaseRefSchema,
  RefundSchema,
  SubscribeSchema,
} from './schemas.ts';
import { createCheckout } from './sessions.ts';
import { cancelPlan, changePlan, currentPlan, listPlans, planJson, portal, publicPlan, subscribe } from './plans.ts';
import { giftOf } from './gifts.ts';

const env = lazyEnv(CheckoutEnvSchema);
reportAtStart(stripe); // a missing or wrong-mode key is logged at start and answered with 503
const app = createApp('checkout');

app.use('*', featureFlag(() => env().FEATURE_B2C_CREDITS, 'Credit purchases'));

type PurchaseRow = {
  id: string;
  user_id: string;
  package_id: string;
  status: string;
  price_cents: number;
  currency: string;
  credits: string;
  bonus_credits: string;
  stripe_session_id: string | null;
  stripe_charge_id: string | null;
  tax_cents: number;
  amount_refunded_cents: number;
  paid_at: Date | null;
  gift: boolean;
};

app.get('/packages', requireUser, async (c) => {
  const rows = await sql<CreditPackage[]>`select * from billing.list_credit_packages()`;
  return ok<Page<CreditPackage>>(
    c,
    whole(
      rows.map((p) => ({ ...p, credits: formatCredits(p.credits), bonus_credits: formatCredits(p.bonus_credits) })),
    ),
  );
});

app.post('/sessions', requireUser, async (c) => {
  const body = await readJson(c, CreateSessionSchema);
  const ip = knownClientAddress(c);
  return idempotent(
    c,
    'checkout.sessions',
    body,
    // A purchase's request key in a namespace of its own: the ledger keys its own purchases
    // `recharge:<id>` and `org-invoice:<id>` for the same user, and a key the student wrote
    // first would make those inserts fail (the worker tick, for everyone).
    (key) => createCheckout(currentUser(c).id, ip, body, scopedKey('checkout:', key, 255), env()),
  );
});

app.get('/sessions/:id', requireUser, async (c) => {
  const ref = c.req.param('id');
  const userId = currentUser(c).id;
  // Anything else (a NUL byte, 10 kB of text) cannot name a purchase and never reaches SQL.
  if (!PurchaseRefSchema.safeParse(ref).success) {
    throw new AppError('not_found', 'PURCHASE_NOT_FOUND', 'No such purchase.');
  }
  const find = () => sql<PurchaseRow[]>`select * from billing.get_purchase(${userId}, ${ref}) where id is not null`;
  let [p] = await find();
  if (!p) throw new AppError('not_found', 'PURCHASE_NOT_FOUND', 'No such purchase.');
  if (p.status === 'pending' && p.stripe_session_id) {
    // fulfillCheckout: the same convergence the webhooks run, in case they are late.
    const state = await fetchPurchaseState({ session: p.stripe_session_id });
    if (state) await sql`select billing.sync_purchase(${jsonb(state)})`;
    [p] = await find();
  }
  return ok<PurchaseStatus>(c, {
    purchase_id: p.id,
    status: p.status as PurchaseStatus['status'],
    package_id: p.package_id,
    price_cents: p.price_cents,
    currency: p.currency,
    credits: formatCredits(p.credits),
    bonus_credits: formatCredits(p.bonus_credits),
    tax_cents: p.tax_cents,
    amount_refunded_cents: p.amount_refunded_cents,
    paid_at: p.paid_at?.toISOString() ?? null,
    ...(p.gift ? { gift: await giftOf(p.id, p.status) } : {}),
  });
});

// Plans (checkout/plans.ts): credits come from invoice.paid only, never from these answers.
app.get('/plans', requireUser, async (c) => ok(c, whole((await listPlans()).map(planJson))));

app.post('/subscriptions', requireUser, async (c) => {
  const body = await readJson(c, SubscribeSchema);
  return idempotent(c, 'checkout.subscriptions', body, (key) => subscribe(currentUser(c).id, body, key, env()));
});

app.get('/subscription', requireUser, async (c) => ok(c, publicPlan(await currentPlan(currentUser(c).id))));

app.post('/subscription/change', requireUser, async (c) => {
  const body = await readJson(c, ChangePlanSchema);
  return idempotent(c, 'checkout.plan_change', body, (key) => changePlan(currentUser(c).id, body.plan_id, key));
});

app.post('/subscription/cancel', requireUser, async (c) => {
  const body = await readJson(c, CancelPlanSchema);
  return idempotent(c, 'checkout.plan_cancel', body, (key) => cancelPlan(currentUser(c).id, key));
});

app.post('/portal', requireUser, async (c) => {
  const body = await readJson(c, PortalSchema);
  return ok(c, await portal(currentUser(c).id, body.return_url, env()));
});

app.post('/refunds', requireAdmin, async (c) => {
  const body = await readJson(c, RefundSchema);
  return idempotent(c, 'checkout.refunds', body, async (key) => {
    const [p] = await sql<
      PurchaseRow[]
    >`select * from billing.get_purchase(null, ${body.purchase_id}) where id is not null`;
    if (!p) throw new AppError('not_found', 'PURCHASE_NOT_FOUND', 'No such purchase.');
    if (p.status !== 'paid' || !p.stripe_charge_id) {
      throw new AppError(
        'conflict',
        'PURCHASE_NOT_REFUNDABLE',
        `The purchase is ${p.status}; only paid purchases can be refunded.`,
      );
    }
    const charge = p.stripe_charge_id;
    // Credits move when Stripe's charge.refunded arrives, not here.
    const refund = await stripeCall(() =>
      stripe().client.refunds.create(
        { charge, ...(body.amount_cents ? { amount: body.amount_cents } : {}) },
        { idempotencyKey: scopedKey(`refund:${p.id}:`, key, 255) },
      )
    );
    return {
      status: 202,
      data: { refund_id: refund.id, purchase_id: p.id, amount_cents: refund.amount, status: refund.status },
    };
  });
});

export default { fetch: app.fetch };
if (import.meta.main) Deno.serve(app.fetch);
