// scripts/local/import-layers.ts keeps supabase/functions one-way (_shared never imports a route
// folder) and free of import cycles: proven here on small fixture trees, then on the real one.
import assert from 'node:assert/strict';
import { importProblems } from '../../scripts/local/import-layers.ts';

/** A throwaway functions folder holding `files` (path → source). */
async function tree(files: Record<string, string>): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: 'import-layers-' });
  for (const [path, source] of Object.entries(files)) {
    await Deno.mkdir(`${root}/${path.slice(0, path.lastIndexOf('/'))}`, { recursive: true });
    await Deno.writeTextFile(`${root}/${path}`, source);
  }
  return root;
}

Deno.test('a _shared module importing from a route folder fails, naming the import', async () => {
  const root = await tree({
    '_shared/contract.ts': "import type { CreateSessionSchema } from '../checkout/schemas.ts';\nexport type X = 1;\n",
    '_shared/db.ts': 'export const db = 1;\n',
    'checkout/schemas.ts': "import { db } from '../_shared/db.ts';\nexport const CreateSessionSchema = db;\n",
  });
  assert.deepEqual(await importProblems(root), [
    "_shared/contract.ts imports '../checkout/schemas.ts' from the route folder checkout/: _shared must not",
  ]);
  await Deno.remove(root, { recursive: true });
});

Deno.test('an import cycle fails, naming each file along it', async () => {
  const root = await tree({
    '_shared/app.ts': "import { rateLimit } from './ratelimit.ts';\nexport const app = rateLimit;\n",
    '_shared/ratelimit.ts': "import {\n  log,\n} from './log.ts';\nexport const rateLimit = log;\n",
    '_shared/log.ts': "export const log = await import('./app.ts');\n",
    'credits/index.ts': "import { app } from '../_shared/app.ts';\nexport default app;\n",
  });
  assert.deepEqual(await importProblems(root), [
    'import cycle: _shared/app.ts → _shared/ratelimit.ts → _shared/log.ts → _shared/app.ts',
  ]);
  await Deno.remove(root, { recursive: true });
});

Deno.test('route folders importing _shared, type-only loops and doc comments pass', async () => {
  const root = await tree({
    // Erased at run time: a loop of types leaves no module half-evaluated.
    '_shared/errors.ts':
      "import type { ErrorBody } from './contract.ts';\nexport const e = 1 as unknown as ErrorBody;\n",
    '_shared/contract.ts': "import { e } from './errors.ts';\nexport type ErrorBody = typeof e;\n",
    '_shared/page.ts': "/**\n * @example\n * import { x } from '../credits/index.ts';\n */\nexport const page = 1;\n",
    'credits/index.ts': "import { page } from '../_shared/page.ts';\nimport { e } from '../_shared/errors.ts';\n" +
      'export default page + e;\n',
  });
  assert.deepEqual(await importProblems(root), []);
  await Deno.remove(root, { recursive: true });
});

Deno.test('supabase/functions keeps the one-way rule and has no import cycle', async () => {
  assert.deepEqual(await importProblems(new URL('../../supabase/functions', import.meta.url).pathname), []);
});
