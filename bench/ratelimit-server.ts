// Two copies of one trivial route, identical but for the rate limiter, for bench/ratelimit.ts.
//   :PORT_BASE     /bench/ping without the limiter (the baseline)
//   :PORT_BASE+1   /bench/ping with every layer of the limiter
import { createApp, ok } from '../supabase/functions/_shared/http/app.ts';

const base = Number(Deno.env.get('BENCH_PORT_BASE') ?? 54500);
for (const [offset, rateLimited] of [[0, false], [1, true]] as const) {
  const app = createApp('bench', { rateLimited });
  app.get('/ping', (c) => ok(c, { pong: true }));
  Deno.serve({ hostname: '127.0.0.1', port: base + offset, onListen: () => {} }, app.fetch);
}
