// The per-function variable catalog (scripts/local/env-catalog.ts) is what the code reads: each
// function's import graph is scanned for the variables it reads (zod env schemas and direct
// reads), and must name exactly the catalog's. prod.env.example and docs/deploy.md's table are
// held to the catalog, so none of the three can drift from the code.
import assert from 'node:assert/strict';
import { functions, localOnly, markdownTable, platform, readsOf } from '../../scripts/local/env-catalog.ts';

const root = new URL('../../', import.meta.url);
const functionsDir = new URL('supabase/functions/', root);

/** The variables one source file reads: keys of zod env schemas, and direct reads by name. */
function variablesIn(source: string): string[] {
  const schemaKeys = source.matchAll(/^\s+([A-Z][A-Z0-9_]{2,}): (?:z\.|[A-Za-z]+Schema\b|perMinute\()/gm);
  const direct = source.matchAll(/(?:Deno\.env\.get|jsonEnv|dictionary)\('([A-Z][A-Z0-9_]+)'\)/g);
  return [...schemaKeys, ...direct].map((m) => m[1]);
}

/** What a function's code reads: every module its index.ts reaches by relative (non-type) import. */
async function scannedReads(name: string): Promise<Set<string>> {
  const read = new Set<string>();
  const seen = new Set<string>();
  const visit = async (url: URL) => {
    if (seen.has(url.href)) return;
    seen.add(url.href);
    const source = await Deno.readTextFile(url);
    for (const v of variablesIn(source)) read.add(v);
    const imports = source.matchAll(
      /^(?:import|export)\s+(?!type\s)(?:\{[^{}]*\}|[^'";]*?)\s*from\s*['"](\.[^'"]+)['"]|import\s*\(\s*['"](\.[^'"]+)['"]\s*\)/gm,
    );
    for (const m of imports) await visit(new URL(m[1] ?? m[2], url));
  };
  await visit(new URL(`${name}/index.ts`, functionsDir));
  return read;
}

Deno.test('the catalog lists exactly the variables each function reads, no more (no SUPABASE_JWT_SECRET)', async () => {
  const folders = [...Deno.readDirSync(functionsDir)].filter((e) => e.isDirectory && !e.name.startsWith('_'))
    .map((e) => e.name).sort();
  assert.deepEqual(Object.keys(functions).sort(), folders, 'one catalog entry per function');
  for (const name of folders) {
    const scanned = await scannedReads(name);
    assert.ok(scanned.has('SUPABASE_URL'), `${name}: the scan finds the shared env schemas`);
    const listed = readsOf(name);
    const unlisted = [...scanned].filter((v) => !listed.has(v)).sort();
    const unread = [...listed].filter((v) => !scanned.has(v)).sort();
    assert.deepEqual(unlisted, [], `${name} reads ${unlisted.join(', ')}, which env-catalog.ts does not list for it`);
    assert.deepEqual(unread, [], `env-catalog.ts lists ${unread.join(', ')} for ${name}, which its code never reads`);
  }
});

Deno.test('prod.env.example names every variable a deployment sets, sets every required one, and nothing unread', async () => {
  const example = await Deno.readTextFile(new URL('prod.env.example', root));
  const uncommented = new Set([...example.matchAll(/^([A-Z][A-Z0-9_]*)=/gm)].map((m) => m[1]));
  const mentioned = new Set([...example.matchAll(/^#\s*([A-Z][A-Z0-9_]{2,})=/gm)].map((m) => m[1]));
  const platformNames = new Set([...platform.required, ...platform.optional]);
  const all = new Set(Object.keys(functions).flatMap((n) => [...readsOf(n)]).filter((v) => !platformNames.has(v)));
  const required = new Set(Object.values(functions).flatMap((f) => f.required));
  const absent = [...all].filter((v) => !uncommented.has(v) && !mentioned.has(v)).sort();
  assert.deepEqual(absent, [], `prod.env.example does not mention ${absent.join(', ')}`);
  const dead = [...uncommented, ...mentioned].filter((v) => !all.has(v)).sort();
  assert.deepEqual(dead, [], `prod.env.example names ${dead.join(', ')}, which no function reads`);
  const notSet = [...required].filter((v) => !uncommented.has(v)).sort();
  assert.deepEqual(notSet, [], `required by a function but commented out in prod.env.example: ${notSet.join(', ')}`);
  const localSet = localOnly.filter((v) => uncommented.has(v));
  assert.deepEqual(localSet, [], 'local-only variables stay commented out');
});

Deno.test("docs/deploy.md's per-function table is the catalog's (./scripts/env-check --markdown)", async () => {
  const doc = await Deno.readTextFile(new URL('docs/deploy.md', root));
  const table = doc.match(/<!-- env-table:start[^>]*-->\n([\s\S]*?)\n<!-- env-table:end -->/)?.[1];
  assert.ok(table, 'docs/deploy.md has the env-table markers');
  assert.equal(table, markdownTable(), 'regenerate it with ./scripts/env-check --markdown');
});
