// Serves the React example (examples/react/) on :3000, the Next.js dev port that Supabase's
// site_url and the functions' CORS allowlist already name. At start it builds what the example
// installs: the client package (client/build.mjs → client/dist), the example's own npm
// dependencies when its lock changed, then the esbuild bundle with the Supabase URL and key
// inlined, as Next.js inlines NEXT_PUBLIC_* variables.
// Usage: deno run -A --env-file=.local/env scripts/local/react-example.ts
//   REACT_EXAMPLE_PORT (3000); REACT_EXAMPLE_SUPABASE_URL (default SUPABASE_URL).
const port = Number(Deno.env.get('REACT_EXAMPLE_PORT') ?? 3000);
const supabaseUrl = Deno.env.get('REACT_EXAMPLE_SUPABASE_URL') ?? Deno.env.get('SUPABASE_URL');
if (!supabaseUrl) throw new Error('SUPABASE_URL is not set (run with --env-file=.local/env)');
// The platform's publishable key; locally no gateway checks it, so any non-empty string works.
const anonKey = Deno.env.get('SUPABASE_ANON_KEY') || 'local-anon-key';
const root = new URL('../../', import.meta.url).pathname;
const app = `${root}examples/react`;

async function run(what: string, cmd: string, args: string[], cwd: string): Promise<string> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: 'piped', stderr: 'piped' }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) throw new Error(`${what} failed:\n${text}${new TextDecoder().decode(out.stderr)}`);
  return text;
}

const mtime = (path: string) => Deno.stat(path).then((s) => s.mtime?.getTime() ?? 0, () => 0);

await run('building client/', Deno.execPath(), ['run', '-A', 'client/build.mjs'], root);
if (await mtime(`${app}/package-lock.json`) > await mtime(`${app}/node_modules/.package-lock.json`)) {
  await run('npm ci in examples/react', 'npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error'], app);
}
const bundle = await run('bundling examples/react', `${app}/node_modules/.bin/esbuild`, [
  'src/main.tsx',
  '--bundle',
  '--minify',
  '--format=esm',
  `--define:process.env.NEXT_PUBLIC_SUPABASE_URL=${JSON.stringify(supabaseUrl)}`,
  `--define:process.env.NEXT_PUBLIC_SUPABASE_ANON_KEY=${JSON.stringify(anonKey)}`,
], app);

const files: Record<string, { body: string; type: string }> = {
  '/': { body: await Deno.readTextFile(`${app}/index.html`), type: 'text/html; charset=utf-8' },
  '/app.js': { body: bundle, type: 'text/javascript; charset=utf-8' },
};
Deno.serve({ port, hostname: '127.0.0.1', onListen: () => console.log(`react example on :${port}`) }, (req) => {
  const file = files[new URL(req.url).pathname];
  if (!file) return new Response('not found', { status: 404 });
  return new Response(file.body, { headers: { 'content-type': file.type, 'cache-control': 'no-store' } });
});
