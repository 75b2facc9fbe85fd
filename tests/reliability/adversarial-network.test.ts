// Adversarial traffic at the network edge: forged client addresses (per-address limits key on the
// address the platform sets, never the client's own X-Forwarded-For), a Stripe signature header
// with two timestamps (refused), bodies far over the limit, declared or streamed (413, read no
// further than the limit), and floods of bad signatures on the unauthenticated routes (limited
// per address, and no refusal waits on one counter row).
import assert from 'node:assert/strict';
import {
  clearOfWindowEdge,
  counting,
  env,
  functionsUrl,
  newUser,
  testDb,
  until,
  userToken,
  withGateway,
} from '../support/helpers.ts';
import { balanceOf, emulator, sign, type SignedEvent, startCheckout } from '../support/purchases.ts';

const webhookSecret = env('STRIPE_WEBHOOK_SECRET').split(',')[0];
const enc = new TextEncoder();
const dec = new TextDecoder();

/** A loopback address of its own (Linux routes all of 127/8 to lo): fresh limit windows. */
const freshAddress = () =>
  `127.${1 + Math.floor(Math.random() * 254)}.${Math.floor(Math.random() * 256)}.${
    2 + Math.floor(Math.random() * 250)
  }`;

/** fetch from a given local address, as a different client machine would connect. */
async function fromAddress<T>(address: string, fn: (client: Deno.HttpClient) => Promise<T>): Promise<T> {
  const client = Deno.createHttpClient({ localAddress: address });
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

async function post(client: Deno.HttpClient, url: string, body: string, headers: Record<string, string>) {
  const res = await fetch(url, {
    method: 'POST',
    client,
    headers: { 'content-type': 'application/json', ...headers },
    body,
  });
  return { status: res.status, headers: res.headers, body: await res.json() };
}

async function completion(): Promise<{ token: string; e: SignedEvent }> {
  const token = await userToken(await newUser());
  const co = await startCheckout(token, 'mini');
  const { events } = await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { deliver: false });
  return { token, e: events.find((x) => x.type === 'checkout.session.completed') as SignedEvent };
}

// ---------------------------------------------------------------- client address (point 2)

Deno.test('per-IP limits key on the address the platform sets: a rotating X-Forwarded-For or a forged cf-connecting-ip buys nothing', async () => {
  const overrides = { ...counting, RATE_LIMIT_IP_PER_MIN: '5', RATE_LIMIT_DEFAULT_PER_MIN: '1000000' };
  await withGateway(overrides, async (url) => {
    await clearOfWindowEdge();
    const attacker = freshAddress();
    const statuses = await fromAddress(attacker, async (client) => {
      const out = [];
      for (let i = 0; i < 8; i++) {
        const forged = `203.0.113.${i + 1}`;
        const res = await fetch(`${url}/credits/balance`, {
          client,
          headers: { 'x-forwarded-for': forged, 'cf-connecting-ip': forged, 'x-real-ip': forged },
        });
        const body = await res.json();
        out.push(res.status === 429 ? `429 ${body.error.details.layer}` : String(res.status));
      }
      return out;
    });
    assert.deepEqual(statuses, ['401', '401', '401', '401', '401', '429 ip', '429 ip', '429 ip']);
    const other = await fromAddress(freshAddress(), async (client) => {
      const res = await fetch(`${url}/credits/balance`, { client, headers: { 'x-forwarded-for': attacker } });
      await res.body?.cancel();
      return res.status;
    });
    assert.equal(other, 401, 'another address has its own budget, even when it names the throttled one');
  });
});

Deno.test('checkout velocity per IP uses the same trusted address: three users behind one address, rotating X-Forwarded-For', async () => {
  const tokens = await Promise.all([1, 2, 3].map(async () => await userToken(await newUser())));
  const overrides = { VELOCITY_IP_SESSIONS_PER_10_MIN: '2', RATE_LIMIT_CHECKOUT_SESSIONS_PER_MIN: '1000' };
  await withGateway(overrides, async (url) => {
    const results = await fromAddress(freshAddress(), async (client) => {
      const out = [];
      for (const [i, token] of tokens.entries()) {
        out.push(
          await post(client, `${url}/checkout/sessions`, JSON.stringify({ package_id: 'mini' }), {
            authorization: `Bearer ${token}`,
            'idempotency-key': crypto.randomUUID(),
            'x-forwarded-for': `198.51.100.${i + 1}`,
          }),
        );
      }
      return out;
    });
    assert.deepEqual(results.map((r) => r.status), [201, 201, 429]);
    assert.equal(results[2].body.error.code, 'VELOCITY_LIMIT');
    assert.equal(results[2].body.error.details.rule, 'sessions_per_10_min');
  });
});

// ---------------------------------------------------------------- webhook timestamps (point 5)

