// School wallets: organisations, invitations, members, allowances, pooled caps and the
// organisation's usage and ledger. Each handler validates, makes one SQL call (which checks the
// caller's role in the organisation itself) and responds. The money moves in SQL
// (billing.fund_allowances, the members' spending through the credits routes).
import { createApp, ok } from '../_shared/http/app.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { requireAdmin } from '../_shared/http/require-admin.ts';
import { requireUser } from '../_shared/http/require-user.ts';
import type { AppContext } from '../_shared/app-env.ts';
import { jsonb, sql } from '../_shared/adapters/db.ts';
import { AppError } from '../_shared/errors.ts';
import { reportAtStart } from '../_shared/env.ts';
import { stripe } from '../_shared/adapters/stripe.ts';
import { newInvitation, tokenHash } from '../_shared/domain/invitations.ts';
import { idempotencyKey, idempotent, scopedKey } from '../_shared/http/idempotency.ts';
import { csvField } from '../_shared/domain/ledger.ts';
import { encodeCursor, pageOf, whole } from '../_shared/values/page.ts';
import { readJson, readQuery } from '../_shared/http/validate.ts';
import { isUuid } from '../_shared/values/query.ts';
import { UsageSummaryQuerySchema } from '../_shared/contract/credits.ts';
import { codeHash, newCode } from '../_shared/domain/codes.ts';
import { SponsorCodeSchema } from '../_shared/contract/codes.ts';
import {
  AllowanceSchema,
  AnswerSchema,
  CreateOrgSchema,
  InviteSchema,
  MemberCapSchema,
  OrgInvoiceSchema,
  UpdateOrgSchema,
  UsageQuerySchema,
} from '../_shared/contract/orgs.ts';
import {
  InvitationsQuerySchema,
  InvoicingApprovalSchema,
  LedgerQuerySchema,
  OrgBalanceAsOfSchema,
  OrgGrantSchema,
  OrgInvoicesQuerySchema,
  OrgLotsAsOfSchema,
  OrgVerificationSchema,
  OwnerSchema,
} from './schemas.ts';
import { requestInvoice } from './invoices.ts';

const app = createApp('orgs');
reportAtStart(stripe); // invoices: a missing or wrong-mode key is logged at start and answered with 503

/** What a path id that is not a UUID answers: it cannot name anything the caller may see. */
const notFound = {
  id: () => new AppError('not_found', 'ORG_NOT_FOUND', 'No such organisation (or you are not a member).'),
  user_id: () => new AppError('not_found', 'MEMBER_NOT_FOUND', 'No such active member of the organisation.'),
  invitation_id: () => new AppError('not_found', 'INVITATION_NOT_FOUND', 'No such invitation.'),
  code_id: () => new AppError('not_found', 'CODE_NOT_FOUND', 'No such code.'),
};

/** A UUID from the path. */
function pathId(c: AppContext, name: keyof typeof notFound): string {
  const raw = c.req.param(name) ?? '';
  if (isUuid(raw)) return raw;
  throw notFound[name]();
}

app.post('/', requireUser, async (c) => {
  const b = await readJson(c, CreateOrgSchema);
  const [{ org }] = await sql`select billing.create_org(${currentUser(c).id}, ${b.name}, ${b.funding ?? null},
    ${b.org_pays_first ?? null}) as org`;
  return ok(c, org, 201);
});
app.get('/', requireUser, async (c) => {
  const [{ orgs }] = await sql`select billing.list_orgs(${currentUser(c).id}) as orgs`;
  return ok(c, whole(orgs));
});
app.get('/:id', requireUser, async (c) => {
  const [{ org }] = await sql`select billing.get_org(${currentUser(c).id}, ${pathId(c, 'id')}) as org`;
  return ok(c, org);
});
app.patch('/:id', requireUser, async (c) => {
  const b = await readJson(c, UpdateOrgSchema);
  const [{ org }] = await sql`select billing.update_org(${currentUser(c).id}, ${pathId(c, 'id')}, ${jsonb(b)}) as org`;
  return ok(c, org);
});

