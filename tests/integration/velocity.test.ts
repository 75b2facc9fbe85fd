// Fraud velocity rules before checkout, and their reset.
import assert from 'node:assert/strict';
import { newUser, testDb, userToken, withGateway } from '../helpers.ts';
import { emulator } from '../purchases.ts';

async function checkout(url: string, token: string, packageId: string) {
  const res = await fetch(`${url}/checkout/sessions`, {
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
  await withGateway({ ...loose, VELOCITY_FAILED_PAYMENTS_PER_HOUR: '1', VELOCITY_BLOCK_SECONDS: '2' }, async (url) => {
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
    await new Promise((r) => setTimeout(r, 2100));
    assert.equal((await checkout(url, token, 'plus')).status, 201, 'the block resets');
  });
});
