// Ports, readiness, and a proxy that delays the gateway's database packets (BENCH_DB_DELAY_MS).

/** A port free right now on 127.0.0.1. */
export const freePort = () => {
  const l = Deno.listen({ hostname: '127.0.0.1', port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
};

export async function waitFor(url: string) {
  for (let i = 0; i < 300; i++) {
    if (await fetch(url).then((r) => r.body?.cancel().then(() => r.ok) ?? r.ok, () => false)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${url} did not come up`);
}

/** A TCP proxy to `upstream` that delivers each packet `ms` after it arrived, in order, both ways. */
export function delayingProxy(upstream: URL, ms: number) {
  const listener = Deno.listen({ hostname: '127.0.0.1', port: 0 });
  const conns = new Set<Deno.Conn>();
  const delayed = () =>
    new TransformStream<Uint8Array, Uint8Array>({
      transform: (chunk, out) => new Promise((r) => setTimeout(() => r(out.enqueue(chunk)), ms)),
    });
  (async () => {
    for await (const client of listener) {
      const server = await Deno.connect({ hostname: upstream.hostname, port: Number(upstream.port) });
      conns.add(client).add(server);
      client.readable.pipeThrough(delayed()).pipeTo(server.writable).catch(() => {});
      server.readable.pipeThrough(delayed()).pipeTo(client.writable).catch(() => {});
    }
  })().catch(() => {});
  const url = new URL(upstream.href);
  url.hostname = '127.0.0.1';
  url.port = String((listener.addr as Deno.NetAddr).port);
  const close = () => {
    listener.close();
    for (const c of conns) {
      try {
        c.close();
      } catch { /* already closed */ }
    }
  };
  return { url: url.href, close };
}
