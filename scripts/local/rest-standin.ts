// A stand-in for the part of PostgREST (Supabase's Data API) that supabase-js's reads use;
// hosted Supabase runs the real service, this imitates it for
//   GET|HEAD /rest/v1/<table or view>?select=a,b:c,d::text&col=eq.v&order=col.desc&limit=n&offset=n
// in the schema named by Accept-Profile (default: the first one), which must be one of
// `[api] schemas` in supabase/config.toml; anything else is refused as PostgREST refuses it.
// Each request runs as PostgREST runs it: one transaction with `role` set to the token's role
// (anon for a request without a user token: supabase-js then sends its API key) and
// `request.jwt.claims` set to the verified claims, so the caller's RLS policies pick the rows.
// Filters: eq, neq, gt, gte, lt, lte, like, ilike, is (null/true/false), in.(…); counts with
// `Prefer: count=exact`; one object with `Accept: application/vnd.pgrst.object+json`.
import { Hono } from 'hono';
import { importJWK, type JWTPayload, jwtVerify } from 'jose';
import postgres from 'postgres';

const env = (name: string) => {
  const v = Deno.env.get(name);
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const config = await Deno.readTextFile(new URL('../../supabase/config.toml', import.meta.url));
const api = config.match(/^\[api\]\n((?:(?!\[).*\n)*)/m)?.[1] ?? ''; // up to the next [section]
const schemas = [...(api.match(/^schemas\s*=\s*\[([^\]]*)\]/m)?.[1] ?? '"public"').matchAll(/"([^"]+)"/g)]
  .map((m) => m[1]);
const extraSearchPath = [...(api.match(/^extra_search_path\s*=\s*\[([^\]]*)\]/m)?.[1] ?? '').matchAll(/"([^"]+)"/g)]
  .map((m) => m[1]);
const maxRows = Number(api.match(/^max_rows\s*=\s*(\d+)/m)?.[1] ?? 1000);
const { d: _private, ...publicJwk } = JSON.parse(await Deno.readTextFile(`${env('LOCAL_AUTH_DIR')}/private.jwk.json`));
const publicKey = await importJWK(publicJwk, 'ES256');
const sql = postgres(env('SUPABASE_DB_URL'), { max: 2, onnotice: () => {}, prepare: false });

const name = /^[A-Za-z_][A-Za-z0-9_]*$/;
const ident = (s: string) => {
  if (!name.test(s)) throw new RestError(400, 'PGRST100', `"${s}" is not a plain column name (this stand-in's subset)`);
  return `"${s}"`;
};
const operators: Record<string, string> = { eq: '=', neq: '<>', gt: '>', gte: '>=', lt: '<', lte: '<=' };
const patterns: Record<string, string> = { like: 'like', ilike: 'ilike' };

class RestError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly details: string | null = null) {
    super(message);
  }
}

/** PostgREST's error body. */
const fail = (e: RestError) =>
  Response.json({ code: e.code, details: e.details, hint: null, message: e.message }, { status: e.status });

/** The role and claims PostgREST would run the request with. */
async function caller(req: Request): Promise<{ role: string; claims: JWTPayload }> {
  const token = req.headers.get('authorization')?.match(/^Bearer (.+)$/i)?.[1];
  // Signed out, supabase-js sends its API key as the bearer; the platform maps that to anon.
  if (!token || token === req.headers.get('apikey')) return { role: 'anon', claims: { role: 'anon' } };
  try {
    const { payload } = await jwtVerify(token, publicKey, { algorithms: ['ES256'], requiredClaims: ['exp', 'role'] });
    if (!['anon', 'authenticated', 'service_role'].includes(String(payload.role))) throw new Error('role');
    return { role: String(payload.role), claims: payload };
  } catch {
    throw new RestError(401, 'PGRST301', 'JWT could not be verified');
  }
}

/** `select=a,b:c,d::text` as a select list: plain columns, aliases and casts. */
function selectList(select: string | undefined): string {
  if (!select || select === '*') return '*';
  return select.split(',').map((item) => {
    const m = item.trim().match(/^(?:([A-Za-z_]\w*):)?([A-Za-z_]\w*)(?:::([a-z][a-z0-9_]*))?$/);
    if (!m) throw new RestError(400, 'PGRST100', `"${item}" is not in this stand-in's select subset`);
    const [, alias, column, cast] = m;
    return `${ident(column)}${cast ? `::${cast}` : ''} as ${ident(alias ?? column)}`;
  }).join(', ');
}

/** The WHERE clause of every `col=op.value` parameter, values bound as parameters. */
function where(params: URLSearchParams, values: string[]): string {
  const reserved = new Set(['select', 'order', 'limit', 'offset']);
  const clauses = [...params].filter(([k]) => !reserved.has(k)).map(([column, filter]) => {
    const [, not, op, value] = filter.match(/^(not\.)?(\w+)\.(.*)$/s) ?? [];
    const bind = (v: string) => `$${values.push(v)}`;
    let clause: string;
    if (op in operators) clause = `${ident(column)} ${operators[op]} ${bind(value)}`;
    else if (op in patterns) clause = `${ident(column)} ${patterns[op]} ${bind(value.replaceAll('*', '%'))}`;
    else if (op === 'is' && /^(null|true|false|unknown)$/.test(value)) clause = `${ident(column)} is ${value}`;
    else if (op === 'in' && /^\(.*\)$/s.test(value)) {
      const items = value.slice(1, -1).split(',').map((v) => v.trim().replace(/^"(.*)"$/s, '$1'));
      clause = items.length ? `${ident(column)} in (${items.map(bind).join(', ')})` : 'false';
    } else throw new RestError(400, 'PGRST100', `"${column}=${filter}" is not in this stand-in's filter subset`);
    return not ? `not (${clause})` : clause;
  });
  return clauses.length ? `where ${clauses.join(' and ')}` : '';
}

