// Request shapes of the organisation routes (school wallets).
import { z } from 'zod';
import { CreditAmountSchema } from '../_shared/money.ts';
import { InstantSchema, pageLimit, UuidSchema } from '../_shared/query.ts';

export const CreateOrgSchema = z.strictObject({
  name: z.string().trim().min(1).max(200),
  funding: z.enum(['allowance', 'pool']).optional(),
  org_pays_first: z.boolean().optional(),
});

export const UpdateOrgSchema = z.strictObject({
  name: z.string().trim().min(1).max(200).optional(),
  funding: z.enum(['allowance', 'pool']).optional(),
  org_pays_first: z.boolean().optional(),
  term_ends_at: InstantSchema.nullable().optional(),
});

export const InviteSchema = z.strictObject({
  email: z.string().trim().email().max(320),
  role: z.enum(['admin', 'member']).default('member'),
  ttl_seconds: z.number().int().min(3600).max(30 * 86_400).default(7 * 86_400),
});

// The token from the invitation email: 32 random bytes, base64url.
export const AnswerSchema = z.strictObject({
  token: z.string().regex(/^[A-Za-z0-9_-]{43}$/, 'must be an invitation token'),
});

export const AllowanceSchema = z.strictObject({
  amount: CreditAmountSchema,
  user_id: z.string().uuid().optional(), // absent: every active member
});

export const MemberCapSchema = z.strictObject({
  period: z.enum(['day', 'week', 'month', 'term']),
  amount: CreditAmountSchema.nullable(), // null removes the cap
});

export const OrgGrantSchema = z.strictObject({
  amount: CreditAmountSchema,
  kind: z.enum(['promo_grant', 'adjustment']).default('adjustment'),
  reason: z.string().min(1).max(500),
});

export const UsageQuerySchema = z.strictObject({
  from: InstantSchema,
  to: InstantSchema,
  period: z.enum(['day', 'week', 'month']).default('day'),
  format: z.enum(['json', 'csv']).default('json'),
});

export const LedgerQuerySchema = z.strictObject({
  cursor: z.string().regex(/^[1-9][0-9]{0,18}$/).optional(),
  limit: z.coerce.number().int().min(1).max(200).default(50),
});

// A page of an organisation's invitations: the cursor is the last invitation id of the page before.
export const InvitationsQuerySchema = z.strictObject({
  cursor: UuidSchema.optional(),
  limit: pageLimit(100, 50),
});

export const OwnerSchema = z.strictObject({ user_id: UuidSchema });
