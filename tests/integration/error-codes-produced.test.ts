// Every documented error code that a request can cause, caused by a real request against the
// local stack and checked against its row in docs/api.md (type and HTTP status). Codes only a
// fault can cause run on a throw-away gateway with one thing broken (or, for a payment whose
// amount is not the price, with the price changed under it); codes only reachable inside SQL
// are in supabase/tests/99-error-codes.test.sql; BAD_REQUEST (a framework's own 4xx)
// in tests/functions/app-skeleton.test.ts. tests/unit/error-codes-documented.test.ts checks
// that every documented code is asserted somewhere.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  functionsUrl,
  fund,
  newUser,
  reportUsage,
  testDb,
  userToken,
  withGateway,
} from '../support/helpers.ts';
import { key, person, school } from '../support/orgs.ts';
import { balanceOf, buy, deliver, emulator, startCheckout } from '../support/purchases.ts';
import { createPayment, newProvider } from '../support/providers.ts';

const table = await Deno.readTextFile(new URL('../../docs/api.md', import.meta.url));
/** The documented type and status of a code. */
function documented(code: string): { type: string; status: number } {
  const row = new RegExp(`^\\| \`${code}\` \\| (\\w+) \\| (\\d{3}) \\|`, 'm').exec(table);
  assert.ok(row, `${code} is in the error-code table`);
  return { type: row[1], status: Number(row[2]) };
}

type Answer = { status: number; body: Record<string, unknown>; text?: string };
/** Asserts that an answer is `code`, as documented. */
function assertCode(r: Answer, code: string) {
  const { type, status } = documented(code);
  const error = r.body.error as { type: string; code: string } | undefined;
  assert.equal(error?.code, code, JSON.stringify(r.body));
  assert.equal(error.type, type, `${code}'s type`);
  assert.equal(r.status, status, `${code}'s status`);
}

async function raw(base: string, path: string, init: RequestInit = {}): Promise<Answer> {
  const res = await fetch(`${base}${path}`, init);
  const text = await res.text();
  return { status: res.status, body: JSON.parse(text), text };
}
const json = (body: unknown, headers: Record<string, string> = {}) => ({
  method: 'POST',
  headers: { 'content-type': 'application/json', ...headers },
  body: typeof body === 'string' ? body : JSON.stringify(body),
});

Deno.test('sign-in: a wrong password, an unreadable body, and Auth down or not configured', async () => {
  const email = `pw-${crypto.randomUUID().slice(0, 8)}@example.test`;
  await testDb`insert into auth.users (id, email, encrypted_password, email_confirmed_at)
    values (gen_random_uuid(), ${email}, extensions.crypt('the right one', extensions.gen_salt('bf')), now())`;
  const wrong = json({ email, password: 'the wrong one' });
  assertCode(await raw(functionsUrl, '/admin/session', wrong), 'INVALID_CREDENTIALS');
  assertCode(await raw(functionsUrl, '/admin/session', json('{"email":')), 'INVALID_JSON');
  // Hosted Supabase gives functions an anon key; a project without one has no password sign-in.
  await withGateway({ SUPABASE_ANON_KEY: '', SUPABASE_PUBLISHABLE_KEYS: '' }, async (url) => {
    assertCode(await raw(url, '/admin/session', wrong), 'PASSWORD_SIGN_IN_UNAVAILABLE');
  });
  // Auth itself not answering (its address refuses connections).
  await withGateway({ SUPABASE_URL: 'http://127.0.0.1:9' }, async (url) => {
    assertCode(await raw(url, '/admin/session', wrong), 'AUTH_UNAVAILABLE');
  });
});