// Invitations: the token is derived from the invitation's id (_shared/domain/invitations.ts) and exists
// only in the email and in this answer to the admin who sent it (to share the link another way).
app.post('/:id/invitations', requireUser, async (c) => {
  const b = await readJson(c, InviteSchema);
  const { id, token, hash } = newInvitation();
  const [{ invitation }] = await sql`select billing.invite_member(${currentUser(c).id}, ${pathId(c, 'id')}, ${b.email},
    ${b.role}, ${hash}, ${b.ttl_seconds}, ${id}) as invitation`;
  return ok(c, { ...invitation, token }, 201);
});
app.get('/:id/invitations', requireUser, async (c) => {
  const q = readQuery(c, InvitationsQuerySchema);
  const [{ page }] = await sql<{ page: { invitations: unknown[]; next_cursor: string | null } }[]>`
    select billing.list_org_invitations(${currentUser(c).id}, ${pathId(c, 'id')}, ${
    q.cursor ?? null
  }, ${q.limit}) as page`;
  return ok(c, { items: page.invitations, next_cursor: page.next_cursor && encodeCursor(page.next_cursor) });
});
app.delete('/:id/invitations/:invitation_id', requireUser, async (c) => {
  const [{ invitation }] = await sql`select billing.revoke_invitation(${currentUser(c).id}, ${pathId(c, 'id')},
    ${pathId(c, 'invitation_id')}) as invitation`;
  return ok(c, invitation);
});
for (const [path, accept] of [['/invitations/accept', true], ['/invitations/decline', false]] as const) {
  app.post(path, requireUser, async (c) => {
    const { token } = await readJson(c, AnswerSchema);
    const user = currentUser(c);
    const [{ answer }] = await sql`select billing.answer_invitation(${user.id}, ${user.email ?? null}, ${
      tokenHash(token)
    },
      ${accept}) as answer`;
    return ok(c, answer);
  });
}

// Before signing in, the link's holder may see which organisation invites them (the page's card).
app.post('/invitations/preview', async (c) => {
  const { token } = await readJson(c, AnswerSchema);
  const [{ preview }] = await sql`select billing.preview_invitation(${tokenHash(token)}) as preview`;
  return ok(c, preview);
});

// Ownership moves only here, by the owner, to an active member; the old owner becomes an admin.
app.post('/:id/owner', requireUser, async (c) => {
  const b = await readJson(c, OwnerSchema);
  const [{ org }] = await sql`select billing.transfer_org_owner(${currentUser(c).id}, ${
    pathId(c, 'id')
  }, ${b.user_id}) as org`;
  return ok(c, org);
});

app.get('/:id/members', requireUser, async (c) => {
  const [{ members }] = await sql`select billing.list_org_members(${currentUser(c).id}, ${pathId(c, 'id')}) as members`;
  return ok(c, whole(members));
});
app.delete('/:id/members/:user_id', requireUser, async (c) => {
  const [{ member }] = await sql`select billing.remove_member(${currentUser(c).id}, ${pathId(c, 'id')},
    ${pathId(c, 'user_id')}) as member`;
  return ok(c, member);
});
app.put('/:id/members/:user_id/cap', requireUser, async (c) => {
  const b = await readJson(c, MemberCapSchema);
  const [{ caps }] = await sql`select billing.set_member_cap(${currentUser(c).id}, ${pathId(c, 'id')},
    ${pathId(c, 'user_id')}, ${b.period}, ${b.amount}) as caps`;
  return ok(c, whole(caps));
});

app.post('/:id/allowances', requireUser, async (c) => {
  const b = await readJson(c, AllowanceSchema);
  const [{ funded }] = await sql`select billing.fund_allowances(${currentUser(c).id}, ${pathId(c, 'id')},
    ${b.user_id ?? null}, ${b.amount}, ${idempotencyKey(c)}, ${b.applies_to ?? null}::text[]) as funded`;
  return ok(c, funded, 201);
});

app.get('/:id/usage', requireUser, async (c) => {
  const q = readQuery(c, UsageQuerySchema);
  const [{ rows }] = await sql<{ rows: Record<string, string | number>[] }[]>`select billing.org_usage(
    ${currentUser(c).id}, ${pathId(c, 'id')}, ${q.from}, ${q.to}, ${q.period}) as rows`;
  if (q.format !== 'csv') return ok(c, whole(rows));
  const head = 'period_start,member_id,member_email,model,credits,charges';
  const lines = rows.map((r) =>
    [r.period_start, r.member_id, r.member_email ?? '', r.model ?? '', r.credits, r.charges].map((v) =>
      csvField(String(v))
    )
      .join(',')
  );
  return c.body([head, ...lines].join('\n') + '\n', 200, {
    'content-type': 'text/csv; charset=utf-8',
    'content-disposition': 'attachment; filename="org-usage.csv"',
  });
});
app.get('/:id/members/:user_id/usage/summary', requireUser, async (c) => {
  const q = readQuery(c, UsageSummaryQuerySchema);
  const [{ summary }] = await sql`select billing.org_member_usage_summary(${currentUser(c).id}, ${pathId(c, 'id')},
    ${pathId(c, 'user_id')}, ${q.from}, ${q.to}, ${q.granularity}) as summary`;
  return ok(c, summary);
});

app.get('/:id/ledger', requireUser, async (c) => {
  const q = readQuery(c, LedgerQuerySchema);
  const [{ entries }] = await sql<{ entries: { id: string }[] }[]>`select billing.org_ledger(${currentUser(c).id},
    ${pathId(c, 'id')}, ${q.cursor ?? null}, ${q.limit + 1}) as entries`;
  return ok(c, pageOf(entries, q.limit, (e) => e.id));
});

