// What a statement can reach, read from supabase/schemas (docs/scale.md § What the money path
// reaches): for each entry point, the functions it can call transitively, how many of them name
// disputes or frozen lots, and the longest functions and files. Read by the lexer of
// sql-shape.ts, so a name in a comment or a string is no call.
//   deno run --allow-read scripts/local/sql-reach.ts [schemas dir] [entry…]
//   deno run --allow-read scripts/local/sql-reach.ts --check   (the suite: no entry point past its ceiling)
import { readSchemas } from './sql-shape.ts';

/**
 * Each entry point's ceiling (what it reaches today: the suite fails when one grows past it, and a
 * change that lowers a figure lowers its ceiling here) and the target docs/scale.md names.
 */
export const ceilings: Record<string, { ceiling: number; target: number }> = {
  'billing.finish_ai_call': { ceiling: 40, target: 41 },
  'billing.begin_ai_call': { ceiling: 30, target: 41 },
  'billing.complete_job': { ceiling: 41, target: 41 },
  'billing.run_usage_request': { ceiling: 32, target: 36 },
  'billing.run_money_request': { ceiling: 61, target: 71 },
  'billing.run_grant_request': { ceiling: 61, target: 71 },
  'billing.run_code_request': { ceiling: 71, target: 71 },
  'billing.run_usage_report': { ceiling: 70, target: 71 },
};
export const entryPoints = Object.keys(ceilings);

/** The functions `entry` can call, itself included, and those of them whose body names disputes or frozen lots. */
export function reach(schema: ReturnType<typeof readSchemas>, entry: string) {
  const callees = new Map<string, Set<string>>();
  for (const c of schema.calls) {
    if (schema.defined.has(c.callee)) callees.set(c.from, (callees.get(c.from) ?? new Set()).add(c.callee));
  }
  const seen = new Set<string>([entry]);
  for (const todo = [entry]; todo.length;) {
    for (const next of callees.get(todo.pop()!) ?? []) if (!seen.has(next)) seen.add(next) && todo.push(next);
  }
  return { functions: [...seen].sort(), disputes: [...seen].filter((f) => schema.mentions.has(f)).sort() };
}

if (import.meta.main && Deno.args[0] === '--check') {
  const schema = readSchemas('supabase/schemas');
  let over = 0;
  for (const [entry, { ceiling, target }] of Object.entries(ceilings)) {
    const n = reach(schema, entry).functions.length;
    const verdict = n > ceiling ? 'OVER ITS CEILING' : n <= target ? 'target met' : `target ${target}`;
    console.log(`${entry}: reaches ${n} (ceiling ${ceiling}; ${verdict})`);
    if (n > ceiling) over++;
  }
  if (over) Deno.exit(1);
} else if (import.meta.main) {
  const dir = Deno.args[0] ?? 'supabase/schemas';
  const entries = Deno.args.length > 1 ? Deno.args.slice(1) : entryPoints;
  const schema = readSchemas(dir);
  for (const entry of entries) {
    const r = reach(schema, entry);
    console.log(
      `${entry}: reaches ${r.functions.length} functions in ${
        new Set(r.functions.map((f) => schema.defined.get(f))).size
      } files; ` +
        `${r.disputes.length} name disputes or frozen lots${r.disputes.length ? ` (${r.disputes.join(', ')})` : ''}`,
    );
  }
  const longest = [...schema.spans].map(([f, s]) => [f, s.to - s.from + 1] as const).sort((a, b) => b[1] - a[1]).slice(
    0,
    5,
  );
  console.log(`longest functions: ${longest.map(([f, n]) => `${f} ${n}`).join(', ')}`);
  const files = schema.files.map((f) => [f, Deno.readTextFileSync(`${dir}/${f}`).split('\n').length - 1] as const)
    .filter(([, n]) => n > 800);
  console.log(`files over 800 lines: ${files.length ? files.map(([f, n]) => `${f} ${n}`).join(', ') : 'none'}`);
}