Deno.test('a function that throws while starting answers FUNCTION_BOOT_ERROR, and the others still work', async () => {
  const name = `boot-test-${crypto.randomUUID().slice(0, 8)}`;
  const dir = new URL(`../../supabase/functions/${name}/`, import.meta.url);
  await Deno.mkdir(dir);
  try {
    await Deno.writeTextFile(new URL('index.ts', dir), "throw new Error('a missing secret at import time');\n");
    assertCode(await raw(functionsUrl, `/${name}`), 'FUNCTION_BOOT_ERROR');
    assert.equal((await raw(functionsUrl, '/health/healthz')).status, 200);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test('SLO figures with Redis down: METRICS_UNAVAILABLE', async () => {
  await withGateway({ UPSTASH_REDIS_REST_URL: 'http://127.0.0.1:9' }, async (url) => {
    const r = await raw(url, '/health/slo', { headers: { authorization: `Bearer ${await adminToken()}` } });
    assertCode(r, 'METRICS_UNAVAILABLE');
  });
});

Deno.test('credits: a malformed Idempotency-Key, caps, cap alerts, lots and captures', async () => {
  const user = await newUser();
  const token = await userToken(user);
  await fund(user, '10');
  const usage = { model: 'gpt-4o-mini', input_tokens: 10, output_tokens: 10 };
  assertCode(
    await reportUsage('/credits/usage', { token, body: usage, headers: { 'idempotency-key': 'has a space' } }),
    'IDEMPOTENCY_KEY_INVALID',
  );

  const cap = (body: unknown) => api('/credits/caps', { method: 'PUT', token, body });
  assertCode(await cap({ period: 'day', time_zone: 'Mars/Olympus_Mons', amount: '5' }), 'INVALID_CAP');
  const alerts = (percents: number[]) =>
    api('/credits/alerts/caps', { method: 'PUT', token, body: { period: 'week', model: null, percents } });
  assertCode(await alerts([50]), 'CAP_NOT_FOUND');
  assert.equal((await cap({ period: 'week', amount: '5' })).status, 200);
  assertCode(await alerts([33]), 'INVALID_ALERT');

  const grant = await api('/credits/grants', {
    token: await adminToken(),
    headers: key(),
    body: { user_id: user, amount: '1', reason: 'an expired lot', lot: { expires_at: '2001-01-01T00:00:00Z' } },
  });
  assertCode(grant, 'INVALID_LOT');

  const hold = await api('/credits/holds', { token, headers: key(), body: { amount: '2' } });
  assert.equal(hold.status, 201, hold.text);
  const id = (hold.body.data as { hold_id: string }).hold_id;
  assertCode(
    await api(`/credits/holds/${id}/capture`, { token, headers: key(), body: { amount: '3' } }),
    'CAPTURE_EXCEEDS_HOLD',
  );
  const [{ n }] =
    await testDb`select count(*)::int as n from billing.transfers t join billing.accounts a on a.id = t.from_account_id
    where a.user_id = ${user}`;
  assert.equal(n, 0, 'nothing was spent by any refused request');
});

Deno.test('orgs: the wrong funding mode, a bad term, an unknown member, a second invitation', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'pool', null);
  assertCode(
    await api(`/orgs/${org}/allowances`, { token: owner.token, headers: key(), body: { amount: '1' } }),
    'ORG_FUNDING_MODE',
  );
  assertCode(
    await api(`/orgs/${org}`, { method: 'PATCH', token: owner.token, body: { term_ends_at: '2001-01-01T00:00:00Z' } }),
    'INVALID_ORG',
  );
  assertCode(
    await api(`/orgs/${org}/members/${crypto.randomUUID()}`, { method: 'DELETE', token: owner.token }),
    'MEMBER_NOT_FOUND',
  );
  const invite = () => api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: 'twice@school.test' } });
  assert.equal((await invite()).status, 201);
  assertCode(await invite(), 'INVITATION_PENDING');
});

Deno.test('checkout: unknown and unrefundable purchases, a checkout in progress, Stripe refusing', async () => {
  const user = await newUser();
  const token = await userToken(user);
  const admin = await adminToken();
  assertCode(await api(`/checkout/sessions/${crypto.randomUUID()}`, { token }), 'PURCHASE_NOT_FOUND');
  const pending = await startCheckout(token, 'mini');
  assertCode(
    await api('/checkout/refunds', { token: admin, headers: key(), body: { purchase_id: pending.purchase_id } }),
    'PURCHASE_NOT_REFUNDABLE',
  );
  // Another request for the same package is still creating its Stripe session.
  await testDb`select billing.begin_checkout(${user}, 'starter', ${'in-flight:' + user})`;
  const second = await api('/checkout/sessions', { token, headers: key(), body: { package_id: 'starter' } });
  assertCode(second, 'CHECKOUT_IN_PROGRESS');
  // Stripe refuses a refund larger than the charge (a 400 from Stripe, passed on as a 502).
  const paid = await buy(token, 'mini');
  const tooMuch = await api('/checkout/refunds', {
    token: admin,
    headers: key(),
    body: { purchase_id: paid.purchase_id, amount_cents: 501 },
  });
  assertCode(tooMuch, 'STRIPE_ERROR');
});

