// A money request is one SQL statement: the user's standing, the Idempotency-Key claim, the
// ledger work and the stored answer happen in one call, so the account's row lock never waits
// on a network round trip. Counted by pg_stat_statements for a gateway of its own that
// connects as a role of its own (the statistics are kept per role).
import assert from 'node:assert/strict';
import { adminToken, api, env, fund, newUser, testDb, userToken, withGateway } from '../helpers.ts';

const role = 'sl_statement_probe';
const password = crypto.randomUUID();
await testDb.unsafe(`do $$ begin
  if not exists (select 1 from pg_roles where rolname = '${role}') then create role ${role} login in role postgres; end if;
end $$`);
await testDb.unsafe(`alter role ${role} password '${password}'`);
const direct = new URL(env('SUPABASE_DB_URL'));
direct.username = role;
direct.password = password;

/** Top-level statements the probe role has executed so far. */
async function statements(): Promise<number> {
  const [{ n }] = await testDb`select coalesce(sum(s.calls), 0)::int as n from extensions.pg_stat_statements s
    join pg_roles r on r.oid = s.userid where r.rolname = ${role} and s.toplevel`;
  return n;
}

Deno.test('each money route runs exactly one SQL statement per request (pg_stat_statements)', async () => {
  const user = await newUser();
  await fund(user, '100');
  const token = await userToken(user);
  const admin = await adminToken();
  await withGateway({ SUPABASE_DB_URL: direct.href, DB_POOLER_URL: direct.href, DB_POOL_MAX: '1' }, async (url) => {
    const post = async (path: string, body: unknown, bearer = token) => {
      const r = await fetch(`${url}${path}`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${bearer}`,
          'idempotency-key': crypto.randomUUID(),
          'content-type': 'application/json',
        },
        body: JSON.stringify(body),
      });
      return { status: r.status, body: await r.json() };
    };
    // Warm the connection (postgres.js reads the server's types once per connection).
    await post('/credits/usage', { model: 'gpt-4o', input_tokens: 1, output_tokens: 0 });

    const counted = async (what: string, fn: () => Promise<{ status: number; body: Record<string, unknown> }>) => {
      const before = await statements();
      const r = await fn();
      assert.equal(await statements() - before, 1, `${what} (${r.status}) ran one statement`);
      return r;
    };
    await counted('usage', () => post('/credits/usage', { model: 'gpt-4o', input_tokens: 50, output_tokens: 0 }));
    const hold = await counted('hold', () => post('/credits/holds', { amount: '2' }));
    const holdId = (hold.body.data as { hold_id: string }).hold_id;
    await counted('capture', () => post(`/credits/holds/${holdId}/capture`, { amount: '1' }));
    const other = await post('/credits/holds', { amount: '1' });
    await counted(
      'release',
      () => post(`/credits/holds/${(other.body.data as { hold_id: string }).hold_id}/release`, {}),
    );
    await counted(
      'a refusal, stored',
      () => post('/credits/usage', { model: 'gpt-4o', input_tokens: 10_000_000, output_tokens: 0 }),
    );
    await counted(
      'grant',
      () => post('/credits/grants', { user_id: user, amount: '1', reason: 'a test grant' }, admin),
    );
  });
  const balance = await api('/credits/balance', { token });
  assert.equal((balance.body.data as { balance: string }).balance, '98.98', 'and each moved what it should');
});
