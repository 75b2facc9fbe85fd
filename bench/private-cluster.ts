// A private Postgres cluster for benchmarks that must not share the local stack's database:
// bootstrapped as scripts/lib.sh does (initdb's superuser is supabase_admin, then
// scripts/local/supabase-compat.sql, then `supabase db push` as postgres), on its own port and
// directory, deleted afterwards unless kept.
//   const cluster = privateCluster({ dir: '/tmp/x', port: 55434 }); await cluster.start(); … await cluster.stop();

const pgBin = '/usr/lib/postgresql/15/bin';
const root = new URL('..', import.meta.url).pathname.replace(/\/$/, '');

/** Runs a command (as the postgres OS user when asked and we are root); throws with its output on failure. */
export async function run(cmd: string, args: string[], opts: { asPostgres?: boolean; cwd?: string } = {}) {
  const [bin, argv] = opts.asPostgres && Deno.uid() === 0
    ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]]
    : [cmd, args];
  const out = await new Deno.Command(bin, { args: argv, cwd: opts.cwd, stdout: 'piped', stderr: 'piped' }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${cmd} ${args.join(' ')} failed:\n${text}`);
  return text;
}
const exists = (p: string) => Deno.stat(p).then(() => true, () => false);

export interface ClusterOptions {
  dir: string;
  port: number;
  /** Keep the cluster (and its data) after stop; a later start reuses it. */
  keep?: boolean;
  /** Extra postgresql.conf lines (memory, WAL) for the load at hand. */
  conf?: string[];
  log?: (s: string) => void;
}

export function privateCluster(o: ClusterOptions) {
  const data = `${o.dir}/data`;
  const note = o.log ?? ((s: string) => console.error(s));
  const url = `postgresql://postgres:postgres@127.0.0.1:${o.port}/postgres`;
  const adminUrl = `postgresql://supabase_admin:postgres@127.0.0.1:${o.port}/postgres`;

  /** Creates (or, kept, restarts) the cluster and its schema; true when it reused a kept one. */
  async function start(): Promise<boolean> {
    const reuse = !!o.keep && await exists(`${data}/PG_VERSION`);
    if (!reuse) {
      await Deno.remove(o.dir, { recursive: true }).catch(() => {});
      await Deno.mkdir(o.dir, { recursive: true });
      await Deno.writeTextFile(`${o.dir}/pwfile`, 'postgres\n');
      if (Deno.uid() === 0) await run('chown', ['-R', 'postgres:postgres', o.dir]);
      note(`initdb ${data}`);
      await run(`${pgBin}/initdb`, [
        ...['-D', data, '-U', 'supabase_admin', `--pwfile=${o.dir}/pwfile`, '--auth-local=trust'],
        ...['--auth-host=scram-sha-256', '-E', 'UTF8', '--locale=C.UTF-8'],
      ], { asPostgres: true });
      const conf = [
        `listen_addresses = '127.0.0.1'`,
        `port = ${o.port}`,
        `unix_socket_directories = '${data}'`,
        `shared_preload_libraries = 'pg_cron,pg_stat_statements'`,
        `cron.database_name = 'postgres'`,
        `cron.host = '${data}'`,
        'log_min_messages = warning',
        ...(o.conf ?? []),
      ];
      await run('sh', ['-c', `cat >> ${data}/postgresql.conf <<'EOF'\n${conf.join('\n')}\nEOF`], { asPostgres: true });
    }
    if (!await exists(`${data}/postmaster.pid`)) {
      await run(`${pgBin}/pg_ctl`, ['-D', data, '-l', `${o.dir}/server.log`, '-w', '-t', '60', 'start'], {
        asPostgres: true,
      });
    }
    if (!reuse) {
      note('schema: scripts/local/supabase-compat.sql (as supabase_admin), then supabase db push (as postgres)');
      await run('psql', [
        ...['-X', '-q', '-v', 'ON_ERROR_STOP=1', adminUrl, '-v', 'postgres_password=postgres'],
        ...['-v', 'functions_url=http://127.0.0.1:54321/functions/v1', '-v', 'cron_secret=bench'],
        ...['-f', `${root}/scripts/local/supabase-compat.sql`],
      ]);
      await run(`${root}/scripts/toolchain/node_modules/.bin/supabase`, ['db', 'push', `--remote=${url}`, '--yes'], {
        cwd: root,
      });
    }
    return reuse;
  }

  async function stop() {
    await run(`${pgBin}/pg_ctl`, ['-D', data, '-m', 'fast', '-w', 'stop'], { asPostgres: true }).catch(() => {});
    if (!o.keep) await Deno.remove(o.dir, { recursive: true });
  }

  return { url, adminUrl, start, stop };
}
