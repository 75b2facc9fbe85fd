// ./scripts/dev run as root starts Postgres as the postgres OS user: a PG_HOME under a folder that
// user cannot enter (a 0700 mktemp -d folder) is refused up front, naming the folder and the fix
// (scripts/lib.sh's pg_home_check, which pg_init runs before initdb).
import assert from 'node:assert/strict';

const asRootWithPostgres = Deno.uid() === 0 &&
  (await new Deno.Command('id', { args: ['postgres'], stdout: 'null', stderr: 'null' }).output()).success;

/** What pg_home_check says of `pgHome`: its exit code and its error. */
async function check(pgHome: string) {
  const out = await new Deno.Command('bash', {
    args: ['-c', 'source scripts/lib.sh && pg_home_check'],
    env: { PG_HOME: pgHome },
    stdout: 'piped',
    stderr: 'piped',
  }).output();
  return { code: out.code, error: new TextDecoder().decode(out.stderr) };
}

Deno.test({
  name: 'a PG_HOME the postgres user cannot reach is refused with the folder and the fix; a reachable one passes',
  ignore: !asRootWithPostgres,
  async fn() {
    const closed = await Deno.makeTempDir(); // 0700, owned by root
    const open = await Deno.makeTempDir();
    await Deno.chmod(open, 0o755);
    try {
      const refused = await check(`${closed}/stack/pg`);
      assert.equal(refused.code, 1);
      assert.match(
        refused.error,
        new RegExp(`PG_HOME \\(${closed}/stack/pg\\) is under ${closed}, which the postgres`),
      );
      assert.match(refused.error, new RegExp(`unset PG_HOME .* chmod o\\+x ${closed}\\n$`));
      assert.deepEqual(await check(`${open}/stack/pg`), { code: 0, error: '' });
    } finally {
      await Deno.remove(closed, { recursive: true });
      await Deno.remove(open, { recursive: true });
    }
  },
});
