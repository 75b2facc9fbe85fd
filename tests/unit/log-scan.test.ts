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

/** What scripts/lib.sh's pg_log_files names for a data directory with this configuration. */
async function pgLogFiles(conf: string, files: string[] = []) {
  const home = await Deno.makeTempDir();
  await Deno.mkdir(`${home}/data/pg_log`, { recursive: true });
  await Deno.writeTextFile(`${home}/data/postgresql.conf`, conf);
  for (const f of files) await Deno.writeTextFile(`${home}/data/pg_log/${f}`, '');
  const out = await new Deno.Command('bash', {
    args: ['-c', 'source scripts/lib.sh && pg_log_files'],
    env: { PG_HOME: home },
    stdout: 'piped',
  }).output();
  await Deno.remove(home, { recursive: true });
  return new TextDecoder().decode(out.stdout).trim().split('\n').map((p) => p.slice(home.length));
}

Deno.test("the leak scan reads Postgres' log where its configuration writes it", async () => {
  assert.deepEqual(await pgLogFiles('log_min_messages = warning\n'), ['/data/server.log'], 'the pg_ctl -l file');
  assert.deepEqual(
    await pgLogFiles("logging_collector = on\nlog_directory = 'pg_log'\n", ['postgresql-1.log', 'postgresql-2.log']),
    ['/data/pg_log/postgresql-1.log', '/data/pg_log/postgresql-2.log'],
    'the collector writes under log_directory',
  );
});

Deno.test("the leak scan finds a request's email or SSN-shaped value in a Postgres error's DETAIL", async () => {
  const r = await scan([
    '2026-11-23 23:00:00.000 UTC [1] ERROR:  PACKAGE_NOT_FOUND',
    '2026-11-23 23:00:00.000 UTC [1] DETAIL:  {"package_id": "jane@evil.example 078-05-1120"}',
  ]);
  assert.equal(r.code, 1);
  assert.match(r.text, /line 2 .* contains a email/);
  assert.match(r.text, /line 2 .* contains a ssn/);
});
