// The layers of supabase/functions (supabase/functions/_shared/README.md): each module imports
// only from its own layer or a lower one, and no module reaches itself through its imports.
// The layers, lowest first: the files at the top of _shared/ (leaves), then _shared/values/,
// contract/, adapters/, domain/, http/, and above them every route folder. Type-only imports
// count for both rules: a type from a higher layer still makes a module depend on it, and a
// loop of types is still a loop a reader has to untangle. Cheap on purpose (a regex over the
// relative import specifiers, no type resolution): it runs beside fmt and lint in ./scripts/test.
//   deno run --allow-read scripts/local/import-layers.ts [functions dir]   (default supabase/functions)
import { dirname, join, relative, resolve } from 'node:path';

/** The folders of `_shared/`, lowest first; '' is the top of `_shared/` itself (the leaves). */
export const layers = ['', 'values', 'contract', 'adapters', 'domain', 'http'] as const;

const order = [...layers.map((l) => (l === '' ? 'leaf' : `${l}/`)), 'route folders'].join(' < ');

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

/** Where a module sits: its rank in `layers` (route folders above them all) and a name for it. */
interface Place {
  rank: number;
  name: string;
  /** The `_shared/` folder it sits in when that folder is not a layer. */
  stray?: string;
}

/** The place of `path` (relative to the functions folder, e.g. `_shared/values/page.ts`). */
function placeOf(path: string): Place {
  const parts = path.split('/');
  if (parts[0] !== '_shared') return { rank: layers.length, name: `the route folder ${parts[0]}/` };
  const folder = parts.length === 2 ? '' : parts[1];
  const rank = (layers as readonly string[]).indexOf(folder);
  if (rank < 0) return { rank: layers.length, name: `_shared/${folder}/`, stray: folder };
  return { rank, name: folder === '' ? 'the leaves (top of _shared/)' : `the layer ${folder}/` };
}

/**
 * Every breach of the rules under `root`, one sentence each naming the import; empty when clean.
 * @example await importProblems('supabase/functions') // []
 */
export async function importProblems(root: string): Promise<string[]> {
  root = resolve(root);
  const name = (file: string) => relative(root, file);
  const graph = new Map<string, string[]>();
  const problems: string[] = [];
  for (const file of await tsFiles(root)) {
    const from = placeOf(name(file));
    if (from.stray !== undefined) {
      problems.push(`${name(file)} is in _shared/${from.stray}/, not a layer: move it to one of ${order}`);
    }
    const edges: string[] = [];
    for (const { spec } of relativeImports(await Deno.readTextFile(file))) {
      const target = resolve(dirname(file), spec);
      if (!target.startsWith(root + '/')) continue; // outside supabase/functions: not ours to judge
      if (!edges.includes(target)) edges.push(target);
      const to = placeOf(name(target));
      if (from.rank < layers.length && to.rank === layers.length && to.stray === undefined) {
        problems.push(`${name(file)} imports '${spec}' from ${to.name}: _shared must not`);
      } else if (to.rank > from.rank) {
        problems.push(
          `${name(file)} imports '${spec}' from ${to.name}, above ${from.name}: imports point down (${order})`,
        );
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
