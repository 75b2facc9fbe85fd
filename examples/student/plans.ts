// Plans on the student page: the plan a student holds (plan credits left this period, when it
// renews or ends, a failed renewal's way to update the card) with another plan, cancelling and
// Stripe's customer portal; without one, the plans on sale, each opening its Checkout. Credits
// arrive with Stripe's invoice.paid, never with the redirect back: the page waits for them.
/// <reference lib="dom" />
import type { BillingClient, Plan, PlanState } from '../../client/mod.ts';
import { money, roundedCredits } from './credits.ts';
import { got } from './messages.ts';

type Fail = (err: unknown, retry?: () => void, near?: HTMLElement) => void;
const day = (iso: string | null) => (iso ? new Date(iso).toLocaleDateString() : 'the period’s end');

/** What a plan carries into the next period, in a student's words. */
export function rolloverText(p: Plan): string {
  if (p.rollover.rule === 'up_to_credits') {
    return `up to ${roundedCredits(p.rollover.limit ?? '0')} unused credits carry over`;
  }
  if (p.rollover.rule === 'up_to_share') {
    return `up to ${roundedCredits(String(Number(p.rollover.limit ?? 0) * 100))}% of them carry over`;
  }
  return 'unused credits end with the period';
}

/** A plan on sale: "Basic · $9.99 a month: 10,000 credits each month, up to 2,000 unused credits carry over". */
export function planOffer(p: Plan): string {
  return `${p.name} · ${money(p.price_cents, p.currency)} a ${p.interval}: ${roundedCredits(p.credits)} credits ` +
    `each ${p.interval}, ${rolloverText(p)}`;
}

/** The plan a student holds, in their words. */
export function planStatusText(s: PlanState, plan: Plan | undefined): string {
  const name = plan?.name ?? s.plan_id;
  const left = `${roundedCredits(s.plan_credits_left)} plan credits left`;
  if (s.status === 'past_due' || s.status === 'unpaid') {
    return `${name}: the renewal payment failed. Update your card to keep the plan; ${left} until ${
      day(s.current_period_end)
    }.`;
  }
  if (s.status === 'canceled' || s.status === 'incomplete_expired') return `Your ${name} plan has ended.`;
  if (s.status === 'incomplete') return `${name}: waiting for the first payment.`;
  if (s.cancel_at_period_end) {
    return `${name}: ${left}. The plan ends on ${day(s.current_period_end)}; nothing more will be charged.`;
  }
  return `${name}: ${left} this period. It renews on ${day(s.current_period_end)}.`;
}

const live = (s: PlanState): boolean => ['active', 'past_due', 'trialing', 'unpaid'].includes(s.status);

function button(text: string, onclick: () => Promise<void>, fail: Fail, secondary = false) {
  const b = document.createElement('button');
  b.textContent = text;
  if (secondary) b.className = 'secondary';
  b.onclick = async () => {
    b.disabled = true;
    try {
      await onclick();
    } catch (err) {
      fail(err, undefined, b);
    } finally {
      b.disabled = false;
    }
  };
  return b;
}

/** Fills `box` with the student's plan and what they can do with it, or the plans on sale. */
export async function showPlans(billing: BillingClient, box: HTMLElement, fail: Fail, notice: (t: string) => void) {
  const [{ items: plans }, mine] = await Promise.all([got(billing.plans()), got(billing.plan())]);
  const here = `${location.origin}${location.pathname}`;
  const reload = () => showPlans(billing, box, fail, notice);
  const status = document.createElement('p');
  status.dataset.testid = 'plan-status';
  const actions = document.createElement('div');
  actions.className = 'row';
  box.replaceChildren(status, actions);
  if (mine && live(mine)) {
    const current = plans.find((p) => p.id === mine.plan_id);
    status.textContent = planStatusText(mine, current);
    const portal = button(
      'Card and invoices',
      async () => {
        location.assign((await got(billing.billingPortal(here))).url);
      },
      fail,
      true,
    );
    if (mine.status === 'active' && !mine.cancel_at_period_end) {
      for (const other of plans.filter((p) => p.id !== mine.plan_id && p.interval === current?.interval)) {
        const more = current && other.price_cents > current.price_cents;
        actions.append(button(
          `${more ? 'Upgrade' : 'Switch'} to ${other.name}`,
          async () => {
            const r = await got(billing.changePlan(other.id));
            notice(
              r.change === 'upgrade'
                ? `Upgraded to ${other.name}: the extra credits arrive once the prorated payment is confirmed.`
                : `You move to ${other.name} when this period ends.`,
            );
            await reload();
          },
          fail,
          true,
        ));
      }
      actions.append(button(
        'Cancel plan',
        async () => {
          const r = await got(billing.cancelPlan());
          notice(`Your plan ends on ${day(r.current_period_end)}. Its credits last until then.`);
          await reload();
        },
        fail,
        true,
      ));
    }
    actions.append(portal);
    return;
  }
  status.textContent = mine ? planStatusText(mine, plans.find((p) => p.id === mine.plan_id)) : 'No plan yet.';
  for (const p of plans) {
    const b = button(`Subscribe: ${planOffer(p)}`, async () => {
      const session = await got(
        billing.subscribe({ plan_id: p.id, success_url: `${here}?plan=started`, cancel_url: `${here}?cancelled=1` }),
      );
      if (session.url) location.assign(session.url);
    }, fail);
    b.dataset.plan = p.id;
    actions.append(b);
  }
}

/** Back from a plan's Checkout: waits (up to 30 s) for Stripe's invoice.paid to start the plan. */
export async function followPlan(billing: BillingClient, notice: (t: string) => void) {
  notice('Confirming your plan…');
  for (let i = 0; i < 30; i++) {
    const s = await got(billing.plan());
    if (s?.status === 'active') {
      notice(`Your plan is active: ${roundedCredits(s.plan_credits_left)} plan credits added.`);
      return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
  notice('Your plan is still being confirmed; its credits will appear shortly.');
}
