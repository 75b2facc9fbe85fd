// The credits API: balance, ledger, usage, holds, and admin grants. Each handler validates,
// authorises, makes one SQL call (the ledger functions own the money) and responds.
import type { Balance, Hold, UsageCharge } from '../_shared/contract.ts';
import { createApp, currentUser, ok, requireAdmin, requireServiceRole, requireUser } from '../_shared/app.ts';
import { call } from '../_shared/db.ts';
import { AppError } from '../_shared/errors.ts';
import { idempotent } from '../_shared/idempotency.ts';
import { formatCredits } from '../_shared/money.ts';
import { isUuid, readJson, readQuery } from '../_shared/validate.ts';
import { ledgerCsv, ledgerPage } from '../_shared/ledger.ts';
import {
  CaptureRequestSchema,
  GrantRequestSchema,
  HoldRequestSchema,
  LedgerQuerySchema,
  ReleaseRequestSchema,
  UsageBatchSchema,
  UsageRequestSchema,
} from './schemas.ts';

const app = createApp('credits');

type HoldRow = {
  hold_id: string;
  status: string;
  amount: string;
  captured: string;
  released: string;
  transfer_id: string | null;
  expires_at: Date;
  balance: string;
  available: string;
};
const holdJson = (h: HoldRow): Hold => ({
  hold_id: h.hold_id,
  status: h.status,
  amount: formatCredits(h.amount),
  captured: formatCredits(h.captured),
  released: formatCredits(h.released),
  transfer_id: h.transfer_id === null ? null : String(h.transfer_id),
  expires_at: h.expires_at.toISOString(),
  balance: formatCredits(h.balance),
  available: formatCredits(h.available),
});

/** A hold id from the path; anything that is not a UUID cannot be the caller's hold. */
function holdId(raw: string): string {
  if (!isUuid(raw)) throw new AppError('not_found', 'HOLD_NOT_FOUND', 'No such hold.');
  return raw;
}

app.get('/balance', requireUser, async (c) => {
  const [b] = await call((sql) => sql`select * from billing.get_balance(${currentUser(c).id})`);
  return ok<Balance>(c, {
    balance: formatCredits(b.balance),
    held: formatCredits(b.held),
    available: formatCredits(b.available),
  });
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
  return ok(c, await call(() => ledgerPage(userId, q, q.limit)));
});

app.post('/usage', requireUser, async (c) => {
  const body = await readJson(c, UsageRequestSchema);
  return idempotent(c, 'credits.usage', body, async (tx, key) => {
    const [r] = await tx`
      select * from billing.charge_usage(${currentUser(c).id}, ${body.model}, ${body.input_tokens},
        ${body.output_tokens}, ${key}, ${body.correlation_id ?? null}, ${
      body.metadata ? tx.json(body.metadata) : null
    })`;
    const data: UsageCharge = {
      transfer_id: r.transfer_id === null ? null : String(r.transfer_id),
      charged: formatCredits(r.charged),
      balance: formatCredits(r.balance),
      available: formatCredits(r.available),
      rate_card_version: r.rate_card_version,
    };
    return { status: 201, data };
  });
});

// The product's backend reports usage in bulk; each event_id is its own idempotency key.
app.post('/usage/batch', requireServiceRole, async (c) => {
  const body = await readJson(c, UsageBatchSchema, 1024 * 1024); // 1,000 events fit in well under 1 MiB
  const [{ outcomes }] = await call((sql) =>
    sql`select billing.charge_usage_batch(${JSON.stringify(body.events)}::text::jsonb) as outcomes`
  );
  return ok(c, { outcomes });
});

app.post('/holds', requireUser, async (c) => {
  const body = await readJson(c, HoldRequestSchema);
  return idempotent(c, 'credits.holds', body, async (tx, key) => {
    const [h] = await tx<HoldRow[]>`
      select * from billing.reserve_credits(${currentUser(c).id}, ${body.amount}, ${key}, ${body.ttl_seconds ?? 900},
        ${body.correlation_id ?? null}, null)`;
    return { status: 201, data: holdJson(h) };
  });
});

app.post('/holds/:id/capture', requireUser, async (c) => {
  const id = holdId(c.req.param('id'));
  const body = await readJson(c, CaptureRequestSchema);
  return idempotent(c, 'credits.holds.capture', body, async (tx) => {
    const [h] = await tx<HoldRow[]>`
      select * from billing.capture_hold(${currentUser(c).id}, ${id}, ${body.amount ?? null}, null)`;
    return { status: 200, data: holdJson(h) };
  });
});

app.post('/holds/:id/release', requireUser, async (c) => {
  const id = holdId(c.req.param('id'));
  const body = await readJson(c, ReleaseRequestSchema);
  return idempotent(c, 'credits.holds.release', body, async (tx) => {
    const [h] = await tx<HoldRow[]>`select * from billing.release_hold(${currentUser(c).id}, ${id})`;
    return { status: 200, data: holdJson(h) };
  });
});

app.post('/grants', requireAdmin, async (c) => {
  const body = await readJson(c, GrantRequestSchema);
  const admin = currentUser(c);
  return idempotent(c, 'credits.grants', body, async (tx, key) => {
    const [r] = await tx`
      select * from billing.grant_credits(${body.user_id}, ${body.amount}, ${body.kind}, ${key}, null, null,
        ${JSON.stringify({ reason: body.reason, granted_by: admin.id })}::text::jsonb)`;
    return {
      status: 201,
      data: { transfer_id: String(r.transfer_id), amount: formatCredits(r.amount), balance: formatCredits(r.balance) },
    };
  });
});

export default { fetch: app.fetch };
if (import.meta.main) Deno.serve(app.fetch);
