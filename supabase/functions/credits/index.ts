// The credits API: balance, lots, ledger, usage, holds, and admin grants. Each handler validates,
// authorises, makes one SQL call (the ledger functions own the money) and responds; a money
// route's one call also claims its Idempotency-Key and stores its answer (`idempotent` with `inSql`).
import type {
  Alerts,
  AutoRecharge,
  Balance,
  Expiry,
  Lot,
  LotPage,
  Page,
  SpendCap,
  UsageSummary,
} from '../_shared/contract/index.ts';
import { createApp, ok } from '../_shared/http/app.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { requireAdmin, requireAdminToken } from '../_shared/http/require-admin.ts';
import { requireUser } from '../_shared/http/require-user.ts';
import type { AppContext } from '../_shared/app-env.ts';
import { jsonb, sql } from '../_shared/adapters/db.ts';
import { AppError } from '../_shared/errors.ts';
import { serverKeyRefused } from '../_shared/adapters/sql-errors.ts';
import { idempotent, inSql } from '../_shared/http/idempotency.ts';
import { requireUsageReporter, requireUsageReporterInSql } from '../_shared/http/usage-reporter.ts';
import { formatCredits } from '../_shared/values/money.ts';
import { readJson, readQuery } from '../_shared/http/validate.ts';
import { isUuid } from '../_shared/values/query.ts';
import { ledgerCsv, ledgerPage } from '../_shared/domain/ledger.ts';
import { pageOf, whole } from '../_shared/values/page.ts';
import { balanceAsOf, lotsAsOf } from '../_shared/domain/as-of.ts';
import { redeemCode } from './codes.ts';
import {
  AutoRechargeSchema,
  BalanceQuerySchema,
  CapAlertsSchema,
  CapRequestSchema,
  CaptureRequestSchema,
  HoldRequestSchema,
  LowBalanceAlertSchema,
  UsageRequestSchema,
  UsageSummaryQuerySchema,
} from '../_shared/contract/credits.ts';
import {
  GrantRequestSchema,
  LedgerQuerySchema,
  LotsQuerySchema,
  ReleaseRequestSchema,
  UsageBatchSchema,
} from './schemas.ts';

const app = createApp('credits');

/** A hold id from the path; anything that is not a UUID cannot be the caller's hold. */
function holdId(raw: string): string {
  if (!isUuid(raw)) throw new AppError('not_found', 'HOLD_NOT_FOUND', 'No such hold.');
  return raw;
}

app.get('/balance', requireUser, async (c) => {
  const { at } = readQuery(c, BalanceQuerySchema);
  if (at) return ok(c, await balanceAsOf(currentUser(c).id, at));
  const userId = currentUser(c).id;
  const [b] = await c.get('steps').time('sql', () => sql.oneTrip`select * from billing.get_balance(${userId})`);
  return ok<Balance>(c, {
    balance: formatCredits(b.balance),
    held: formatCredits(b.held),
    available: formatCredits(b.available),
    expiring: b.expiring_at
      ? { amount: formatCredits(b.expiring_amount), at: (b.expiring_at as Date).toISOString() }
      : null,
  });
});

// Read-only: what of the caller's credits ends when, and what the plan's rule rolls over.
app.get('/expiries', requireUser, async (c) => {
  const rows = await sql`select * from billing.get_expiry_schedule(${currentUser(c).id})`;
  const items = rows.map((r): Expiry => ({
    ends_at: (r.ends_at as Date).toISOString(),
    source: r.source,
    credits: formatCredits(r.credits),
    rolls_over: formatCredits(r.rolls_over),
    expires: formatCredits(r.expires),
    plan_id: r.plan_id,
    plan_renews: r.plan_renews,
  }));
  return ok<Page<Expiry>>(c, whole(items));
});

app.get('/lots', requireUser, async (c) => {
  const q = readQuery(c, LotsQuerySchema);
  if (q.at) return ok(c, await lotsAsOf(currentUser(c).id, q.at, q));
  const rows = await sql`select * from billing.get_lots(${currentUser(c).id}, ${q.cursor ?? null}, ${q.limit + 1})`;
  const lots = rows.map((l): Lot => ({
    id: String(l.id),
    source: l.source,
    category: l.category,
    priority: l.priority,
    amount: formatCredits(l.amount),
    remaining: formatCredits(l.remaining),
    granted_at: (l.granted_at as Date).toISOString(),
    expires_at: l.expires_at ? (l.expires_at as Date).toISOString() : null,
    frozen: l.frozen,
    applies_to: l.applies_to ?? null,
  }));
  return ok<LotPage>(c, pageOf(lots, q.limit, (l) => l.id));
});

app.get('/ledger', requireUser, async (c) => {
  const q = readQuery(c, LedgerQuerySchema);
  const userId = currentUser(c).id;
  if (q.format === 'csv') {
    return c.body(ledgerCsv(userId, q), 200, {
      'content-type': 'text/csv; charset=utf-8',
      'content-disposition': 'attachment; filename="ledger.csv"',
    });
  }
  return ok(c, await ledgerPage(userId, q, q.limit));
});

// A trusted server reports usage for a user it names (the gateway meters its own calls). The SQL:
// billing.run_usage_report (supabase/schemas/78-money-actions.sql), nearly always through
// billing.run_usage_request (20-money-requests.sql), priced by 13-usage-pricing.sql, written by the writer's debit
// (billing.post_debit).
app.post('/usage', requireUsageReporterInSql, async (c) => {
  const { user_id, ...usage } = await readJson(c, UsageRequestSchema);
  return idempotent(c, 'credits.usage', usage, inSql(201, { userId: user_id }));
});

