// client_temp_id: the server echoes it and treats a second request carrying it (under another
// Idempotency-Key, e.g. after a reload lost the key) as the same operation, per user.
import assert from 'node:assert/strict';
import { api, fund, newUser, testDb, userToken } from '../support/helpers.ts';

const post = (path: string, token: string, body: unknown) =>
  api(path, { token, headers: { 'idempotency-key': crypto.randomUUID() }, body });

Deno.test('two job requests with one client_temp_id make one job (and one hold)', async () => {
  const user = await newUser();
  const token = await userToken(user);
  await fund(user, '100');
  const body = {
    type: 'ai_completion',
    input: { model: 'gpt-4o-mini', prompt: 'hello there', max_tokens: 16 },
    client_temp_id: `temp_${crypto.randomUUID()}`,
  };
  const [a, b] = await Promise.all([post('/jobs', token, body), post('/jobs', token, body)]);
  assert.equal(a.status, 202, a.text);
  assert.equal(b.status, 202, b.text);
  const ids = [a, b].map((r) => (r.body.data as { job_id: string; client_temp_id: string }));
  assert.equal(ids[0].job_id, ids[1].job_id);
  assert.equal(ids[0].client_temp_id, body.client_temp_id);
  const [{ jobs, holds }] = await testDb`select
    (select count(*)::int from billing.jobs where user_id = ${user}) as jobs,
    (select count(*)::int from billing.holds h join billing.accounts a on a.id = h.account_id where a.user_id = ${user}) as holds`;
  assert.deepEqual({ jobs, holds }, { jobs: 1, holds: 1 });

  // Another user's identical temp id is theirs alone.
  const other = await newUser();
  await fund(other, '100');
  const c = await post('/jobs', await userToken(other), body);
  assert.notEqual((c.body.data as { job_id: string }).job_id, ids[0].job_id);
});

Deno.test('two checkout requests with one client_temp_id make one purchase; another package is refused', async () => {
  const token = await userToken(await newUser());
  const tempId = `temp_${crypto.randomUUID()}`;
  const a = await post('/checkout/sessions', token, { package_id: 'mini', client_temp_id: tempId });
  const b = await post('/checkout/sessions', token, { package_id: 'mini', client_temp_id: tempId });
  assert.equal(a.status, 201, a.text);
  assert.equal(
    (a.body.data as { purchase_id: string }).purchase_id,
    (b.body.data as { purchase_id: string }).purchase_id,
  );
  assert.equal((b.body.data as { client_temp_id: string }).client_temp_id, tempId);
  const c = await post('/checkout/sessions', token, { package_id: 'starter', client_temp_id: tempId });
  assert.equal(c.status, 409);
  assert.equal((c.body.error as { code: string }).code, 'IDEMPOTENCY_KEY_REUSED');
});
