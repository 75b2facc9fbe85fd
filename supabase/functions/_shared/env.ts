// Environment, parsed once with zod when a function starts. A missing or malformed
// variable stops start-up with a message naming it, never its value.
import { z } from 'zod';

/** A comma-separated list, trimmed, without empty items. */
export const CommaListSchema = z.string().transform((s) => s.split(',').map((x) => x.trim()).filter(Boolean));

/** Variables every function reads. */
export const BaseEnvSchema = z.object({
  SUPABASE_URL: z.url(),
  SUPABASE_DB_URL: z.string().regex(/^postgres(ql)?:\/\//, 'must be a postgres:// URL'),
  CORS_ALLOWED_ORIGINS: CommaListSchema.refine((l) => !l.includes('*'), 'must list origins, not *').default([]),
  // Legacy HS256 tokens are accepted only when this is set.
  SUPABASE_JWT_SECRET: z.string().min(32).optional(),
  DB_POOL_MAX: z.coerce.number().int().positive().default(10),
});
export type BaseEnv = z.infer<typeof BaseEnvSchema>;

/**
 * Parses `source` with `schema`, throwing an Error that names each bad variable.
 * @example const env = parseEnv(BaseEnvSchema) // reads Deno.env
 */
export function parseEnv<S extends z.ZodType>(
  schema: S,
  source: Record<string, string | undefined> = Deno.env.toObject(),
): z.infer<S> {
  const parsed = schema.safeParse(source);
  if (parsed.success) return parsed.data;
  const problems = parsed.error.issues.map((i) => {
    const name = i.path.join('.');
    return source[name] === undefined ? `${name} is missing` : `${name} is invalid: ${i.message}`;
  });
  throw new Error(`environment: ${problems.join('; ')}`);
}

let base: BaseEnv | undefined;
/** The base environment, parsed on first use and cached. */
export const baseEnv = (): BaseEnv => (base ??= parseEnv(BaseEnvSchema));
