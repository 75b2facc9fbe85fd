// Every idempotent route keeps its answer in one format (billing.idempotency_keys) and renders it
// with one reader: the first answer and every replay have the same status and the same bytes,
// whichever path made it (a money route's one statement, with the usage fast path answering
// from its transfer; or a route that calls Stripe between the claim and the stored answer). A
// refusal replays as the same refusal after what caused it has changed, and another request
// under the key is IDEMPOTENCY_KEY_REUSED.
import assert from 'node:assert/strict';
import { adminToken, api, fund, student } from '../support/helpers.ts';
import { codeOf, spendWith } from '../support/money.ts';
import { emulator, startCheckout } from '../support/purchases.ts';

type Res = Awaited<ReturnType<typeof api>>;

/** Sends a request twice; the second must be the first, byte for byte, marked as a replay. */
async function sentTwice(status: number, send: () => Promise<Res>): Promise<Res> {
  const first = await send();
  const replay = await send();
  assert.equal(first.status, status, first.text);
  assert.equal(first.headers.get('idempotent-replayed'), null, 'the first answer is not a replay');
  assert.equal(replay.status, first.status, replay.text);
  assert.equal(replay.text, first.text, 'the replay is the first answer byte for byte');
  assert.equal(replay.headers.get('idempotent-replayed'), 'true');
  return first;
}

const hold = (token: string, k: string, amount: string) =>
  api('/credits/holds', { token, headers: { 'idempotency-key': k }, body: { amount, ttl_seconds: 600 } });

Deno.test('a usage charge (fast and general path) and a hold replay their first answer byte for byte; another body is IDEMPOTENCY_KEY_REUSED', async () => {
  const s = await student('100');
  const [fast, general, held] = [crypto.randomUUID(), crypto.randomUUID(), crypto.randomUUID()];
  await sentTwice(201, () => spendWith(s.token, fast, 3)); // answered from its transfer
  const cap = await api('/credits/caps', { method: 'PUT', token: s.token, body: { period: 'day', amount: '50' } });
  assert.equal(cap.status, 200, cap.text);
  await sentTwice(201, () => spendWith(s.token, general, 4)); // a cap: stored in idempotency_keys
  await sentTwice(201, () => hold(s.token, held, '10'));
  assert.equal(codeOf(await spendWith(s.token, fast, 5)), 'IDEMPOTENCY_KEY_REUSED');
  assert.equal(codeOf(await spendWith(s.token, general, 5)), 'IDEMPOTENCY_KEY_REUSED');
  assert.equal(codeOf(await hold(s.token, held, '11')), 'IDEMPOTENCY_KEY_REUSED');
});

Deno.test('a refused hold replays as the same refusal after the student is funded, and holds nothing', async () => {
  const s = await student('5');
  const k = crypto.randomUUID();
  const refused = await hold(s.token, k, '10');
  assert.equal(codeOf(refused), 'INSUFFICIENT_CREDITS', refused.text);
  await fund(s.id, '100');
  const replay = await hold(s.token, k, '10');
  assert.deepEqual([replay.status, replay.text], [402, refused.text], 'the stored refusal, byte for byte');
  assert.equal(replay.headers.get('idempotent-replayed'), 'true');
  const balance = await api('/credits/balance', { token: s.token });
  assert.equal((balance.body.data as { held: string }).held, '0', balance.text);
});

Deno.test('a Checkout Session and a refusal made in SQL replay byte for byte; another package under the key is IDEMPOTENCY_KEY_REUSED', async () => {
  const s = await student();
  const [k, unknown] = [crypto.randomUUID(), crypto.randomUUID()];
  const session = (key: string, packageId: string) =>
    api('/checkout/sessions', { token: s.token, headers: { 'idempotency-key': key }, body: { package_id: packageId } });
  await sentTwice(201, () => session(k, 'mini'));
  const missing = await sentTwice(404, () => session(unknown, 'no-such-package'));
  assert.equal(codeOf(missing), 'PACKAGE_NOT_FOUND');
  const reused = await session(k, 'starter');
  assert.equal(codeOf(reused), 'IDEMPOTENCY_KEY_REUSED', reused.text);
});

Deno.test('a refund refused while the purchase was pending replays that refusal once it is paid, and refunds nothing', async () => {
  const s = await student();
  const admin = await adminToken();
  const co = await startCheckout(s.token, 'mini');
  const k = crypto.randomUUID();
  const refund = (key: string, body: Record<string, unknown> = { purchase_id: co.purchase_id }) =>
    api('/checkout/refunds', { token: admin, headers: { 'idempotency-key': key }, body });
  const refused = await refund(k);
  assert.equal(codeOf(refused), 'PURCHASE_NOT_REFUNDABLE', refused.text);
  assert.match(refused.text, /The purchase is pending/, 'a refusal whose message was made in TypeScript');
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });
  const paid = await api(`/checkout/sessions/${co.purchase_id}`, { token: s.token });
  assert.equal((paid.body.data as { status: string }).status, 'paid', paid.text);

  const replay = await refund(k);
  assert.deepEqual([replay.status, replay.text], [409, refused.text], 'the stored refusal, byte for byte');
  assert.equal(replay.headers.get('idempotent-replayed'), 'true');
  const other = await refund(k, { purchase_id: co.purchase_id, amount_cents: 100 });
  assert.equal(codeOf(other), 'IDEMPOTENCY_KEY_REUSED', other.text);
  const after = await api(`/checkout/sessions/${co.purchase_id}`, { token: s.token });
  assert.equal((after.body.data as { amount_refunded_cents: number }).amount_refunded_cents, 0, after.text);
  const fresh = await refund(crypto.randomUUID());
  assert.equal(fresh.status, 202, `a new key refunds the paid purchase: ${fresh.text}`);
});
