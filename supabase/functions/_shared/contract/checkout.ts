// Request shape of POST /checkout/sessions: part of the contract (_shared/contract/index.ts).
import { z } from 'zod';
import { pgText } from '../values/pg-values.ts';
import { UuidSchema } from '../values/query.ts';
import { PackageIdSchema, tokenText } from '../values/text.ts';

export const CreateSessionSchema = z.strictObject({
  package_id: PackageIdSchema,
  success_url: pgText(2000).pipe(z.url()).optional(),
  cancel_url: pgText(2000).pipe(z.url()).optional(),
  client_temp_id: tokenText(64).optional(),
  /** Keep the card (Stripe's setup_future_usage=off_session) so auto-recharge can charge it later. */
  save_card: z.boolean().default(false),
  /** Buy for this organisation's wallet (the caller must be its owner or an admin). */
  org_id: UuidSchema.optional(),
  /** Buy a gift: paid, the credits wait behind a code for someone else to redeem (GET shows it). */
  gift: z.boolean().default(false),
}).refine((b) => !(b.gift && (b.org_id || b.save_card || b.client_temp_id)), {
  path: ['gift'],
  message: 'a gift is bought by a student for someone else: no org_id, save_card or client_temp_id',
}).refine((b) => !(b.org_id && b.save_card), {
  path: ['save_card'],
  message: "an organisation purchase cannot keep a card (auto-recharge is a student's own)",
});
export type CreateSession = z.infer<typeof CreateSessionSchema>;
