// The functions reach Postgres as they do on hosted: through a transaction-mode pooler
// (Supavisor there, pgbouncer here), where consecutive statements may run on different server
// connections. So nothing may depend on session state; the scan below names what would.
import assert from 'node:assert/strict';
import { api, env } from '../support/helpers.ts';

const root = new URL('../../', import.meta.url).pathname;

/** Runs a command on pgbouncer's admin console (simple protocol only, hence psql). */
async function pgbouncer(command: string): Promise<string[][]> {
  const url = new URL(env('DB_POOLER_URL'));
  url.pathname = '/pgbouncer';
  const out = await new Deno.Command('psql', { args: [url.href, '-X', '-A', '-t', '-F', '\t', '-c', command] })
    .output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout).trim().split('\n').map((l) => l.split('\t'));
}

Deno.test('the functions reach Postgres through the transaction-mode pooler', async () => {
  assert.notEqual(new URL(env('DB_POOLER_URL')).port, new URL(env('SUPABASE_DB_URL')).port);
  const config = Object.fromEntries((await pgbouncer('show config')).map(([key, value]) => [key, value]));
  assert.equal(config.pool_mode, 'transaction');
  assert.equal((await api('/health/readyz')).status, 200);
  const clients = await pgbouncer('show clients');
  assert.ok(
    clients.some((row) => row.includes('scholarlink-functions')),
    `no functions client on the pooler: ${JSON.stringify(clients)}`,
  );
});

/** Every file under `dir` whose name ends with `ext`. */
async function* files(dir: string, ext: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    if (e.isDirectory) yield* files(`${dir}/${e.name}`, ext);
    else if (e.name.endsWith(ext)) yield `${dir}/${e.name}`;
  }
}

// What keeps state on the server connection beyond a transaction, and so breaks (or silently
// misbehaves) behind a transaction-mode pooler. The transaction-scoped forms are fine:
// SET LOCAL, set_config(…, true), pg_advisory_xact_lock, temp tables `on commit drop`.
// Statement patterns apply to the SQL the functions send (in migrations, `set search_path`
// lines are function attributes, scoped to the call).
const sessionScoped: [string, 'ts' | 'sql' | 'both', RegExp][] = [
  ['a session advisory lock', 'both', /\bpg_(try_)?advisory_lock(_shared)?\s*\(/gi],
  ['set_config(…, false)', 'both', /\bset_config\s*\([^;]*?,\s*false\s*\)/gi],
  [
    'a temp table that outlives its transaction',
    'both',
    /create\s+temp(orary)?\s+table(?![^;]*on\s+commit\s+drop)[^;]*;/gi,
  ],
  ['SET without LOCAL', 'ts', /(^|[`;]\s*)set\s+(session\s+)?(?!local\b)(?!transaction\b)[a-z_][\w.]*\s*(=|to\b)/gim],
  ['LISTEN', 'both', /(^|[`;]\s*)listen\s+\w/gim],
  ['a named prepared statement', 'both', /(^|[`;]\s*)prepare\s+\w+(\s*\([^)]*\))?\s+as\b/gim],
  ['prepared statements in postgres.js', 'ts', /\bprepare\s*:\s*true\b/g],
  ['a reserved (session) connection or LISTEN in postgres.js', 'ts', /\b(sql|tx|db\(\))\.(reserve|listen)\s*\(/g],
];

Deno.test('nothing in the functions or the migrations depends on session state', async () => {
  const problems: string[] = [];
  const sources: string[] = [];
  for await (const f of files(`${root}supabase/functions`, '.ts')) sources.push(f);
  for await (const f of files(`${root}supabase/migrations`, '.sql')) sources.push(f);
  for (const file of sources) {
    const text = await Deno.readTextFile(file);
    const kind = file.endsWith('.ts') ? 'ts' : 'sql';
    for (const [what, where, pattern] of sessionScoped) {
      if (where !== 'both' && where !== kind) continue;
      for (const m of text.matchAll(pattern)) {
        const line = text.slice(0, m.index).split('\n').length;
        problems.push(`${file.slice(root.length)}:${line}: ${what}`);
      }
    }
    // postgres.js prepares statements by default: every pool opts out.
    const makesPool = /^import postgres from 'postgres';$/m.test(text) && /\bpostgres\(/.test(text);
    if (makesPool && !/\bprepare\s*:\s*false\b/.test(text)) {
      problems.push(`${file.slice(root.length)}: a postgres.js pool without prepare: false`);
    }
  }
  assert.deepEqual(problems, [], problems.join('\n'));
});
