// Builds the npm package @scholarlink/billing-client into client/dist: ES modules and .d.ts
// emitted by TypeScript from the client's sources, with `contract.ts` replaced by plain types
// generated from the service's own contract (supabase/functions/_shared/contract/index.ts), so
// the package carries no zod and cannot drift from the routes. TypeScript is the project's
// pinned one (scripts/toolchain). Runs under Node or Deno:
//   node client/build.mjs [outDir]        (default client/dist)
// client/package.json is the package (`npm pack` / `npm publish` in client/ run this first, as
// its prepack script); the build also writes a package.json into outDir, the same manifest with
// its paths inside outDir, so `"@scholarlink/billing-client": "file:…/client/dist"` works too.
// (client/ is a member of the root deno.json's workspace, so Deno formats and lints it with the
// repo's settings despite its package.json.)
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const root = join(here, '..');
const outDir = process.argv[2] ?? join(here, 'dist');
const contractPath = join(root, 'supabase/functions/_shared/contract/index.ts');
// The envelopes contract/index.ts re-exports (Page, ErrorBody) live in a leaf below it.
const envelopePath = join(root, 'supabase/functions/_shared/envelope.ts');
const sources = ['mod.ts', 'errors.ts', 'error-codes.ts', 'retry.ts'];
const own = JSON.parse(await readFile(join(here, 'package.json'), 'utf8'));
// The same manifest, for a package whose root is outDir.
const inside = (path) => path.replace(/^\.\/dist\//, './');
const manifest = {
  name: own.name,
  version: own.version,
  description: own.description,
  license: own.license,
  type: own.type,
  sideEffects: own.sideEffects,
  exports: { '.': { types: inside(own.exports['.'].types), import: inside(own.exports['.'].import) } },
  types: inside(own.types),
  engines: own.engines,
  // Not imported: the app passes its own client in. Needs functions.invoke's `response` (2.50.3).
  peerDependencies: own.peerDependencies,
};
const ts = createRequire(join(root, 'scripts/toolchain/package.json'))('typescript');

/** Fails the build with TypeScript's own messages. */
function assertNoErrors(diagnostics, what) {
  if (diagnostics.length === 0) return;
  const host = { getCanonicalFileName: (f) => f, getCurrentDirectory: () => root, getNewLine: () => '\n' };
  throw new Error(`${what}:\n${ts.formatDiagnostics(diagnostics, host)}`);
}

/**
 * The contract as plain TypeScript: declarations written by hand are copied as they are (doc
 * comments included); request types derived from zod schemas are expanded into the object
 * types they stand for, so the package needs neither zod nor the functions' sources.
 */
function plainContract() {
  const program = ts.createProgram([contractPath, envelopePath], {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    allowImportingTsExtensions: true,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    target: ts.ScriptTarget.ES2022,
    types: [],
  });
  const checker = program.getTypeChecker();
  const file = program.getSourceFile(contractPath);
  const envelope = program.getSourceFile(envelopePath);
  // Names imported from anywhere but envelope.ts (whose declarations are copied too).
  const imported = new Set();
  for (const s of file.statements) {
    if (!ts.isImportDeclaration(s) || s.moduleSpecifier.text.endsWith('/envelope.ts')) continue;
    s.importClause?.namedBindings?.elements?.forEach((e) => imported.add(e.name.text));
    if (s.importClause?.name) imported.add(s.importClause.name.text);
  }
  const usesImports = (node) =>
    (ts.isIdentifier(node) && imported.has(node.text)) || !!ts.forEachChild(node, usesImports);

  const key = (name) => (/^[A-Za-z_$][\w$]*$/.test(name) ? name : JSON.stringify(name));
  // An optional property's `undefined` is implied by its `?`.
  const print = (type, optional = false) => {
    if (type.isUnion()) {
      const members = type.types.filter((t) => !(optional && t.flags & ts.TypeFlags.Undefined));
      const parts = members.map((t) => print(t));
      const bools = parts.includes('true') && parts.includes('false');
      const kept = bools ? parts.filter((p) => p !== 'true' && p !== 'false').concat('boolean') : parts;
      return [...new Set(kept)].join(' | ');
    }
    if (type.isIntersection()) return type.types.map(print).join(' & ');
    if (checker.isArrayType(type)) return `Array<${print(checker.getTypeArguments(type)[0])}>`;
    if (!(type.flags & ts.TypeFlags.Object)) return checker.typeToString(type); // primitives, literals
    const members = checker.getPropertiesOfType(type).map((p) => {
      const optional = (p.flags & ts.SymbolFlags.Optional) !== 0;
      return `${key(p.name)}${optional ? '?' : ''}: ${print(checker.getTypeOfSymbol(p), optional)}`;
    });
    for (const info of checker.getIndexInfosOfType(type)) {
      members.push(`[key: ${checker.typeToString(info.keyType)}]: ${print(info.type)}`);
    }
    return `{ ${members.join('; ')} }`;
  };

  const out = [
    '// Generated by client/build.mjs from supabase/functions/_shared/contract/index.ts (and the',
    '// envelope.ts it re-exports): do not edit.',
  ];
  for (const source of [envelope, file]) {
    for (const s of source.statements) {
      if (!ts.isInterfaceDeclaration(s) && !ts.isTypeAliasDeclaration(s)) continue;
      if (ts.isTypeAliasDeclaration(s) && usesImports(s.type)) {
        out.push(`export type ${s.name.text} = ${print(checker.getTypeAtLocation(s.name))};`);
      } else {
        // (envelope.ts's file comment is about the service's layers, not the client's types)
        const text = s.getFullText(source).replace(/^\s+/, '');
        out.push(source === envelope && s === source.statements[0] ? text.replace(/^(?:\/\/[^\n]*\n)+/, '') : text);
      }
    }
  }
  return out.join('\n\n') + '\n';
}

/** Emits JavaScript and declarations for the client's sources, staged beside the plain contract. */
async function emit(contract) {
  const stage = await mkdtemp(join(tmpdir(), 'billing-client-'));
  try {
    await writeFile(join(stage, 'contract.ts'), contract);
    for (const f of sources) await writeFile(join(stage, f), await readFile(join(here, f)));
    const program = ts.createProgram(['contract.ts', ...sources].map((f) => join(stage, f)), {
      strict: true,
      declaration: true,
      outDir,
      rootDir: stage,
      rewriteRelativeImportExtensions: true,
      module: ts.ModuleKind.ESNext,
      moduleResolution: ts.ModuleResolutionKind.Bundler,
      target: ts.ScriptTarget.ES2022,
      lib: ['lib.es2022.d.ts', 'lib.dom.d.ts'],
      types: [],
      newLine: ts.NewLineKind.LineFeed,
    });
    assertNoErrors(ts.getPreEmitDiagnostics(program), 'the client does not type-check');
    await rm(outDir, { recursive: true, force: true });
    const result = program.emit();
    assertNoErrors(result.diagnostics, 'emitting the client failed');
  } finally {
    await rm(stage, { recursive: true, force: true });
  }
}

await emit(plainContract());
for (const f of await readdir(outDir)) {
  const text = await readFile(join(outDir, f), 'utf8');
  if (f.endsWith('.d.ts')) {
    // TypeScript rewrites `.ts` imports in JavaScript but leaves them in declarations.
    await writeFile(join(outDir, f), text.replace(/(from\s+'\.\/[\w-]+)\.ts'/g, "$1.js'"));
  } else {
    // Deno (`deno check client/`, or an import of the built file) finds the declarations by this.
    await writeFile(join(outDir, f), `// @ts-self-types="./${f.replace(/\.js$/, '.d.ts')}"\n${text}`);
  }
}
await writeFile(join(outDir, 'package.json'), JSON.stringify(manifest, null, 2) + '\n');
await writeFile(join(outDir, 'README.md'), await readFile(join(here, 'README.md')));
console.log(`built ${outDir}: ${(await readdir(outDir)).sort().join(' ')}`);
