// Notification templates and the outbox dispatcher. Rows are written in the same transaction
// as their cause (a receipt with the purchase, an alert with its condition); sending happens
// here, later, with retries: a failed email never affects what caused it.
import { createHmac } from 'node:crypto';
import { z } from 'zod';
import { sql } from '../_shared/adapters/db.ts';
import { runAccountWatch } from '../_shared/domain/account-watch.ts';
import { parseEnv } from '../_shared/env.ts';
import { invitationEmail } from '../_shared/domain/invitations.ts';
import { giftCode } from '../_shared/domain/code-secrets.ts';
import { formatCredits } from '../_shared/values/money.ts';
import { isUuid } from '../_shared/values/query.ts';
import { errorSummary, log } from '../_shared/log.ts';
import { count } from '../_shared/metrics.ts';
import { sendEmail } from '../_shared/adapters/postmark.ts';

const NotifyEnvSchema = z.object({
  ALERT_EMAIL: z.email().optional(),
  ALERT_WEBHOOK_URL: z.url().optional(),
  // The product's own backend: balance and cap alerts, signed like Stripe's webhooks.
  PRODUCT_WEBHOOK_URL: z.url().optional(),
  PRODUCT_WEBHOOK_SECRET: z.string().min(32).optional(),
  /** Where a student buys credits on-session (linked from the auto-recharge emails). */
  BILLING_PAGE_URL: z.url().optional(),
  OUTBOX_MAX_ATTEMPTS: z.coerce.number().int().positive().default(5),
});

export const templates = [
  'purchase_receipt',
  'refund_notice',
  'low_balance',
  'credits_expiring',
  'balance_alert',
  'auto_recharge',
  'plan_payment_failed',
  'org_invitation',
  'gift_code',
  'product_webhook',
  'alert',
  'daily_report',
] as const;
export type Template = typeof templates[number];

type Payload = Record<string, unknown>;

/** Subject and body of each template; data comes from the outbox row, never from a user. */
export function render(template: Template, data: Payload): { subject: string; text: string } {
  switch (template) {
    case 'purchase_receipt':
      return {
        subject: 'Your ScholarLink credits receipt',
        text:
          `Thank you. ${data.credits} credits${Number(data.bonus_credits) ? ` + ${data.bonus_credits} bonus` : ''} ` +
          `were added${data.org_name ? ` to ${data.org_name}'s wallet` : ''} (${
            (Number(data.price_cents) / 100).toFixed(2)
          } ${String(data.currency).toUpperCase()}${
            Number(data.tax_cents) ? ` + ${(Number(data.tax_cents) / 100).toFixed(2)} tax` : ''
          }). ` +
          `Purchase ${data.purchase_id}.`,
      };
    case 'refund_notice':
      return {
        subject: 'Your refund',
        text: `A refund of ${data.amount ?? ''} was issued for purchase ${data.purchase_id ?? ''}.`,
      };
    case 'low_balance':
      return { subject: 'Your credit balance is low', text: `You have ${data.balance ?? 'few'} credits left.` };
    case 'org_invitation':
      // Anyone may create an organisation and name it: the name is quoted, inert and out of the subject.
      return {
        subject: 'You are invited to an organisation on ScholarLink',
        text: [
          `${inert(data.inviter_email ?? 'Someone')} invites you to join the organisation "${
            inert(data.org_name)
          }" on ScholarLink as ${data.role}.`,
          'The name in quotes is the one its creator chose; ScholarLink has not checked it. ScholarLink never ' +
          'asks for card details or passwords by email.',
          `Accept before ${String(data.expires_at).slice(0, 10)} (UTC): ${data.accept_url}`,
          'If you did not expect this invitation, ignore this email.',
        ].join('\n\n'),
      };
    case 'gift_code':
      // To the buyer only (the outbox row's user): they choose whom to give it to.
      return {
        subject: 'Your ScholarLink gift code',
        text: [
          `Thank you for your gift of ${credits(data.credits)} credits. The code to give is:`,
          String(data.code),
          'Whoever redeems it on their billing page receives the credits (once). Keep it private until then.',
        ].join('\n\n'),
      };
    case 'credits_expiring':
      return {
        subject: `Credits expire in ${data.days} days`,
        text: `${credits(data.amount)} of your credits expire on ${
          String(data.expires_at).slice(0, 10)
        } (UTC). Use them before then: whatever is left at that time expires.`,
      };
    case 'balance_alert':
      return data.kind === 'balance_below'
        ? {
          subject: 'Your credit balance is low',
          text: `You have ${credits(data.available)} credits available, below the ${
            credits(data.threshold)
          } you asked to be told about.${runway(data.runway_days)}`,
        }
        : {
          subject: `You have used ${data.percent}% of your ${data.period}ly spending cap`,
          text: `${credits(data.spent)} of ${credits(data.cap)} credits${
            data.model ? ` on ${data.model}` : ''
          } this ${data.period}.`,
        };
    case 'auto_recharge':
      return data.event === 'monthly_limit'
        ? {
          subject: 'Auto-recharge paused for this month',
          text: `Auto-recharge reached its monthly limit (${data.count} recharges, ${
            cents(data.cents, 'usd')
          }). It resumes next month; you can buy credits yourself at any time.`,
        }
        : {
          subject: 'Auto-recharge is off: your card was not charged',
          text:
            `Your bank ${
              data.reason === 'authentication_required' ? 'asked you to confirm the payment' : 'declined the payment'
            } of ${
              cents(data.price_cents, String(data.currency ?? 'usd'))
            } for the ${data.package_id} package, so auto-recharge is off. ` +
            `Buy credits (and confirm the payment) on the credits page${
              data.pay_url ? `: ${data.pay_url}` : ''
            }, then turn auto-recharge back on there.`,
        };
    case 'plan_payment_failed':
      return {
        subject: 'Your plan was not renewed: your card was not charged',
        text: `We could not charge ${
          cents(data.amount_cents, String(data.currency ?? 'usd'))
        } for your ${data.plan_id} plan, so no credits were added for the new period. Update your card from the credits page${
          data.pay_url ? `: ${data.pay_url}` : ''
        } (Manage plan opens Stripe's secure portal); the renewal is retried once it is updated.`,
      };
    case 'product_webhook':
      return { subject: String(data.type ?? 'billing event'), text: '' };
    case 'alert':
      return { subject: `[ScholarLink alert] ${data.condition}`, text: String(data.summary ?? data.condition) };
    case 'daily_report':
      return { subject: `ScholarLink daily report, ${data.day}`, text: dailyReportText(data) };
  }
}

