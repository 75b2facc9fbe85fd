// A batch whose end meets its account fell due (a hold of the student's own past its TTL while
// the provider ran it) refuses without changing anything (billing.lock_holder), and is ended
// again with billing.settle_holder in front (finishing): the student's polls and the minute sync
// racing on it (each one's settle-in-front meeting another's first try) end it once, charged
// once at the sum of its lines, the overdue hold expired, and nothing left held.
import assert from 'node:assert/strict';
import { advanceBatchClock, student, syncBatches } from '../support/ai.ts';
import { api, assertLedgerInvariants, holdsLapse, key, testDb } from '../support/helpers.ts';
import { call, chatLine, createBatch, money, settledOnce, upload } from '../support/batches.ts';

Deno.test("a batch ending while the student's own hold falls due is charged once, polls and the sync racing", async () => {
  const s = await student('100');
  const own = await api('/credits/holds', { token: s.token, headers: key(), body: { amount: '1', ttl_seconds: 600 } });
  assert.equal(own.status, 201, own.text);
  const ownHold = (own.body.data as { hold_id: string }).hold_id;
  const f = await upload(
    s.token,
    Array.from({ length: 3 }, (_, i) => chatLine(`l${i}`, `q${i} #standin words=5 batch_at=600`)),
  );
  assert.equal(f.status, 200, JSON.stringify(f.json));
  const b = await createBatch(s.token, f.json.id);
  assert.equal(b.status, 200, b.text);
  const batch = b.json.id as string;
  // While the provider runs it, the student's own hold passes its TTL: the account fell due.
  await holdsLapse(testDb`h.id = ${ownHold}`);
  await advanceBatchClock(700);
  const polls = await Promise.all([
    syncBatches(),
    ...Array.from({ length: 6 }, () => call(s.token, 'GET', `/batches/${batch}`)),
  ]);
  for (const p of polls.slice(1)) assert.equal((p as { status: number }).status, 200, (p as { text: string }).text);
  const m = await money(batch);
  settledOnce(m);
  assert.equal(m.succeeded, 3);
  assert.ok(Number(m.charged) > 0);
  const [h] = await testDb`select status from billing.holds where id = ${ownHold}`;
  assert.equal(h.status, 'expired', 'the overdue hold ended before the batch was charged');
  const [a] = await testDb`select trim_scale(held)::text as held, next_hold_expiry from billing.accounts
    where user_id = ${s.id} and org_id is null`;
  assert.deepEqual(a, { held: '0', next_hold_expiry: null });
  await assertLedgerInvariants();
});
