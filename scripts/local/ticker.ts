// Stands in for the hosted pg_cron + pg_net schedule (billing.call_function): calls the jobs
// worker tick and the notification dispatcher every few seconds, the deep health check hourly,
// and the providers' reconciliation of the day before once a day.
const base = `${Deno.env.get('SUPABASE_URL')}/functions/v1`;
const urls = [`${base}/jobs/worker/tick`, `${base}/notify/dispatch`];
let lastDeep = 0;
let lastReconciledOn = '';
const secret = Deno.env.get('CRON_SECRET') ?? '';
const everyMs = Number(Deno.env.get('JOBS_TICK_INTERVAL_MS') ?? 2000);

for (;;) {
  const due = Date.now() - lastDeep >= 3_600_000 ? [`${base}/health/deep`] : [];
  if (due.length) lastDeep = Date.now();
  const today = new Date().toISOString().slice(0, 10);
  if (today !== lastReconciledOn) {
    lastReconciledOn = today;
    due.push(`${base}/providers/reconciliation/run`);
  }
  for (const url of [...urls, ...due]) {
    try {
      const res = await fetch(url, { method: 'POST', headers: { authorization: `Bearer ${secret}` } });
      await res.body?.cancel();
      if (!res.ok) console.error(`${url} answered ${res.status}`);
    } catch (err) {
      console.error(`${url} failed:`, err instanceof Error ? err.message : err);
    }
  }
  await new Promise((r) => setTimeout(r, everyMs));
}