function orderBy(order: string | undefined): string {
  if (!order) return '';
  return 'order by ' + order.split(',').map((term) => {
    const [column, ...mods] = term.trim().split('.');
    const dir = mods.find((m) => m === 'asc' || m === 'desc') ?? 'asc';
    const nulls = mods.find((m) => m === 'nullsfirst' || m === 'nullslast');
    return `${ident(column)} ${dir}${nulls ? ` nulls ${nulls.slice(5)}` : ''}`;
  }).join(', ');
}

const count = (v: string | undefined, what: string) => {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new RestError(400, 'PGRST100', `${what} must be a non-negative integer`);
  return Number(v);
};

/** Postgres errors as PostgREST maps them to HTTP. */
function fromPostgres(e: { code?: string; message: string; detail?: string }, role: string, relation: string) {
  if (e.code === '42501') return new RestError(role === 'anon' ? 401 : 403, e.code, e.message, e.detail ?? null);
  if (e.code === '42P01') {
    return new RestError(404, 'PGRST205', `Could not find the table '${relation}' in the schema cache`);
  }
  if (e.code && /^(22|42)/.test(e.code)) return new RestError(400, e.code, e.message, e.detail ?? null);
  return new RestError(500, e.code ?? 'PGRST000', e.message);
}

export const restStandin = new Hono().basePath('/rest/v1');

restStandin.on(['GET', 'HEAD'], '/:relation', async (c) => {
  try {
    const { role, claims } = await caller(c.req.raw);
    const schema = c.req.header('accept-profile') ?? schemas[0];
    if (!schemas.includes(schema)) {
      throw new RestError(406, 'PGRST106', `The schema must be one of the following: ${schemas.join(', ')}`);
    }
    const relation = c.req.param('relation');
    const params = new URL(c.req.url).searchParams;
    const values: string[] = [];
    const limit = Math.min(count(params.get('limit') ?? undefined, 'limit') ?? maxRows, maxRows);
    const offset = count(params.get('offset') ?? undefined, 'offset') ?? 0;
    const from = `${ident(schema)}.${ident(relation)} ${where(params, values)}`;
    // Rendered to JSON by Postgres, as PostgREST does: numerics keep every digit on the wire.
    const query = `select coalesce(json_agg(_r), '[]')::text as body, (json_agg(_r) -> 0)::text as one,
      count(*)::int as n from (
      select ${selectList(params.get('select') ?? undefined)} from ${from} ${orderBy(params.get('order') ?? undefined)}
      limit ${limit} offset ${offset}) _r`;
    const exact = /count=exact/.test(c.req.header('prefer') ?? '');

    const [rows, total] = await sql.begin(async (tx) => {
      await tx`select set_config('role', ${role}, true), set_config('request.jwt.claims', ${
        JSON.stringify(claims)
      }, true),
        set_config('request.method', ${c.req.method}, true),
        set_config('search_path', ${[schema, ...extraSearchPath].map(ident).join(', ')}, true)`;
      const [r] = await tx.unsafe<{ body: string; one: string | null; n: number }[]>(query, values);
      const t = exact
        ? (await tx.unsafe<{ n: number }[]>(`select count(*)::int as n from ${from}`, values))[0].n
        : null;
      return [r, t] as const;
    }).catch((e) => {
      throw e instanceof RestError ? e : fromPostgres(e, role, `${schema}.${relation}`);
    });

    const range = rows.n ? `${offset}-${offset + rows.n - 1}` : '*';
    const headers = { 'content-type': 'application/json; charset=utf-8', 'content-range': `${range}/${total ?? '*'}` };
    let body = rows.body;
    if (c.req.header('accept')?.includes('application/vnd.pgrst.object+json')) {
      if (rows.n !== 1) {
        throw new RestError(406, 'PGRST116', 'JSON object requested, multiple (or no) rows returned', `${rows.n} rows`);
      }
      body = rows.one ?? 'null';
    }
    return new Response(c.req.method === 'HEAD' ? null : body, { headers });
  } catch (e) {
    if (e instanceof RestError) return fail(e);
    throw e;
  }
});

restStandin.all(
  '*',
  () =>
    fail(new RestError(405, 'PGRST117', 'This Data API stand-in serves reads only (GET or HEAD of a table or view).')),
);

/**
 * The platform's CORS in front of Auth and the Data API (open to any origin, as on hosted),
 * around a stand-in's handler.
 */
export async function platformCors(req: Request, handle: (req: Request) => Response | Promise<Response>) {
  const headers = {
    'access-control-allow-origin': req.headers.get('origin') ?? '*',
    'access-control-allow-credentials': 'true',
    'access-control-allow-methods': 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS',
    'access-control-allow-headers': req.headers.get('access-control-request-headers') ?? '*',
    'access-control-expose-headers': 'content-range, x-supabase-api-version',
    'vary': 'origin',
  };
  if (req.method === 'OPTIONS') return new Response(null, { status: 204, headers });
  const res = await handle(req);
  const out = new Response(res.body, res);
  for (const [k, v] of Object.entries(headers)) out.headers.set(k, v);
  return out;
}
