// Operations: metrics parse as Prometheus text, SLOs over real recorded latencies, alerts
// fire and resolve, deep health, readiness checks, ai_logs consent, env-check.
import assert from 'node:assert/strict';
import parsePrometheus from 'parse-prometheus-text-format';
import { flushLatency, recordLatency } from '../../supabase/functions/_shared/http/latency.ts';
import { adminToken, api, env, fund, newUser, testDb, userToken, withGateway } from '../support/helpers.ts';

const admin = await adminToken();

Deno.test('GET /health/metrics is Prometheus text a real parser accepts, for admins or the metrics token', async () => {
  const res = await fetch(`${env('SUPABASE_URL')}/functions/v1/health/metrics`, {
    headers: { authorization: `Bearer ${env('METRICS_TOKEN')}` },
  });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
  const families = parsePrometheus(await res.text()) as Array<{ name: string; type: string; metrics: unknown[] }>;
  const names = families.map((f) => f.name);
  for (
    const expected of [
      'scholarlink_http_request_duration_ms',
      'scholarlink_webhook_events',
      'scholarlink_webhook_signature_failures_total',
      'scholarlink_outbox_backlog',
      'scholarlink_ledger_platform_balance',
      'scholarlink_ledger_user_balance_total',
      'scholarlink_ledger_org_balance_total',
      'scholarlink_charge_failure_ratio',
      'scholarlink_redis_breaker_open',
      'scholarlink_alerts_open',
    ]
  ) assert.ok(names.includes(expected), `${expected} missing`);
  assert.equal(families.find((f) => f.name === 'scholarlink_http_request_duration_ms')?.type, 'HISTOGRAM');
  const student = await userToken(await newUser());
  assert.equal((await api('/health/metrics', { token: student })).status, 403);
  assert.equal(
    (await api('/health/metrics', { headers: { authorization: 'Bearer wrong-token-wrong-token' } })).status,
    401,
  );
});

Deno.test('GET /health/slo reports percentiles and burn from latencies every instance recorded', async () => {
  const route = `GET /slo-test-${crypto.randomUUID().slice(0, 8)}`;
  for (let i = 0; i < 90; i++) recordLatency(route, 200, 20);
  for (let i = 0; i < 10; i++) recordLatency(route, 503, 400);
  await flushLatency();
  // A gateway of its own: the shared one's Redis breaker may be open after earlier load.
  let body: { data: { windows: Record<string, Record<string, Record<string, unknown>>> } } | undefined;
  await withGateway({}, async (url) => {
    const res = await fetch(`${url}/health/slo`, { headers: { authorization: `Bearer ${admin}` } });
    assert.equal(res.status, 200);
    body = await res.json();
  });
  const w = body?.data.windows ?? {};
  for (const window of ['5m', '1h', '24h']) {
    const s = w[window][route];
    assert.equal(s.requests, 100, window);
    assert.equal(s.p50_ms, 25);
    assert.equal(s.p95_ms, 500);
    assert.equal(s.error_rate, 0.1);
    assert.equal(Math.round((s.burn_rate as { availability: number }).availability), 20);
  }
  assert.equal((await api('/health/slo', { token: await userToken(await newUser()) })).status, 403);
});

Deno.test('an alert fires once for failing webhooks, is delivered through the outbox, and resolves', async () => {
  const id = `evt_test_${crypto.randomUUID()}`;
  await testDb`insert into billing.stripe_events (id, type, api_created, livemode, status, attempts, last_error)
    values (${id}, 'checkout.session.completed', now(), false, 'failed', 3, 'WEBHOOK_PROCESSING_FAILED')`;
  try {
    await testDb`select billing.evaluate_alerts()`;
    await testDb`select billing.evaluate_alerts()`;
    const open =
      await testDb`select id, condition from billing.alerts where condition = 'webhook_failures' and status = 'open'`;
    assert.equal(open.length, 1, 'one open alert per condition');
    const [outbox] = await testDb`select template from billing.notification_outbox where dedupe_key = ${
      'alert:' + open[0].id
    }`;
    assert.equal(outbox.template, 'alert');
    const listed = await api('/health/alerts', { token: admin });
    assert.ok(
      (listed.body.data as { items: { condition: string }[] }).items.some((a) => a.condition === 'webhook_failures'),
    );
  } finally {
    await testDb`delete from billing.stripe_events where id = ${id}`;
  }
  await testDb`select billing.evaluate_alerts()`;
  const [{ n }] =
    await testDb`select count(*)::int as n from billing.alerts where condition = 'webhook_failures' and status = 'open'`;
  assert.equal(n, 0, 'the alert resolves when the condition clears');
});

