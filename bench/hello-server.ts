// The ceiling for bench/request-path.ts: a hello-world Deno.serve, the least a Deno HTTP server
// can do per request, measured by the same load generator in the same run.
//   HELLO_PORT=54347 deno run -A bench/hello-server.ts
const port = Number(Deno.env.get('HELLO_PORT') ?? 54347);
Deno.serve({ hostname: '127.0.0.1', port, onListen: () => {} }, () => new Response('hello'));
