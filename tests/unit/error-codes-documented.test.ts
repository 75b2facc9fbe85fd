// docs/api.md and the service cannot drift: every code the service can answer with is in the
// error-code table, every code in the table is one the service can answer with, and every code
// in the table is asserted by some test (most in tests/integration/error-codes-produced.test.ts).
import assert from 'node:assert/strict';

const root = new URL('../../', import.meta.url);
const read = (path: string) => Deno.readTextFile(new URL(path, root));

async function sources(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(new URL(dir, root))) {
    if (e.isDirectory) out.push(...await sources(`${dir}${e.name}/`));
    else if (e.name.endsWith('.ts')) out.push(await read(`${dir}${e.name}`));
  }
  return out;
}

/** Codes that reach a caller: AppError codes, and each SQL token's HTTP code (its `code` override or itself). */
async function produced(): Promise<Set<string>> {
  const codes = new Set<string>();
  for (const text of await sources('supabase/functions/')) {
    for (const m of text.matchAll(/new AppError\(\s*'[a-z_]+',\s*'([A-Z_]+)'/g)) codes.add(m[1]);
    for (const m of text.matchAll(/\? '([A-Z_]{4,})' : '([A-Z_]{4,})'/g)) codes.add(m[1]).add(m[2]);
  }
  const errors = await read('supabase/functions/_shared/adapters/sql-errors.ts');
  const start = errors.indexOf('const sqlErrors');
  const table = errors.slice(start, errors.indexOf('\n};', start));
  for (const m of table.matchAll(/^ {2}([A-Z_]+): \{([^}]*)\}/gm)) {
    codes.add(/code: '([A-Z_]+)'/.exec(m[2])?.[1] ?? m[1]);
  }
  // The local gateway's own answer for an unknown function (hosted Supabase answers it there).
  for (const m of (await read('scripts/local/gateway.ts')).matchAll(/json\(\d{3}, '([A-Z_]+)'/g)) codes.add(m[1]);
  return codes;
}

async function documented(): Promise<Set<string>> {
  const api = await read('docs/api.md');
  const table = api.slice(api.indexOf('## Error codes'));
  return new Set([...table.matchAll(/^\| `([A-Z_]+)` \|/gm)].map((m) => m[1]));
}

Deno.test('every error code the service can answer with is in docs/api.md, and every documented code is real', async () => {
  const [out, doc] = [await produced(), await documented()];
  assert.ok(out.size > 40, `found ${out.size} codes: the extraction still works`);
  assert.deepEqual([...out].filter((c) => !doc.has(c)).sort(), [], 'produced but not documented');
  assert.deepEqual([...doc].filter((c) => !out.has(c)).sort(), [], 'documented but never produced');
});

// Every test file: TypeScript under tests/ and SQL under supabase/tests/, this file excepted.
async function testTexts(): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(new URL(dir, root))) {
      const path = `${dir}${e.name}`;
      if (e.isDirectory) await walk(`${path}/`);
      else if (/\.(ts|sql)$/.test(e.name) && !path.endsWith('error-codes-documented.test.ts')) {
        out.push(await read(path));
      }
    }
  };
  await walk('tests/');
  await walk('supabase/tests/');
  return out;
}

Deno.test('every documented error code is asserted by some test (quoted, as an answer is checked)', async () => {
  const texts = await testTexts();
  const untested = [...await documented()].filter((code) =>
    !texts.some((t) => new RegExp(`['"\`]${code}['"\`]`).test(t))
  );
  assert.deepEqual(untested.sort(), [], 'documented codes no test produces');
});
