// The local functions gateway on :54321, standing in for Supabase's API gateway:
//   /functions/v1/<name>/…           → supabase/functions/<name>/index.ts (sees /<name>/…)
//   /auth/v1/.well-known/jwks.json   → the local auth key set (.local/auth/jwks.json)
//   /auth/v1/…, /rest/v1/…           → stand-ins for the subset of Supabase Auth and the Data API
//                                      that supabase-js's sign-in and reads use (hosted runs the
//                                      real services): auth-standin.ts, rest-standin.ts
// A function folder added later is found by name on first request; nothing to register.
// All functions share this one process (Supabase gives each its own isolate).
// Client address, as on the platform: Cloudflare sets `cf-connecting-ip` to the socket's
// address, overwriting anything the client sent, and X-Forwarded-For keeps what the client
// wrote with the address appended (so its first entry is the client's own claim). Functions
// trust only the header named by CLIENT_IP_HEADER (default `cf-connecting-ip`); this gateway
// sets that one too, the same way.

type FetchHandler = { fetch: (req: Request) => Response | Promise<Response> };

// Supabase's own gateway keeps accepting when one socket fails; so does this one. Under
// overload `accept` can fail (EMFILE) as an unhandled rejection inside Deno.serve: logged,
// and serving goes on instead of the whole local stack going down.
globalThis.addEventListener('unhandledrejection', (event) => {
  event.preventDefault();
  console.error('gateway: unhandled rejection kept from stopping the gateway:', String(event.reason).slice(0, 300));
});

const port = Number(Deno.env.get('GATEWAY_PORT') ?? 54321);
const functionsDir = new URL('../../supabase/functions/', import.meta.url);
const authDir = Deno.env.get('LOCAL_AUTH_DIR') ?? '.local/auth';
const functionName = /^[a-z][a-z0-9-]*$/;
const addressHeaders = [
  ...new Set(['cf-connecting-ip', (Deno.env.get('CLIENT_IP_HEADER') || 'cf-connecting-ip').trim().toLowerCase()]),
];
const loaded = new Map<string, Promise<FetchHandler | null>>();

function load(name: string): Promise<FetchHandler | null> {
  let mod = loaded.get(name);
  if (!mod) {
    const entry = new URL(`${name}/index.ts`, functionsDir);
    mod = Deno.stat(entry).then(
      async () => (await import(entry.href)).default as FetchHandler,
      () => null,
    );
    mod.catch(() => loaded.delete(name)); // a function that failed to start is retried next time
    loaded.set(name, mod);
  }
  return mod;
}

// The gateway's own answers carry a request id like every function's (X-Request-ID and in the
// envelope), so support can find a failed call however far it got.
function json(status: number, code: string, message: string): Response {
  const type = status === 404 ? 'not_found' : 'server';
  const requestId = crypto.randomUUID();
  return Response.json(
    {
      error: { type, code, message, retryable: status >= 500 },
      metadata: { requestId, timestamp: new Date().toISOString() },
    },
    { status, headers: { 'X-Request-ID': requestId } },
  );
}

Deno.serve({ port, hostname: '127.0.0.1', onListen: () => console.log(`gateway on :${port}`) }, async (req, info) => {
  const url = new URL(req.url);
  if (url.pathname === '/auth/v1/.well-known/jwks.json') {
    return new Response(await Deno.readTextFile(`${authDir}/jwks.json`), {
      headers: { 'content-type': 'application/json', 'cache-control': 'public, max-age=600' },
    });
  }
  const standin = url.pathname.match(/^\/(auth|rest)\/v1\//)?.[1];
  if (standin) {
    const { platformCors } = await import('./rest-standin.ts');
    const app = standin === 'auth'
      ? (await import('./auth-standin.ts')).authStandin
      : (await import('./rest-standin.ts')).restStandin;
    return platformCors(req, app.fetch);
  }
  const match = url.pathname.match(/^\/functions\/v1\/([^/]+)(\/.*)?$/);
  if (!match || !functionName.test(match[1])) return json(404, 'NOT_FOUND', 'No such route.');
  let fn: FetchHandler | null;
  try {
    fn = await load(match[1]);
  } catch (err) {
    console.error(`function ${match[1]} failed to start:`, err instanceof Error ? err.message : err);
    return json(503, 'FUNCTION_BOOT_ERROR', 'The function failed to start.');
  }
  if (!fn) return json(404, 'FUNCTION_NOT_FOUND', 'No such function.');

  url.pathname = `/${match[1]}${match[2] ?? ''}`;
  const headers = new Headers(req.headers);
  const remote = (info.remoteAddr as Deno.NetAddr).hostname;
  for (const name of addressHeaders) headers.set(name, remote); // overwrites the client's value
  headers.set('x-forwarded-for', [headers.get('x-forwarded-for'), remote].filter(Boolean).join(', '));
  return fn.fetch(new Request(url, { method: req.method, headers, body: req.body, signal: req.signal }));
});
