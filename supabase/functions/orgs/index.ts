// School wallets: organisations, invitations, members, allowances, pooled caps and the
// organisation's usage and ledger. Each handler validates, makes one SQL call (which checks the
// caller's role in the organisation itself) and responds. The money moves in SQL
// (billing.fund_allowances, the members' spending through the credits routes).
import { Buffer } from 'node:buffer';
import { createHash } from 'node:crypto';
import { type AppContext, createApp, currentUser, ok, requireAdmin, requireUser } from '../_shared/app.ts';
import { billingPage } from '../_shared/billing-page.ts';
import { call } from '../_shared/db.ts';
import { AppError } from '../_shared/errors.ts';
import { isUuid, readJson, readQuery } from '../_shared/validate.ts';
import {
  AllowanceSchema,
  AnswerSchema,
  CreateOrgSchema,
  InviteSchema,
  LedgerQuerySchema,
  MemberCapSchema,
  OrgGrantSchema,
  UpdateOrgSchema,
  UsageQuerySchema,
} from './schemas.ts';

const app = createApp('orgs');

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** A UUID from the path; anything else cannot name an organisation or member the caller may see. */
function pathId(c: AppContext, name: 'id' | 'user_id'): string {
  const raw = c.req.param(name) ?? '';
  if (isUuid(raw)) return raw;
  throw name === 'id'
    ? new AppError('not_found', 'ORG_NOT_FOUND', 'No such organisation (or you are not a member).')
    : new AppError('not_found', 'MEMBER_NOT_FOUND', 'No such active member of the organisation.');
}

/** The one SQL call of a route: `billing.<fn>(args…)` answering jsonb. */
async function one(fn: string, args: unknown[]): Promise<unknown> {
  // An object goes as JSON text cast to jsonb: given to a jsonb parameter as a string, the
  // driver would encode it once more, as a JSON string.
  const params = args.map((a, i) => (isJson(a) ? `$${i + 1}::text::jsonb` : `$${i + 1}`));
  const values = args.map((a) => (isJson(a) ? JSON.stringify(a) : a));
  const [row] = await call((sql) => sql.unsafe(`select billing.${fn}(${params.join(', ')}) as r`, values as never[]));
  return row.r;
}
const isJson = (a: unknown) => typeof a === 'object' && a !== null && !(a instanceof Date);

function idempotencyKey(c: AppContext): string {
  const key = c.req.header('Idempotency-Key');
  if (!key || !/^[\x21-\x7e]{1,200}$/.test(key)) {
    throw new AppError(
      'validation',
      'IDEMPOTENCY_KEY_REQUIRED',
      'Send an Idempotency-Key header (1 to 200 printable characters).',
    );
  }
  return key;
}

app.post('/', requireUser, async (c) => {
  const b = await readJson(c, CreateOrgSchema);
  return ok(c, await one('create_org', [currentUser(c).id, b.name, b.funding ?? null, b.org_pays_first ?? null]), 201);
});
app.get('/', requireUser, async (c) => ok(c, await one('list_orgs', [currentUser(c).id])));
app.get('/:id', requireUser, async (c) => ok(c, await one('get_org', [currentUser(c).id, pathId(c, 'id')])));
app.patch('/:id', requireUser, async (c) => {
  const b = await readJson(c, UpdateOrgSchema);
  return ok(c, await one('update_org', [currentUser(c).id, pathId(c, 'id'), b]));
});

// Invitations: the token exists only in the email (and this answer to the admin who sent it,
// so they can share the link another way); the database keeps its SHA-256.
app.post('/:id/invitations', requireUser, async (c) => {
  const b = await readJson(c, InviteSchema);
  const token = Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString('base64url');
  const acceptUrl = `${billingPage().BILLING_PAGE_URL}#invitation=${token}`;
  const invitation = await one('invite_member', [
    currentUser(c).id,
    pathId(c, 'id'),
    b.email,
    b.role,
    sha256(token),
    b.ttl_seconds,
    acceptUrl,
  ]);
  return ok(c, { ...invitation as object, token }, 201);
});
for (const [path, accept] of [['/invitations/accept', true], ['/invitations/decline', false]] as const) {
  app.post(path, requireUser, async (c) => {
    const { token } = await readJson(c, AnswerSchema);
    const user = currentUser(c);
    return ok(c, await one('answer_invitation', [user.id, user.email ?? null, sha256(token), accept]));
  });
}

app.get(
  '/:id/members',
  requireUser,
  async (c) => ok(c, await one('list_org_members', [currentUser(c).id, pathId(c, 'id')])),
);
app.delete(
  '/:id/members/:user_id',
  requireUser,
  async (c) => ok(c, await one('remove_member', [currentUser(c).id, pathId(c, 'id'), pathId(c, 'user_id')])),
);
app.put('/:id/members/:user_id/cap', requireUser, async (c) => {
  const b = await readJson(c, MemberCapSchema);
  return ok(
    c,
    await one('set_member_cap', [currentUser(c).id, pathId(c, 'id'), pathId(c, 'user_id'), b.period, b.amount]),
  );
});

app.post('/:id/allowances', requireUser, async (c) => {
  const b = await readJson(c, AllowanceSchema);
  const args = [currentUser(c).id, pathId(c, 'id'), b.user_id ?? null, b.amount, idempotencyKey(c)];
  return ok(c, await one('fund_allowances', args), 201);
});

app.get('/:id/usage', requireUser, async (c) => {
  const q = readQuery(c, UsageQuerySchema);
  const rows = await one('org_usage', [currentUser(c).id, pathId(c, 'id'), q.from, q.to, q.period]) as Record<
    string,
    string | number
  >[];
  if (q.format !== 'csv') return ok(c, rows);
  const head = 'period_start,member_id,model,credits,charges';
  const lines = rows.map((r) => [r.period_start, r.member_id, r.model ?? '', r.credits, r.charges].join(','));
  return c.body([head, ...lines].join('\n') + '\n', 200, {
    'content-type': 'text/csv; charset=utf-8',
    'content-disposition': 'attachment; filename="org-usage.csv"',
  });
});
app.get('/:id/ledger', requireUser, async (c) => {
  const q = readQuery(c, LedgerQuerySchema);
  return ok(c, await one('org_ledger', [currentUser(c).id, pathId(c, 'id'), q.cursor ?? null, q.limit]));
});

// A platform admin's grant to an organisation's wallet (Idempotency-Key: one grant per key).
app.post('/:id/grants', requireAdmin, async (c) => {
  const b = await readJson(c, OrgGrantSchema);
  const args = [pathId(c, 'id'), b.amount, b.kind, `org-grant:${idempotencyKey(c)}`, b.reason, currentUser(c).id];
  return ok(c, await one('grant_org_credits', args), 201);
});

export default { fetch: app.fetch };
if (import.meta.main) Deno.serve(app.fetch);
