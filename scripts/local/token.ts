// Prints a JWT shaped like Supabase Auth's, signed with the local ES256 key, and makes sure
// the user exists in auth.users.
// Usage: scripts/token --user <uuid> [--email e] [--admin] [--ttl 3600]
import { parseArgs } from 'node:util';
import { importJWK, SignJWT } from 'jose';
import postgres from 'postgres';

const { values } = parseArgs({
  args: Deno.args,
  options: {
    user: { type: 'string' },
    email: { type: 'string' },
    admin: { type: 'boolean', default: false },
    ttl: { type: 'string', default: '3600' },
  },
});
/** A bad value is a usage error (exit 2), said in one line rather than a stack trace. */
function usageError(message: string): never {
  console.error(`${message} (./scripts/token --help)`);
  Deno.exit(2);
}
const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
if (values.user !== undefined && !uuid.test(values.user)) usageError(`--user must be a UUID, not '${values.user}'`);
const ttl = Number(values.ttl);
if (!Number.isInteger(ttl) || ttl <= 0) usageError('--ttl must be a positive number of seconds');
// The functions refuse a token living longer than this (_shared/http/auth.ts).
const maxTtl = Number(Deno.env.get('AUTH_TOKEN_MAX_LIFETIME_SECONDS') || 604_800);
if (ttl > maxTtl) usageError(`--ttl may be at most ${maxTtl} (AUTH_TOKEN_MAX_LIFETIME_SECONDS)`);

const env = (name: string) => {
  const v = Deno.env.get(name);
  if (!v) throw new Error(`${name} is not set (run scripts/dev first)`);
  return v;
};
const appMetadata = { provider: 'email', providers: ['email'], ...(values.admin ? { role: 'admin' } : {}) };

// Every token carries its user's email, as Supabase Auth's do (accepting an invitation needs
// it): an email already in use names its user; a user without one gets a local address.
const sql = postgres(env('SUPABASE_DB_URL'), { max: 1, onnotice: () => {} });
const [owner] = values.email ? await sql`select id from auth.users where lower(email) = lower(${values.email})` : [];
if (owner && values.user && owner.id !== values.user) {
  await sql.end();
  usageError(`${values.email} already belongs to user ${owner.id}`);
}
const user: string = values.user ?? owner?.id ?? crypto.randomUUID();
const [known] = await sql`select email from auth.users where id = ${user}`;
const email: string = values.email ?? known?.email ?? `student-${user.slice(0, 8)}@example.test`;
// Confirmed, as Supabase Auth's email sign-in requires by default before it issues a session
// (a sponsor code named by email is redeemed only by a confirmed address).
await sql`
  insert into auth.users (id, email, raw_app_meta_data, email_confirmed_at)
  values (${user}, ${email}, ${sql.json(appMetadata)}, now())
  on conflict (id) do update set raw_app_meta_data = excluded.raw_app_meta_data, email = excluded.email,
    email_confirmed_at = coalesce(auth.users.email_confirmed_at, excluded.email_confirmed_at)`;
await sql.end();

const jwk = JSON.parse(await Deno.readTextFile(`${env('LOCAL_AUTH_DIR')}/private.jwk.json`));
const key = await importJWK(jwk, 'ES256');
const token = await new SignJWT({
  role: 'authenticated',
  email,
  app_metadata: appMetadata,
  user_metadata: {},
  aal: 'aal1',
  session_id: crypto.randomUUID(),
  is_anonymous: false,
})
  .setProtectedHeader({ alg: 'ES256', kid: jwk.kid, typ: 'JWT' })
  .setIssuer(`${env('SUPABASE_URL')}/auth/v1`)
  .setAudience('authenticated')
  .setSubject(user)
  .setIssuedAt()
  .setExpirationTime(`${ttl}s`)
  .sign(key);
console.log(token);