/**
 * Text a user chose (an organisation's name, an address) as an email shows it: one line, no
 * control or invisible formatting characters, and nothing a mail client would make a link of:
 * `://` becomes `[://]` and a dot between letters or digits `[.]` (no scheme, domain, `www.` or
 * address is left to recognise). Emails are plain text (Postmark's TextBody): no HTML is read.
 * @example inert('Pay at www.evil.example') // 'Pay at www[.]evil[.]example'
 */
export function inert(value: unknown): string {
  return String(value)
    .replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\s]+/gu, ' ')
    .trim()
    .replaceAll('://', '[://]')
    // Fullwidth and ideographic full stops separate a domain's labels too.
    .replace(/(?<=[\p{L}\p{N}_-])[.\u3002\uFF0E\uFF61](?=[\p{L}\p{N}_-])/gu, '[.]');
}

const credits = (n: unknown) => new Intl.NumberFormat('en-US', { maximumFractionDigits: 2 }).format(Number(n ?? 0));

/** The runway sentence of a low-balance email; nothing without a pace (no charges in 7 days). */
const runway = (days: unknown) =>
  typeof days !== 'number'
    ? ''
    : days === 0
    ? " At your last 7 days' pace they will not last a day."
    : ` At your last 7 days' pace they last about ${days} day${days === 1 ? '' : 's'}.`;

const cents = (n: unknown, currency: string) =>
  new Intl.NumberFormat('en-US', { style: 'currency', currency: currency.toUpperCase() }).format(Number(n ?? 0) / 100);

/** The morning email: the day's headline numbers; the dashboard has the rest. */
function dailyReportText(data: Payload): string {
  const m = (data.metrics ?? {}) as {
    by_currency?: { currency: string; gmv_cents: number; net_revenue_cents: number; take_rate: number | null }[];
    users?: { active: number; paying: number };
    conversion?: { checkout_rate: number | null };
    credits?: { outstanding: string };
  };
  const lines = (m.by_currency ?? []).map((c) =>
    `${c.currency.toUpperCase()}: GMV ${cents(c.gmv_cents, c.currency)}, net revenue ${
      cents(c.net_revenue_cents, c.currency)
    }, take rate ${c.take_rate === null ? 'n/a' : `${(c.take_rate * 100).toFixed(2)}%`}`
  );
  return [
    `Numbers for ${data.day} (UTC).`,
    ...(lines.length ? lines : ['No payments.']),
    `Active users ${m.users?.active ?? 0}, paying ${m.users?.paying ?? 0}; checkout conversion ${
      m.conversion?.checkout_rate == null ? 'n/a' : `${(m.conversion.checkout_rate * 100).toFixed(1)}%`
    }.`,
    `Outstanding credits: ${m.credits?.outstanding ?? '0'}.`,
  ].join('\n');
}

/**
 * A paid gift's code and credits for its email, and its buyer's address (the only recipient,
 * whatever the outbox row says), or null (no such gift, or no secret makes its code).
 */
async function giftEmailData(codeId: unknown): Promise<Payload | null> {
  if (typeof codeId !== 'string' || !isUuid(codeId)) return null;
  const [g] = await sql`select * from billing.get_gift_email(${codeId})`;
  const code = g ? giftCode(codeId, g.code_hash) : null;
  return code ? { code, credits: formatCredits(g.credits), to: g.email } : null;
}

interface OutboxRow {
  id: string;
  template: Template;
  user_id: string | null;
  payload: Payload;
  attempts: number;
}

