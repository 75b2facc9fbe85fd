// The project's API keys and JWT key set as hosted Supabase provides them: the legacy
// `SUPABASE_SERVICE_ROLE_KEY` / `SUPABASE_ANON_KEY`, and on projects with the new keys the
// JSON dictionaries `SUPABASE_SECRET_KEYS` / `SUPABASE_PUBLISHABLE_KEYS` ({"default": "sb_…"})
// and `SUPABASE_JWKS` ({"keys": […]} or […]). Either kind works; both may be present.
import type { JSONWebKeySet } from 'jose';

/** Parses a JSON value from the environment; a malformed one counts as absent (never logged). */
function jsonEnv(name: string): unknown {
  const raw = Deno.env.get(name);
  if (!raw) return undefined;
  try {
    return JSON.parse(raw);
  } catch {
    return undefined;
  }
}

/** The string values of a `{name: key}` dictionary variable. */
function dictionary(name: string): string[] {
  const v = jsonEnv(name);
  if (!v || typeof v !== 'object' || Array.isArray(v)) return [];
  return Object.values(v).filter((k): k is string => typeof k === 'string' && k.length >= 16);
}

/**
 * Every key that grants the service role: the legacy service_role JWT and each new secret key.
 * @example serviceKeys().some((k) => constantTimeEqual(given, k))
 */
export function serviceKeys(): string[] {
  const legacy = Deno.env.get('SUPABASE_SERVICE_ROLE_KEY') ?? '';
  return [...(legacy.length >= 16 ? [legacy] : []), ...dictionary('SUPABASE_SECRET_KEYS')];
}

/**
 * The key a browser may send to Supabase Auth: the default publishable key, else the legacy anon key.
 * @example const apikey = publishableKey() // undefined when the project has neither
 */
export function publishableKey(): string | undefined {
  const v = jsonEnv('SUPABASE_PUBLISHABLE_KEYS') as Record<string, unknown> | undefined;
  const key = v && typeof v === 'object' ? v.default ?? Object.values(v)[0] : undefined;
  if (typeof key === 'string' && key) return key;
  return Deno.env.get('SUPABASE_ANON_KEY') || undefined;
}

/**
 * The inline key set hosted functions receive, so verifying a token needs no network fetch.
 * @example const jwks = inlineJwks() // undefined: fall back to the JWKS URL
 */
export function inlineJwks(): JSONWebKeySet | undefined {
  const v = jsonEnv('SUPABASE_JWKS');
  const keys = Array.isArray(v) ? v : (v as { keys?: unknown } | undefined)?.keys;
  return Array.isArray(keys) && keys.length > 0 ? { keys } as JSONWebKeySet : undefined;
}
