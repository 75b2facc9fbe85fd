// Step 2: the servers under load: a hello-world Deno.serve (the ceiling) and a gateway process of
// its own with every limiter layer on, and a token file (balance) and a user id file (usage, which
// the server reports for a user) per load shape.
import { importJWK, SignJWT } from 'jose';
import type { Fixtures } from './fixtures.ts';
import { delayingProxy, freePort, waitFor } from './net.ts';
import { cpuProfDir, dbDelayMs, env, gatewayScript } from './settings.ts';

/** Signs user tokens as Supabase Auth would, naming `issuerBase` (a gateway's URL) as issuer. */
export async function tokenSigner(issuerBase: string) {
  const jwk = JSON.parse(await Deno.readTextFile(`${env('LOCAL_AUTH_DIR')}/private.jwk.json`));
  const signingKey = await importJWK(jwk, 'ES256');
  return (sub: string) =>
    new SignJWT({ role: 'authenticated', aud: 'authenticated', iss: `${issuerBase}/auth/v1`, app_metadata: {} })
      .setProtectedHeader({ alg: 'ES256', kid: jwk.kid, typ: 'JWT' }).setSubject(sub).setIssuedAt()
      .setExpirationTime('1h').sign(signingKey);
}

/**
 * A gateway process of the bench's own on `port`, every limiter layer on with limits the run
 * never reaches (a changed limit starts fresh windows: the limit is part of the Redis key).
 */
export function spawnGateway(port: number, extraEnv: Record<string, string>, profile = false) {
  return new Deno.Command(Deno.execPath(), {
    args: [
      'run',
      '-A',
      ...(profile && cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${cpuProfDir}`] : []),
      `--env-file=${Deno.cwd()}/.local/env`,
      profile && cpuProfDir ? 'bench/profiled-gateway.ts' : gatewayScript,
    ],
    env: {
      GATEWAY_PORT: String(port),
      SUPABASE_URL: `http://127.0.0.1:${port}`, // tokens name this gateway as issuer; it serves its own JWKS
      RATE_LIMIT_ENABLED: 'true',
      RATE_LIMIT_GLOBAL_PER_MIN: '50000000',
      RATE_LIMIT_IP_PER_MIN: '50000000',
      RATE_LIMIT_DEFAULT_PER_MIN: '50000000',
      RATE_LIMIT_CREDITS_USAGE_PER_MIN: '50000000',
      RATE_LIMIT_USAGE_BATCH_PER_MIN: '50000000',
      RATE_LIMIT_AI_CHAT_PER_MIN: '50000000',
      ...extraEnv,
    },
    stdout: 'null',
    stderr: 'null',
  }).spawn();
}

/** Starts both servers (answering once this resolves); `stop()` ends them and removes the tokens. */
export async function startServers({ functionsDbUrl, hotUser, spreadUsers, otherUsers }: Fixtures) {
  const dbProxy = dbDelayMs > 0 ? delayingProxy(new URL(functionsDbUrl), dbDelayMs) : undefined;

  const gatewayPort = Number(Deno.env.get('BENCH_GATEWAY_PORT') ?? freePort());
  const helloPort = Number(Deno.env.get('BENCH_HELLO_PORT') ?? freePort());
  const tokenFor = await tokenSigner(`http://127.0.0.1:${gatewayPort}`);
  const tmp = await Deno.makeTempDir({ prefix: 'bench-request-path-' });
  const write = async (name: string, lines: Promise<string>[] | string[]) => {
    await Deno.writeTextFile(`${tmp}/${name}`, (await Promise.all(lines)).join('\n') + '\n');
    return `${tmp}/${name}`;
  };
  const spreadTokens = await write('spread.tokens', spreadUsers.map(tokenFor));
  const hotTokens = await write('hot.tokens', [tokenFor(hotUser)]);
  const spreadUserIds = await write('spread.users', spreadUsers);
  const hotUserIds = await write('hot.users', [hotUser]);
  // AI calls, holds and batches go to accounts of their own: the usage cells' ledger check stays exact.
  const otherTokens = await write('other.tokens', otherUsers.map(tokenFor));
  const otherUserIds = await write('other.users', otherUsers);
  const hello = new Deno.Command(Deno.execPath(), {
    args: ['run', '-A', 'bench/hello-server.ts'],
    env: { HELLO_PORT: String(helloPort) },
    stdout: 'null',
    stderr: 'null',
  }).spawn();
  const gateway = spawnGateway(gatewayPort, dbProxy ? { DB_POOLER_URL: dbProxy.url } : {}, true);
  const functions = `http://127.0.0.1:${gatewayPort}/functions/v1`;
  const stop = async () => {
    gateway.kill('SIGTERM');
    hello.kill('SIGKILL');
    await Promise.all([gateway.status, hello.status]);
    await Deno.remove(tmp, { recursive: true });
    dbProxy?.close();
  };
  try {
    await waitFor(`http://127.0.0.1:${helloPort}/`);
    await waitFor(`${functions}/health/healthz`);
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    functions,
    helloPort,
    hello,
    gateway,
    spreadTokens,
    hotTokens,
    spreadUserIds,
    hotUserIds,
    otherTokens,
    otherUserIds,
    stop,
  };
}
export type Servers = Awaited<ReturnType<typeof startServers>>;
