// What every benchmark here shares: printing its report while keeping the lines for the results
// file, the few statistics the reports use, and timing.

/** A report printed as it is written and kept for bench/results/: `const { lines, say } = printer();` */
/** A variable the benchmark cannot run without (the local stack's env, e.g. via ./scripts/bench). */
export const env = (k: string): string => {
  const v = Deno.env.get(k);
  if (!v) throw new Error(`${k} is not set`);
  return v;
};

export function printer(): { lines: string[]; say: (s: string) => void } {
  const lines: string[] = [];
  return {
    lines,
    say: (s: string) => {
      console.log(s);
      lines.push(s);
    },
  };
}

/** The median of `xs` (the mean of the two middle values for an even count): `median([3, 1, 2]) === 2`. */
export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** A number with thousands separators and `d` decimals: `fmt(12345.6, 1) === '12,345.6'`. */
export const fmt = (n: number, d = 0): string =>
  n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });

/** How long `fn` took (ms) and what it answered: `const [ms, rows] = await timed(() => sql\`select 1\`)`. */
export async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t = performance.now();
  const r = await fn();
  return [performance.now() - t, r];
}

/** Milliseconds with one decimal, as seconds from 10 s on: `fmtMs(12.34) === '12.3 ms'`, `fmtMs(12_340) === '12.3 s'`. */
export const fmtMs = (ms: number): string => (ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${ms.toFixed(1)} ms`);

/** Bytes as whole megabytes: `mb(3 * 1024 * 1024) === '3 MB'`. */
export const mb = (bytes: number): string => `${(bytes / 1024 / 1024).toFixed(0)} MB`;

/** Whole seconds since `t0` (a `performance.now()`): `elapsed(t0) === '12 s'`. */
export const elapsed = (t0: number): string => `${((performance.now() - t0) / 1000).toFixed(0)} s`;

/**
 * Runs `op` over `items` from `connections` workers at once; the rate (items per second of wall
 * time) and latency quantiles (ms).
 * @example const { rate, p99 } = await drive(events, 16, deliver);
 */
export async function drive<T>(items: T[], connections: number, op: (item: T) => Promise<void>) {
  const latencies: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: connections }, async () => {
    while (next < items.length) {
      const item = items[next++];
      const t0 = performance.now();
      await op(item);
      latencies.push(performance.now() - t0);
    }
  }));
  const wall = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const q = (p: number) => latencies[Math.floor(p * (latencies.length - 1))];
  return { rate: items.length / wall, p50: q(0.5), p95: q(0.95), p99: q(0.99) };
}

/** CPU seconds the cluster has used: the postmaster, its live children, and its exited children. */
export async function clusterCpu(postmaster: number): Promise<number> {
  const hz = 100; // USER_HZ on Linux
  const stat = async (pid: number) => (await Deno.readTextFile(`/proc/${pid}/stat`)).split(') ')[1].split(' ');
  const own = await stat(postmaster); // fields from state (index 0): utime 11, stime 12, cutime 13, cstime 14
  let ticks = Number(own[11]) + Number(own[12]) + Number(own[13]) + Number(own[14]);
  const children = (await Deno.readTextFile(`/proc/${postmaster}/task/${postmaster}/children`)).trim().split(/\s+/);
  for (const pid of children.filter(Boolean)) {
    const s = await stat(Number(pid)).catch(() => null);
    if (s) ticks += Number(s[11]) + Number(s[12]);
  }
  return ticks / hz;
}

/** Runs one pgbench script (`-M prepared`) for `seconds` and returns its output; throws on failure. */
export async function pgbench(dbUrl: string, file: string, clients: number, seconds: number): Promise<string> {
  const out = await new Deno.Command('pgbench', {
    args: [
      '-n',
      '-M',
      'prepared',
      '-c',
      String(clients),
      '-j',
      String(Math.min(clients, 2)),
      '-T',
      String(seconds),
      '-f',
      file,
      dbUrl,
    ],
    stdout: 'piped',
    stderr: 'piped',
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`pgbench ${file} failed:\n${text}`);
  return text;
}
