// The deploy rehearsal's machinery, shared by its test files: the pinned Supabase CLI runs
// `supabase functions deploy --use-api` against a stand-in Management API
// (scripts/local/management-api.ts), and each function is then started alone, in its own
// process, from only the files the CLI uploaded, with only the uploaded import map and the
// environment a hosted function has: the platform's variables and the project's secrets.
import assert from 'node:assert/strict';
import {
  cliProfile,
  type ManagementApi,
  rehearsalToken,
  startManagementApi,
  type Upload,
  writeUpload,
} from '../../scripts/local/management-api.ts';

export const root = new URL('../../', import.meta.url).pathname.replace(/\/$/, '');
const supabaseCli = `${root}/scripts/toolchain/node_modules/.bin/supabase`;
export const functionsDir = `${root}/supabase/functions`;

/** What the platform gives every hosted function; secrets are set on top of these. */
const platformVariables = ['SUPABASE_URL', 'SUPABASE_DB_URL', 'SUPABASE_ANON_KEY', 'SUPABASE_SERVICE_ROLE_KEY'];

export interface Deploy {
  code: number;
  output: string;
  api: Pick<ManagementApi, 'ref' | 'uploads' | 'requests' | 'activated'>;
}

let deployed: Promise<Deploy> | undefined;
/** Runs the real CLI against the stand-in once per test file. */
export function deploy(): Promise<Deploy> {
  return deployed ??= (async () => {
    const api = startManagementApi({ port: 0 });
    const home = await Deno.makeTempDir({ prefix: 'deploy-rehearsal-home-' });
    try {
      const profile = `${home}/profile.json`;
      await Deno.writeTextFile(profile, JSON.stringify(cliProfile(api.url)));
      const out = await new Deno.Command(supabaseCli, {
        args: ['--profile', profile, 'functions', 'deploy', `--remote=${api.ref}`, '--use-api', '--yes'],
        cwd: root,
        clearEnv: true,
        env: {
          PATH: Deno.env.get('PATH') ?? '/usr/bin:/bin',
          HOME: home,
          SUPABASE_ACCESS_TOKEN: rehearsalToken,
          DO_NOT_TRACK: '1',
          SUPABASE_TELEMETRY_DISABLED: '1',
          NO_COLOR: '1',
        },
        stdout: 'piped',
        stderr: 'piped',
      }).output();
      const text = new TextDecoder();
      return { code: out.code, output: text.decode(out.stdout) + text.decode(out.stderr), api };
    } finally {
      await api.close();
      await Deno.remove(home, { recursive: true });
    }
  })();
}

export async function deployedUploads(): Promise<Map<string, Upload>> {
  const { code, output, api } = await deploy();
  assert.equal(code, 0, `supabase functions deploy failed:\n${output}`);
  return api.uploads;
}

/** The secrets prod.env.example sets (its uncommented names), with this machine's values. */
export async function projectSecrets(): Promise<Record<string, string>> {
  const example = await Deno.readTextFile(`${root}/prod.env.example`);
  const names = [...example.matchAll(/^([A-Z][A-Z0-9_]*)=/gm)].map((m) => m[1]);
  assert.ok(names.length > 0, 'prod.env.example names no secrets');
  const reserved = names.filter((n) => n.startsWith('SUPABASE_'));
  assert.deepEqual(reserved, [], 'SUPABASE_ names cannot be set as secrets');
  return Object.fromEntries(names.flatMap((n) => {
    const value = Deno.env.get(n);
    return value ? [[n, value]] : []; // unset on this machine: unset in the rehearsal too
  }));
}

/** The platform's variables, with this machine's values: what every hosted function gets. */
export const platformEnv = (): Record<string, string> =>
  Object.fromEntries(
    platformVariables.map((n) => [n, Deno.env.get(n) ?? (n === 'SUPABASE_ANON_KEY' ? 'rehearsal-anon-key' : '')]),
  );

let cacheDir: Promise<string> | undefined;
/** This machine's Deno cache, where the platform's npm fetches are stood in for. */
export function denoDir(): Promise<string> {
  return cacheDir ??= new Deno.Command(Deno.execPath(), { args: ['info', '--json'], stdout: 'piped' }).output()
    .then((out) => JSON.parse(new TextDecoder().decode(out.stdout)).denoDir);
}

/**
 * How this machine reaches npm, for the Deno that starts a function (the platform fetches npm
 * packages itself): the Deno cache, and the CA and proxy settings when set. Not the function's
 * configuration, though the function can see them.
 */
export function reachNpm(cache: string): Record<string, string> {
  const names = ['NODE_EXTRA_CA_CERTS', 'DENO_CERT', 'DENO_TLS_CA_STORE', 'HTTPS_PROXY', 'HTTP_PROXY', 'NO_PROXY'];
  return Object.fromEntries([
    ['DENO_DIR', cache],
    ...names.flatMap((n) => {
      const value = Deno.env.get(n);
      return value ? [[n, value]] : [];
    }),
  ]);
}

/** A free loopback port, for a process to listen on. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: '127.0.0.1', port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

export interface Running {
  slug: string;
  /** Where it answers: `${url}/<slug>/…`, as `https://<ref>.supabase.co/functions/v1/<slug>/…` on hosted. */
  url: string;
  stop(): Promise<string>;
}

/**
 * Starts one uploaded function alone, as the platform would: its own process and folder, only
 * the uploaded files and import map, no deno.json, no lock file, no node_modules, and only
 * `env`. Resolves once it listens; rejects with its output if it exits first. Without a `port`,
 * a free one; taken meanwhile (freePort closes its listener before the function binds, and the
 * suite's own connections draw from the same ephemeral range), another.
 */
export async function startFunction(upload: Upload, env: Record<string, string>, port?: number): Promise<Running> {
  for (let attempt = 1;; attempt++) {
    try {
      return await startOn(upload, env, port ?? freePort());
    } catch (err) {
      if (port !== undefined || attempt === 3 || !String(err).includes('AddrInUse')) throw err;
    }
  }
}

async function startOn(upload: Upload, env: Record<string, string>, port: number): Promise<Running> {
  const { slug, metadata } = upload;
  const dir = await Deno.makeTempDir({ prefix: `deploy-rehearsal-${slug}-` });
  await writeUpload(upload, dir);
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      'run',
      '--no-config',
      ...(metadata.import_map_path ? [`--import-map=${dir}/${metadata.import_map_path}`] : []),
      '--allow-net',
      '--allow-env',
      `--allow-read=${dir}`,
      `${dir}/${metadata.entrypoint_path}`,
    ],
    cwd: dir,
    clearEnv: true,
    env: { ...env, ...reachNpm(await denoDir()), DENO_SERVE_ADDRESS: `tcp:127.0.0.1:${port}`, NO_COLOR: '1' },
    stdout: 'piped',
    stderr: 'piped',
  }).spawn();
  const output = Promise.all([child.stdout, child.stderr].map((s) => new Response(s).text())).then((t) => t.join(''));
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const stop = async () => {
    if (!exited) child.kill('SIGTERM');
    await status;
    await Deno.remove(dir, { recursive: true });
    return await output;
  };
  for (let waited = 0;; waited += 100) {
    if (exited) throw new Error(`${slug} exited ${(await status).code} before listening:\n${await stop()}`);
    if (waited > 60_000) throw new Error(`${slug} did not listen within 60 s:\n${await stop()}`);
    const conn = await Deno.connect({ hostname: '127.0.0.1', port }).catch(() => null);
    if (conn) {
      conn.close();
      return { slug, url: `http://127.0.0.1:${port}`, stop };
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
