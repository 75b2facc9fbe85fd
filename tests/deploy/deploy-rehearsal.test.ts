// The deploy rehearsal. The pinned Supabase CLI runs `supabase functions deploy --use-api`
// against a stand-in Management API (scripts/local/management-api.ts); each function is then
// started alone, in its own process, from only the files the CLI uploaded, with only the
// uploaded import map and the environment a hosted function has: the platform's variables
// and the secrets prod.env.example lists. An import that does not resolve, a file the CLI did
// not upload, or a variable the docs do not list fails here instead of on hosted Supabase.
// These are also the only tests in which functions run isolated from one another.
import assert from 'node:assert/strict';
import type { Upload } from '../../scripts/local/management-api.ts';
import { deploy, deployedUploads, functionsDir, platformEnv, projectSecrets, startFunction } from './rehearsal.ts';

/** One cheap route per function: a 401/404 in the envelope proves it started and routed. */
const probes: Record<string, { method: string; path: string; status: number; code?: string }> = {
  admin: { method: 'GET', path: '/admin/ops', status: 401, code: 'UNAUTHORIZED' },
  ai: { method: 'GET', path: '/ai/v1/models', status: 401, code: 'UNAUTHORIZED' },
  checkout: { method: 'GET', path: '/checkout/packages', status: 401, code: 'UNAUTHORIZED' },
  credits: { method: 'GET', path: '/credits/balance', status: 401, code: 'UNAUTHORIZED' },
  health: { method: 'GET', path: '/health/healthz', status: 200 },
  jobs: { method: 'GET', path: '/jobs', status: 401, code: 'UNAUTHORIZED' },
  orgs: { method: 'GET', path: '/orgs', status: 401, code: 'UNAUTHORIZED' },
  notify: { method: 'POST', path: '/notify/dispatch', status: 401, code: 'UNAUTHORIZED' },
  providers: { method: 'GET', path: '/providers/reconciliation', status: 401, code: 'UNAUTHORIZED' },
  // POST is the only route, and an unsigned POST counts a signature failure: a GET routes to 404.
  'stripe-webhook': { method: 'GET', path: '/stripe-webhook', status: 405, code: 'METHOD_NOT_ALLOWED' },
};

const localFunctions = async () => {
  const names: string[] = [];
  for await (const e of Deno.readDir(functionsDir)) {
    if (
      e.isDirectory && !e.name.startsWith('_') &&
      await Deno.stat(`${functionsDir}/${e.name}/index.ts`).catch(() => null)
    ) {
      names.push(e.name);
    }
  }
  return names.sort();
};

/** Every module specifier a source file names: static and dynamic imports, re-exports. */
function specifiers(source: string): string[] {
  const found = source.matchAll(
    /(?:import|export)\s+(?:type\s+)?(?:\{[^{}]*\}|[^'";]*?)\s*from\s*['"]([^'"]+)['"]|import\s*\(\s*['"]([^'"]+)['"]\s*\)|^\s*import\s+['"]([^'"]+)['"]/gm,
  );
  return [...found].map((m) => m[1] ?? m[2] ?? m[3]);
}

// An exact version: `npm:name@1.2.3` (or `npm:/name@1.2.3/` for subpaths); no ranges, jsr: or URLs.
const pinnedNpm = /^npm:\/?(@[a-z0-9][\w.-]*\/)?[a-z0-9][\w.-]*@\d+\.\d+\.\d+(-[\w.]+)?(\/[\w./-]*)?$/;

