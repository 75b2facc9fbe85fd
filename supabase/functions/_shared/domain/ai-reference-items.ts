// How long the AI gateway's item references open (ai/references.ts), and the sweep that deletes
// what streamed answers kept for them once the retention has passed (the jobs worker tick).
// One setting for both, so a reference opens exactly as long as its kept item lives.
import { z } from 'zod';
import { sql } from '../adapters/db.ts';
import { lazyEnv } from '../env.ts';

const ReferenceRetentionEnvSchema = z.object({
  AI_REFERENCE_RETENTION_DAYS: z.coerce.number().int().min(1).max(3650).default(30),
});
const retentionEnv = lazyEnv(ReferenceRetentionEnvSchema);

/**
 * How many days a reference opens (and a stream's item is kept for it).
 * @example const days = referenceRetentionDays(); // 30 unless AI_REFERENCE_RETENTION_DAYS says otherwise
 */
export const referenceRetentionDays = (): number => retentionEnv().AI_REFERENCE_RETENTION_DAYS;

/**
 * Deletes kept items past the retention, and those of deleted accounts, at most `limit` of each.
 * @example const deleted = await deleteExpiredReferenceItems();
 */
export async function deleteExpiredReferenceItems(limit = 5000): Promise<number> {
  const [{ deleted }] = await sql<{ deleted: number }[]>`
    select billing.delete_expired_ai_reference_items(${referenceRetentionDays()}, ${limit}) as deleted`;
  return deleted;
}
