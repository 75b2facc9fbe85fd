// Every script answers --help with its usage (exit 0) and a usage error (an unknown option, a
// missing or malformed value, an unexpected argument) with what was wrong and its usage on
// stderr (exit 2), before it installs or starts anything. dev and test are only ever given
// --help or an unknown option here: anything else would start or stop the shared stack.
import assert from 'node:assert/strict';

const scripts = [
  'bench',
  'demo-purchase',
  'dev',
  'env-check',
  'load',
  'prices',
  'smoke-test',
  'soak',
  'stripe-webhook-endpoint',
  'test',
  'token',
];
const root = new URL('../../', import.meta.url).pathname;

async function run(script: string, ...args: string[]) {
  const out = await new Deno.Command(`${root}scripts/${script}`, {
    args,
    stdin: 'null',
    stdout: 'piped',
    stderr: 'piped',
    env: { CI: 'true' },
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

async function assertUsageError(script: string, args: string[], says: RegExp) {
  const r = await run(script, ...args);
  assert.equal(r.code, 2, `${script} ${args.join(' ')}: ${r.stderr}`);
  assert.match(r.stderr, says);
  assert.match(r.stderr, new RegExp(`\nusage: \\./scripts/${script}`));
  assert.equal(r.stdout, '');
}

for (const script of scripts) {
  Deno.test(`./scripts/${script} --help prints its usage and exits 0; an unknown option exits 2 with it`, async () => {
    const help = await run(script, '--help');
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, new RegExp(`^usage: \\./scripts/${script}`));
    await assertUsageError(script, ['--no-such-option'], /^unknown option: --no-such-option\n/);
  });
}

const malformed: [string, string[], RegExp][] = [
  ['token', ['--ttl', 'abc'], /^--ttl must be a positive whole number, not 'abc'\n/],
  ['token', ['--ttl'], /^--ttl needs a value\n/],
  ['token', ['--admin=yes'], /^--admin takes no value\n/],
  ['token', ['someone'], /^unexpected argument: someone\n/],
  ['load', ['--rate=0'], /^--rate must be a positive whole number, not '0'\n/],
  ['load', ['--seconds', '1.5'], /^--seconds must be a positive whole number, not '1.5'\n/],
  ['soak', ['many'], /^runs must be a positive whole number, not 'many'\n/],
  ['bench', ['no-such-bench'], /^no benchmark named 'no-such-bench'\n/],
  ['demo-purchase', ['starter'], /^unexpected argument: starter\n/],
  ['env-check', ['--function'], /^--function needs a value\n/],
  ['prices', ['--write=yes'], /^--write takes no value\n/],
  [
    'prices',
    ['--drafts', '--markup', '0', '--admin', '00000000-0000-4000-8000-000000000001'],
    /^--drafts needs --markup/,
  ],
  ['stripe-webhook-endpoint', [], /^--url is required\n/],
  ['smoke-test', ['--functions-url'], /^--functions-url needs a value\n/],
];
for (const [script, args, says] of malformed) {
  Deno.test(`./scripts/${script} ${args.join(' ')} is a usage error: it says what is wrong, prints usage, exits 2`, () =>
    assertUsageError(script, args, says));
}

Deno.test('./scripts/token --user with something not a UUID exits 2 in one line, without a stack trace', async () => {
  const r = await run('token', '--user', 'not-a-uuid');
  assert.equal(r.code, 2, r.stderr);
  assert.equal(r.stderr, "--user must be a UUID, not 'not-a-uuid' (./scripts/token --help)\n");
});

// The toolchain wrappers pass every argument on, so an unknown option is the tool's business;
// --help says what the wrapper is before the tool's own help.
for (const [tool, version] of [['deno', /^deno 2\./], ['supabase', /^3\./]] as const) {
  Deno.test(`./scripts/${tool} runs the pinned ${tool} with the arguments given; --help names the wrapper`, async () => {
    const help = await run(tool, '--help');
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, new RegExp(`^usage: \\./scripts/${tool} <${tool} arguments…>`));
    const pinned = JSON.parse(await Deno.readTextFile(`${root}scripts/toolchain/package.json`)).devDependencies[tool];
    const v = await run(tool, '--version');
    assert.equal(v.code, 0, v.stderr);
    assert.match(v.stdout, version);
    assert.ok(v.stdout.includes(pinned), `the pinned ${pinned}: ${v.stdout}`);
  });
}

Deno.test("./scripts/env-check says which Node an app's SDKs need, from their own engines fields", async () => {
  const pkg = JSON.parse(await Deno.readTextFile(`${root}node_modules/@supabase/supabase-js/package.json`));
  const want = /(\d+)/.exec(pkg.engines.node)?.[1];
  const r = await run('env-check', '--function', 'health');
  const node = await new Deno.Command('node', { args: ['--version'] }).output();
  const have = new TextDecoder().decode(node.stdout).trim().slice(1);
  assert.match(
    r.stderr,
    new RegExp(`^node ${have.replaceAll('.', '\\.')}: supabase-js ${pkg.version} .* wants Node >= ${want}: `, 'm'),
  );
  const major = Number(have.split('.')[0]);
  assert.match(r.stderr, major >= Number(want) ? /: ok$/m : /needs ws as its WebSocket/);
  const ai = JSON.parse(await Deno.readTextFile(`${root}node_modules/ai/package.json`));
  const aiWants = Number(/(\d+)/.exec(ai.engines.node)?.[1]);
  assert.match(
    r.stderr,
    new RegExp(`^node [^:]+: ai ${ai.version}, .*\\(an app calling the AI gateway\\) want Node >= ${aiWants}: `, 'm'),
  );
  // npm says nothing when it picks an older major for an older Node: the check says it instead.
  if (major < Math.max(aiWants, Number(want))) {
    assert.match(r.stderr, /npm installs an older major of each without a word/);
  }
});
