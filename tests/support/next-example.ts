// The Next.js example's chat (examples/nextjs) without Next.js: its route handler and its useChat
// component run by Deno at the versions the example's package.json pins (the AI SDK majors that
// install on Node 20), not the newer ones supabase/functions/import_map.json gives the tests and
// functions. Deno takes one import map per process, and the deploy's map holds no scopes, so a
// map with a scope for examples/nextjs/ is written for this and used by a process of its own.
import assert from 'node:assert/strict';
import { bundleForBrowser } from './browser.ts';

const root = new URL('../../', import.meta.url);
const example = new URL('examples/nextjs/', root);

/** The example's own pins of what its chat imports, as import-map entries. */
async function examplePins(): Promise<Record<string, string>> {
  const pkg = JSON.parse(await Deno.readTextFile(new URL('package.json', example)));
  const pinned: Record<string, string> = { ...pkg.dependencies, ...pkg.devDependencies };
  const pins: Record<string, string> = {};
  for (
    const name of ['ai', '@ai-sdk/openai', '@ai-sdk/react', 'react', 'react-dom', '@types/react', '@types/react-dom']
  ) {
    assert.match(pinned[name] ?? '', /^\d+\.\d+\.\d+$/, `examples/nextjs/package.json pins ${name} exactly`);
    pins[name] = `npm:${name}@${pinned[name]}`;
    pins[`${name}/`] = `npm:/${name}@${pinned[name]}/`;
  }
  return pins;
}

/**
 * A folder with the import map (the functions' map, plus the example's pins for examples/nextjs/
 * and for the folder itself), a page mounting the example's `<Chat>` with the token in the
 * page's address, and a server answering `/api/chat` with the example's route handler.
 */
async function chatWorkspace(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: 'next-chat-' });
  const { imports } = JSON.parse(await Deno.readTextFile(new URL('supabase/functions/import_map.json', root)));
  const pins = await examplePins();
  // The page's other imports: the package as this repository's source (the example installs it from client/).
  const scope = { ...pins, '@scholarlink/billing-client': new URL('client/mod.ts', root).href };
  const map = { imports, scopes: { [example.href]: scope, [`file://${dir}/`]: pins } };
  await Deno.writeTextFile(`${dir}/import_map.json`, JSON.stringify(map));
  await Deno.writeTextFile(
    `${dir}/page.ts`,
    `/// <reference lib="dom" />
import { createElement } from 'react';
import { createRoot } from 'react-dom/client';
import { Chat } from '${new URL('lib/chat.tsx', example).href}';
const token = new URLSearchParams(location.search).get('token') ?? undefined;
createRoot(document.getElementById('root')!).render(createElement(Chat, { token: () => Promise.resolve(token) }));
`,
  );
  await Deno.writeTextFile(
    `${dir}/server.ts`,
    `import { POST } from '${new URL('app/api/chat/route.ts', example).href}';
const js = await Deno.readTextFile('${dir}/page.js');
const html = '<!doctype html><div id="root"></div><script type="module" src="/page.js"></script>';
Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: ({ port }) => console.log(port) }, (req) => {
  const path = new URL(req.url).pathname;
  if (path === '/api/chat' && req.method === 'POST') return POST(req);
  if (path === '/page.js') return new Response(js, { headers: { 'content-type': 'text/javascript' } });
  if (path === '/') return new Response(html, { headers: { 'content-type': 'text/html' } });
  return new Response('not found', { status: 404 });
});
`,
  );
  return dir;
}

/** The workspace, type-checked and bundled: once per test file (a check and a bundle take seconds). */
let built: Promise<string> | undefined;
const checkedAndBundled = () =>
  built ??= (async () => {
    const dir = await chatWorkspace();
    addEventListener('unload', () => Deno.removeSync(dir, { recursive: true }));
    // The Next page too (its sign-in glue runs only under Next): its imports name no extension, as
    // Next's resolver allows, hence sloppy imports for the check.
    const checked = await new Deno.Command(Deno.execPath(), {
      args: [
        'check',
        '--quiet',
        '--unstable-sloppy-imports',
        `--import-map=${dir}/import_map.json`,
        `${dir}/page.ts`,
        `${dir}/server.ts`,
        new URL('app/chat/page.tsx', example).pathname,
      ],
      cwd: root.pathname,
      stdout: 'piped',
      stderr: 'piped',
    }).output();
    assert.ok(checked.success, `the example's chat does not type-check:\n${new TextDecoder().decode(checked.stderr)}`);
    const js = await bundleForBrowser(new URL(`file://${dir}/page.ts`), [`--import-map=${dir}/import_map.json`]);
    await Deno.writeTextFile(`${dir}/page.js`, js);
    return dir;
  })();

/**
 * The example's chat page and route handler, served on loopback at the example's own pins, the
 * route's gateway at `supabaseUrl`; type-checked at those pins first (with app/chat/page.tsx).
 * @example const chat = await serveChatExample(env('SUPABASE_URL')); … await chat.close()
 */
export async function serveChatExample(supabaseUrl: string) {
  const dir = await checkedAndBundled();
  const server = new Deno.Command(Deno.execPath(), {
    args: ['run', '-A', `--import-map=${dir}/import_map.json`, `${dir}/server.ts`],
    cwd: root.pathname,
    env: { NEXT_PUBLIC_SUPABASE_URL: supabaseUrl },
    stdout: 'piped',
    stderr: 'inherit',
  }).spawn();
  const out = server.stdout.getReader();
  const { value } = await out.read(); // the port it listens on, its only line
  await out.cancel();
  return {
    origin: `http://127.0.0.1:${new TextDecoder().decode(value).trim()}`,
    async close() {
      server.kill();
      await server.status;
    },
  };
}
