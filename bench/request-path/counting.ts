// Step 3b: the round trips each route makes, counted for real: a gateway of its own whose every
// way out passes a counting proxy: Postgres (the wire protocol read: a Sync, Flush or simple
// Query is a trip the gateway waits on; an Execute or Query a statement; a ReadyForQuery that
// says "idle" the end of a transaction), the Redis REST bridge (HTTP requests and the commands
// in them), its own SUPABASE_URL (JWKS fetches) and the provider stand-in (provider calls).
// Each route is called `countCalls` times one after another after a warm-up; the figures are
// per request. Beside wrk's req/s, from another gateway with no proxy in its way.
import { createHash } from 'node:crypto';
import type { Fixtures } from './fixtures.ts';
import { freePort, waitFor } from './net.ts';
import { spawnGateway, tokenSigner } from './servers.ts';
import { batchSize, env, runId } from './settings.ts';

export const countCalls = Number(Deno.env.get('BENCH_COUNT_CALLS') ?? 40);

/** Frames Postgres wire messages (type byte + int32 length, untyped before start-up) as they pass. */
function messages(onMessage: (type: number, body: Uint8Array) => void, untypedFirst: boolean) {
  let pending = new Uint8Array(0);
  let started = !untypedFirst;
  return new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, out) {
      out.enqueue(chunk);
      const buf = new Uint8Array(pending.length + chunk.length);
      buf.set(pending);
      buf.set(chunk, pending.length);
      const view = new DataView(buf.buffer);
      let at = 0;
      for (;;) {
        if (!started && buf.length - at >= 8 && [80877103, 80877104].includes(view.getInt32(at + 4))) {
          at += 8; // an SSL or GSS request: the server answers one byte ('N'), which the other side skips
          continue;
        }
        const head = started ? 1 : 0;
        if (buf.length - at < head + 4) break;
        const length = view.getInt32(at + head);
        if (buf.length - at < head + length) break;
        if (started) onMessage(buf[at], buf.subarray(at + 5, at + 1 + length));
        started = true;
        at += head + length;
      }
      pending = buf.slice(at);
    },
  });
}

/** A TCP proxy in front of Postgres counting round trips, statements and transactions. */
function countingPostgres(upstream: URL) {
  const seen = { trips: 0, statements: 0, transactions: 0 };
  const listener = Deno.listen({ hostname: '127.0.0.1', port: 0 });
  const S = 0x53, H = 0x48, Q = 0x51, E = 0x45, Z = 0x5a, I = 0x49;
  (async () => {
    for await (const client of listener) {
      const server = await Deno.connect({ hostname: upstream.hostname, port: Number(upstream.port) });
      client.readable.pipeThrough(messages((t) => {
        if (t === S || t === H || t === Q) seen.trips++;
        if (t === E || t === Q) seen.statements++;
      }, true)).pipeTo(server.writable).catch(() => {});
      // ReadyForQuery 'I': no transaction open any more: one ended (committed or rolled back).
      server.readable.pipeThrough(messages((t, body) => {
        if (t === Z && body[0] === I) seen.transactions++;
      }, false)).pipeTo(client.writable).catch(() => {});
    }
  })().catch(() => {});
  const url = new URL(upstream.href);
  url.hostname = '127.0.0.1';
  url.port = String((listener.addr as Deno.NetAddr).port);
  return { seen, url: url.href, close: () => listener.close() };
}

/** An HTTP proxy to `upstream` counting requests (and, for the Redis REST API, the commands in them). */
function countingHttp(upstream: string, redis = false) {
  const seen = { requests: 0, commands: 0, jwks: 0 };
  const server = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    const body = req.body ? await req.arrayBuffer() : undefined;
    seen.requests++;
    if (url.pathname.endsWith('/.well-known/jwks.json')) seen.jwks++;
    if (redis && body) {
      const parsed = JSON.parse(new TextDecoder().decode(body));
      seen.commands += url.pathname === '/' ? 1 : parsed.length; // /pipeline and /multi-exec: a list
    }
    const res = await fetch(`${upstream}${url.pathname}${url.search}`, {
      method: req.method,
      headers: req.headers,
      body,
    });
    return new Response(res.body, { status: res.status, headers: res.headers });
  });
  return { seen, url: `http://127.0.0.1:${server.addr.port}`, close: () => server.shutdown() };
}

export type Trips = Record<
  'redisRequests' | 'redisCommands' | 'pgTrips' | 'pgStatements' | 'pgTransactions' | 'jwks' | 'provider',
  number
>;