Deno.test('a Stripe-Signature with two timestamps is refused: t=<now>,t=<future>,v1=<signed over the future>', async () => {
  const { token, e } = await completion();
  const now = Math.floor(Date.now() / 1000);
  const future = await sign(e.payload, webhookSecret, now + 10_000); // "t=<future>,v1=<sig>"
  const pastThenNow = await sign(e.payload, webhookSecret, now);
  const cases: [string, string][] = [
    ['t=<now> first, the signed future time last', `t=${now},${future}`],
    ['a future t= first, the signed present last', `t=${now + 10_000},${pastThenNow}`],
    ['two present timestamps that differ by one second', `t=${now - 1},${pastThenNow}`],
  ];
  for (const [what, signature] of cases) {
    const res = await fetch(`${functionsUrl}/stripe-webhook`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'stripe-signature': signature },
      body: e.payload,
    });
    const body = await res.json();
    assert.equal(res.status, 400, what);
    assert.equal(body.error.code, 'SIGNATURE_INVALID', what);
  }
  const [{ n }] = await testDb`select count(*)::int as n from billing.stripe_events where id = ${e.id}`;
  assert.equal(n, 0, 'nothing recorded');
  assert.equal((await balanceOf(token)).balance, '0', 'no credits granted');
});

// ---------------------------------------------------------------- bodies (point 6)

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
}

/**
 * Raw HTTP/1.1 on a socket, which fetch cannot do (declare a length and not send it): sends the
 * head, runs `write` for the body alongside reading the answer, and returns the status and how
 * many body bytes had been sent when the status line arrived (0 status: no answer in 20 s).
 */
async function rawRequest(
  url: string,
  path: string,
  headers: Record<string, string>,
  write: (conn: Deno.Conn, sent: { bytes: number }) => Promise<void>,
): Promise<{ status: number; sentBeforeAnswer: number; ms: number }> {
  const u = new URL(url);
  const conn = await Deno.connect({ hostname: u.hostname, port: Number(u.port) });
  const head = [`POST ${u.pathname}${path} HTTP/1.1`, `host: ${u.host}`, 'content-type: application/json']
    .concat(Object.entries(headers).map(([k, v]) => `${k}: ${v}`));
  const started = performance.now();
  await writeAll(conn, enc.encode(head.join('\r\n') + '\r\n\r\n'));
  const sent = { bytes: 0 };
  const writing = write(conn, sent).catch(() => {}); // the server may close on us: expected
  const status = (async () => {
    const buf = new Uint8Array(4096);
    let text = '';
    while (!text.includes('\r\n')) {
      const n = await conn.read(buf);
      if (n === null) return 0;
      text += dec.decode(buf.subarray(0, n));
    }
    return Number(text.split(' ')[1]);
  })();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<number>((r) => (timer = setTimeout(() => r(0), 20_000)));
  try {
    const s = await Promise.race([status, timeout]);
    return { status: s, sentBeforeAnswer: sent.bytes, ms: performance.now() - started };
  } finally {
    clearTimeout(timer);
    conn.close();
    await writing;
    await status.catch(() => {});
  }
}

// Bad signatures, and the status each route refuses them with.
const notifySend = { path: '/notify/send', headers: { 'x-signature': 't=1,v1=00' }, refused: 401 };
const webhook = { path: '/stripe-webhook', headers: { 'stripe-signature': 't=1,v1=00' }, refused: 400 };

Deno.test('a declared Content-Length over the limit is 413 at once, before any body is sent (webhook, notify, an authenticated route)', async () => {
  // Usage is reported by the product's server with the service role key (a user token is refused).
  const server = env('SUPABASE_SERVICE_ROLE_KEY');
  const routes = [
    webhook,
    notifySend,
    { path: '/credits/usage', headers: { authorization: `Bearer ${server}`, 'idempotency-key': crypto.randomUUID() } },
  ];
  for (const r of routes) {
    const res = await rawRequest(
      functionsUrl,
      r.path,
      { ...r.headers, 'content-length': String(40 * 1024 * 1024) },
      async (conn, sent) => {
        await writeAll(conn, enc.encode('{'));
        sent.bytes = 1;
      },
    );
    assert.equal(res.status, 413, `${r.path}: answered ${res.status || 'nothing in 20 s'}`);
    assert.ok(res.ms < 5000, `${r.path}: took ${Math.round(res.ms)} ms`);
  }
});

