// Sealed item references: how a conversation on the Responses API carries the model's earlier
// answers without the provider storing anything (the provider is always sent store: false) and
// without the operator being able to read them. Each answer item the gateway returns (a message,
// a reasoning item) gets an id of its own, `ref_…`: AES-GCM under a key derived from
// AI_REFERENCE_SECRET and the student's account id, with the time it was sealed, so only that
// student's calls can open it, for the retention (AI_REFERENCE_RETENTION_DAYS, 30 days by default).
// A whole answer's reference carries the item itself. A stream's ids are sent before the item is
// written, so its reference carries a fresh content key instead: the item, sealed under that key,
// is kept in Postgres (billing.ai_reference_items, under the key's SHA-256) once the call is
// charged, until the retention ends, its call's content is deleted or the account is; without the
// reference nobody (the operator included) can read it. The AI SDK sends the ids back as
// item_reference (protocols/responses.ts opens them before the prompt is counted and held).
import { Buffer } from 'node:buffer';
import { z } from 'zod';
import { jsonb, sql } from '../_shared/adapters/db.ts';
import { referenceRetentionDays } from '../_shared/domain/ai-reference-items.ts';
import { CommaListSchema, lazyEnv } from '../_shared/env.ts';
import { AppError } from '../_shared/errors.ts';

const ReferenceEnvSchema = z.object({
  // Comma-separated while rotating: the first seals, each opens.
  AI_REFERENCE_SECRET: CommaListSchema.pipe(z.array(z.string().min(32)).min(1)),
});
const referenceEnv = lazyEnv(ReferenceEnvSchema);

export const referencePrefix = 'ref_';
/** An id the gateway gave: `ref_` and base64url. */
export const ReferenceIdSchema = z.string().max(4_000_000).regex(/^ref_[A-Za-z0-9_-]+$/);

type Item = Record<string, unknown>;
/** What a reference seals: when (unix seconds), and the item or the content key of a kept one. */
type Sealed = { t: number; item: Item } | { t: number; k: string };
/** A stream's item sealed under its reference's key, as billing.keep_ai_reference_items keeps it. */
export type KeptItem = { key_hash: string; sealed: string };

const utf8 = new TextEncoder();
const b64url = (b: Uint8Array) => Buffer.from(b).toString('base64url');
const fromB64url = (s: string): Uint8Array<ArrayBuffer> => new Uint8Array(Buffer.from(s, 'base64url'));
/** Where a kept item is found: its content key's SHA-256 (hex), which cannot open it. */
const keyHash = async (k: Uint8Array<ArrayBuffer>) =>
  Buffer.from(await crypto.subtle.digest('SHA-256', k)).toString('hex');

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

/** A reference of `userId`'s sealed now, or at `at` (ms; a test back-dates one). */
async function seal(userId: string, value: Omit<Sealed, 't'>, at: number): Promise<string> {
  const [secret] = referenceEnv().AI_REFERENCE_SECRET;
  const sealed = { t: Math.floor(at / 1000), ...value } as Sealed;
  return referencePrefix + await encrypt(await userKey(secret, userId), sealed);
}

/** A reference of `userId`'s that carries `item` whole. */
export const sealItem = (userId: string, item: Item, at = Date.now()): Promise<string> => seal(userId, { item }, at);

/** A reference for an item not written yet: `seal(item)` seals it under the reference's key, for keepItems. */
export async function pendingItem(
  userId: string,
  at = Date.now(),
): Promise<{ id: string; seal: (item: Item) => Promise<KeptItem> }> {
  const k = crypto.getRandomValues(new Uint8Array(32));
  return {
    id: await seal(userId, { k: b64url(k) }, at),
    seal: async (item) => ({ key_hash: await keyHash(k), sealed: `v1.${await encrypt(await rawKey(k), item)}` }),
  };
}

/**
 * Keeps a settled stream's sealed items for their references (one statement, after the charge):
 * nothing when the call's content was deleted meanwhile.
 */
export async function keepItems(userId: string, callId: string, items: KeptItem[]): Promise<void> {
  if (items.length === 0) return;
  await sql`select billing.keep_ai_reference_items(${userId}, ${callId}, ${jsonb(items)})`;
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

/** What a reference of `userId`'s seals, or the 400 naming why it cannot be opened. */
async function unseal(userId: string, id: string, field: string): Promise<Sealed> {
  if (!id.startsWith(referencePrefix)) {
    throw unresolvable(field, 'the gateway keeps nothing at the provider, and this id is not one the gateway gave');
  }
  let sealed: Sealed | null = null;
  for (const secret of referenceEnv().AI_REFERENCE_SECRET) {
    sealed = await decrypt(await userKey(secret, userId), id.slice(referencePrefix.length)) as Sealed | null;
    if (sealed) break;
  }
  if (!sealed) throw unresolvable(field, 'it is not a reference the gateway gave this account, or it was altered');
  const days = referenceRetentionDays();
  // One sealed without its time (an older format) counts as expired.
  if (!(sealed.t + days * 86_400 > Date.now() / 1000)) {
    throw unresolvable(field, `it expired (references open for ${days} days)`);
  }
  return sealed;
}

/**
 * The items `userId`'s references stand for, by id, each distinct one opened once and every kept
 * item read in one statement; a 400 naming the first (in `refs`' order) that cannot be opened.
 */
export async function openReferences(
  userId: string,
  refs: { id: string; field: string }[],
): Promise<Map<string, Item>> {
  const fields = new Map<string, string>();
  for (const r of refs) if (!fields.has(r.id)) fields.set(r.id, r.field);
  const ids = [...fields.keys()];
  const unsealed = await Promise.allSettled(ids.map((id) => unseal(userId, id, fields.get(id)!)));
  const refused = unsealed.find((r) => r.status === 'rejected');
  if (refused) throw refused.reason;
  const opened = new Map<string, Item>();
  const kept: { id: string; k: Uint8Array<ArrayBuffer>; hash: string }[] = [];
  for (const [i, r] of unsealed.entries()) {
    const sealed = (r as PromiseFulfilledResult<Sealed>).value;
    if ('item' in sealed) opened.set(ids[i], sealed.item);
    else {
      const k = fromB64url(sealed.k);
      kept.push({ id: ids[i], k, hash: await keyHash(k) });
    }
  }
  if (kept.length === 0) return opened;
  let rows: KeptItem[];
  try {
    rows = await sql<KeptItem[]>`select key_hash, sealed from billing.open_ai_reference_items(${userId}, ${
      jsonb(kept.map((x) => x.hash))
    })`;
  } catch {
    const field = fields.get(kept[0].id)!;
    throw new AppError('unavailable', 'ITEM_REFERENCE_UNAVAILABLE', `${field} cannot be read right now; try again.`, {
      field,
    });
  }
  const found = new Map(rows.map((row) => [row.key_hash, row.sealed]));
  for (const x of kept) {
    const text = found.get(x.hash);
    const item = text?.startsWith('v1.') ? await decrypt(await rawKey(x.k), text.slice(3)) : null;
    if (!item) {
      throw unresolvable(
        fields.get(x.id)!,
        "its answer is not kept (its call's content was deleted, or its stream never finished)",
      );
    }
    opened.set(x.id, item as Item);
  }
  return opened;
}
