// Fault injection against real processes: the functions gateway killed around a webhook's
// commit, and Postgres restarted under load. Each scenario proves money is neither lost nor
// double-counted and that the service recovers with no manual step.
import assert from 'node:assert/strict';
import {
  api,
  assertLedgerInvariants,
  functionsUrl,
  newUser,
  reportUsage,
  spawnGateway,
  testDb,
  tick,
  until,
  userToken,
} from '../support/helpers.ts';
import { balanceOf, deliver, emulator, type SignedEvent, startCheckout } from '../support/purchases.ts';

const completion = (events: SignedEvent[]) =>
  events.find((e) => e.type === 'checkout.session.completed') as SignedEvent;

/** Delivers an event to a gateway armed to die at `point`; the connection drops, the process exits. */
async function deliverToDoomedGateway(point: string, event: SignedEvent) {
  const gw = spawnGateway({ FAILPOINTS: point });
  await gw.ready();
  try {
    const answered = await fetch(gw.url.replace(/\/functions\/v1$/, '') + '/functions/v1/stripe-webhook', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'stripe-signature': event.signature },
      body: event.payload,
    }).then((r) => r.status, () => 'no answer');
    assert.equal(answered, 'no answer', 'the gateway died before answering');
  } finally {
    await gw.kill();
  }
}

for (const [point, committed] of [['webhook.after_commit', true], ['webhook.before_commit', false]] as const) {
  Deno.test({
    name: `gateway killed ${committed ? 'after' : 'before'} the webhook's commit: Stripe's retry credits exactly once`,
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      const user = await newUser();
      const token = await userToken(user);
      const co = await startCheckout(token, 'starter');
      const { events } = await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { deliver: false });
      await deliverToDoomedGateway(point, completion(events));
      assert.equal((await balanceOf(token)).balance, committed ? '9990' : '0', 'what the crash left behind');
      // Stripe retries (to a healthy gateway), maybe more than once.
      for (let i = 0; i < 2; i++) assert.equal((await deliver(completion(events))).status, 200);
      assert.equal((await balanceOf(token)).balance, '9990');
      const [{ n }] = await testDb`select count(*)::int as n from billing.transfers t join billing.accounts a
        on a.id = t.to_account_id where a.user_id = ${user} and t.kind = 'purchase'`;
      assert.equal(n, 1);
    },
  });
}

Deno.test({
  name:
    'Postgres restarted under load: every answer is a success or a retryable 503; nothing half-written; it recovers',
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const users = await Promise.all(Array.from({ length: 8 }, () => newUser()));
    for (const u of users) await testDb`select billing.grant_credits(${u}, 1000, 'adjustment', ${'pg-restart:' + u})`;
    const tokens = await Promise.all(users.map((u) => userToken(u)));
    const outcomes = new Map<string, number>(); // key → final status
    const bad: string[] = [];
    let retried = 0;
    let slowest = 0; // ms
    let stop = false;
    // Bounded by time, not by a count of operations: a fast machine would finish a fixed count
    // before the restart and the test would prove nothing. Out at the first surprise.
    const deadline = Date.now() + 60_000;
    const loops = tokens.map(async (token) => {
      while (!stop && bad.length === 0 && Date.now() < deadline) {
        const key = crypto.randomUUID();
        // Like the client: the same key again after a retryable failure, a few times.
        for (let attempt = 0; attempt < 20; attempt++) {
          const started = performance.now();
          const r = await reportUsage('/credits/usage', {
            token,
            headers: { 'idempotency-key': key },
            body: { model: 'gpt-4o-mini', input_tokens: 1000, output_tokens: 0 },
          }).catch(() => ({ status: 0, body: {}, text: 'connection error' }));
          slowest = Math.max(slowest, performance.now() - started);
          outcomes.set(key, r.status);
          if (r.status === 201) break;
          const retryable = (r.body as { error?: { retryable?: boolean } }).error?.retryable;
          if (r.status < 500 || !retryable) {
            bad.push(`${r.status} ${r.text.slice(0, 120)}`);
            break;
          }
          retried++;
          await new Promise((ok) => setTimeout(ok, 250));
        }
      }
    });
    await new Promise((ok) => setTimeout(ok, 1500));
    const restart = new Deno.Command('bash', {
      args: ['-c', 'source scripts/lib.sh >/dev/null 2>&1; pg_stop; sleep 1; pg_start'],
      stdout: 'null',
      stderr: 'piped',
    });
    const { success, stderr } = await restart.output();
    assert.ok(success, new TextDecoder().decode(stderr));
    await new Promise((ok) => setTimeout(ok, 2500));
    stop = true;
    await Promise.all(loops);

    assert.deepEqual(bad, [], 'only successes and retryable failures');
    // The restart is felt either as retryable failures or, through pgbouncer (which queues
    // queries while its server is away), as requests held for the outage (Postgres is down ≥ 1 s).
    assert.ok(
      retried > 0 || slowest >= 1000,
      `the restart was felt (retried ${retried}, slowest ${slowest.toFixed(0)} ms)`,
    );
    const ok = [...outcomes].filter(([, s]) => s === 201).map(([k]) => k);
    assert.ok(ok.length > 10, 'load went through before and after the restart');
    // Every successful key moved money exactly once; a key that never succeeded moved nothing.
    const rows = await testDb<{ key: string; n: number }[]>`
      select split_part(t.idempotency_key, ':', 4) as key, count(*)::int as n from billing.transfers t
      join billing.accounts a on a.id = t.from_account_id
      where a.user_id = any(${users}::uuid[]) and t.kind = 'usage' group by 1`;
    const moved = new Map(rows.map((r) => [r.key, r.n]));
    for (const [key, status] of outcomes) assert.equal(moved.get(key) ?? 0, status === 201 ? 1 : 0, key);
    await assertLedgerInvariants();
    // Recovered without a hand: a fresh request succeeds.
    const fresh = await api('/credits/balance', { token: tokens[0] });
    assert.equal(fresh.status, 200);
    const ready = await fetch(`${functionsUrl}/health/readyz`);
    assert.equal(ready.status, 200);
    await ready.body?.cancel();
  },
});

