// Promo codes, for admins: create (the code is shown in this answer only), list, disable.
// Credits move only when a student redeems one (POST /credits/codes/redeem).
import type { AppContext } from '../_shared/app-env.ts';
import { currentUser } from '../_shared/http/identify.ts';
import { ok } from '../_shared/http/app.ts';
import { codeHash, newCode } from '../_shared/domain/codes.ts';
import { CodesQuerySchema, PromoCodeSchema } from '../_shared/contract/codes.ts';
import { jsonb, sql } from '../_shared/adapters/db.ts';
import { AppError } from '../_shared/errors.ts';
import { idempotencyKey } from '../_shared/http/idempotency.ts';
import { pageOf } from '../_shared/values/page.ts';
import { readJson, readQuery } from '../_shared/http/validate.ts';
import { isUuid } from '../_shared/values/query.ts';

type Code = Record<string, unknown> & { replayed?: boolean };

/** POST /admin/codes: a retry with the same Idempotency-Key answers the code made, without it. */
export async function createPromoCode(c: AppContext): Promise<Response> {
  const spec = await readJson(c, PromoCodeSchema);
  const key = idempotencyKey(c);
  const code = newCode();
  const [{ r }] = await sql<{ r: Code }[]>`select billing.create_promo_code(${currentUser(c).id}, ${
    codeHash(code.replaceAll('-', ''))
  },
      ${jsonb(spec)}, ${key}) as r`;
  const { replayed, ...row } = r;
  return ok(c, replayed ? { ...row, code: null } : { ...row, code }, replayed ? 200 : 201);
}

export async function listPromoCodes(c: AppContext): Promise<Response> {
  const q = readQuery(c, CodesQuerySchema);
  const [{ r }] = await sql<{ r: Code[] }[]>`select billing.list_promo_codes(${q.cursor ?? null}, ${q.limit + 1}) as r`;
  return ok(c, pageOf(r, q.limit, (last) => String(last.id)));
}

export async function disablePromoCode(c: AppContext): Promise<Response> {
  const id = c.req.param('id') ?? '';
  if (!isUuid(id)) throw new AppError('not_found', 'CODE_NOT_FOUND', 'No such code.');
  const [{ r }] = await sql<{ r: Code }[]>`select billing.disable_promo_code(${id}) as r`;
  return ok(c, r);
}
