// Promo, gift and sponsor codes as people type them: 20 Crockford base32 characters (100 bits),
// shown in four groups of five. The database keeps only the SHA-256 of the normalised code
// (billing.codes.code_hash); nothing here reads a secret (gift codes and address hashes need
// one: code-secrets.ts).
import { createHash } from 'node:crypto';

const alphabet = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'; // Crockford: no I, L, O, U
const codeLength = 20; // × 5 bits = 100 bits

/** 20 characters of the alphabet from the first 100 bits of `bytes` (≥ 13 bytes). */
export function encodeCode(bytes: Uint8Array): string {
  let out = '';
  for (let i = 0; i < codeLength; i++) {
    const bit = i * 5;
    const pair = (bytes[bit >> 3] << 8) | (bytes[(bit >> 3) + 1] ?? 0);
    out += alphabet[(pair >> (11 - (bit & 7))) & 31];
  }
  return out;
}

/**
 * A new random code, grouped for reading.
 * @example newCode() // 'K3QZ8-M1XWD-4T7RB-9HNPV'
 */
export const newCode = (): string => groupCode(encodeCode(crypto.getRandomValues(new Uint8Array(13))));

/** `ABCDE-FGHJK-…` from the 20 bare characters. */
export const groupCode = (bare: string): string => bare.match(/.{5}/g)!.join('-');

/**
 * The code as stored (hashed): upper case, separators dropped, the look-alikes Crockford allows
 * read as digits (I and L as 1, O as 0). Null when it cannot be a code.
 * @example normalizeCode(' k3qz8 m1xwd-4t7rb-9hnpv ') // 'K3QZ8M1XWD4T7RB9HNPV'
 */
export function normalizeCode(raw: string): string | null {
  const bare = raw.toUpperCase().replace(/[\s-]/g, '').replace(/[IL]/g, '1').replace(/O/g, '0');
  return bare.length === codeLength && [...bare].every((ch) => alphabet.includes(ch)) ? bare : null;
}

/**
 * The SHA-256 (hex) the database keeps of a normalised code.
 * @example codeHash(normalizeCode(code)!)
 */
export const codeHash = (bare: string): string => createHash('sha256').update(`code:${bare}`).digest('hex');
