// An Upstash-compatible REST bridge in front of the local redis-server, so @upstash/redis
// and @upstash/ratelimit run unchanged. Speaks Upstash's REST protocol:
//   POST /            ["SET","k","v"]            → {"result": …} | 400 {"error": "…"}
//   POST /pipeline    [["INCR","a"],["GET","a"]] → [{"result": …} | {"error": …}, …]
//   POST /multi-exec  same, run inside MULTI/EXEC
// Bearer-token auth; with `Upstash-Encoding: base64` every string in a result is base64.
// For measurements only (off by default), REDIS_BRIDGE_DELAY_MS delays every command request
// like a network between an edge function and Upstash: `40` adds 40 ms; `40:150` draws each
// delay from a log-normal distribution with a median of 40 ms and a 99th percentile of 150 ms.
import { RedisError, type Reply, RespConnection, Simple } from './resp.ts';

const port = Number(Deno.env.get('REDIS_REST_PORT') ?? 54380);
const redisUrl = new URL(Deno.env.get('REDIS_URL') ?? 'redis://127.0.0.1:54379');
const token = Deno.env.get('UPSTASH_REDIS_REST_TOKEN');
if (!token) throw new Error('UPSTASH_REDIS_REST_TOKEN is required');

const enc = new TextEncoder();
const dec = new TextDecoder();

/** A delay in ms per request, from REDIS_BRIDGE_DELAY_MS (see the top of this file). */
function delayFrom(spec: string): () => number {
  if (spec === '' || spec === '0') return () => 0;
  const m = spec.match(/^(\d+(?:\.\d+)?)(?::(\d+(?:\.\d+)?))?$/);
  const [p50, p99] = [Number(m?.[1]), Number(m?.[2] ?? m?.[1])];
  if (!m || p99 < p50 || (p99 > p50 && p50 <= 0)) {
    throw new Error('REDIS_BRIDGE_DELAY_MS must be <ms> or <p50 ms>:<p99 ms> with 0 < p50 <= p99');
  }
  if (p99 === p50) return () => p50;
  const sigma = Math.log(p99 / p50) / 2.3263; // z of the 99th percentile
  return () => {
    const z = Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random()); // Box–Muller
    return p50 * Math.exp(sigma * z);
  };
}
const networkDelay = delayFrom(Deno.env.get('REDIS_BRIDGE_DELAY_MS') ?? '');
const idle: RespConnection[] = [];

async function withConnection<T>(use: (c: RespConnection) => Promise<T>): Promise<T> {
  const pooled = idle.pop();
  const conn = pooled ?? await RespConnection.connect(redisUrl.hostname, Number(redisUrl.port));
  try {
    const out = await use(conn);
    idle.push(conn);
    return out;
  } catch (err) {
    conn.close(); // a connection that failed mid-reply may be out of step: never reuse it
    // A pooled connection the server closed while idle (e.g. Redis restarted) carried
    // nothing: retry once on a fresh one.
    if (pooled && err instanceof Error && err.message === 'redis connection closed') {
      idle.length = 0;
      return withConnection(use);
    }
    throw err;
  }
}

