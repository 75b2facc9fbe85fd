import assert from 'node:assert/strict';

async function scan(lines: string[]) {
  const path = await Deno.makeTempFile({ suffix: '.log' });
  await Deno.writeTextFile(path, lines.join('\n'));
  const out = await new Deno.Command(Deno.execPath(), {
    args: ['run', '--allow-read', 'scripts/local/log-scan.ts', `${path}:0`],
    stdout: 'piped',
  })
    .output();
  await Deno.remove(path);
  return { code: out.code, text: new TextDecoder().decode(out.stdout) };
}

Deno.test('the log leak scan fails on a leaked email and names the pattern, not the value', async () => {
  const r = await scan(['{"level":"info","msg":"ok"}', '{"level":"info","msg":"user jane@example.com"}']);
  assert.equal(r.code, 1);
  assert.match(r.text, /line 2 .* contains a email/);
  assert.ok(!r.text.includes('jane@example.com'));
});

Deno.test('the log leak scan passes clean, redacted logs', async () => {
  const r = await scan([
    '{"level":"info","msg":"user [EMAIL] paid","requestId":"6a4a7e5e-9a52-4b9a-8d1c-1f0f6b3a2c11"}',
  ]);
  assert.equal(r.code, 0, r.text);
});
