// Request shapes of the code routes: redeeming (students), promo codes (admins), sponsor codes
// (organisation admins). Part of the contract (_shared/contract/index.ts).
import { z } from 'zod';
import { AppliesToSchema, CreditAmountSchema } from '../values/money.ts';
import { pgInt, pgText } from '../values/pg-values.ts';
import { InstantSchema, pageLimit, UuidCursorSchema, UuidSchema } from '../values/query.ts';

/** A code as typed: letters, digits, spaces and hyphens (normalised by _shared/domain/codes.ts). */
export const RedeemCodeSchema = z.strictObject({
  code: pgText(64).min(1).regex(/^[A-Za-z0-9 -]+$/, 'must be a code'),
});
export type RedeemCode = z.infer<typeof RedeemCodeSchema>;

const NoteSchema = pgText(500).trim().min(1);

export const PromoCodeSchema = z.strictObject({
  /** Credits each redemption grants (one redemption per account). */
  credits: CreditAmountSchema,
  /** Σ credits all redemptions may grant; absent: only max_redemptions limits it. */
  budget: CreditAmountSchema.optional(),
  max_redemptions: pgInt(1, 10_000_000).optional(),
  valid_from: InstantSchema.optional(),
  valid_until: InstantSchema.optional(),
  /** When the granted credits expire: a fixed time, or days after each redemption (default: the policy's). */
  lot_expires_at: InstantSchema.optional(),
  lot_expires_after_days: pgInt(1, 3650).optional(),
  /** The models its credits may pay for (default: any). */
  applies_to: AppliesToSchema.optional(),
  note: NoteSchema.optional(),
}).refine((b) => b.budget !== undefined || b.max_redemptions !== undefined, {
  path: ['max_redemptions'],
  message: 'a promo code needs a budget or a max_redemptions',
}).refine((b) => !(b.lot_expires_at && b.lot_expires_after_days), {
  path: ['lot_expires_after_days'],
  message: 'give lot_expires_at or lot_expires_after_days, not both',
}).refine((b) => !b.valid_until || Date.parse(b.valid_until) > Date.parse(b.valid_from ?? new Date().toISOString()), {
  path: ['valid_until'],
  message: 'must be after valid_from (and in the future)',
});
export type PromoCode = z.infer<typeof PromoCodeSchema>;

export const SponsorCodeSchema = z.strictObject({
  credits: CreditAmountSchema,
  /** The only student who may redeem it: a user id, or an email address. */
  user_id: UuidSchema.optional(),
  email: pgText(320).trim().email().optional(),
  valid_until: InstantSchema.optional(),
  /** The models its credits may pay for (narrowed further when the wallet's credits already are). */
  applies_to: AppliesToSchema.optional(),
  note: NoteSchema.optional(),
}).refine((b) => (b.user_id === undefined) !== (b.email === undefined), {
  path: ['user_id'],
  message: 'name the student by user_id or by email (one of them)',
}).refine((b) => !b.valid_until || Date.parse(b.valid_until) > Date.now(), {
  path: ['valid_until'],
  message: 'must be in the future',
});
export type SponsorCode = z.infer<typeof SponsorCodeSchema>;

export const CodesQuerySchema = z.strictObject({
  cursor: UuidCursorSchema.optional(),
  limit: pageLimit(100, 50),
});