// Upstash accepts a script flag open-source Redis 7 rejects (`#!lua flags=allow-key-locking`,
// used by @upstash/ratelimit). The bridge strips it and remembers which SHA the client knows
// the script by, so EVALSHA with the client's SHA still finds the script Redis cached.
const upstashOnlyFlag = /^(#!lua[^\n]*?)\s*\ballow-key-locking\b,?/;
const localShaOf = new Map<string, string>();

async function sha1(text: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-1', enc.encode(text)));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

async function translateScripts(cmd: Arg[]): Promise<Arg[]> {
  const name = String(cmd[0]).toUpperCase();
  const scriptAt = name === 'EVAL' || name === 'EVAL_RO'
    ? 1
    : name === 'SCRIPT' && /^load$/i.test(String(cmd[1]))
    ? 2
    : -1;
  if (scriptAt > 0 && upstashOnlyFlag.test(String(cmd[scriptAt]))) {
    const original = String(cmd[scriptAt]);
    const local = original.replace(upstashOnlyFlag, '$1').replace(/^#!lua flags=\s*$/m, '#!lua');
    localShaOf.set(await sha1(original), await sha1(local));
    return cmd.map((a, i) => (i === scriptAt ? local : a));
  }
  if (name === 'EVALSHA' || name === 'EVALSHA_RO') {
    const local = localShaOf.get(String(cmd[1]).toLowerCase());
    if (local) return cmd.map((a, i) => (i === 1 ? local : a));
  }
  return cmd;
}

type Arg = string | number | boolean;
const isCommand = (c: unknown): c is Arg[] =>
  Array.isArray(c) && c.length > 0 && c.every((a) => ['string', 'number', 'boolean'].includes(typeof a));
const toBytes = async (cmd: Arg[]) => (await translateScripts(cmd)).map((a) => enc.encode(String(a)));

function toBase64(bytes: Uint8Array): string {
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

type Json = string | number | null | Json[];
function toJson(r: Reply, base64: boolean): Json {
  if (r instanceof Simple) return base64 ? btoa(r.value) : r.value;
  if (r instanceof Uint8Array) return base64 ? toBase64(r) : dec.decode(r);
  if (Array.isArray(r)) return r.map((x) => toJson(x, base64));
  if (r instanceof RedisError) return null; // only reached inside arrays (EXEC results)
  return r;
}
const entry = (r: Reply, base64: boolean) =>
  r instanceof RedisError ? { error: r.message } : { result: toJson(r, base64) };

async function handle(req: Request): Promise<Response> {
  const url = new URL(req.url);
  if (req.method === 'GET' && url.pathname === '/healthz') {
    const [pong] = await withConnection((c) => c.pipeline([[enc.encode('PING')]]));
    return Response.json({ result: pong instanceof Simple ? pong.value : 'unexpected' });
  }
  if (req.headers.get('authorization') !== `Bearer ${token}`) {
    return Response.json({ error: 'Unauthorized' }, { status: 401 });
  }
  if (req.method !== 'POST') return Response.json({ error: 'Method not allowed' }, { status: 405 });
  const base64 = req.headers.get('upstash-encoding')?.toLowerCase() === 'base64';
  let body: unknown;
  try {
    body = await req.json();
  } catch {
    return Response.json({ error: 'ERR failed to parse command' }, { status: 400 });
  }

  if (url.pathname === '/') {
    if (!isCommand(body)) return Response.json({ error: 'ERR failed to parse command' }, { status: 400 });
    const args = await toBytes(body);
    const [reply] = await withConnection((c) => c.pipeline([args]));
    return Response.json(entry(reply, base64), { status: reply instanceof RedisError ? 400 : 200 });
  }
  if (url.pathname === '/pipeline' || url.pathname === '/multi-exec') {
    if (!Array.isArray(body) || body.length === 0 || !body.every(isCommand)) {
      return Response.json({ error: 'ERR failed to parse pipeline request' }, { status: 400 });
    }
    const cmds = await Promise.all(body.map(toBytes));
    if (url.pathname === '/pipeline') {
      const replies = await withConnection((c) => c.pipeline(cmds));
      return Response.json(replies.map((r) => entry(r, base64)));
    }
    const replies = await withConnection((c) => c.pipeline([[enc.encode('MULTI')], ...cmds, [enc.encode('EXEC')]]));
    const exec = replies[replies.length - 1];
    if (!Array.isArray(exec)) {
      const reason = exec instanceof RedisError ? exec.message : 'EXECABORT transaction discarded';
      return Response.json({ error: reason }, { status: 400 });
    }
    return Response.json(exec.map((r) => entry(r, base64)));
  }
  return Response.json({ error: 'Not found' }, { status: 404 });
}

Deno.serve(
  { port, hostname: '127.0.0.1', onListen: () => console.log(`redis REST bridge on :${port}`) },
  async (req) => {
    try {
      const ms = networkDelay();
      if (ms > 0) await new Promise((r) => setTimeout(r, ms));
      return await handle(req);
    } catch (err) {
      console.error('bridge error:', err instanceof Error ? err.message : err);
      return Response.json({ error: 'ERR redis unavailable' }, { status: 503 });
    }
  },
);
