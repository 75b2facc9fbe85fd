// Step 2: the servers under load: a hello-world Deno.serve (the ceiling) and a gateway process of
// its own with every limiter layer on, and a token file (balance) and a user id file (usage, which
// the server reports for a user) per load shape.
import { importJWK, SignJWT } from 'jose';
import type { Fixtures } from './fixtures.ts';
import { delayingProxy, freePort, waitFor } from './net.ts';
import { cpuProfDir, dbDelayMs, env, gatewayScript } from './settings.ts';

/** Starts both servers (answering once this resolves); `stop()` ends them and removes the tokens. */
export async function startServers({ functionsDbUrl, hotUser, spreadUsers }: Fixtures) {
  const dbProxy = dbDelayMs > 0 ? delayingProxy(new URL(functionsDbUrl), dbDelayMs) : undefined;

  const gatewayPort = Number(Deno.env.get('BENCH_GATEWAY_PORT') ?? freePort());
  const helloPort = Number(Deno.env.get('BENCH_HELLO_PORT') ?? freePort());
  const gatewayUrl = `http://127.0.0.1:${gatewayPort}`;
  const jwk = JSON.parse(await Deno.readTextFile(`${env('LOCAL_AUTH_DIR')}/private.jwk.json`));
  const signingKey = await importJWK(jwk, 'ES256');
  const tokenFor = (sub: string) =>
    new SignJWT({ role: 'authenticated', aud: 'authenticated', iss: `${gatewayUrl}/auth/v1`, app_metadata: {} })
      .setProtectedHeader({ alg: 'ES256', kid: jwk.kid, typ: 'JWT' }).setSubject(sub).setIssuedAt()
      .setExpirationTime('1h').sign(signingKey);
  const tmp = await Deno.makeTempDir({ prefix: 'bench-request-path-' });
  const spreadTokens = `${tmp}/spread.tokens`;
  const hotTokens = `${tmp}/hot.tokens`;
  await Deno.writeTextFile(spreadTokens, (await Promise.all(spreadUsers.map(tokenFor))).join('\n') + '\n');
  await Deno.writeTextFile(hotTokens, (await tokenFor(hotUser)) + '\n');
  const spreadUserIds = `${tmp}/spread.users`;
  const hotUserIds = `${tmp}/hot.users`;
  await Deno.writeTextFile(spreadUserIds, spreadUsers.join('\n') + '\n');
  await Deno.writeTextFile(hotUserIds, hotUser + '\n');
  const hello = new Deno.Command(Deno.execPath(), {
    args: ['run', '-A', 'bench/hello-server.ts'],
    env: { HELLO_PORT: String(helloPort) },
    stdout: 'null',
    stderr: 'null',
  }).spawn();
  const gateway = new Deno.Command(Deno.execPath(), {
    args: [
      'run',
      '-A',
      ...(cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${cpuProfDir}`] : []),
      `--env-file=${Deno.cwd()}/.local/env`,
      cpuProfDir ? 'bench/profiled-gateway.ts' : gatewayScript,
    ],
    env: {
      GATEWAY_PORT: String(gatewayPort),
      SUPABASE_URL: gatewayUrl, // tokens name this gateway as issuer; it serves its own JWKS
      // Every layer stays on; the limits are set so that the run itself is never refused. A
      // changed limit starts fresh windows (the limit is part of the Redis key).
      RATE_LIMIT_ENABLED: 'true',
      RATE_LIMIT_GLOBAL_PER_MIN: '50000000',
      RATE_LIMIT_IP_PER_MIN: '50000000',
      RATE_LIMIT_DEFAULT_PER_MIN: '50000000',
      RATE_LIMIT_CREDITS_USAGE_PER_MIN: '50000000',
      ...(dbProxy ? { DB_POOLER_URL: dbProxy.url } : {}),
    },
    stdout: 'null',
    stderr: 'null',
  }).spawn();
  const functions = `${gatewayUrl}/functions/v1`;
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
  return { functions, helloPort, hello, gateway, spreadTokens, hotTokens, spreadUserIds, hotUserIds, stop };
}
export type Servers = Awaited<ReturnType<typeof startServers>>;
