// Environment, parsed once with zod when a function starts. A missing or malformed
// variable stops start-up with a message naming it, never its value.
import { z } from 'zod';
import { AppError } from './errors.ts';

/** A comma-separated list, trimmed, without empty items. */
export const CommaListSchema = z.string().transform((s) => s.split(',').map((x) => x.trim()).filter(Boolean));

/** Variables every function reads. */
export const BaseEnvSchema = z.object({
  SUPABASE_URL: z.url(),
  SUPABASE_DB_URL: z.string().regex(/^postgres(ql)?:\/\//, 'must be a postgres:// URL'),
  CORS_ALLOWED_ORIGINS: CommaListSchema.refine((l) => !l.includes('*'), 'must list origins, not *').default([]),
  DB_POOL_MAX: z.coerce.number().int().positive().default(10),
  // The longest a user token may live (exp - iat): Supabase Auth's own JWT expiry limit, a week.
  AUTH_TOKEN_MAX_LIFETIME_SECONDS: z.coerce.number().int().positive().default(604_800),
});
export type BaseEnv = z.infer<typeof BaseEnvSchema>;

/** A missing or malformed variable. It names them, never their values. */
export class ConfigError extends Error {
  constructor(readonly variables: string[], readonly problems: string[]) {
    super(`environment: ${problems.join('; ')}`);
  }

  /** What a caller sees: 503 CONFIG_MISSING naming the variables. */
  appError(): AppError {
    return new AppError(
      'unavailable',
      'CONFIG_MISSING',
      `This function is not configured: set ${this.variables.join(', ')}.`,
      {
        details: { variables: this.variables },
        retryable: false,
      },
    );
  }
}

/** Settings that are present but unsafe (live mode, live-config.ts): each problem names its variable, never a value. */
export class UnsafeConfigError extends ConfigError {}

/**
 * Parses `source` with `schema`, throwing a ConfigError that names each bad variable.
 * @example const env = parseEnv(BaseEnvSchema) // reads Deno.env
 */
export function parseEnv<S extends z.ZodType>(
  schema: S,
  source: Record<string, string | undefined> = Deno.env.toObject(),
): z.infer<S> {
  const parsed = schema.safeParse(source);
  if (parsed.success) return parsed.data;
  const variables = [...new Set(parsed.error.issues.map((i) => i.path.join('.')))];
  const problems = parsed.error.issues.map((i) => {
    const name = i.path.join('.');
    return source[name] === undefined ? `${name} is missing` : `${name} is invalid: ${i.message}`;
  });
  throw new ConfigError(variables, problems);
}

/**
 * A function's settings, parsed on first use: a function whose secrets are missing still
 * starts, logs their names once, and answers 503 CONFIG_MISSING naming them (app.ts).
 * @example const env = lazyEnv(CheckoutEnvSchema); … env().CHECKOUT_SUCCESS_URL
 */
export function lazyEnv<S extends z.ZodType>(schema: S): () => z.infer<S> {
  let parsed: z.infer<S> | undefined;
  const get = () => (parsed ??= parseEnv(schema));
  reportAtStart(get);
  return get;
}

/** Runs a start-up configuration check; a ConfigError is logged (names only), not thrown. */
export function reportAtStart(check: () => unknown): void {
  try {
    check();
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    console.error(JSON.stringify({ level: 'error', msg: 'configuration missing', variables: err.variables }));
  }
}

let base: BaseEnv | undefined;
/** The base environment, parsed on first use and cached. */
export const baseEnv = (): BaseEnv => (base ??= parseEnv(BaseEnvSchema));
