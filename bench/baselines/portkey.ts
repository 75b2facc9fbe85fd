// Portkey's open-source gateway (@portkey-ai/gateway, pinned in bench/baselines/package.json,
// installed by ./scripts/bench), a pure relay: the same-run baseline bench/ai-gateway.ts sets the
// metered gateway against. It relays to the local provider stand-in as to an OpenAI-compatible
// custom host (TRUSTED_CUSTOM_HOSTS lets it reach 127.0.0.1).
const dir = new URL('.', import.meta.url).pathname;

/** Starts Portkey on a free port; answers once it relays. `headers` go with every call to it. */
export async function startPortkey(upstreamBase: string) {
  const l = Deno.listen({ hostname: '127.0.0.1', port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  const child = new Deno.Command('node', {
    args: [
      '--import',
      `${dir}mutable-fetch.mjs`,
      `${dir}node_modules/@portkey-ai/gateway/build/start-server.js`,
      `--port=${port}`,
      '--headless',
    ],
    env: { TRUSTED_CUSTOM_HOSTS: '127.0.0.1' },
    stdout: 'null',
    stderr: 'null',
  }).spawn();
  const url = `http://127.0.0.1:${port}/v1`;
  const headers = { 'x-portkey-provider': 'openai', 'x-portkey-custom-host': upstreamBase };
  const stop = async () => {
    child.kill('SIGKILL');
    await child.status;
  };
  for (let i = 0;; i++) {
    const up = await fetch(`http://127.0.0.1:${port}/`).then((r) => r.body?.cancel().then(() => true), () => false);
    if (up) break;
    if (i > 150) {
      await stop();
      throw new Error(`Portkey's gateway did not start (is bench/baselines installed? ./scripts/bench does it)`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { url, headers, pid: child.pid, stop };
}