/** A gateway process of our own, to read its peak memory (VmHWM) from /proc. */
async function gatewayWithPid() {
  const probe = Deno.listen({ hostname: '127.0.0.1', port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const child = new Deno.Command(Deno.execPath(), {
    args: ['run', '-A', 'scripts/local/gateway.ts'],
    env: { GATEWAY_PORT: String(port) },
    stdout: 'null',
    stderr: 'null',
  }).spawn();
  const url = `http://127.0.0.1:${port}/functions/v1`;
  await until(
    'the gateway',
    () => fetch(`${url}/health/healthz`).then((r) => r.body?.cancel().then(() => true), () => false),
  );
  const peakMb = async () =>
    Number((await Deno.readTextFile(`/proc/${child.pid}/status`)).match(/VmHWM:\s+(\d+)/)?.[1]) / 1024;
  return { url, peakMb, stop: async () => (child.kill('SIGKILL'), await child.status) };
}

Deno.test('a 40 MB chunked body is refused while streaming: read no further than the limit, no 40 MB in memory', async () => {
  const chunk = enc.encode('a'.repeat(64 * 1024));
  const frame = new Uint8Array([...enc.encode(`${chunk.length.toString(16)}\r\n`), ...chunk, ...enc.encode('\r\n')]);
  const total = 40 * 1024 * 1024;
  const gw = await gatewayWithPid();
  try {
    for (const r of [webhook, notifySend]) {
      await fetch(`${gw.url}${r.path}`, { method: 'POST', headers: r.headers, body: '{}' }).then((x) =>
        x.body?.cancel()
      );
      const before = await gw.peakMb(); // the function loaded and warm
      const res = await rawRequest(
        gw.url,
        r.path,
        { ...r.headers, 'transfer-encoding': 'chunked' },
        async (conn, sent) => {
          while (sent.bytes < total) {
            await writeAll(conn, frame);
            sent.bytes += chunk.length;
          }
          await writeAll(conn, enc.encode('0\r\n\r\n'));
        },
      );
      assert.equal(res.status, 413, `${r.path}: answered ${res.status || 'nothing in 20 s'}`);
      // Socket buffers on loopback hold a few MB; the whole 40 MB means the body was read to the end.
      const sentMb = res.sentBeforeAnswer / 1048576;
      assert.ok(sentMb < 16, `${r.path}: ${sentMb.toFixed(1)} MB sent before the answer`);
      const grew = (await gw.peakMb()) - before;
      assert.ok(grew < 24, `${r.path}: peak memory grew ${grew.toFixed(0)} MB for one oversized body`);
    }
  } finally {
    await gw.stop();
  }
});

// ---------------------------------------------------------------- floods (point 6)

Deno.test('bad-signature floods on /stripe-webhook and /notify/send are limited per address (429 naming the wait); another address is not', async () => {
  const overrides = { ...counting, RATE_LIMIT_STRIPE_WEBHOOK_PER_MIN: '5', RATE_LIMIT_NOTIFY_PER_MIN: '5' };
  await withGateway(overrides, async (url) => {
    for (const r of [webhook, notifySend]) {
      await clearOfWindowEdge();
      const attacker = freshAddress();
      const rs = await fromAddress(attacker, async (client) => {
        const out = [];
        for (let i = 0; i < 8; i++) out.push(await post(client, `${url}${r.path}`, '{}', r.headers));
        return out;
      });
      assert.deepEqual(rs.map((x) => x.status), [...Array(5).fill(r.refused), 429, 429, 429], r.path);
      assert.equal(rs[5].body.error.code, 'RATE_LIMITED');
      assert.ok(rs[5].body.error.details.retry_after_seconds >= 1, 'the wait on the 429');
      const other = await fromAddress(freshAddress(), (client) => post(client, `${url}${r.path}`, '{}', r.headers));
      assert.equal(other.status, r.refused, `${r.path}: another address is refused for its signature, not throttled`);
    }
  });
});

Deno.test('bad-signature refusals never wait on the counter row, and every one is still counted', async () => {
  const name = 'stripe_webhook_signature_failures';
  await testDb`insert into billing.counters (name, value) values (${name}, 0) on conflict (name) do nothing`;
  const [{ before }] = await testDb`select value::int as before from billing.counters where name = ${name}`;
  const n = 40;
  let posts: Promise<number>[] = [];
  let answeredWhileLocked = false;
  const started = performance.now();
  await testDb.begin(async (sql) => {
    await sql`select value from billing.counters where name = ${name} for update`; // the row is now locked
    posts = Array.from(
      { length: n },
      () =>
        fetch(`${functionsUrl}/stripe-webhook`, { method: 'POST', headers: webhook.headers, body: '{}' })
          .then(async (r) => (await r.body?.cancel(), r.status)),
    );
    let timer: ReturnType<typeof setTimeout> | undefined;
    answeredWhileLocked = await Promise.race([
      Promise.all(posts).then(() => true),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(false), 3000))),
    ]);
    clearTimeout(timer);
  });
  const elapsed = performance.now() - started;
  assert.deepEqual(await Promise.all(posts), Array(n).fill(400));
  assert.ok(answeredWhileLocked, `${n} refusals waited for the locked counter row (${Math.round(elapsed)} ms)`);
  await until('the counter to catch up', async () => {
    const [{ after }] = await testDb`select value::int as after from billing.counters where name = ${name}`;
    return after - before >= n;
  }, 5000);
});