Deno.test('supabase functions deploy (the pinned CLI, --use-api) uploads every function with its import map', async () => {
  const { api, output } = await deploy();
  const uploads = await deployedUploads();
  // e.g. "Functions using fallback import map": config.toml names each function's map.
  const warnings = output.split('\n').filter((line) => /warn|deprecat/i.test(line));
  assert.deepEqual(warnings, [], 'the deploy prints no warning');
  const names = await localFunctions();
  assert.deepEqual([...uploads.keys()].sort(), names, 'every function folder is uploaded');
  assert.deepEqual(Object.keys(probes).sort(), names, 'every function has a probe route in this test');
  const project = `/v1/projects/${api.ref}`;
  assert.deepEqual(
    api.requests.filter((r) => r !== `GET ${project}`).sort(), // 3.1.0 does not fetch the project here; others may
    [...names.map((n) => `POST ${project}/functions/deploy?slug=${n}&bundleOnly=true`), `PUT ${project}/functions`],
    'one upload per function, then one bulk update',
  );
  assert.deepEqual(api.activated.map((slugs) => slugs.sort()), [names], 'one bulk update activates them all');
  for (const [slug, { metadata, files }] of uploads) {
    assert.equal(metadata.entrypoint_path, `supabase/functions/${slug}/index.ts`);
    assert.ok(files.has(metadata.entrypoint_path), `${slug}: the entrypoint is uploaded`);
    assert.equal(metadata.verify_jwt, false, `${slug}: verify_jwt = false, from supabase/config.toml`);
    assert.ok(
      metadata.import_map_path,
      `${slug}: uploaded with import_map_path ${JSON.stringify(metadata.import_map_path)}`,
    );
    assert.ok(files.has(metadata.import_map_path), `${slug}: its import map ${metadata.import_map_path} is uploaded`);
  }
});

Deno.test('every uploaded import map pins, as npm: versions, every package its function imports', async () => {
  for (const [slug, { metadata, files }] of await deployedUploads()) {
    const mapPath = metadata.import_map_path ?? '';
    assert.ok(files.has(mapPath), `${slug}: no import map uploaded (import_map_path ${JSON.stringify(mapPath)})`);
    const { imports = {}, scopes } = JSON.parse(new TextDecoder().decode(files.get(mapPath))) as {
      imports?: Record<string, string>;
      scopes?: unknown;
    };
    assert.equal(scopes, undefined, `${slug}: no scopes`);
    for (const [key, target] of Object.entries(imports)) {
      assert.match(target, pinnedNpm, `${slug}: "${key}" must map to a pinned npm: specifier, not ${target}`);
    }
    for (const [path, bytes] of files) {
      if (!path.endsWith('.ts')) continue;
      for (const spec of specifiers(new TextDecoder().decode(bytes))) {
        if (spec.startsWith('.') || spec.startsWith('node:')) continue;
        const mapped = spec in imports || Object.keys(imports).some((k) => k.endsWith('/') && spec.startsWith(k));
        assert.ok(mapped, `${slug}: ${path} imports "${spec}", which ${mapPath} does not map`);
      }
    }
  }
});

interface Answer {
  slug: string;
  status?: number;
  body?: unknown;
  failure?: string;
}

/** Starts one uploaded function alone, calls its probe route, and stops it. */
async function bootAndProbe(upload: Upload, env: Record<string, string>): Promise<Answer> {
  const { slug } = upload;
  const probe = probes[slug];
  let running;
  try {
    running = await startFunction(upload, env);
  } catch (err) {
    return { slug, failure: err instanceof Error ? err.message : String(err) };
  }
  try {
    const res = await fetch(`${running.url}${probe.path}`, { method: probe.method });
    return { slug, status: res.status, body: await res.json().catch(() => null) };
  } finally {
    await running.stop();
  }
}

Deno.test('every deployed function starts alone from only its uploaded files and answers its route', async () => {
  const uploads = await deployedUploads();
  const env = { ...platformEnv(), ...await projectSecrets() };
  const answers = await Promise.all([...uploads.values()].map((u) => bootAndProbe(u, env)));
  const problems = answers.flatMap(({ slug, status, body, failure }) => {
    if (failure) return [`${slug}: ${failure}`];
    const probe = probes[slug];
    const envelope = body as { data?: unknown; error?: { code?: string }; metadata?: { requestId?: string } } | null;
    if (status !== probe.status) {
      return [`${slug}: ${probe.method} ${probe.path} answered ${status} ${JSON.stringify(body)}`];
    }
    if (!envelope?.metadata?.requestId) return [`${slug}: the answer is not in the envelope: ${JSON.stringify(body)}`];
    if (probe.code && envelope.error?.code !== probe.code) {
      return [`${slug}: expected ${probe.code}: ${JSON.stringify(body)}`];
    }
    return [];
  });
  assert.deepEqual(problems, [], problems.join('\n\n'));
});
