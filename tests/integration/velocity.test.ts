// Fraud velocity rules before checkout, and their reset; with Redis down, the same rules
// counted from Postgres (per user) and per instance (per address).
import assert from 'node:assert/strict';
import { newUser, testDb, userToken, withGateway } from '../support/helpers.ts';
import { emulator } from '../support/purchases.ts';

async function checkout(url: string, token: string, packageId: string, client?: Deno.HttpClient) {
  const res = await fetch(`${url}/checkout/sessions`, {
    client,
    method: 'POST',
    headers: {
      authorization: `Bearer ${token}`,
      'idempotency-key': crypto.randomUUID(),
      'content-type': 'application/json',
    },
    body: JSON.stringify({ package_id: packageId }),
  });
  return { status: res.status, body: await res.json() };
}

const loose = { RATE_LIMIT_CHECKOUT_SESSIONS_PER_MIN: '1000' };

Deno.test('more than N checkout sessions in 10 minutes is refused with 429 VELOCITY_LIMIT', async () => {
  const id = await newUser();
  const token = await userToken(id);
  await withGateway({ ...loose, VELOCITY_SESSIONS_PER_10_MIN: '2' }, async (url) => {
    const rs = [
      await checkout(url, token, 'mini'),
      await checkout(url, token, 'starter'),
      await checkout(url, token, 'plus'),
    ];
    assert.deepEqual(rs.map((r) => r.status), [201, 201, 429]);
    assert.equal(rs[2].body.error.code, 'VELOCITY_LIMIT');
    assert.equal(rs[2].body.error.details.rule, 'sessions_per_10_min');
  });
  const [{ n }] = await testDb`select count(*)::int as n from billing.purchases where user_id = ${id}`;
  assert.equal(n, 2, 'a refused checkout creates no purchase');
});

Deno.test('purchases beyond the 24-hour amount are refused', async () => {
  const token = await userToken(await newUser());
  await withGateway({ ...loose, VELOCITY_AMOUNT_CENTS_PER_24_H: '1500' }, async (url) => {
    assert.equal((await checkout(url, token, 'starter')).status, 201); // 999
    assert.equal((await checkout(url, token, 'mini')).status, 201); // 1,499
    const over = await checkout(url, token, 'plus'); // 3,998
    assert.equal(over.status, 429);
    assert.equal(over.body.error.details.rule, 'amount_per_24_h');
  });
});

Deno.test('repeated failed payments block new checkouts (403) until the block expires', async () => {
  const token = await userToken(await newUser());
  // A slow Redis must not fail open here (a loaded machine): the counting waits for it.
  const counted = {
    ...loose,
    REDIS_TIMEOUT_MS: '3000',
    VELOCITY_FAILED_PAYMENTS_PER_HOUR: '1',
    VELOCITY_BLOCK_SECONDS: '5',
  };
  await withGateway(counted, async (url) => {
    for (const p of ['mini', 'starter']) {
      const co = await checkout(url, token, p);
      const { events } = await emulator(`/_emulator/checkout/sessions/${co.body.data.session_id}/pay`, {
        outcome: 'failed',
        deliver: false,
      });
      for (const e of events) {
        const r = await fetch(`${url}/stripe-webhook`, {
          method: 'POST',
          headers: { 'stripe-signature': e.signature, 'content-type': 'application/json' },
          body: e.payload,
        });
        assert.equal(r.status, 200);
        await r.body?.cancel();
      }
    }
    const blocked = await checkout(url, token, 'plus');
    assert.equal(blocked.status, 403);
    assert.equal(blocked.body.error.code, 'VELOCITY_LIMIT');
    assert.equal(blocked.body.error.details.rule, 'failed_payments');
    await new Promise((r) => setTimeout(r, 5100));
    assert.equal((await checkout(url, token, 'plus')).status, 201, 'the block resets');
  });
});

/** Overrides that point the functions at a Redis that refuses every connection. */
function redisDown(): Record<string, string> {
  const probe = Deno.listen({ hostname: '127.0.0.1', port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close(); // nothing listens there now: every call is refused
  return { ...loose, UPSTASH_REDIS_REST_URL: `http://127.0.0.1:${port}` };
}

Deno.test('with Redis down, the per-user session and amount rules still refuse (counted from purchases in Postgres)', async () => {
  const sessions = await userToken(await newUser());
  const amount = await userToken(await newUser());
  await withGateway(
    { ...redisDown(), VELOCITY_SESSIONS_PER_10_MIN: '2', VELOCITY_AMOUNT_CENTS_PER_24_H: '1500' },
    async (url) => {
      const rs = [
        await checkout(url, sessions, 'mini'),
        await checkout(url, sessions, 'starter'),
        await checkout(url, sessions, 'mini'), // the open mini purchase is reused, but it is a third checkout
      ];
      assert.deepEqual(rs.map((r) => r.status), [201, 201, 429]);
      assert.equal(rs[2].body.error.code, 'VELOCITY_LIMIT');
      assert.equal(rs[2].body.error.details.rule, 'sessions_per_10_min');
      assert.equal((await checkout(url, amount, 'starter')).status, 201); // 999
      const over = await checkout(url, amount, 'plus'); // 999 + 2,499 > 1,500
      assert.equal(over.status, 429);
      assert.equal(over.body.error.details.rule, 'amount_per_24_h');
      const ready = await (await fetch(`${url}/health/readyz`)).json();
      assert.notEqual(ready.data.checks.redis.status, 'ok', 'Redis really was down');
    },
  );
});

Deno.test('with Redis down, the per-address session rule still refuses (per instance)', async () => {
  const tokens = await Promise.all([1, 2, 3].map(async () => await userToken(await newUser())));
  const localAddress = `127.${1 + Math.floor(Math.random() * 254)}.${Math.floor(Math.random() * 256)}.9`;
  const client = Deno.createHttpClient({ localAddress });
  try {
    await withGateway({ ...redisDown(), VELOCITY_IP_SESSIONS_PER_10_MIN: '2' }, async (url) => {
      const rs = [];
      for (const t of tokens) rs.push(await checkout(url, t, 'mini', client));
      assert.deepEqual(rs.map((r) => r.status), [201, 201, 429]);
      assert.equal(rs[2].body.error.details.rule, 'sessions_per_10_min');
    });
  } finally {
    client.close();
  }
});

Deno.test('with Redis down, repeated failed payments still block new checkouts (failed-payment events in Postgres)', async () => {
  const token = await userToken(await newUser());
  await withGateway({ ...redisDown(), VELOCITY_FAILED_PAYMENTS_PER_HOUR: '1' }, async (url) => {
    for (const p of ['mini', 'starter']) {
      const co = await checkout(url, token, p);
      const { events } = await emulator(`/_emulator/checkout/sessions/${co.body.data.session_id}/pay`, {
        outcome: 'failed',
        deliver: false,
      });
      for (const e of events) {
        const r = await fetch(`${url}/stripe-webhook`, {
          method: 'POST',
          headers: { 'stripe-signature': e.signature, 'content-type': 'application/json' },
          body: e.payload,
        });
        assert.equal(r.status, 200);
        await r.body?.cancel();
      }
    }
    const blocked = await checkout(url, token, 'plus');
    assert.equal(blocked.status, 403);
    assert.equal(blocked.body.error.code, 'VELOCITY_LIMIT');
    assert.equal(blocked.body.error.details.rule, 'failed_payments');
  });
});
