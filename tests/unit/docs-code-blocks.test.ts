// The TypeScript in docs/ai-gateway.md runs as written. A block preceded by
// `<!-- file: <path> -->` is that file's text, whole, and the file is one a test runs (the
// Next.js example's chat route, by tests/browser/ai-chat-example.test.ts; the browser chat with
// the openai SDK, by tests/browser/ai-sdks-in-browser.test.ts), so the doc cannot drift from what
// is tested. Every other block is self-contained: it names nothing it does not define or import,
// and type-checks at the SDK versions the repository pins (tests/integration/docs-ai-gateway-blocks.test.ts
// runs them).
import assert from 'node:assert/strict';
import { blockModules, tsBlocks } from '../support/docs-blocks.ts';

const root = new URL('../../', import.meta.url);
const doc = 'docs/ai-gateway.md';

/** The files the doc shows whole, and the file that runs each (it must name the file). */
const shownWhole: Record<string, { runBy: string; named: string }> = {
  'examples/nextjs/app/api/chat/route.ts': { runBy: 'tests/support/next-example.ts', named: 'app/api/chat/route.ts' },
  'tests/browser/ai-sdks-page-openai.ts': { runBy: 'tests/browser/ai-sdks-page.ts', named: './ai-sdks-page-openai.ts' },
};

const read = (path: string) => Deno.readTextFile(new URL(path, root));

/** `deno check` of `files` with the repository's config (its import map: the pinned SDKs). */
async function check(files: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ['check', '--quiet', `--config=${new URL('deno.json', root).pathname}`, ...files],
    cwd: root.pathname,
    stdout: 'piped',
    stderr: 'piped',
  }).output();
  return { success: out.success, errors: new TextDecoder().decode(out.stderr) };
}

Deno.test(`each block ${doc} shows as a file is that file's text, whole, and a test runs the file`, async () => {
  const blocks = tsBlocks(await read(doc)).flatMap(({ file, ...b }) => (file ? [{ file, ...b }] : []));
  assert.deepEqual(blocks.map((b) => b.file).sort(), Object.keys(shownWhole).sort(), 'the doc shows these files');
  for (const { file, code, line } of blocks) {
    assert.equal(code, await read(file), `${doc}:${line} is not ${file} as it is`);
    const { runBy, named } = shownWhole[file];
    assert.ok((await read(runBy)).includes(`'${named}`), `${runBy} no longer runs ${file}`);
  }
});

Deno.test(`every other TypeScript block in ${doc} type-checks on its own`, async () => {
  const { dir, modules } = await blockModules(doc);
  try {
    assert.ok(modules.length >= 3, `the batch, /api/ask and SDK blocks (${modules.length})`);
    // Each block a module of its own: a name one block defines is not another's.
    const { success, errors } = await check(modules.map((m) => m.path));
    assert.ok(success, `a block of ${doc} does not type-check:\n${errors}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test('the check catches a block that uses a name it never defines', async () => {
  const dir = await Deno.makeTempDir({ prefix: 'docs-blocks-' });
  try {
    await Deno.writeTextFile(
      `${dir}/block.ts`,
      "import OpenAI from 'openai';\nnew OpenAI().embeddings.create(notes);\n",
    );
    const { success, errors } = await check([`${dir}/block.ts`]);
    assert.equal(success, false);
    assert.match(errors, /Cannot find name 'notes'/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
