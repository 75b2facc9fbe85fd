// The one-way rule of supabase/functions (supabase/functions/_shared/README.md): a route folder
// may import from _shared, never the reverse, and no file reaches itself through its imports.
// Cheap on purpose (a regex over the relative import specifiers, no type resolution): it runs
// beside fmt and lint in ./scripts/test. The layer rule counts type-only imports too (a type
// from a route folder still makes _shared depend on it); cycles count the imports that run
// (`import type` / `export type … from` are erased, so they cannot leave a module
// half-evaluated): the contract's types are derived from the request schemas and describe the
// envelope errors.ts and page.ts build, a type-level loop by design.
//   deno run --allow-read scripts/local/import-layers.ts [functions dir]   (default supabase/functions)
import { dirname, join, relative, resolve } from 'node:path';

// Import and re-export statements start a line (so doc comments, whose lines start with ` *`,
// never match); a dynamic import() with a literal specifier may sit anywhere.
const staticImport = /^(?:import|export)\b(\s+type\b)?[^'";]*?['"]([^'"]+)['"]/gm;
const dynamicImport = /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g;

/** A relative specifier a module imports, and whether only types come through it. */
export interface Import {
  spec: string;
  typeOnly: boolean;
}

/** The relative imports of a module, e.g. `[{ spec: './db.ts', typeOnly: false }]`. */
export function relativeImports(source: string): Import[] {
  const found = [
    ...[...source.matchAll(staticImport)].map((m) => ({ spec: m[2], typeOnly: m[1] !== undefined })),
    ...[...source.matchAll(dynamicImport)].map((m) => ({ spec: m[1], typeOnly: false })),
  ];
  return found.filter((i) => i.spec.startsWith('./') || i.spec.startsWith('../'));
}

async function tsFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const path = join(dir, e.name);
    if (e.isDirectory && e.name !== 'node_modules') out.push(...await tsFiles(path));
    else if (e.isFile && /\.tsx?$/.test(e.name)) out.push(path);
  }
  return out.sort();
}

/**
 * Every breach of the rule under `root`, one sentence each naming the import; empty when clean.
 * @example await importProblems('supabase/functions') // []
 */
export async function importProblems(root: string): Promise<string[]> {
  root = resolve(root);
  const name = (file: string) => relative(root, file);
  const shared = join(root, '_shared');
  const graph = new Map<string, string[]>();
  const problems: string[] = [];
  for (const file of await tsFiles(root)) {
    const edges: string[] = [];
    for (const { spec, typeOnly } of relativeImports(await Deno.readTextFile(file))) {
      const target = resolve(dirname(file), spec);
      if (!target.startsWith(root + '/')) continue; // outside supabase/functions: not ours to judge
      if (!typeOnly && !edges.includes(target)) edges.push(target);
      const folder = name(target).split('/')[0];
      if (file.startsWith(shared + '/') && !target.startsWith(shared + '/') && name(target).includes('/')) {
        problems.push(`${name(file)} imports '${spec}' from the route folder ${folder}/: _shared must not`);
      }
    }
    graph.set(file, edges);
  }
  problems.push(...cycles(graph).map((c) => `import cycle: ${c.map(name).join(' → ')}`));
  return problems;
}

/** Each cycle once (as the files along it, the first repeated at the end), found depth first. */
function cycles(graph: Map<string, string[]>): string[][] {
  const done = new Set<string>();
  const onPath: string[] = [];
  const seen = new Set<string>();
  const found: string[][] = [];
  const visit = (file: string) => {
    onPath.push(file);
    for (const next of graph.get(file) ?? []) {
      const at = onPath.indexOf(next);
      if (at >= 0) {
        const cycle = onPath.slice(at);
        const key = [...cycle].sort().join('\n');
        if (!seen.has(key)) found.push([...cycle, next]);
        seen.add(key);
      } else if (!done.has(next) && graph.has(next)) visit(next);
    }
    onPath.pop();
    done.add(file);
  };
  for (const file of graph.keys()) if (!done.has(file)) visit(file);
  return found;
}

if (import.meta.main) {
  const root = Deno.args[0] ?? new URL('../../supabase/functions', import.meta.url).pathname;
  const problems = await importProblems(root);
  for (const p of problems) console.error(p);
  if (problems.length > 0) Deno.exit(1);
  console.log(`import layers: clean (${relative(Deno.cwd(), resolve(root)) || '.'})`);
}