Deno.test('jobs: an unknown job, and a result asked for before it is ready', async () => {
  const user = await newUser();
  const token = await userToken(user);
  await fund(user, '10');
  assertCode(await api(`/jobs/${crypto.randomUUID()}`, { token }), 'JOB_NOT_FOUND');
  // The minute's worker tick (pg_cron) may finish a job between its creation and the next
  // request: a job found completed is answered 200, and another is asked for.
  let early = 0;
  for (;;) {
    const job = await api('/jobs', {
      token,
      headers: key(),
      body: { type: 'ai_completion', input: { model: 'gpt-4o', prompt: 'one two three', max_tokens: 10 } },
    });
    assert.equal(job.status, 202, job.text);
    const result = await api(`/jobs/${(job.body.data as { job_id: string }).job_id}/result`, { token });
    if (result.status === 200 && ++early < 3) continue;
    assertCode(result, 'JOB_NOT_COMPLETED');
    break;
  }
});

Deno.test('providers: unknown and unrefundable payments, a day never reconciled', async () => {
  const admin = await adminToken();
  const p = await newProvider();
  const refund = (id: string) =>
    api(`/providers/${p.id}/payments/${id}/refunds`, { token: admin, headers: key(), body: {} });
  assertCode(await refund(crypto.randomUUID()), 'PAYMENT_NOT_FOUND');
  const pending = await createPayment(p, 1_000);
  assert.equal(pending.status, 201, pending.text);
  assertCode(await refund((pending.body.data as { payment_id: string }).payment_id), 'PAYMENT_NOT_REFUNDABLE');
  // A day in the 1980s no run has covered (the database outlives test runs locally).
  const never = new Date(Date.UTC(1980, 0, 1 + Math.floor(Math.random() * 3650))).toISOString().slice(0, 10);
  assertCode(await api(`/providers/reconciliation?date=${never}`, { token: admin }), 'RECONCILIATION_NOT_FOUND');
});

Deno.test('POST /providers for an owner_user_id that names no user answers 404 USER_NOT_FOUND', async () => {
  const owner = crypto.randomUUID();
  const r = await api('/providers', {
    token: await adminToken(),
    headers: key(),
    body: { name: 'Ada Lovelace Scholarship Fund', email: 'fund@example.org', country: 'US', owner_user_id: owner },
  });
  assertCode(r, 'USER_NOT_FOUND');
  const [{ n }] = await testDb`select count(*)::int as n from billing.providers where owner_user_id = ${owner}`;
  assert.equal(n, 0, 'no provider was created');
});

// Our price changed under a session the customer then paid: Stripe's amount is not the price.
Deno.test('a paid amount that is not the price credits nothing: 500 PAYMENT_AMOUNT_MISMATCH on the status poll', async () => {
  const token = await userToken(await newUser());
  const co = await startCheckout(token, 'mini');
  const [{ price }] =
    await testDb`update billing.purchases set price_cents = price_cents - 1 where id = ${co.purchase_id}
    returning price_cents + 1 as price`;
  const { events } = await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { deliver: false });
  const failures = events.filter((e) => e.type === 'checkout.session.completed');
  assert.equal(failures.length, 1, 'Stripe sent checkout.session.completed');
  try {
    // The webhook answers Stripe with a retryable 500 and records why.
    const hook = await deliver(failures[0]);
    assert.equal(hook.status, 500, JSON.stringify(hook.body));
    assert.equal((hook.body.error as { code: string }).code, 'WEBHOOK_PROCESSING_FAILED');
    const [event] = await testDb`select status, last_error from billing.stripe_events where id = ${failures[0].id}`;
    assert.deepEqual({ ...event }, { status: 'failed', last_error: 'PAYMENT_AMOUNT_MISMATCH' });
    // The customer's status poll runs the same fulfilment and answers with the code itself.
    assertCode(await api(`/checkout/sessions/${co.purchase_id}`, { token }), 'PAYMENT_AMOUNT_MISMATCH');
    const [{ status }] = await testDb`select status from billing.purchases where id = ${co.purchase_id}`;
    assert.equal(status, 'pending', 'the purchase stays pending');
    assert.equal((await balanceOf(token)).balance, '0', 'no credits were granted');
  } finally {
    // Put the price back so no sweeper meets this purchase again; the next poll then converges.
    await testDb`update billing.purchases set price_cents = ${price} where id = ${co.purchase_id}`;
  }
  const after = await api(`/checkout/sessions/${co.purchase_id}`, { token });
  assert.equal((after.body.data as { status: string }).status, 'paid', after.text);
  // Stripe's retry of the failed event now succeeds, and changes nothing more.
  assert.equal((await deliver(failures[0])).status, 200);
  const [retried] = await testDb`select status from billing.stripe_events where id = ${failures[0].id}`;
  assert.equal(retried.status, 'processed');
  assert.equal((await balanceOf(token)).balance, '5000', 'credited once');
});
