// The docs' examples run as written (docs/api.md, docs/integrate.md, docs/plans-and-codes.md):
// the ```sh blocks of each one's Examples section, in order, in
// one bash from the repository's root, against the local stack; every request annotated
// `# → <status>` must answer that status. A doc that drifts from the API fails here.
import assert from 'node:assert/strict';

const root = new URL('../../', import.meta.url).pathname;

/** The Examples section's sh blocks, in order. */
export function exampleBlocks(markdown: string): string[] {
  const section = markdown.slice(
    markdown.indexOf('## Examples'),
    markdown.indexOf('\n## ', markdown.indexOf('## Examples') + 1),
  );
  return [...section.matchAll(/^```sh\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
}

/**
 * The blocks as one script: `curl` records each answer's status, and after every command that
 * ends with `# → <status>` (continuation lines joined) the script checks the last status.
 */
export function checkedScript(blocks: string[]): string {
  const lines: string[] = [];
  for (const block of blocks) {
    let command = '';
    for (const line of block.split('\n')) {
      command += line;
      if (line.endsWith('\\')) {
        command += '\n';
        continue;
      }
      lines.push(command);
      const expected = /# → (\d{3})$/.exec(command)?.[1];
      // The label single-quoted: bash must not run what it quotes a second time.
      const label = command.trim().split('\n')[0].slice(0, 160).replace(/'/g, `'\\''`);
      if (expected) lines.push(`__expect ${expected} '${label}'`);
      command = '';
    }
  }
  const preamble = [
    '__statuses=$(mktemp)',
    "# Each answer's status goes to a file, so a curl inside $(…) (a subshell) reports it too.",
    'curl() { local out; out=$(command curl -w \'\\n%{http_code}\' "$@");',
    '  printf \'%s\\n\' "${out%$\'\\n\'*}"; echo "${out##*$\'\\n\'}" >> "$__statuses"; }',
    '__expect() {',
    '  local got; got=$(tail -n 1 "$__statuses")',
    '  if [ "$got" != "$1" ]; then echo "DOC EXAMPLE FAILED: expected $1, got $got: $2" >&2; exit 1; fi',
    '  echo "ok $1: $2" >&2',
    '}',
    '',
  ].join('\n');
  return preamble + lines.join('\n') + '\necho "all examples answered as documented" >&2\n';
}

// Each doc's Examples section, with how many blocks and annotated requests it has at least.
const docs: [file: string, blocks: number, requests: number][] = [
  ['docs/api.md', 5, 20],
  ['docs/integrate.md', 3, 9],
  ['docs/plans-and-codes.md', 2, 9],
];

for (const [file, minBlocks, minRequests] of docs) {
  Deno.test(`every example in ${file} answers the status the doc shows, run top to bottom`, async () => {
    const blocks = exampleBlocks(await Deno.readTextFile(`${root}${file}`));
    assert.ok(blocks.length >= minBlocks, 'the Examples section has its blocks');
    const annotated = blocks.join('\n').match(/# → \d{3}$/gm) ?? [];
    assert.ok(annotated.length >= minRequests, `every request says its status (${annotated.length})`);
    // A clean environment: the doc itself loads .local/env, as a newcomer's shell would.
    const out = await new Deno.Command('bash', {
      args: ['-c', checkedScript(blocks)],
      cwd: root,
      clearEnv: true,
      env: { PATH: Deno.env.get('PATH') ?? '/usr/bin:/bin', HOME: Deno.env.get('HOME') ?? '/root' },
      stdout: 'piped',
      stderr: 'piped',
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    const stdout = new TextDecoder().decode(out.stdout);
    assert.ok(out.success, `${stderr}\n--- answers ---\n${stdout.slice(-3000)}`);
    assert.equal(stderr.match(/^ok \d{3}:/gm)?.length, annotated.length, stderr);
  });
}

Deno.test('the runner catches a doc that drifts: a wrong status fails', async () => {
  const blocks = ['set -a; source .local/env; set +a\ncurl -s $SUPABASE_URL/functions/v1/health/readyz # → 201'];
  const out = await new Deno.Command('bash', {
    args: ['-c', checkedScript(blocks)],
    cwd: root,
    stderr: 'piped',
    stdout: 'null',
  })
    .output();
  assert.equal(out.success, false);
  assert.match(new TextDecoder().decode(out.stderr), /DOC EXAMPLE FAILED: expected 201, got 200/);
});