/** The routes counted: what each sends (the wrk cells send the same, bench/request-path.lua). */
function routes(functions: string, users: string[], tokens: string[], service: string, serverKey: string) {
  const post = (path: string, bearer: string, body: unknown, key = true) =>
    fetch(`${functions}${path}`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${bearer}`,
        'content-type': 'application/json',
        'anthropic-version': '2023-06-01',
        ...(key ? { 'idempotency-key': `${runId}-count-${crypto.randomUUID()}` } : {}),
      },
      body: JSON.stringify(body),
    });
  const usage = { model: 'gpt-4o-mini', input_tokens: 100, output_tokens: 10 };
  const prompt = 'bench #standin words=20';
  const chat = { model: 'gpt-4o-mini', max_tokens: 60, messages: [{ role: 'user', content: prompt }] };
  let held: string[] = [];
  return {
    'GET /health/healthz': () => fetch(`${functions}/health/healthz`),
    'GET /credits/balance': (i: number) =>
      fetch(`${functions}/credits/balance`, { headers: { authorization: `Bearer ${tokens[i % tokens.length]}` } }),
    'POST /credits/usage': (i: number) =>
      post('/credits/usage', service, { user_id: users[i % users.length], ...usage }),
    'POST /credits/usage (a server key)': (i: number) =>
      post('/credits/usage', serverKey, { user_id: users[i % users.length], ...usage }),
    [`POST /credits/usage/batch (${batchSize} events)`]: (i: number) =>
      post('/credits/usage/batch', service, {
        events: Array.from({ length: batchSize }, (_, k) => ({
          event_id: `${runId}-count-${i}-${k}-${crypto.randomUUID()}`,
          user_id: users[(i + k) % users.length],
          occurred_at: new Date().toISOString(),
          ...usage,
        })),
      }, false),
    'POST /credits/holds': async (i: number) => {
      const res = await post('/credits/holds', tokens[i % tokens.length], { amount: '1', ttl_seconds: 600 });
      const body = await res.clone().json();
      held.push(`${i % tokens.length} ${body.data?.hold_id}`);
      return res;
    },
    'POST /credits/holds/:id/capture': async (i: number) => {
      const [who, id] = (held.shift() ?? '').split(' ');
      if (!id) held = [];
      return await post(`/credits/holds/${id}/capture`, tokens[Number(who) || i % tokens.length], { amount: '1' });
    },
    'POST /ai/v1/chat/completions': (i: number) =>
      post('/ai/v1/chat/completions', tokens[i % tokens.length], chat, false),
    'POST /ai/v1/chat/completions (streamed)': (i: number) =>
      post('/ai/v1/chat/completions', tokens[i % tokens.length], {
        ...chat,
        stream: true,
        stream_options: { include_usage: true },
      }, false),
    'POST /ai/v1/responses': (i: number) =>
      post('/ai/v1/responses', tokens[i % tokens.length], {
        model: 'gpt-4o-mini',
        max_output_tokens: 60,
        input: prompt,
      }, false),
    'POST /ai/v1/messages': (i: number) =>
      post('/ai/v1/messages', tokens[i % tokens.length], {
        model: 'claude-haiku-4-5',
        max_tokens: 60,
        messages: [{ role: 'user', content: prompt }],
      }, false),
  } as Record<string, (i: number) => Promise<Response>>;
}

/** Round trips a request of each route makes, counted at the proxies (per request, `countCalls` requests). */
export async function countRoundTrips(f: Fixtures): Promise<Record<string, Trips>> {
  const pg = countingPostgres(new URL(f.functionsDbUrl));
  const redis = countingHttp(env('UPSTASH_REDIS_REST_URL'), true);
  const provider = countingHttp(env('AI_STANDIN_URL'));
  const port = freePort();
  const auth = countingHttp(`http://127.0.0.1:${port}`); // the gateway's own JWKS, reached as SUPABASE_URL
  const gateway = spawnGateway(port, {
    SUPABASE_URL: auth.url,
    SUPABASE_DB_URL: pg.url,
    DB_POOLER_URL: pg.url,
    UPSTASH_REDIS_REST_URL: redis.url,
    AI_API_BASE: `${provider.url}/v1`,
    AI_ANTHROPIC_BASE: `${provider.url}/v1`,
    AI_UPSTREAM_COMPAT_BASE: `${provider.url}/v1`,
  });
  const functions = `http://127.0.0.1:${port}/functions/v1`;
  const out: Record<string, Trips> = {};
  try {
    await waitFor(`${functions}/health/healthz`);
    const sign = await tokenSigner(auth.url);
    const users = f.otherUsers.slice(0, 16);
    const tokens = await Promise.all(users.map(sign));
    const snapshot = (): Trips => ({
      redisRequests: redis.seen.requests,
      redisCommands: redis.seen.commands,
      pgTrips: pg.seen.trips,
      pgStatements: pg.seen.statements,
      pgTransactions: pg.seen.transactions,
      jwks: auth.seen.jwks,
      provider: provider.seen.requests,
    });
    // A product's server reports with a server key of its own (checked in the database on every call).
    const serverKey = `slk_${crypto.randomUUID().replaceAll('-', '')}${'0'.repeat(16)}`;
    await f.db`insert into billing.server_keys (name, key_hash, prefix, created_by)
      values ('bench request-path', ${createHash('sha256').update(serverKey).digest('hex')}, ${serverKey.slice(0, 12)},
        ${users[0]})`;
    const all = routes(functions, users, tokens, env('SUPABASE_SERVICE_ROLE_KEY'), serverKey);
    for (const [name, call] of Object.entries(all)) {
      const drain = async (i: number) => {
        const res = await call(i);
        await res.arrayBuffer(); // a streamed answer is settled before its last bytes are sent
        if (!res.ok) throw new Error(`${name}: ${res.status}`);
      };
      for (let i = 0; i < 3; i++) await drain(1000 + i); // warm: connections, the limiter's script
      await new Promise((r) => setTimeout(r, 50));
      const before = snapshot();
      for (let i = 0; i < countCalls; i++) await drain(i);
      await new Promise((r) => setTimeout(r, 50)); // work that outlives a response (a stream's settling)
      const after = snapshot();
      out[name] = Object.fromEntries(
        Object.entries(after).map(([k, v]) => [k, (v - before[k as keyof Trips]) / countCalls]),
      ) as Trips;
    }
  } finally {
    gateway.kill('SIGTERM');
    await gateway.status;
    pg.close();
    await Promise.all([redis.close(), provider.close(), auth.close()]);
  }
  return out;
}