Deno.test({
  name: 'a worker killed mid-way through a metered job: another resumes it and the hold is captured once',
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const user = await newUser();
    const token = await userToken(user);
    await testDb`select billing.grant_credits(${user}, 100, 'adjustment', ${'job-crash:' + user})`;
    const gw = spawnGateway({ AI_LOCAL_CHUNK_DELAY_MS: '500', JOBS_LEASE_SECONDS: '2' });
    let jobId = '';
    try {
      await gw.ready();
      const res = await fetch(`${gw.url}/jobs`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/json',
          'idempotency-key': crypto.randomUUID(),
        },
        body: JSON.stringify({
          type: 'ai_completion',
          input: { model: 'gpt-4o', prompt: 'one two three four', max_tokens: 50 },
        }),
      });
      jobId = (await res.json()).data.job_id;
      await until('the job to be running', async () => {
        const [j] = await testDb`select status, progress from billing.jobs where id = ${jobId}`;
        return j.status === 'processing' && j.progress > 5;
      });
    } finally {
      await gw.kill(); // SIGKILL mid-job: its lease stops being renewed
    }
    await new Promise((ok) => setTimeout(ok, 2200));
    await tick();
    const [job] = await until('the resumed job to finish', async () => {
      const rows = await testDb`select status, attempts, hold_id from billing.jobs where id = ${jobId}`;
      return rows[0].status === 'completed' ? rows : (await tick(), false);
    });
    assert.equal(job.attempts, 2);
    const [{ captures }] = await testDb`select count(*)::int as captures from billing.transfers
      where kind = 'hold_capture' and hold_id = ${job.hold_id}`;
    assert.equal(captures, 1, 'captured once');
    const b = (await api('/credits/balance', { token })).body.data as { held: string };
    assert.equal(b.held, '0', 'the rest of the hold was released');
    await assertLedgerInvariants();
  },
});

Deno.test({
  name: 'Stripe slow at checkout: 504 STRIPE_UNAVAILABLE (retryable); the same key later makes one session',
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const user = await newUser();
    const token = await userToken(user);
    const key = crypto.randomUUID();
    const gw = spawnGateway({ STRIPE_TIMEOUT_MS: '300' });
    try {
      await gw.ready();
      await emulator('/_emulator/faults', { latency_ms: 1500 });
      const slow = await fetch(`${gw.url}/checkout/sessions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': key },
        body: JSON.stringify({ package_id: 'mini' }),
      });
      const body = await slow.json();
      assert.equal(slow.status, 504);
      assert.equal(body.error.code, 'STRIPE_UNAVAILABLE');
      assert.equal(body.error.retryable, true);
    } finally {
      await emulator('/_emulator/faults', { latency_ms: 0 });
      await gw.kill();
    }
    const again = await api('/checkout/sessions', {
      token,
      headers: { 'idempotency-key': key },
      body: { package_id: 'mini' },
    });
    assert.equal(again.status, 201, again.text);
    const [{ n, sessions }] = await testDb`select count(*)::int as n, count(distinct stripe_session_id)::int as sessions
      from billing.purchases where user_id = ${user}`;
    assert.deepEqual({ n, sessions }, { n: 1, sessions: 1 });
  },
});
