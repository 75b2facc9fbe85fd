// POST /credits/codes/redeem: the code is normalised and hashed here (SQL never sees it, nor
// does any log), then one money request redeems it (billing.redeem_code through
// run_code_request: the row lock on the code, the audit, the failed-guess limits).
import type { AppContext } from '../_shared/app-env.ts';
import { knownClientAddress } from '../_shared/http/client-address.ts';
import { addressHash } from '../_shared/domain/code-secrets.ts';
import { codeHash, normalizeCode } from '../_shared/domain/codes.ts';
import { RedeemCodeSchema } from '../_shared/contract/codes.ts';
import { AppError } from '../_shared/errors.ts';
import { idempotent, inSql } from '../_shared/http/idempotency.ts';
import { readJson } from '../_shared/http/validate.ts';
import { lazyEnv } from '../_shared/env.ts';
import { z } from 'zod';

const env = lazyEnv(z.object({
  // Unknown codes tried from one client address in an hour before its attempts stop. Many
  // students may share an address (a school's network): raise it where they do.
  CODE_GUESSES_PER_ADDRESS_PER_HOUR: z.coerce.number().int().positive().default(30),
}));

export async function redeemCode(c: AppContext): Promise<Response> {
  const { code } = await readJson(c, RedeemCodeSchema);
  const bare = normalizeCode(code);
  if (!bare) {
    throw new AppError('validation', 'VALIDATION_FAILED', 'A code is 20 letters and digits (hyphens optional).', {
      field: 'code',
    });
  }
  return idempotent(
    c,
    'credits.codes.redeem',
    { code_hash: codeHash(bare) },
    inSql(200, {
      context: {
        address_hash: addressHash(knownClientAddress(c)),
        address_limit: env().CODE_GUESSES_PER_ADDRESS_PER_HOUR,
      },
    }),
  );
}
