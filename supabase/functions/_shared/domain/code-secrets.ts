// What codes need CODE_SECRET for. A gift's code is an HMAC of its code id, so the buyer can read
// it again (GET /checkout/sessions/:id) and its email can carry it, while no row holds it; the
// client address of a redemption attempt is kept as a keyed hash (the audit counts failed
// guesses per address without storing addresses).
import { createHmac } from 'node:crypto';
import { z } from 'zod';
import { codeHash, encodeCode, groupCode } from './codes.ts';
import { CommaListSchema, lazyEnv } from '../env.ts';

const env = lazyEnv(z.object({
  // Comma-separated while rotating: the first makes new gift codes; older gifts are found with
  // whichever secret made them.
  CODE_SECRET: CommaListSchema.refine(
    (l) => l.length > 0 && l.every((s) => s.length >= 32),
    'needs one or more secrets of 32+ characters',
  ),
}));

const giftOf = (secret: string, codeId: string) =>
  groupCode(encodeCode(createHmac('sha256', secret).update(`gift-code:${codeId}`).digest()));

/**
 * A new gift's code id, its code and the hash the database keeps.
 * @example const { id, hash } = newGiftCode()
 */
export function newGiftCode(): { id: string; code: string; hash: string } {
  const id = crypto.randomUUID();
  const code = giftOf(env().CODE_SECRET[0], id);
  return { id, code, hash: codeHash(code.replaceAll('-', '')) };
}

/**
 * The code of gift `codeId` whose stored hash is `hash`, or null when no secret makes it.
 * @example giftCode(row.code_id, row.code_hash)
 */
export function giftCode(codeId: string, hash: string): string | null {
  return env().CODE_SECRET.map((s) => giftOf(s, codeId)).find((c) => codeHash(c.replaceAll('-', '')) === hash) ?? null;
}

/** A keyed hash of a client address (null when the address is unknown: no shared budget). */
export function addressHash(address: string | null): string | null {
  if (address === null) return null;
  return createHmac('sha256', env().CODE_SECRET[0]).update(`code-address:${address}`).digest('hex').slice(0, 32);
}
