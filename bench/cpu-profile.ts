// Summarises a V8 .cpuprofile (deno run --cpu-prof): self time by function and by source
// (npm package, _shared module, Deno internals), and total (inclusive) time of the functions
// that matter most, so a profile can be read without a browser.
//   deno run -A bench/cpu-profile.ts <file.cpuprofile> [--top 30] [--match regex] [--stacks regex]
// --stacks: the heaviest call paths (innermost 10 frames) of samples whose stack matches.
import { parseArgs } from 'node:util';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: { top: { type: 'string', default: '30' }, match: { type: 'string' }, stacks: { type: 'string' } },
});
if (!positionals[0]) throw new Error('usage: cpu-profile.ts <file.cpuprofile> [--top N] [--match regex]');
const profile: Profile = JSON.parse(await Deno.readTextFile(positionals[0]));
const top = Number(values.top);

/** Where a frame's code comes from: an npm package, a repo file, or Deno/V8 internals. */
function source(url: string): string {
  if (!url) return '(native / V8)';
  const npm = url.match(/node_modules\/\.deno\/([^/]+)\//);
  if (npm) return `npm:${npm[1].replace(/@[\d.]+(_.*)?$/, '').replace('+', '/')}`;
  const repo = url.match(/\/(supabase\/functions\/.+|scripts\/.+|bench\/.+)$/);
  if (repo) return repo[1];
  if (url.startsWith('ext:')) return url.split('/').slice(0, 2).join('/');
  return url;
}

const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const selfUs = new Map<number, number>();
profile.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
const totalUs = [...selfUs.values()].reduce((a, b) => a + b, 0);
const idleUs = [...selfUs].filter(([id]) => byId.get(id)?.callFrame.functionName === '(idle)')
  .reduce((a, [, us]) => a + us, 0);
const busyUs = totalUs - idleUs;

const label = (n: Node) =>
  `${n.callFrame.functionName || '(anonymous)'} ${source(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`;
const add = (m: Map<string, number>, k: string, v: number) => m.set(k, (m.get(k) ?? 0) + v);

const selfByFn = new Map<string, number>();
const selfBySource = new Map<string, number>();
const inclusive = new Map<string, number>();
for (const [id, us] of selfUs) {
  const n = byId.get(id);
  if (!n || n.callFrame.functionName === '(idle)') continue;
  add(selfByFn, label(n), us);
  add(selfBySource, source(n.callFrame.url), us);
  // Inclusive: each distinct function on the stack once.
  const seen = new Set<string>();
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const l = label(byId.get(cur) as Node);
    if (!seen.has(l)) {
      seen.add(l);
      add(inclusive, l, us);
    }
  }
}

// Who asked for the time: the innermost frame from the repo or an npm package (Deno's own
// code and V8 builtins are charged to the code that called them); time with no such frame on
// the stack (the HTTP server's own work, timers, GC) is charged to its outermost frame.
const byOwner = new Map<string, number>();
for (const [id, us] of selfUs) {
  const n = byId.get(id);
  if (!n || n.callFrame.functionName === '(idle)') continue;
  let owner: string | undefined;
  let outer = n;
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const f = byId.get(cur) as Node;
    if (f.callFrame.functionName === '(root)') break;
    outer = f;
    const src = source(f.callFrame.url);
    if (!owner && (src.startsWith('npm:') || /^(supabase|scripts|bench)\//.test(src))) owner = src;
  }
  add(byOwner, owner ?? `(runtime) ${label(outer)}`, us);
}

const pct = (us: number) => `${((100 * us) / busyUs).toFixed(1)}%`;
const table = (title: string, m: Map<string, number>, filter?: RegExp) => {
  console.log(`\n${title}\n`);
  console.log('| share of busy time | ms | what |');
  console.log('| --- | --- | --- |');
  [...m].filter(([k]) => !filter || filter.test(k)).sort((a, b) => b[1] - a[1]).slice(0, top)
    .forEach(([k, us]) => console.log(`| ${pct(us)} | ${(us / 1000).toFixed(0)} | ${k} |`));
};
console.log(
  `Profile: ${(totalUs / 1e6).toFixed(1)} s sampled, ${(busyUs / 1e6).toFixed(1)} s busy (${
    ((100 * busyUs) / totalUs).toFixed(0)
  }%), ${profile.samples.length} samples`,
);
table('Self time by source', selfBySource);
table('Time by the code that asked for it (Deno internals charged to their caller)', byOwner);
table('Self time by function', selfByFn);
table('Total time (inclusive) by function', inclusive, values.match ? new RegExp(values.match) : undefined);

if (values.stacks) {
  const want = new RegExp(values.stacks);
  const paths = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const frames: string[] = [];
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      frames.push(label(byId.get(cur) as Node));
    }
    if (frames.some((f) => want.test(f))) add(paths, frames.slice(0, 10).reverse().join(' > '), us);
  }
  table(`Heaviest paths through /${values.stacks}/`, paths);
}
