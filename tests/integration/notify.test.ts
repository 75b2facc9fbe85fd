// Notifications: the HMAC authentication matrix, and the outbox's retries and final failure.
import assert from 'node:assert/strict';
import { env, functionsUrl, testDb } from '../support/helpers.ts';

const catcher = env('POSTMARK_API_BASE');
const secrets = env('NOTIFY_WEBHOOK_SECRET').split(',');

async function sign(body: string, secret = secrets[0], t = Math.floor(Date.now() / 1000)) {
  const enc = new TextEncoder();
  const key = await crypto.subtle.importKey('raw', enc.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, [
    'sign',
  ]);
  const mac = new Uint8Array(await crypto.subtle.sign('HMAC', key, enc.encode(`${t}.${body}`)));
  return `t=${t},v1=${Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

async function send(body: string, headers: Record<string, string>, path = '/notify/send') {
  const res = await fetch(`${functionsUrl}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body,
  });
  return { status: res.status, body: await res.json() };
}

/** The same signature with its last hex digit changed. */
const garble = (sig: string) => sig.slice(0, -1) + (sig.endsWith('0') ? '1' : '0');

const message = (key = crypto.randomUUID()) =>
  JSON.stringify({
    template: 'low_balance',
    to: `student-${key.slice(0, 8)}@example.com`,
    data: { balance: '12' },
    idempotency_key: key,
  });

/** Sends what earlier test files left due in the outbox, so each send here dispatches its own. */
async function drainOutbox() {
  for (let i = 0; i < 50; i++) {
    const r = await fetch(`${functionsUrl}/notify/dispatch`, {
      method: 'POST',
      headers: { authorization: `Bearer ${env('CRON_SECRET')}` },
    });
    const { data } = await r.json();
    if (data.sent + data.failed + data.retrying === 0) return;
  }
}
await drainOutbox();

async function received(to: string) {
  const { messages } = await (await fetch(`${catcher}/_catcher/messages`)).json();
  return (messages as Array<{ To: string; Subject: string }>).filter((m) => m.To === to);
}

Deno.test('a correctly signed request is accepted and the email is sent (both route names)', async () => {
  for (const path of ['/notify/send', '/notify/send-notification']) {
    const body = message();
    const r = await send(body, { 'x-signature': await sign(body) }, path);
    assert.equal(r.status, 200);
    const to = JSON.parse(body).to;
    const got = await received(to);
    assert.equal(got.length, 1);
    assert.equal(got[0].Subject, 'Your credit balance is low');
  }
});

Deno.test('bad, stale, future, unsigned or replayed-with-other-body requests are refused', async () => {
  const body = message();
  const t = Math.floor(Date.now() / 1000);
  const cases: Array<[string, Record<string, string>, string]> = [
    ['no signature', {}, body],
    ['a garbled signature', { 'x-signature': garble(await sign(body)) }, body],
    ['a stale timestamp', { 'x-signature': await sign(body, secrets[0], t - 301) }, body],
    ['a timestamp from the future', { 'x-signature': await sign(body, secrets[0], t + 330) }, body],
    ['the wrong secret', { 'x-signature': await sign(body, 'not-the-secret-at-all-0000') }, body],
    ['a signature for another body', { 'x-signature': await sign(body) }, message()],
    ['a wrong plain secret', { 'x-webhook-secret': 'wrong-secret-wrong-secret' }, body],
  ];
  for (const [what, headers, b] of cases) {
    const r = await send(b, headers);
    assert.equal(r.status, 401, what);
    assert.equal(r.body.error.code, 'SIGNATURE_INVALID', what);
  }
});

Deno.test('during rotation any configured secret verifies; the plain header works too', async () => {
  const body = message();
  const twoSignatures = `${await sign(body, 'an-old-secret-being-rotated-out')},${(await sign(body)).split(',')[1]}`;
  assert.equal((await send(body, { 'x-signature': twoSignatures })).status, 200);
  assert.equal((await send(message(), { 'x-webhook-secret': secrets[0] })).status, 200);
});

Deno.test('an unknown template is 400; a repeated idempotency key sends once', async () => {
  const bad = JSON.stringify({ template: 'spam', to: 'a@example.com', data: {}, idempotency_key: crypto.randomUUID() });
  const r = await send(bad, { 'x-signature': await sign(bad) });
  assert.equal(r.status, 400);
  assert.equal(r.body.error.code, 'UNKNOWN_TEMPLATE');
  const body = message();
  await send(body, { 'x-signature': await sign(body) });
  await send(body, { 'x-signature': await sign(body) });
  assert.equal((await received(JSON.parse(body).to)).length, 1);
});

Deno.test('a failing mail provider: the outbox retries with backoff, then marks the row failed', async () => {
  const key = crypto.randomUUID();
  const body = message(key);
  await fetch(`${catcher}/_catcher/faults`, { method: 'POST', body: JSON.stringify({ fail_next: 100 }) });
  try {
    const r = await send(body, { 'x-signature': await sign(body) });
    assert.equal(r.status, 200, 'the caller is not failed by a late email');
    for (let attempt = 2; attempt <= 5; attempt++) {
      await testDb`update billing.notification_outbox set next_attempt_at = now() where dedupe_key = ${
        'notify:' + key
      }`;
      const d = await fetch(`${functionsUrl}/notify/dispatch`, {
        method: 'POST',
        headers: { authorization: `Bearer ${env('CRON_SECRET')}` },
      });
      await d.body?.cancel();
    }
    const [row] =
      await testDb`select status, attempts, last_error from billing.notification_outbox where dedupe_key = ${
        'notify:' + key
      }`;
    assert.equal(row.status, 'failed');
    assert.equal(row.attempts, 5);
    assert.match(row.last_error, /postmark refused/);
    assert.ok(!row.last_error.includes(env('POSTMARK_SERVER_TOKEN')));
  } finally {
    await fetch(`${catcher}/_catcher/faults`, { method: 'POST', body: JSON.stringify({ fail_next: 0 }) });
  }
});

Deno.test("a purchase receipt in the outbox reaches the buyer's address, looked up at send time", async () => {
  const id = crypto.randomUUID();
  const email = `buyer-${id.slice(0, 8)}@example.com`;
  await testDb`insert into auth.users (id, email) values (${id}, ${email})`;
  await testDb`select billing.enqueue_notification('purchase_receipt', ${id}, ${'receipt-test:' + id},
    '{"purchase_id": "p1", "credits": "9990", "bonus_credits": "0", "price_cents": 999, "currency": "usd"}'::jsonb)`;
  await fetch(`${functionsUrl}/notify/dispatch`, {
    method: 'POST',
    headers: { authorization: `Bearer ${env('CRON_SECRET')}` },
  })
    .then((r) => r.body?.cancel());
  const got = await received(email);
  assert.equal(got.length, 1);
  assert.equal(got[0].Subject, 'Your ScholarLink credits receipt');
});
