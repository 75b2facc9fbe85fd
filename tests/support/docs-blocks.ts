// The TypeScript blocks of a markdown doc, for tests/unit/docs-code-blocks.test.ts (each shown
// file is the file; every other block type-checks) and tests/integration/docs-ai-gateway-blocks.test.ts
// (the self-contained ones run against the local stack).

/** A ```ts block, with the file it says it is (`<!-- file: <path> -->` on the line above), if it says so. */
export type DocBlock = { file?: string; code: string; line: number };

/**
 * Every ```ts block of `markdown`, in order.
 * @example tsBlocks(await Deno.readTextFile('docs/ai-gateway.md')).filter((b) => !b.file)
 */
export function tsBlocks(markdown: string): DocBlock[] {
  return [...markdown.matchAll(/^(?:<!-- file: (\S+) -->\n)?```(?:ts|typescript)\n([\s\S]*?)^```$/gm)].map((m) => ({
    file: m[1],
    code: m[2],
    line: markdown.slice(0, m.index).split('\n').length,
  }));
}

/**
 * The self-contained blocks of `doc` (a path from the repository's root), each written to a
 * module of its own in a new temporary folder: its path, the block's line and its code.
 */
export async function blockModules(doc: string): Promise<{ dir: string; modules: (DocBlock & { path: string })[] }> {
  const blocks = tsBlocks(await Deno.readTextFile(new URL(`../../${doc}`, import.meta.url))).filter((b) => !b.file);
  const dir = await Deno.makeTempDir({ prefix: 'docs-blocks-' });
  const name = doc.replace(/\W+/g, '-');
  const modules = await Promise.all(blocks.map(async (b) => {
    const path = `${dir}/${name}-line-${b.line}.ts`;
    await Deno.writeTextFile(path, b.code);
    return { ...b, path };
  }));
  return { dir, modules };
}
