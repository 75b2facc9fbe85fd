// Sealed item references: how a conversation on the Responses API carries the model's earlier
// answers without the gateway keeping a prompt or the provider storing anything (the provider is
// always sent store: false). Each answer item the gateway returns (a message, a reasoning item)
// gets an id of its own, `ref_…`: AES-GCM under a key derived from AI_REFERENCE_SECRET and the
// student's account id, with an expiry, so only that student's calls can open it, for 24 hours.
// A whole answer's reference carries the item itself. A stream's ids are sent before the item
// is written, so its reference carries a fresh content key and where the item waits: the item,
// encrypted under that key, kept in Redis until the reference expires; without the reference
// nobody (the operator included) can read it. The AI SDK sends the ids back as item_reference
// (protocols/responses.ts expands them before the prompt is counted and held).
import { Buffer } from 'node:buffer';
import { z } from 'zod';
import { guarded } from '../_shared/adapters/redis.ts';
import { CommaListSchema, lazyEnv } from '../_shared/env.ts';
import { AppError } from '../_shared/errors.ts';

const ReferenceEnvSchema = z.object({
  // Comma-separated while rotating: the first seals, each opens.
  AI_REFERENCE_SECRET: CommaListSchema.pipe(z.array(z.string().min(32)).min(1)),
});
const referenceEnv = lazyEnv(ReferenceEnvSchema);

/** How long a reference opens (and a stream's item is kept for it). */
export const referenceTtlSeconds = 24 * 3600;
export const referencePrefix = 'ref_';
/** An id the gateway gave: `ref_` and base64url. */
export const ReferenceIdSchema = z.string().max(4_000_000).regex(/^ref_[A-Za-z0-9_-]+$/);

type Item = Record<string, unknown>;
/** What a reference seals: its expiry (unix seconds) and the item, or the key and place of a kept one. */
type Sealed = { e: number; item: Item } | { e: number; k: string; at: string };

const utf8 = new TextEncoder();
const b64url = (b: Uint8Array) => Buffer.from(b).toString('base64url');
const fromB64url = (s: string): Uint8Array<ArrayBuffer> => new Uint8Array(Buffer.from(s, 'base64url'));

const secrets = new Map<string, CryptoKey>();
/** The student's own key: HKDF-SHA256 of the secret, bound to their account id. */
async function userKey(secret: string, userId: string): Promise<CryptoKey> {
  let base = secrets.get(secret);
  if (!base) {
    secrets.set(secret, base = await crypto.subtle.importKey('raw', utf8.encode(secret), 'HKDF', false, ['deriveKey']));
  }
  return crypto.subtle.deriveKey(
    { name: 'HKDF', hash: 'SHA-256', salt: utf8.encode('ai-item-reference'), info: utf8.encode(userId) },
    base,
    { name: 'AES-GCM', length: 256 },
    false,
    ['encrypt', 'decrypt'],
  );
}
const rawKey = (k: Uint8Array<ArrayBuffer>) =>
  crypto.subtle.importKey('raw', k, 'AES-GCM', false, ['encrypt', 'decrypt']);

async function encrypt(key: CryptoKey, value: unknown): Promise<string> {
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const sealed = new Uint8Array(
    await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, key, utf8.encode(JSON.stringify(value))),
  );
  const out = new Uint8Array(12 + sealed.length);
  out.set(iv);
  out.set(sealed, 12);
  return b64url(out);
}

/** The value, or null when the key is not the one it was sealed with or a character changed. */
async function decrypt(key: CryptoKey, text: string): Promise<unknown> {
  try {
    const bytes = fromB64url(text);
    // Only the spelling the gateway wrote: the decoder skips stray characters and spare bits.
    if (b64url(bytes) !== text) return null;
    const plain = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: bytes.subarray(0, 12) }, key, bytes.subarray(12));
    return JSON.parse(new TextDecoder().decode(plain));
  } catch {
    return null;
  }
}

const expiry = (ttl = referenceTtlSeconds) => Math.floor(Date.now() / 1000) + ttl;

/** A reference of `userId`'s that carries `item` whole, opening for `ttl` seconds. */
export async function sealItem(userId: string, item: Item, ttl = referenceTtlSeconds): Promise<string> {
  const [secret] = referenceEnv().AI_REFERENCE_SECRET;
  return referencePrefix + await encrypt(await userKey(secret, userId), { e: expiry(ttl), item } satisfies Sealed);
}

/** A reference for an item not written yet: `keep(item)` keeps it (encrypted) for the reference. */
export async function pendingItem(userId: string): Promise<{ id: string; keep: (item: Item) => Promise<void> }> {
  const [secret] = referenceEnv().AI_REFERENCE_SECRET;
  const k = crypto.getRandomValues(new Uint8Array(32)), at = b64url(crypto.getRandomValues(new Uint8Array(18)));
  const sealed: Sealed = { e: expiry(), k: b64url(k), at };
  return {
    id: referencePrefix + await encrypt(await userKey(secret, userId), sealed),
    keep: async (item) => {
      const value = `v1.${await encrypt(await rawKey(k), item)}`;
      await guarded((r) => r.set(`ai:ref:${at}`, value, { ex: referenceTtlSeconds }));
    },
  };
}

/** Why a reference cannot be opened, as the 400 the caller gets. */
const unresolvable = (field: string, why: string) =>
  new AppError(
    'validation',
    'ITEM_REFERENCE_UNRESOLVABLE',
    `${field} cannot be resolved: ${why}. Send the earlier answer's text instead ` +
      '(the AI SDK: providerOptions.openai.store = false).',
    { field },
  );

/** The item a reference of `userId`'s stands for; a 400 naming why when it cannot be opened. */
export async function openReference(userId: string, id: string, field: string): Promise<Item> {
  if (!id.startsWith(referencePrefix)) {
    throw unresolvable(field, 'the gateway keeps nothing at the provider, and this id is not one the gateway gave');
  }
  let sealed: Sealed | null = null;
  for (const secret of referenceEnv().AI_REFERENCE_SECRET) {
    sealed = await decrypt(await userKey(secret, userId), id.slice(referencePrefix.length)) as Sealed | null;
    if (sealed) break;
  }
  if (!sealed) throw unresolvable(field, 'it is not a reference the gateway gave this account, or it was altered');
  if (sealed.e < Date.now() / 1000) throw unresolvable(field, 'it expired (references open for 24 hours)');
  if ('item' in sealed) return sealed.item;
  const kept = await guarded((r) => r.get<string>(`ai:ref:${sealed.at}`)).catch(() => undefined);
  if (kept === undefined) {
    throw new AppError('unavailable', 'ITEM_REFERENCE_UNAVAILABLE', `${field} cannot be read right now; try again.`, {
      field,
    });
  }
  const item = typeof kept === 'string' && kept.startsWith('v1.')
    ? await decrypt(await rawKey(fromB64url(sealed.k)), kept.slice(3))
    : null;
  if (!item) throw unresolvable(field, 'its answer is no longer kept');
  return item as Item;
}
