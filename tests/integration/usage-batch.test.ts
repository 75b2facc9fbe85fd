// Batched usage ingestion: one set-based call, per-event outcomes, idempotent by event_id.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, env, fund, newUser, student, testDb, userToken } from '../helpers.ts';
import { charged } from '../money.ts';

const service = { authorization: `Bearer ${env('SUPABASE_SERVICE_ROLE_KEY')}` };
const now = () => new Date().toISOString();
const event = (user: string, tokens: number, id: string = crypto.randomUUID()) => ({
  event_id: id,
  user_id: user,
  model: 'gpt-4o',
  input_tokens: tokens,
  output_tokens: 0,
  occurred_at: now(),
});
type Outcome = { event_id: string; status: string; charged?: string; transfer_id?: string | null };
const outcomes = (r: { body: Record<string, unknown> }) => (r.body.data as { outcomes: Outcome[] }).outcomes;

Deno.test('a batch prices and debits each event, refuses a short user alone, and reports in order', async () => {
  const rich = await newUser();
  const poor = await newUser();
  await fund(rich, '100');
  await fund(poor, '1');
  const events = [event(rich, 50), event(poor, 100), event(rich, 500), event(poor, 50), event(rich, 50)];
  const r = await api('/credits/usage/batch', { headers: service, body: { events } });
  assert.equal(r.status, 200, r.text);
  const o = outcomes(r);
  assert.deepEqual(o.map((x) => x.event_id), events.map((e) => e.event_id));
  // 50 gpt-4o input tokens = 1 credit. poor's 2-credit event is short; its 1-credit one fits.
  assert.deepEqual(o.map((x) => [x.status, x.charged ?? null]), [
    ['applied', '1'],
    ['insufficient', null],
    ['applied', '10'],
    ['applied', '1'],
    ['applied', '1'],
  ]);
  const [{ balance }] = await testDb`select balance::text from billing.accounts where user_id = ${rich}`;
  assert.equal(Number(balance), 88);
  const [{ versions }] =
    await testDb`select array_agg(e.account_version order by e.id)::text as versions from billing.entries e
    join billing.accounts a on a.id = e.account_id where a.user_id = ${rich}`;
  assert.equal(versions, '{1,2,3,4}', 'one version per entry, in order');
  await assertLedgerInvariants();
});

Deno.test('replayed event ids are duplicates that change nothing, within and across batches', async () => {
  const u = await newUser();
  await fund(u, '10');
  const e = event(u, 50);
  const first = outcomes(await api('/credits/usage/batch', { headers: service, body: { events: [e, e] } }));
  assert.deepEqual(first.map((x) => x.status), ['applied', 'duplicate']);
  assert.equal(first[1].transfer_id, first[0].transfer_id);
  const again = outcomes(await api('/credits/usage/batch', { headers: service, body: { events: [e] } }));
  assert.deepEqual(again.map((x) => [x.status, x.transfer_id]), [['duplicate', first[0].transfer_id]]);
  const [{ balance }] = await testDb`select balance::text from billing.accounts where user_id = ${u}`;
  assert.equal(Number(balance), 9);
});

Deno.test('parallel batches over the same users never overdraw and apply each event once', async () => {
  const users = await Promise.all(Array.from({ length: 5 }, async () => {
    const u = await newUser();
    await fund(u, '20');
    return u;
  }));
  const shared = users.flatMap((u) => Array.from({ length: 10 }, () => event(u, 50)));
  const batches = Array.from({ length: 6 }, () => [...shared].sort(() => Math.random() - 0.5).slice(0, 40));
  const results = await Promise.all(
    batches.map((events) => api('/credits/usage/batch', { headers: service, body: { events } })),
  );
  assert.ok(results.every((r) => r.status === 200));
  const [{ n }] = await testDb`select count(*)::int as n from billing.transfers where idempotency_key = any(${
    shared.map((e) => `usage-event:${e.user_id}:${e.event_id}`)
  })`;
  const applied = new Set(results.flatMap(outcomes).filter((o) => o.status === 'applied').map((o) => o.event_id));
  assert.equal(n, applied.size, 'each event applied at most once');
  const balances = await testDb`select balance::numeric as b from billing.accounts where user_id = any(${users})`;
  assert.ok(balances.every((b) => Number(b.b) >= 0));
  await assertLedgerInvariants();
});

