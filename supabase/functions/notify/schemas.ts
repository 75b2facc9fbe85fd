// Request shape of the notify routes.
import { z } from 'zod';
import { templates } from './notifications.ts';
import { jsonObject, pgText } from '../_shared/values/pg-values.ts';
import { tokenText } from '../_shared/values/text.ts';

export const SendSchema = z.strictObject({
  // An invitation's email is sent for an invitation only (billing.invite_member), and a gift's
  // code to its buyer only (billing.activate_gift_code): never on request, to any address.
  template: z.enum(templates).exclude(['org_invitation', 'gift_code']),
  to: pgText(320).email(),
  data: jsonObject({ depth: 1, entries: 1000, key: 64, text: 2000 }).default({}),
  idempotency_key: tokenText(255),
});
