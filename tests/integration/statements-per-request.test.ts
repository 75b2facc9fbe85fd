// A money request is one SQL statement: the user's standing, the Idempotency-Key claim, the
// ledger work and the stored answer happen in one call, so the account's row lock never waits
// on a network round trip. Counted by pg_stat_statements for a gateway of its own that
// connects as a role of its own (the statistics are kept per role). And that statement is one
// round trip: counted at a proxy between that gateway and Postgres, which reads the protocol.
import assert from 'node:assert/strict';
import { adminToken, api, env, fund, newUser, testDb, userToken, withGateway } from '../support/helpers.ts';

const role = 'sl_statement_probe';
const password = crypto.randomUUID();
await testDb.unsafe(`do $$ begin
  if not exists (select 1 from pg_roles where rolname = '${role}') then create role ${role} login in role postgres; end if;
end $$`);
await testDb.unsafe(`alter role ${role} password '${password}'`);
const direct = new URL(env('SUPABASE_DB_URL'));
const service = env('SUPABASE_SERVICE_ROLE_KEY');
direct.username = role;
direct.password = password;

/** Top-level statements the probe role has executed so far. */
async function statements(): Promise<number> {
  const [{ n }] = await testDb`select coalesce(sum(s.calls), 0)::int as n from extensions.pg_stat_statements s
    join pg_roles r on r.oid = s.userid where r.rolname = ${role} and s.toplevel`;
  return n;
}

/**
 * A proxy in front of Postgres counting what the client sends: a Sync ends an extended-protocol
 * flight the client then waits on; a Flush asks for answers mid-flight, and so is a round trip
 * of its own (a statement with parameters and no prepared statement: Parse, Describe, Flush,
 * then Bind, Execute, Sync); a Query is the simple protocol, which would run several statements.
 */
function countingPostgres(upstream: URL) {
  const seen = { syncs: 0, flushes: 0, queries: 0 };
  const listener = Deno.listen({ hostname: '127.0.0.1', port: 0 });
  const reader = () => {
    let pending = new Uint8Array(0);
    let started = false;
    return new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, out) {
        out.enqueue(chunk);
        const buf = new Uint8Array(pending.length + chunk.length);
        buf.set(pending);
        buf.set(chunk, pending.length);
        const view = new DataView(buf.buffer);
        let at = 0;
        for (;;) {
          // Before start-up: untyped messages (an SSL or GSS request, then the start-up itself).
          const head = started ? 1 : 0;
          if (buf.length - at < head + 4) break;
          const length = view.getInt32(at + head);
          if (buf.length - at < head + length) break;
          if (!started) started = ![80877103, 80877104].includes(view.getInt32(at + 4));
          else if (buf[at] === 0x53) seen.syncs++;
          else if (buf[at] === 0x51) seen.queries++;
          else if (buf[at] === 0x48) seen.flushes++;
          at += head + length;
        }
        pending = buf.slice(at);
      },
    });
  };
  (async () => {
    for await (const client of listener) {
      const server = await Deno.connect({ hostname: upstream.hostname, port: Number(upstream.port) });
      server.readable.pipeTo(client.writable).catch(() => {});
      client.readable.pipeThrough(reader()).pipeTo(server.writable).catch(() => {});
    }
  })().catch(() => {});
  const url = new URL(upstream.href);
  url.hostname = '127.0.0.1';
  url.port = String((listener.addr as Deno.NetAddr).port);
  return { seen, url: url.href, close: () => listener.close() };
}

Deno.test('each money route runs exactly one SQL statement per request, in one round trip', async () => {
  const user = await newUser();
  await fund(user, '100');
  const token = await userToken(user);
  const admin = await adminToken();
  const proxy = countingPostgres(direct);
  const env = { SUPABASE_DB_URL: proxy.url, DB_POOLER_URL: proxy.url, DB_POOL_MAX: '1' };
  await withGateway(env, async (url) => {
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
    // Usage is reported by the product's server, naming the user (a user token is refused).
    const usage = (body: Record<string, unknown>) => post('/credits/usage', { user_id: user, ...body }, service);
    // Warm the connection (postgres.js reads the server's types once per connection).
    await usage({ model: 'gpt-4o', input_tokens: 1, output_tokens: 0 });

    const counted = async (
      what: string,
      fn: () => Promise<{ status: number; body: Record<string, unknown> }>,
      n = 1,
    ) => {
      const before = await statements();
      const trips = { ...proxy.seen };
      const r = await fn();
      assert.equal(await statements() - before, n, `${what} (${r.status}) ran ${n} statement(s)`);
      assert.deepEqual(
        {
          syncs: proxy.seen.syncs - trips.syncs,
          flushes: proxy.seen.flushes - trips.flushes,
          queries: proxy.seen.queries - trips.queries,
        },
        { syncs: n, flushes: 0, queries: 0 },
        `${what} was ${n} round trip(s)`,
      );
      return r;
    };
    await counted('usage', () => usage({ model: 'gpt-4o', input_tokens: 50, output_tokens: 0 }));
    // A server key is checked by the usage report's own statement: still one, in one round trip.
    const made = await post('/admin/server-keys', { name: 'statement probe' }, admin);
    const { id: keyId, secret } = made.body.data as { id: string; secret: string };
    const byKey = () =>
      post('/credits/usage', { user_id: user, model: 'gpt-4o', input_tokens: 50, output_tokens: 0 }, secret);
    assert.equal((await counted('usage with a server key', byKey)).status, 201);
    await fetch(`${url}/admin/server-keys/${keyId}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${admin}` },
    })
      .then((r) => r.body?.cancel());
    assert.equal((await counted('usage with a revoked server key', byKey)).status, 401);
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
      () => usage({ model: 'gpt-4o', input_tokens: 10_000_000, output_tokens: 0 }),
    );
    await counted(
      'grant',
      () => post('/credits/grants', { user_id: user, amount: '1', reason: 'a test grant' }, admin),
    );
    await counted('balance', async () => {
      const r = await fetch(`${url}/credits/balance`, { headers: { authorization: `Bearer ${token}` } });
      return { status: r.status, body: await r.json() };
    });
    // An AI call as the SDKs send it (no Idempotency-Key, so no answer is kept): the hold and the
    // capture, each one statement in one round trip; a call the balance cannot cover is refused,
    // and recorded, by the hold's one statement.
    const chat = async (model: string, max_tokens: number, headers: Record<string, string> = {}) => {
      const r = await fetch(`${url}/ai/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...headers },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens }),
      });
      return { status: r.status, body: await r.json() };
    };
    assert.equal((await counted('an AI call', () => chat('gpt-4o-mini', 5), 2)).status, 200);
    // Asked not to be cut to what fits (x-ai-clamp: off), the call is refused.
    const refused = await counted(
      'an AI call refused (402)',
      () => chat('gpt-4o', 4000, { 'x-ai-clamp': 'off' }),
      1,
    );
    assert.equal(refused.status, 402, JSON.stringify(refused.body));
  }).finally(proxy.close);
  // 97.98 less what the AI call was charged (the refused one, nothing), summed in SQL: exact.
  const [{ expected }] = await testDb`select trim_scale(97.98 - coalesce(sum(c.charged), 0))::text as expected
    from billing.ai_calls c where c.user_id = ${user}`;
  const balance = await api('/credits/balance', { token });
  assert.equal((balance.body.data as { balance: string }).balance, expected, 'and each moved what it should');
});