app.get('/usage/summary', requireUser, async (c) => {
  const q = readQuery(c, UsageSummaryQuerySchema);
  const [{ summary }] = await sql`select billing.usage_summary(${
    currentUser(c).id
  }, ${q.from}, ${q.to}, ${q.granularity}) as summary`;
  return ok<UsageSummary>(c, summary);
});

// The product's backend reports usage in bulk; each event_id is its own idempotency key. One
// round trip: the batch answers every refusal as an outcome row (it raises only past 1,000 events,
// which the schema refuses first). A server key, checked before the body is read, is held by the
// statement against its revocation (billing.run_usage_batch); revoked meanwhile, nothing is charged.
app.post('/usage/batch', requireUsageReporter, async (c) => {
  const body = await readJson(c, UsageBatchSchema, 1024 * 1024); // 1,000 events fit in well under 1 MiB
  const [{ outcomes }] = await sql.oneTrip`select billing.run_usage_batch(${jsonb(body.events)},
    ${c.get('serverKeyHash') ?? null}) as outcomes`;
  if (!outcomes) throw new AppError('auth', 'UNAUTHORIZED', serverKeyRefused);
  return ok(c, { outcomes });
});

app.post('/holds', requireUser, async (c) => {
  return idempotent(c, 'credits.holds', await readJson(c, HoldRequestSchema), inSql(201));
});

app.post('/holds/:id/capture', requireUser, async (c) => {
  const id = holdId(c.req.param('id'));
  return idempotent(
    c,
    'credits.holds.capture',
    { hold_id: id, ...await readJson(c, CaptureRequestSchema) },
    inSql(200),
  );
});

app.post('/holds/:id/release', requireUser, async (c) => {
  const id = holdId(c.req.param('id'));
  return idempotent(
    c,
    'credits.holds.release',
    { hold_id: id, ...await readJson(c, ReleaseRequestSchema) },
    inSql(200),
  );
});

app.get('/caps', requireUser, async (c) => {
  const [{ caps }] = await sql`select billing.get_spend_caps(${currentUser(c).id}) as caps`;
  return ok<Page<SpendCap>>(c, whole(caps));
});

/**
 * Sets (or, amount null, removes) one of `userId`'s caps of one owner; answers with all of them.
 * A student's own caps and an admin's are separate rows: each may change only its own.
 */
async function setCap(c: AppContext, userId: string, owner: 'self' | 'admin') {
  const cap = await readJson(c, CapRequestSchema);
  const [{ caps }] =
    await sql`select billing.set_spend_cap(${userId}, ${cap.period}, ${cap.time_zone}, ${cap.model}, ${cap.amount},
      ${currentUser(c).id}, ${owner}) as caps`;
  return ok<Page<SpendCap>>(c, whole(caps));
}

// A student caps their own spending; an admin caps anyone's, and only an admin lifts that cap.
app.put('/caps', requireUser, (c) => setCap(c, currentUser(c).id, 'self'));
app.put('/caps/users/:user_id', requireAdmin, (c) => {
  const userId = c.req.param('user_id');
  if (!isUuid(userId)) throw new AppError('validation', 'VALIDATION_FAILED', 'user_id must be a UUID.');
  return setCap(c, userId, 'admin');
});

app.get('/alerts', requireUser, async (c) => {
  const [{ alerts }] = await sql`select billing.get_alerts(${currentUser(c).id}) as alerts`;
  return ok<Alerts>(c, alerts);
});

app.put('/alerts/low-balance', requireUser, async (c) => {
  const { threshold } = await readJson(c, LowBalanceAlertSchema);
  const [{ alerts }] = await sql`select billing.set_low_balance_alert(${currentUser(c).id}, ${threshold}) as alerts`;
  return ok<Alerts>(c, alerts);
});

app.put('/alerts/caps', requireUser, async (c) => {
  const a = await readJson(c, CapAlertsSchema);
  const [{ alerts }] = await sql`select billing.set_cap_alerts(${
    currentUser(c).id
  }, ${a.period}, ${a.model}, ${a.percents}::integer[]) as alerts`;
  return ok<Alerts>(c, alerts);
});

app.get('/auto-recharge', requireUser, async (c) => {
  const [{ settings }] = await sql`select billing.get_auto_recharge(${currentUser(c).id}) as settings`;
  return ok<AutoRecharge>(c, settings);
});

// Only the student turns it on (their card, their consent); turning it off is theirs too.
app.put('/auto-recharge', requireUser, async (c) => {
  const a = await readJson(c, AutoRechargeSchema);
  const [{ settings }] = await sql`select billing.set_auto_recharge(${currentUser(c).id}, ${a.enabled}, ${
    a.package_id ?? null
  },
      ${a.threshold ?? null}, ${a.monthly_max_count ?? null}, ${a.monthly_max_cents ?? null}) as settings`;
  return ok<AutoRecharge>(c, settings);
});

// A promo, gift or sponsor code: once per account; the same code again answers the first redemption.
app.post('/codes/redeem', requireUser, redeemCode);

// The admin's role is checked in the database by the same statement that grants.
app.post('/grants', requireAdminToken, async (c) => {
  return idempotent(c, 'credits.grants', await readJson(c, GrantRequestSchema), inSql(201, { admin: true }));
});

export default { fetch: app.fetch };
if (import.meta.main) Deno.serve(app.fetch);
