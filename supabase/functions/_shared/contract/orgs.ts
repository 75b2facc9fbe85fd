// Request shapes of the public organisation routes: part of the contract (_shared/contract/index.ts).
import { z } from 'zod';
import { AppliesToSchema, CreditAmountSchema } from '../values/money.ts';
import { pgInt, pgText } from '../values/pg-values.ts';
import { DayOrInstantSchema, InstantSchema, lastDays, UuidSchema } from '../values/query.ts';
import { CountryCodeSchema, PackageIdSchema, PostalCodeSchema, printedText } from '../values/text.ts';

// An organisation's name is printed by Stripe (the invoice's customer) and in invitation emails.
export const CreateOrgSchema = z.strictObject({
  name: printedText(200),
  funding: z.enum(['allowance', 'pool']).optional(),
  org_pays_first: z.boolean().optional(),
});

export const UpdateOrgSchema = z.strictObject({
  name: printedText(200).optional(),
  funding: z.enum(['allowance', 'pool']).optional(),
  org_pays_first: z.boolean().optional(),
  term_ends_at: InstantSchema.nullable().optional(),
  /** Keep the redacted prompt and answer of the AI calls the school pays for, 30 days (docs/ai-gateway.md). */
  ai_content_consent: z.boolean().optional(),
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
  applies_to: AppliesToSchema.optional(), // the models these credits may pay for, within the wallet's
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

// Where the invoice is made out to: the school's billing address (Stripe Tax reads it). Stripe
// prints every field on the invoice it emails in our name: no control, format or bidirectional
// characters, no links or domains (values/text.ts).
export const BillingAddressSchema = z.strictObject({
  line1: printedText(200),
  line2: printedText(200).optional(),
  city: printedText(100),
  state: printedText(100).optional(),
  postal_code: PostalCodeSchema,
  country: CountryCodeSchema,
});

// A package on a Stripe invoice with net terms (POST /orgs/:id/invoices). The invoice goes to the
// requester's own confirmed address only: billing_email, when given, must be it.
export const OrgInvoiceSchema = z.strictObject({
  package_id: PackageIdSchema,
  quantity: pgInt(1, 100).default(1),
  po_number: printedText(64).optional(),
  days_until_due: pgInt(1, 90).default(30),
  billing_email: pgText(320).trim().email().optional(),
  billing_address: BillingAddressSchema,
});
