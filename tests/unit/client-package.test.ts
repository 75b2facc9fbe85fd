// The npm package @scholarlink/billing-client, built as it would be published (client/build.mjs):
// its modules import nothing but each other, its .d.ts serve a supabase-js app under tsc, and
// its contract is the service's contract, type for type (a changed field fails this test).
import assert from 'node:assert/strict';

const root = new URL('../../', import.meta.url).pathname;
const tsc = `${root}scripts/toolchain/node_modules/.bin/tsc`;
const work = await Deno.makeTempDir({ prefix: 'client-package-' });
const dist = `${work}/node_modules/@scholarlink/billing-client`;

async function run(cmd: string, args: string[], cwd = root) {
  const out = await new Deno.Command(cmd, {
    args,
    cwd,
    stdout: 'piped',
    stderr: 'piped',
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { ok: out.success, output: text(out.stdout) + text(out.stderr) };
}

let building: Promise<void> | undefined;
/** Builds the package once for the tests that follow, whichever runs first. */
const built = () => (building ??= build());

async function build() {
  const out = await run(Deno.execPath(), [
    'run',
    '-A',
    'client/build.mjs',
    dist,
  ]);
  assert.ok(out.ok, out.output);
  // The app's own supabase-js (the one the functions and tests use), as an app has it installed.
  await Deno.mkdir(`${work}/node_modules/@supabase`, { recursive: true });
  await Deno.symlink(
    `${root}node_modules/@supabase/supabase-js`,
    `${work}/node_modules/@supabase/supabase-js`,
  );
}

/** Whether a check file comparing each source contract type with the package's compiles under deno check. */
async function contractMatches(packageContract: string) {
  const source = await Deno.readTextFile(
    `${root}supabase/functions/_shared/contract/index.ts`,
  );
  const names = [...source.matchAll(/^export (?:type|interface) (\w+)/gm)].map((
    m,
  ) => m[1]);
  const generic = new Set(
    [...source.matchAll(/^export (?:type|interface) (\w+)</gm)].map((m) => m[1]),
  );
  const arg = (n: string) => (generic.has(n) ? '<unknown>' : '');
  const checks = names.map((n) => `same<Equal<Source.${n}${arg(n)}, Package.${n}${arg(n)}>>('${n}');`);
  const file = `${work}/contract-check.ts`;
  await Deno.writeTextFile(
    file,
    [
      `import type * as Source from '${root}supabase/functions/_shared/contract/index.ts';`,
      `import type * as Package from '${packageContract}';`,
      '// Identical, not merely assignable: an optional field added or dropped is a difference.',
      'type Equal<X, Y> = (<T>() => T extends X ? 1 : 2) extends (<T>() => T extends Y ? 1 : 2) ? true : false;',
      'const same = <T extends true>(_name: string) => {};',
      ...checks,
      '',
    ].join('\n'),
  );
  return {
    names,
    ...(await run(Deno.execPath(), [
      'check',
      '--quiet',
      '--config',
      `${root}deno.json`,
      file,
    ])),
  };
}

Deno.test({
  name: 'the client package builds to ES modules and .d.ts that import only each other',
  async fn() {
    await built();
    const files = [...Deno.readDirSync(dist)].map((e) => e.name).sort();
    assert.deepEqual(files, [
      'README.md',
      'contract.d.ts',
      'contract.js',
      'error-codes.d.ts',
      'error-codes.js',
      'errors.d.ts',
      'errors.js',
      'mod.d.ts',
      'mod.js',
      'package.json',
      'retry.d.ts',
      'retry.js',
    ]);
    const manifest = JSON.parse(
      await Deno.readTextFile(`${dist}/package.json`),
    );
    assert.equal(manifest.type, 'module');
    assert.deepEqual(manifest.exports['.'], {
      types: './mod.d.ts',
      import: './mod.js',
    });
    assert.equal(manifest.dependencies, undefined, 'no runtime dependency');
    for (
      const f of files.filter((f) => f.endsWith('.js') || f.endsWith('.d.ts'))
    ) {
      const text = await Deno.readTextFile(`${dist}/${f}`);
      const specifiers = [
        ...text.matchAll(/(?:from|import)\s*\(?\s*['"]([^'"]+)['"]/g),
      ].map((m) => m[1]);
      for (const s of specifiers) {
        assert.ok(
          /^\.\/[\w-]+\.js$/.test(s) || s === '@supabase/supabase-js',
          `${f} imports ${s}`,
        );
      }
      assert.doesNotMatch(text, /zod/, `${f} carries no zod`);
    }
  },
});

Deno.test({
  name: "the package's types serve a supabase-js app under tsc (bundler and nodenext resolution)",
  async fn() {
    await built();
    await Deno.writeTextFile(
      `${work}/app.ts`,
      `import { createClient } from '@supabase/supabase-js';
import {
  type Balance,
  type BillingResult,
  createBillingClient,
  createUsageReporter,
  type ErrorCode,
  type Page,
  type OrgUsageRow,
  type UsageRequest,
} from '@scholarlink/billing-client';

const supabase = createClient('http://127.0.0.1:54321', 'anon-key');
const billing = createBillingClient(supabase, { maxAttempts: 3 });
export const balance: Promise<BillingResult<Balance>> = billing.balance();
// The product's server reports usage with its server key, naming the user who spent.
const server = createUsageReporter(supabase, 'slk_' + '0'.repeat(48), { maxAttempts: 3 });
const usage: UsageRequest = {
  user_id: '00000000-0000-4000-8000-000000000001',
  model: 'gpt-4o-mini',
  input_tokens: 1200,
  output_tokens: 300,
};
// @ts-expect-error a browser never reports usage: the billing client has no recordUsage
export const fromBrowser = () => billing.recordUsage(usage);
export async function spend(): Promise<string> {
  const { data, error } = await server.recordUsage(usage);
  if (error) {
    // The code narrows details to what docs/api.md documents for it.
    if (error.code === 'INSUFFICIENT_CREDITS') return error.details?.required ?? '';
    if (error.code === 'SPEND_CAP_REACHED') return error.details?.resets_at ?? '';
    // @ts-expect-error a code that is not documented is not a code
    if (error.code === 'NO_SUCH_CODE') return '';
    return error.requestId ?? error.message;
  }
  // Once error is ruled out, data is the answer (paid by the caller or an organisation).
  return data.paid_by === 'self' ? data.charged : data.paid_by.org_id;
}
export async function report(org: string): Promise<number> {
  const csv = await billing.orgUsage(org, { from: '2026-11-01', format: 'csv' });
  const rows: { data: Page<OrgUsageRow> | null } = await billing.orgUsage(org);
  return (csv.data ?? '').length + (rows.data?.items.length ?? 0);
}
// As of an instant: the balance then carries as_of; a lot may name the models it pays for.
export async function asOf(at: string): Promise<string> {
  const { data } = await billing.balance({ at });
  const lots = await billing.lots({ at, limit: 10 });
  return (data?.as_of ?? '') + (lots.data?.items[0]?.applies_to?.join(', ') ?? 'any model');
}
// @ts-expect-error the balance now has no as_of
export const nowHasNoAsOf = async () => (await billing.balance()).data?.as_of;
export const known: ErrorCode = 'HTTP_502';
// @ts-expect-error data is null until error is ruled out
export const early = async () => (await billing.balance()).data.available;
// @ts-expect-error credits are exact decimal strings, never numbers
export const wrong: Balance['available'] = 12.5;
// @ts-expect-error an unknown package field is refused
billing.startCheckout({ package_id: 'starter', coupon: 'x' });
`,
    );
    const common = [
      '--noEmit',
      '--strict',
      '--target',
      'es2022',
      '--lib',
      'es2022,dom',
    ];
    // The declarations themselves, fully checked (they need nothing but the DOM's types).
    const declarations = [...Deno.readDirSync(dist)].filter((e) => e.name.endsWith('.d.ts')).map((e) => e.name);
    const own = await run(
      tsc,
      [
        ...common,
        '--module',
        'esnext',
        '--moduleResolution',
        'bundler',
        ...declarations,
      ],
      dist,
    );
    assert.ok(own.ok, own.output);
    // The app, as Next.js's tsconfig has it (skipLibCheck: supabase-js's own types want @types/node).
    for (
      const resolution of [[
        '--module',
        'esnext',
        '--moduleResolution',
        'bundler',
      ], ['--module', 'nodenext']]
    ) {
      const checked = await run(tsc, [
        ...resolution,
        ...common,
        '--skipLibCheck',
        'app.ts',
      ], work);
      assert.ok(checked.ok, `${resolution.join(' ')}:\n${checked.output}`);
    }
  },
});

Deno.test({
  name: "the package's contract is the service's contract, type for type; a dropped field is caught",
  async fn() {
    await built();
    const same = await contractMatches(`${dist}/contract.d.ts`);
    assert.ok(
      same.names.length >= 25,
      `found ${same.names.length} contract types`,
    );
    assert.ok(same.ok, same.output);

    const packaged = await Deno.readTextFile(`${dist}/contract.d.ts`);
    const drifted = packaged.replace(
      /(export type UsageRequest = \{[^}]*?)\s*correlation_id\?: string;/,
      '$1',
    );
    assert.notEqual(drifted, packaged, 'the mutation applied');
    await Deno.writeTextFile(`${work}/drifted.d.ts`, drifted);
    const caught = await contractMatches(`${work}/drifted.d.ts`);
    assert.equal(
      caught.ok,
      false,
      'a package without an optional request field must not pass',
    );
    assert.match(caught.output, /UsageRequest/);
  },
});

Deno.test({
  name: "examples/nextjs: its route handlers and lib type-check under tsc against the package's types",
  async fn() {
    await built();
    // The example's plain TypeScript (the .tsx page and layout need Next's and React's types,
    // which this check does not install); `process.env` as @types/node declares it.
    const app = `${work}/nextjs`;
    const files = [
      'lib/billing.ts',
      'lib/gateway.ts',
      'app/api/ask/route.ts',
      'app/api/essay-feedback/route.ts',
    ];
    for (const f of files) {
      await Deno.mkdir(`${app}/${f.replace(/\/[^/]+$/, '')}`, {
        recursive: true,
      });
      await Deno.copyFile(`${root}examples/nextjs/${f}`, `${app}/${f}`);
    }
    await Deno.writeTextFile(
      `${app}/env.d.ts`,
      'declare const process: { env: Record<string, string | undefined> };\n',
    );
    const checked = await run(
      tsc,
      [
        '--noEmit',
        '--strict',
        '--target',
        'es2022',
        '--lib',
        'es2022,dom,dom.iterable',
        '--module',
        'esnext',
        '--moduleResolution',
        'bundler',
        '--skipLibCheck',
        'env.d.ts',
        ...files,
      ],
      app,
    );
    assert.ok(checked.ok, checked.output);
  },
});

Deno.test({
  name: 'client/ packs as it would publish: the built modules and types, a version the changelog names',
  async fn() {
    const out = await new Deno.Command('npm', {
      args: ['pack', '--dry-run', '--json'],
      cwd: `${root}client`,
      stdout: 'piped',
      stderr: 'piped',
    }).output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const text = new TextDecoder().decode(out.stdout);
    // prepack's build prints a line before npm's JSON.
    const [packed] = JSON.parse(text.slice(text.indexOf('[')));
    const files = (packed.files as { path: string }[]).map((f) => f.path)
      .sort();
    for (
      const f of [
        'CHANGELOG.md',
        'README.md',
        'package.json',
        'dist/mod.js',
        'dist/mod.d.ts',
        'dist/contract.d.ts',
      ]
    ) {
      assert.ok(files.includes(f), `${f} is packed: ${files.join(' ')}`);
    }
    assert.deepEqual(
      files.filter((f) => /(?<!\.d)\.ts$/.test(f)),
      [],
      'no TypeScript source is packed',
    );
    const manifest = JSON.parse(
      await Deno.readTextFile(`${root}client/package.json`),
    );
    assert.equal(packed.version, manifest.version);
    assert.equal(manifest.types, manifest.exports['.'].types);
    const changelog = await Deno.readTextFile(`${root}client/CHANGELOG.md`);
    assert.equal(
      /^## (\S+)/m.exec(changelog)?.[1],
      manifest.version,
      "the changelog's latest entry is this version",
    );
  },
});

Deno.test({
  name: 'client package: clean up',
  fn: () => Deno.remove(work, { recursive: true }),
});
