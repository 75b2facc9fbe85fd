// Serves the example student page (examples/student/) on STUDENT_PAGE_PORT (:54330): index.html,
// naming the stack's own API (SUPABASE_URL) as the page's (api-base.ts), and app.js, bundled for
// the browser from app.ts (with the client and supabase-js) when this starts.
import { withApiBase } from '../../examples/student/api-base.ts';
const port = Number(Deno.env.get('STUDENT_PAGE_PORT') ?? 54330);
const root = new URL('../../', import.meta.url);
const page = new URL('examples/student/', root);
const bundled = new URL('.local/www/student-app.js', root);

await Deno.mkdir(new URL('.', bundled), { recursive: true });
const bundle = await new Deno.Command(Deno.execPath(), {
  args: [
    'bundle',
    '--quiet',
    '--platform',
    'browser',
    '--minify',
    new URL('app.ts', page).pathname,
    '-o',
    bundled.pathname,
  ],
  cwd: root.pathname,
  stdout: 'inherit',
  stderr: 'inherit',
}).output();
if (!bundle.success) throw new Error('bundling examples/student/app.ts failed');
const files: Record<string, { body: Uint8Array<ArrayBuffer>; type: string }> = {
  '/': {
    body: new TextEncoder().encode(
      withApiBase(
        await Deno.readTextFile(new URL('index.html', page)),
        Deno.env.get('SUPABASE_URL') ?? 'http://127.0.0.1:54321',
      ),
    ),
    type: 'text/html; charset=utf-8',
  },
  '/app.js': { body: await Deno.readFile(bundled), type: 'text/javascript; charset=utf-8' },
};

Deno.serve({ port, hostname: '127.0.0.1', onListen: () => console.log(`student page on :${port}`) }, (req) => {
  const file = files[new URL(req.url).pathname];
  if (!file) return new Response('not found', { status: 404 });
  return new Response(file.body, { headers: { 'content-type': file.type, 'cache-control': 'no-store' } });
});
