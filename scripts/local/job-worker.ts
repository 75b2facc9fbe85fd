// A standalone job worker process (the crash-recovery tests kill it mid-job).
// Usage: deno run -A --env-file=.local/env scripts/local/job-worker.ts <worker-id> [lease-seconds]
import { runWorker } from '../../supabase/functions/jobs/worker.ts';

const workerId = Deno.args[0] ?? `worker-${crypto.randomUUID()}`;
const leaseSeconds = Number(Deno.args[1] ?? 30);
for (;;) {
  const ran = await runWorker({ workerId, budgetMs: 60_000, leaseSeconds });
  if (ran === 0) await new Promise((r) => setTimeout(r, 200));
}