async function recipient(row: OutboxRow, alertEmail: string | undefined): Promise<string | null> {
  if (typeof row.payload.to === 'string') return row.payload.to;
  if (row.template === 'alert' || row.template === 'daily_report') return alertEmail ?? null; // the ops/admin list
  if (!row.user_id) return null;
  const [u] = await sql`select email from auth.users where id = ${row.user_id}`;
  return u?.email ?? null;
}

/**
 * POSTs an event to the product's backend: `ScholarLink-Signature: t=<unix>,v1=<hex HMAC-SHA256
 * of "t.body" with PRODUCT_WEBHOOK_SECRET>` (Stripe's scheme). Every attempt is logged.
 */
async function deliverProductWebhook(row: OutboxRow, env: z.infer<typeof NotifyEnvSchema>): Promise<void> {
  if (!env.PRODUCT_WEBHOOK_URL || !env.PRODUCT_WEBHOOK_SECRET) return; // not configured: nothing to send
  const body = JSON.stringify(row.payload);
  const t = Math.floor(Date.now() / 1000);
  const v1 = createHmac('sha256', env.PRODUCT_WEBHOOK_SECRET).update(`${t}.${body}`).digest('hex');
  let status: number | null = null;
  try {
    const res = await fetch(env.PRODUCT_WEBHOOK_URL, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'scholarlink-signature': `t=${t},v1=${v1}` },
      body,
      signal: AbortSignal.timeout(10_000),
    });
    status = res.status;
    await res.body?.cancel();
    if (!res.ok) throw new Error(`product webhook answered ${res.status}`);
    await sql`select billing.log_webhook_delivery(${row.id}, ${row.attempts}, ${status}, null)`;
  } catch (err) {
    const error = String(errorSummary(err).errorMessage ?? 'error');
    await sql`select billing.log_webhook_delivery(${row.id}, ${row.attempts}, ${status}, ${error})`;
    throw err;
  }
}

async function deliver(row: OutboxRow, env: z.infer<typeof NotifyEnvSchema>): Promise<void> {
  if (row.template === 'product_webhook') return deliverProductWebhook(row, env);
  if (row.template === 'org_invitation') {
    // Read at send time: a revoked or answered invitation sends nothing; the link is derived here.
    const invitation = await invitationEmail(row.payload.invitation_id);
    if (invitation) await sendEmail({ to: invitation.to, ...render(row.template, invitation.data), tag: row.template });
    return;
  }
  if (row.template === 'gift_code') {
    // Derived here, at send time, from the code's id: the outbox never holds the code.
    const gift = await giftEmailData(row.payload.code_id);
    if (gift?.to) await sendEmail({ to: String(gift.to), ...render(row.template, gift), tag: row.template });
    return;
  }
  const data = { ...(row.payload.data as Payload | undefined) ?? row.payload, pay_url: env.BILLING_PAGE_URL };
  const { subject, text } = render(row.template, data);
  if (row.template === 'alert' && env.ALERT_WEBHOOK_URL) {
    const res = await fetch(env.ALERT_WEBHOOK_URL, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ text: `${subject}: ${text}` }),
      signal: AbortSignal.timeout(10_000),
    });
    await res.body?.cancel();
    if (!res.ok) throw new Error(`alert webhook answered ${res.status}`);
  }
  const to = await recipient(row, env.ALERT_EMAIL);
  if (to) await sendEmail({ to, subject, text, tag: row.template });
}

/** Sends up to `limit` due notifications; returns how many were sent and failed for good. */
export async function dispatchOutbox(limit = 50): Promise<{ sent: number; failed: number; retrying: number }> {
  const env = parseEnv(NotifyEnvSchema);
  // The alerts postings set off are queued first (billing.run_account_watch), so they go out in this run.
  await runAccountWatch();
  const rows = await sql<OutboxRow[]>`select * from billing.claim_outbox(${limit})`;
  const outcome = { sent: 0, failed: 0, retrying: 0 };
  for (const row of rows) {
    // A run can outlast its two-minute claim (50 slow sends): each row's claim is renewed first,
    // and a row another sender claimed since is left to it, never sent twice.
    const [{ mine }] = await sql`select billing.renew_outbox_claim(${row.id}, ${row.attempts}) as mine`;
    if (!mine) continue;
    try {
      await deliver(row, env);
      await sql`select billing.finish_outbox(${row.id}, true)`;
      outcome.sent++;
    } catch (err) {
      log.warn('notification not sent', {
        outboxId: row.id,
        template: row.template,
        attempt: row.attempts,
        ...errorSummary(err),
      });
      const [{ status }] = await sql`select billing.finish_outbox(${row.id}, false, ${
        String(errorSummary(err).errorMessage ?? 'error')
      },
        ${env.OUTBOX_MAX_ATTEMPTS}, ${row.attempts}) as status`;
      if (status === 'failed') {
        outcome.failed++;
        count('outbox_failed', { template: row.template });
      } else outcome.retrying++;
    }
  }
  return outcome;
}
