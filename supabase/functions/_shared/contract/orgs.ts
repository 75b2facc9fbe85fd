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

// Where the invoice is made out to: the school's billing address (Stripe Tax reads it).
export const BillingAddressSchema = z.strictObject({
  line1: pgText(200).trim().min(1),
  line2: pgText(200).trim().min(1).optional(),
  city: pgText(100).trim().min(1),
  state: pgText(100).trim().min(1).optional(),
  postal_code: pgText(20).trim().min(1),
  country: pgText(2).regex(/^[A-Z]{2}$/, 'must be an ISO 3166-1 alpha-2 code, e.g. US'),
});

// A package on a Stripe invoice with net terms (POST /orgs/:id/invoices).
export const OrgInvoiceSchema = z.strictObject({
  package_id: pgText(100).min(1),
  quantity: pgInt(1, 100).default(1),
  po_number: pgText(64).trim().min(1).optional(),
  days_until_due: pgInt(1, 90).default(30),
  billing_email: pgText(320).trim().email(),
  billing_address: BillingAddressSchema,
});