Deno.test('the batch route is for trusted servers only, and a malformed batch is 400 with nothing written', async () => {
  const u = await newUser();
  await fund(u, '10');
  const student = await userToken(u);
  // A user's own token is recognised and refused: usage is reported by servers, never by the payer.
  const own = await api('/credits/usage/batch', { token: student, body: { events: [event(u, 50)] } });
  assert.deepEqual([own.status, (own.body.error as { code: string }).code], [403, 'USAGE_REPORTED_BY_SERVER']);
  const bad = await api('/credits/usage/batch', {
    headers: service,
    body: { events: [event(u, 50), { ...event(u, 50), input_tokens: -1 }] },
  });
  assert.equal(bad.status, 400);
  assert.equal((bad.body.error as { field: string }).field, 'events.1.input_tokens');
  const tooMany = await api('/credits/usage/batch', {
    headers: service,
    body: { events: Array.from({ length: 1001 }, () => event(u, 1)) },
  });
  assert.equal(tooMany.status, 400);
  const [{ balance }] = await testDb`select balance::text from billing.accounts where user_id = ${u}`;
  assert.equal(Number(balance), 10);
});

Deno.test("another user's event with the same event_id is a separate event: charged, and told nothing of the first", async () => {
  const first = await newUser();
  const second = await newUser();
  await fund(first, '100');
  await fund(second, '100');
  const id = `shared-${crypto.randomUUID()}`;
  const mine = outcomes(
    await api('/credits/usage/batch', { headers: service, body: { events: [event(first, 500, id)] } }),
  );
  assert.deepEqual(mine.map((x) => [x.status, x.charged]), [['applied', '10']]);
  // In a later batch, and in one batch beside the first user's replay.
  const theirs = outcomes(
    await api('/credits/usage/batch', { headers: service, body: { events: [event(second, 50, id)] } }),
  );
  assert.deepEqual(theirs.map((x) => [x.status, x.charged]), [['applied', '1']]);
  assert.notEqual(theirs[0].transfer_id, mine[0].transfer_id, "no answer names the other user's transfer");
  const both = outcomes(
    await api('/credits/usage/batch', {
      headers: service,
      body: { events: [event(first, 500, id), event(second, 100, id)] },
    }),
  );
  assert.deepEqual(both.map((x) => x.status), ['duplicate', 'duplicate']);
  assert.equal(both[0].transfer_id, mine[0].transfer_id);
  assert.equal(both[1].transfer_id, theirs[0].transfer_id, "each user's replay names their own transfer only");
  assert.equal(both[1].charged, '1');
  const balances = await testDb`select user_id, balance::numeric::text as b from billing.accounts
    where user_id = any(${[first, second]})`;
  assert.deepEqual(Object.fromEntries(balances.map((r) => [r.user_id, Number(r.b)])), { [first]: 90, [second]: 99 });
  const [{ n }] = await testDb`select count(*)::int as n from billing.transfers where kind = 'usage'
    and idempotency_key = any(${[`usage-event:${first}:${id}`, `usage-event:${second}:${id}`]})`;
  assert.equal(n, 2, 'the ledger key is user + event id');
  await assertLedgerInvariants();
});

Deno.test('two users reusing one event_id within one batch are two events, each charged once', async () => {
  const a = await newUser();
  const b = await newUser();
  await fund(a, '10');
  await fund(b, '10');
  const id = `twin-${crypto.randomUUID()}`;
  const o = outcomes(
    await api('/credits/usage/batch', {
      headers: service,
      body: { events: [event(a, 50, id), event(b, 100, id), event(a, 50, id)] },
    }),
  );
  assert.deepEqual(o.map((x) => [x.status, x.charged]), [['applied', '1'], ['applied', '2'], ['duplicate', '1']]);
  assert.equal(o[2].transfer_id, o[0].transfer_id);
});

Deno.test("a student's token cannot ingest a usage batch (events naming anyone, at any count)", async () => {
  const s = await student('1000');
  const r = await api('/credits/usage/batch', {
    token: s.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: {
      events: [{ event_id: crypto.randomUUID(), user_id: s.id, model: 'gpt-4o', input_tokens: -5, output_tokens: 0 }],
    },
  });
  assert.ok(r.status === 401 || r.status === 403, `${r.status} ${r.text}`);
  assert.deepEqual(await charged(s.id), { n: 0, total: '0' });
});
