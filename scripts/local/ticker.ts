// Stands in for the hosted pg_cron + pg_net schedule: calls the jobs worker tick every few
// seconds so queued jobs run even when nothing else kicks them.
const url = `${Deno.env.get('SUPABASE_URL')}/functions/v1/jobs/worker/tick`;
const secret = Deno.env.get('JOBS_CRON_SECRET') ?? '';
const everyMs = Number(Deno.env.get('JOBS_TICK_INTERVAL_MS') ?? 2000);

for (;;) {
  try {
    const res = await fetch(url, { method: 'POST', headers: { authorization: `Bearer ${secret}` } });
    await res.body?.cancel();
    if (!res.ok) console.error(`tick answered ${res.status}`);
  } catch (err) {
    console.error('tick failed:', err instanceof Error ? err.message : err);
  }
  await new Promise((r) => setTimeout(r, everyMs));
}
