// CPU time from /proc: of one process, of the machine, of a process family; and pid files.

export const clockTicks = 100; // CLK_TCK on Linux x86-64: /proc/<pid>/stat counts CPU time in 1/100 s

/** CPU seconds (user + system, every thread) a process has used so far. */
export async function cpuSeconds(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields from 3 (state) on
  return (Number(fields[11]) + Number(fields[12])) / clockTicks; // 14 utime, 15 stime
}

/** CPU seconds in the kernel (stime, every thread) a process has used so far: system calls, loopback TCP. */
export async function systemSeconds(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[12]) / clockTicks;
}

/** Busy and total jiffies of the whole machine, for how saturated it was during a run. */
export async function machineTicks(): Promise<{ busy: number; total: number }> {
  const [cpu] = (await Deno.readTextFile('/proc/stat')).split('\n');
  const n = cpu.split(/\s+/).slice(1).map(Number);
  const total = n.reduce((a, b) => a + b, 0);
  return { busy: total - n[3] - n[4], total }; // idle and iowait are not busy
}

/**
 * CPU seconds of the processes named `comm` that are `root` or its children (one Postgres
 * cluster: the postmaster and its backends; an exited backend's time moves to the postmaster's
 * reaped-children fields, which are counted). With no root known, every process so named.
 */
export async function cpuOf(comm: string, root: number): Promise<number> {
  let sum = 0;
  for await (const e of Deno.readDir('/proc')) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = await Deno.readTextFile(`/proc/${e.name}/stat`);
      if (stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')) !== comm) continue;
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (root && Number(e.name) !== root && Number(f[1]) !== root) continue; // f[1]: the parent
      sum += (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / clockTicks;
    } catch { /* exited meanwhile */ }
  }
  return sum;
}
/** One Postgres cluster's processes: pid → CPU seconds so far (user + system) and process title. */
export type PostgresProcesses = Map<number, { cpu: number; title: string }>;

/** The postmaster `root` and its live children, each with its CPU so far and its title (`ps` shows it). */
export async function postgresProcesses(root: number): Promise<PostgresProcesses> {
  const procs: PostgresProcesses = new Map();
  for await (const e of Deno.readDir('/proc')) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = await Deno.readTextFile(`/proc/${e.name}/stat`);
      if (stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')) !== 'postgres') continue;
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(e.name) !== root && Number(f[1]) !== root) continue;
      const title = (await Deno.readTextFile(`/proc/${e.name}/cmdline`)).replaceAll('\0', ' ').trim();
      procs.set(Number(e.name), { cpu: (Number(f[11]) + Number(f[12])) / clockTicks, title });
    } catch { /* exited meanwhile */ }
  }
  return procs;
}

/**
 * A backend serving a TCP client (`postgres: <user> <db> <address>(<port>) <state>`): the pooler's
 * server connections, so the sessions a cell's requests run in. Not a session: the postmaster,
 * autovacuum, the checkpointer, WAL and background writers, pg_cron's launcher and its jobs
 * (they connect over the Unix socket: `[local]`), pg_net's worker.
 */
export const isTcpSession = (title: string) => /^postgres: \S+ \S+ [0-9a-f.:]+\(\d+\) /.test(title);

/**
 * CPU seconds the TCP sessions alive at both ends spent between two snapshots: what a cell's
 * requests cost Postgres without the cluster's other work in the same window (autovacuum,
 * cron jobs, processes that started or ended). A session that served the cell and ended in
 * the window is left out with the rest (the pooler keeps its server connections).
 */
export function sessionsCpu(before: PostgresProcesses, after: PostgresProcesses): number {
  let sum = 0;
  for (const [pid, p] of after) {
    const b = before.get(pid);
    if (b && isTcpSession(p.title)) sum += p.cpu - b.cpu;
  }
  return sum;
}

/** The redis-server listening on `port`: its process title names the address. */
export async function redisServerOn(port: string): Promise<number> {
  for await (const e of Deno.readDir('/proc')) {
    if (!/^\d+$/.test(e.name)) continue;
    const cmd = await Deno.readTextFile(`/proc/${e.name}/cmdline`).catch(() => '');
    if (cmd.includes('redis-server') && cmd.includes(`:${port}`)) return Number(e.name);
  }
  return 0;
}
export const firstLineNumber = (path: string) =>
  Deno.readTextFile(path).then((t) => Number(t.split('\n')[0]) || 0, () => 0);