Deno.test('the charge failure alert needs both a rate above 0.5% and a minimum volume', async () => {
  const ids: string[] = [];
  const add = async (type: string, count: number) => {
    for (let i = 0; i < count; i++) {
      const id = `evt_rate_${crypto.randomUUID()}`;
      ids.push(id);
      await testDb`insert into billing.stripe_events (id, type, api_created, livemode, status) values (${id}, ${type}, now(), false, 'processed')`;
    }
  };
  try {
    await add('payment_intent.payment_failed', 2);
    await testDb`select billing.evaluate_alerts()`;
    const [low] =
      await testDb`select count(*)::int as n from billing.alerts where condition = 'charge_failure_rate' and status = 'open'`;
    const [{ charges }] = await testDb`select count(*)::int as charges from billing.stripe_events
      where type in ('charge.succeeded', 'payment_intent.payment_failed') and api_created > now() - interval '1 hour'`;
    if (charges < 20) assert.equal(low.n, 0, 'below the minimum volume nothing fires');
    await add('charge.succeeded', 30);
    // Charges other tests made in the last hour count too: enough failures for a rate of 1%.
    const [{ failed, total }] =
      await testDb`select count(*) filter (where type = 'payment_intent.payment_failed')::int as failed,
      count(*)::int as total from billing.stripe_events
      where type in ('charge.succeeded', 'payment_intent.payment_failed') and api_created > now() - interval '1 hour'`;
    await add('payment_intent.payment_failed', Math.max(0, Math.ceil((0.01 * total - failed) / 0.99) + 1));
    await testDb`select billing.evaluate_alerts()`;
    const [high] =
      await testDb`select count(*)::int as n from billing.alerts where condition = 'charge_failure_rate' and status = 'open'`;
    assert.equal(high.n, 1);
  } finally {
    await testDb`delete from billing.stripe_events where id = any(${ids})`;
    await testDb`select billing.evaluate_alerts()`;
  }
});

Deno.test('POST /health/deep checks every dependency for real and keeps the result', async () => {
  const r = await api('/health/deep', { token: admin, method: 'POST' });
  assert.equal(r.status, 200, r.text);
  const checks = (r.body.data as { checks: Record<string, { status: string }> }).checks;
  assert.deepEqual(Object.keys(checks).sort(), [
    'ai_gateway_provider',
    'ai_provider',
    'database',
    'jwks',
    'postmark',
    'stripe',
    'upstash',
  ]);
  assert.ok(Object.values(checks).every((c) => c.status === 'ok'));
  const [last] = await testDb`select ok from billing.health_checks order by checked_at desc limit 1`;
  assert.equal(last.ok, true);
  assert.equal((await api('/health/deep', { method: 'POST' })).status, 401);
});

Deno.test('readyz reports Stripe configuration, Redis and the outbox', async () => {
  const r = await api('/health/readyz');
  const checks = (r.body.data as { checks: Record<string, { status: string }> }).checks;
  assert.equal(checks.stripe_config.status, 'ok');
  assert.ok(['ok', 'degraded', 'open'].includes(checks.redis.status));
  assert.ok(['ok', 'degraded'].includes(checks.outbox.status));
});

Deno.test('ai_logs keep text only with consent, redacted, and expire in 30 days', async () => {
  const id = await newUser();
  await fund(id, '10');
  const token = await userToken(id);
  const prompt = 'email me at jane.doe@example.com please';
  for (const keep of [false, true]) {
    await api('/ai/v1/content-consent', { method: 'PUT', token, body: { keep_content: keep } });
    const r = await api('/jobs', {
      token,
      headers: { 'idempotency-key': crypto.randomUUID() },
      body: { type: 'ai_completion', input: { model: 'gpt-4o', prompt, max_tokens: 10 } },
    });
    assert.equal(r.status, 202);
    for (let i = 0; i < 100; i++) {
      await api('/jobs/worker/tick', { method: 'POST', headers: { authorization: `Bearer ${env('CRON_SECRET')}` } });
      const [{ running }] = await testDb`select count(*)::int as running from billing.jobs
        where user_id = ${id} and status <> 'completed'`;
      if (running === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const rows = await testDb`select consent_level, prompt_redacted, input_tokens, expires_at - created_at as ttl
    from billing.ai_logs where user_id = ${id} order by consent_level`;
  assert.equal(rows.length, 2);
  const [content, none] = rows;
  assert.equal(none.prompt_redacted, null);
  assert.equal(content.prompt_redacted, 'email me at [EMAIL] please');
  assert.equal(content.input_tokens, 5); // the local provider counts words
  assert.equal(content.ttl.days ?? 30, 30);
});

Deno.test('./scripts/env-check names missing variables (never values) and exits non-zero', async () => {
  const run = (extra: Record<string, string>) =>
    new Deno.Command('./scripts/env-check', { args: ['--function', 'checkout'], env: extra, stdout: 'piped' }).output();
  const good = await run({});
  const out = new TextDecoder().decode(good.stdout);
  assert.equal(good.code, 0, out);
  assert.ok(!out.includes(env('STRIPE_SECRET_KEY')), 'a value was printed');
  const bad = await run({ STRIPE_MODE: 'live', CHECKOUT_SUCCESS_URL: '' });
  const text = new TextDecoder().decode(bad.stdout);
  assert.equal(bad.code, 1);
  assert.match(text, /MISSING\s+required\s+CHECKOUT_SUCCESS_URL/);
  assert.match(text, /MISMATCH\s+stripe/);
});
