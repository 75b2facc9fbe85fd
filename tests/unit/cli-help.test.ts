// Every script answers --help with its usage (exit 0) and an unknown option with its usage on
// stderr (exit 2), before it installs or starts anything.
import assert from 'node:assert/strict';

const scripts = ['bench', 'demo-purchase', 'dev', 'env-check', 'load', 'soak', 'test', 'token'];
const root = new URL('../../', import.meta.url).pathname;

async function run(script: string, arg: string) {
  const out = await new Deno.Command(`${root}scripts/${script}`, {
    args: [arg],
    stdin: 'null',
    stdout: 'piped',
    stderr: 'piped',
    env: { CI: 'true' },
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

for (const script of scripts) {
  Deno.test(`./scripts/${script} --help prints its usage and exits 0; an unknown option exits 2 with it`, async () => {
    const help = await run(script, '--help');
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, new RegExp(`^usage: \\./scripts/${script}`));
    const bad = await run(script, '--no-such-option');
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /^unknown option: --no-such-option\nusage: /);
    assert.equal(bad.stdout, '');
  });
}
