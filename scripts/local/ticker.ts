// Stands in for the hosted pg_cron + pg_net schedule: calls the jobs worker tick and the
// notification dispatcher every few seconds.
const base = `${Deno.env.get('SUPABASE_URL')}/functions/v1`;
const urls = [`${base}/jobs/worker/tick`, `${base}/notify/dispatch`];
const secret = Deno.env.get('CRON_SECRET') ?? '';
const everyMs = Number(Deno.env.get('JOBS_TICK_INTERVAL_MS') ?? 2000);

for (;;) {
  for (const url of urls) {
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