// The wallet (owners and admins) and the caller's allowance as they stood at an instant, and the lots of either.
// The instant goes as text, exact to the microsecond (a timestamptz parameter passes through a JavaScript Date).
app.get('/:id/balance', requireUser, async (c) => {
  const { at } = readQuery(c, OrgBalanceAsOfSchema);
  const [{ r }] = await sql`select billing.org_balance_as_of(${currentUser(c).id}, ${
    pathId(c, 'id')
  }, ${at}::text::timestamptz) as r`;
  return ok(c, r);
});
app.get('/:id/lots', requireUser, async (c) => {
  const q = readQuery(c, OrgLotsAsOfSchema);
  const [{ r }] = await sql<{ r: { id: string }[] }[]>`select billing.org_lots_as_of(${currentUser(c).id}, ${
    pathId(c, 'id')
  },
      ${q.account === 'allowance'}, ${q.at}::text::timestamptz, ${q.cursor ?? null}, ${q.limit + 1}) as r`;
  return ok(c, pageOf(r, q.limit, (l) => l.id));
});

// Sponsor codes: the credits leave the wallet for the code's escrow at issue; the code is in
// this answer only (a retry with the same Idempotency-Key answers the code made, without it).
app.post('/:id/sponsor-codes', requireUser, async (c) => {
  const b = await readJson(c, SponsorCodeSchema);
  const code = newCode();
  const [{ issued }] = await sql<{ issued: { replayed: boolean } }[]>`select billing.issue_sponsor_code(
    ${currentUser(c).id}, ${pathId(c, 'id')}, ${codeHash(code.replaceAll('-', ''))}, ${jsonb(b)},
    ${idempotencyKey(c)}) as issued`;
  const { replayed, ...row } = issued;
  return ok(c, { ...row, code: replayed ? null : code }, replayed ? 200 : 201);
});
app.get('/:id/sponsor-codes', requireUser, async (c) => {
  const [{ codes }] = await sql`select billing.list_sponsor_codes(${currentUser(c).id}, ${pathId(c, 'id')}) as codes`;
  return ok(c, whole(codes));
});
app.delete('/:id/sponsor-codes/:code_id', requireUser, async (c) => {
  const [{ code }] = await sql`select billing.revoke_sponsor_code(${currentUser(c).id}, ${pathId(c, 'id')},
    ${pathId(c, 'code_id')}) as code`;
  return ok(c, code);
});

// A package on a Stripe invoice (owners and admins): the wallet is credited when it is paid.
app.post('/:id/invoices', requireUser, async (c) => {
  const b = await readJson(c, OrgInvoiceSchema);
  const org = pathId(c, 'id');
  return idempotent(c, 'orgs.invoices', b, (key) => requestInvoice(currentUser(c).id, org, b, key));
});
app.get('/:id/invoices', requireUser, async (c) => {
  const q = readQuery(c, OrgInvoicesQuerySchema);
  const [{ invoices }] = await sql<{ invoices: { id: string }[] }[]>`select billing.list_org_invoices(
    ${currentUser(c).id}, ${pathId(c, 'id')}, ${q.cursor ?? null}, ${q.limit + 1}) as invoices`;
  return ok(c, pageOf(invoices, q.limit, (i) => i.id));
});

// A platform admin lets an organisation ask for invoices before its first card purchase (or withdraws that).
app.put('/:id/invoicing', requireAdmin, async (c) => {
  const b = await readJson(c, InvoicingApprovalSchema);
  const [{ org }] = await sql`select billing.approve_org_invoicing(${pathId(c, 'id')}, ${b.approved},
    ${currentUser(c).id}) as org`;
  return ok(c, org);
});

// A platform admin marks an organisation verified: its wallet, not the admin who paid, answers for its purchases.
app.put('/:id/verification', requireAdmin, async (c) => {
  const b = await readJson(c, OrgVerificationSchema);
  const [{ org }] = await sql`select billing.verify_org(${pathId(c, 'id')}, ${b.verified},
    ${currentUser(c).id}) as org`;
  return ok(c, org);
});

// A platform admin's grant to an organisation's wallet (Idempotency-Key: one grant per key).
app.post('/:id/grants', requireAdmin, async (c) => {
  const b = await readJson(c, OrgGrantSchema);
  // Scoped by organisation: one key used for two schools makes two grants, not a replay.
  const key = scopedKey(`org-grant:${pathId(c, 'id')}:`, idempotencyKey(c), 300);
  const [{ granted }] = await sql`select billing.grant_org_credits(${pathId(c, 'id')}, ${b.amount}, ${b.kind}, ${key},
    ${b.reason}, ${currentUser(c).id}, ${b.applies_to ?? null}::text[]) as granted`;
  return ok(c, granted, 201);
});

export default { fetch: app.fetch };
if (import.meta.main) Deno.serve(app.fetch);
