// Request shapes of the organisation routes (school wallets) not in the contract
// (_shared/contract/orgs.ts).
import { z } from 'zod';
import { AsOfSchema } from '../_shared/contract/credits.ts';
import { AppliesToSchema, CreditAmountSchema } from '../_shared/values/money.ts';
import { pgText } from '../_shared/values/pg-values.ts';
import { IdCursorSchema, pageLimit, UuidCursorSchema, UuidSchema } from '../_shared/values/query.ts';

export const LedgerQuerySchema = z.strictObject({
  cursor: IdCursorSchema.optional(),
  limit: pageLimit(200, 50),
});

export const InvitationsQuerySchema = z.strictObject({
  cursor: UuidCursorSchema.optional(),
  limit: pageLimit(100, 50),
});

// Invoices page the same way: newest first, by id.
export const OrgInvoicesQuerySchema = InvitationsQuerySchema;

export const OwnerSchema = z.strictObject({ user_id: UuidSchema });

export const OrgGrantSchema = z.strictObject({
  amount: CreditAmountSchema,
  kind: z.enum(['promo_grant', 'adjustment']).default('adjustment'),
  reason: pgText(500).min(1),
  applies_to: AppliesToSchema.optional(),
});

// PUT /orgs/:id/invoicing (platform admins): whether the organisation may ask for invoices before a card purchase.
export const InvoicingApprovalSchema = z.strictObject({ approved: z.boolean() });

// PUT /orgs/:id/verification (platform admins): a verified organisation's wallet answers for its own purchases.
export const OrgVerificationSchema = z.strictObject({ verified: z.boolean() });

// GET /orgs/:id/balance and /orgs/:id/lots: as they stood at `at` (required: GET /orgs/:id shows them now).
export const OrgBalanceAsOfSchema = z.strictObject({ at: AsOfSchema });
export const OrgLotsAsOfSchema = z.strictObject({
  at: AsOfSchema,
  account: z.enum(['wallet', 'allowance']).default('wallet'),
  cursor: IdCursorSchema.optional(),
  limit: pageLimit(200, 50),
});
