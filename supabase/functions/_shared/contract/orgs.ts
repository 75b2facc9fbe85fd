// Request shapes of the public organisation routes: part of the contract (_shared/contract/index.ts).
import { z } from 'zod';
import { CreditAmountSchema } from '../values/money.ts';
import { pgInt, pgText } from '../values/pg-values.ts';
import { DayOrInstantSchema, InstantSchema, lastDays, UuidSchema } from '../values/query.ts';

export const CreateOrgSchema = z.strictObject({
  name: pgText(200).trim().min(1),
  funding: z.enum(['allowance', 'pool']).optional(),
  org_pays_first: z.boolean().optional(),
});

export const UpdateOrgSchema = z.strictObject({
  name: pgText(200).trim().min(1).optional(),
  funding: z.enum(['allowance', 'pool']).optional(),
  org_pays_first: z.boolean().optional(),
  term_ends_at: InstantSchema.nullable().optional(),
});

export const InviteSchema = z.strictObject({
  email: pgText(320).trim().email(),
  role: z.enum(['admin', 'member']).default('member'),
  ttl_seconds: pgInt(3600, 30 * 86_400).default(7 * 86_400),
});

// The token from the invitation email: 32 random bytes, base64url.
export const AnswerSchema = z.strictObject({
  token: pgText(43).regex(/^[A-Za-z0-9_-]{43}$/, 'must be an invitation token'),
});

export const AllowanceSchema = z.strictObject({
  amount: CreditAmountSchema,
  user_id: UuidSchema.optional(), // absent: every active member
});

export const MemberCapSchema = z.strictObject({
  period: z.enum(['day', 'week', 'month', 'term']),
  amount: CreditAmountSchema.nullable(), // null removes the cap
});

// Dates or instants, as /admin/metrics takes them; the last 30 days (today included) by default.
export const UsageQuerySchema = z
  .strictObject({
    from: DayOrInstantSchema.optional(),
    to: DayOrInstantSchema.optional(),
    period: z.enum(['day', 'week', 'month']).default('day'),
    format: z.enum(['json', 'csv']).default('json'),
  })
  .transform(lastDays(30))
  .refine((q) => Date.parse(q.from) < Date.parse(q.to), { message: 'must be before to', path: ['from'] });
