// Batched usage ingestion: one set-based call, per-event outcomes, idempotent by event_id (within a
// batch, across parallel batches, and beside single requests under the same id), drawing the
// same lots as single requests; for the app's server only.
import assert from 'node:assert/strict';
import {
  api,
  assertLedgerInvariants,
  env,
  fund,
  key,
  newUser,
  student,
  testDb,
  userToken,
} from '../support/helpers.ts';
import {
  batch,
  charged,
  dataOf,
  type Json,
  ledgerOf,
  lotsOf,
  outcomesOf,
  spendWith,
  usageBody,
  usageEvent,
  voidCharge,
} from '../support/money.ts';
import { person, school } from '../support/orgs.ts';
import { balanceOf } from '../support/purchases.ts';

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
  // Each event costs exactly 1 credit (50 gpt-4o input tokens): each user has 20 less what applied of theirs.
  const balances = await testDb`select user_id::text as u, balance::text as b from billing.accounts
    where user_id = any(${users})`;
  const appliedOf = (u: string) => shared.filter((e) => e.user_id === u && applied.has(e.event_id)).length;
  assert.deepEqual(
    Object.fromEntries(balances.map((b) => [b.u, Number(b.b)])),
    Object.fromEntries(users.map((u) => [u, 20 - appliedOf(u)])),
  );
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

Deno.test('/credits/usage/batch: duplicate event ids in one batch and across parallel batches charge once', async () => {
  const service = { authorization: `Bearer ${env('SUPABASE_SERVICE_ROLE_KEY')}` };
  const [owner, member] = await Promise.all(['owner', 'member'].map(person));
  await school(owner, [member], 'pool', '1000');
  const plain = await student('100');
  const ev = (user: string, id: string) => ({
    event_id: id,
    user_id: user,
    ...usageBody(2),
    occurred_at: new Date().toISOString(),
  });
  const ids = [crypto.randomUUID(), crypto.randomUUID()];
  const events = [ev(plain.id, ids[0]), ev(member.id, ids[1]), ev(plain.id, ids[0]), ev(member.id, ids[1])];
  const rs = await Promise.all(
    Array.from({ length: 8 }, () => api('/credits/usage/batch', { headers: service, body: { events } })),
  );
  for (const r of rs) assert.equal(r.status, 200, r.text);
  const applied = rs.flatMap((r) => (dataOf(r).outcomes as Json[]).filter((o) => o.status === 'applied'));
  assert.equal(applied.length, 2, JSON.stringify(applied));
  for (const [id, user] of [[ids[0], plain.id], [ids[1], member.id]]) {
    assert.equal(
      (await testDb`select count(*)::int as n from billing.transfers where idempotency_key = ${`usage-event:${user}:${id}`}`)[
        0
      ]
        .n,
      1,
    );
  }
  assert.equal((await ledgerOf(plain.id)).balance, '98');
  await assertLedgerInvariants();
});

Deno.test('one batch sent 8 times at once, with a repeat inside it, charges each event once', async () => {
  const s = await student('100');
  const ids = Array.from({ length: 5 }, () => crypto.randomUUID());
  const events = [...ids.map((id) => usageEvent(s.id, id, 3)), usageEvent(s.id, ids[0], 3)];
  const answers = await Promise.all(Array.from({ length: 8 }, () => batch(events)));
  assert.ok(answers.every((a) => a.status === 200), answers.map((a) => a.text).join('\n'));
  assert.equal((await charged(s.id)).n, 5);
  assert.equal((await balanceOf(s.token)).balance, '85');
  for (const a of answers) {
    const outcomes = (a.body.data as { outcomes: { status: string; transfer_id?: string }[] }).outcomes;
    assert.equal(outcomes[5].status, 'duplicate');
    assert.equal(outcomes[5].transfer_id, outcomes[0].transfer_id, 'a repeat names what its first occurrence wrote');
  }
  await assertLedgerInvariants();
});

Deno.test('batches and single usage requests racing on one account never overdraw it', async () => {
  const s = await student('100');
  await Promise.all([
    ...Array.from({ length: 8 }, () => spendWith(s.token, crypto.randomUUID(), 10)),
    ...Array.from(
      { length: 3 },
      () => batch(Array.from({ length: 4 }, () => usageEvent(s.id, crypto.randomUUID(), 10))),
    ),
    ...Array.from(
      { length: 3 },
      () => api('/credits/holds', { token: s.token, body: { amount: '10' }, headers: key() }),
    ),
  ]);
  const b = await balanceOf(s.token);
  const [{ spent, held }] = await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as spent,
      (select trim_scale(coalesce(sum(h.amount), 0))::text from billing.holds h join billing.accounts a on a.id = h.account_id
       where a.user_id = ${s.id} and h.status = 'active') as held
    from billing.transfers t join billing.accounts a on a.id = t.from_account_id where a.user_id = ${s.id} and t.kind = 'usage'`;
  // Every charge and hold is 10 of the 100: what was spent and what is held are tens, and add up to at most 100.
  assert.equal(Number(spent) % 10 + Number(held) % 10, 0, JSON.stringify({ spent, held }));
  assert.ok(Number(spent) + Number(held) <= 100, JSON.stringify({ spent, held, b }));
  assert.deepEqual([b.balance, b.available], [String(100 - Number(spent)), String(100 - Number(spent) - Number(held))]);
  await assertLedgerInvariants();
});

Deno.test('one event alone and the same events in a batch draw the same lots, and voids give them back', async () => {
  // Two students with the same lots: 10 promotional (spent first), then 30 more promotional.
  const a = await student('10');
  const b = await student('10');
  await fund(a.id, '30');
  await fund(b.id, '30');
  // a: each event its own batch (the writer's single movement); b: all in one batch.
  const credits = [7, 6, 9];
  const ida = credits.map(() => crypto.randomUUID());
  for (let i = 0; i < credits.length; i++) {
    const r = await batch([usageEvent(a.id, ida[i], credits[i])]);
    assert.equal(outcomesOf(r)[0].status, 'applied', r.text);
  }
  const rb = await batch(credits.map((c) => usageEvent(b.id, crypto.randomUUID(), c)));
  assert.ok(outcomesOf(rb).every((o) => o.status === 'applied'), rb.text);
  const drawn = async (user: string) =>
    (await testDb`select array_agg(trim_scale(la.amount)::text order by t.id, l.id) as d
                  from billing.lot_allocations la join billing.transfers t on t.id = la.transfer_id
                  join billing.lots l on l.id = la.lot_id join billing.accounts x on x.id = l.account_id
                  where x.user_id = ${user} and t.kind = 'usage'`)[0].d;
  assert.deepEqual(await drawn(a.id), await drawn(b.id));
  assert.deepEqual(await drawn(a.id), ['7', '3', '3', '9'], 'the second event spans both lots');
  const entries = async (user: string) =>
    (await testDb`select array_agg(trim_scale(e.balance_after)::text || '@' || e.account_version order by e.id) as e
                  from billing.entries e join billing.accounts x on x.id = e.account_id where x.user_id = ${user}`)[0]
      .e;
  assert.deepEqual(await entries(a.id), await entries(b.id));
  // The spanning charge voided on both sides.
  for (const user of [a.id, b.id]) {
    const [{ id }] =
      await testDb`select t.id::text from billing.transfers t join billing.accounts x on x.id = t.from_account_id
      where x.user_id = ${user} and t.kind = 'usage' order by t.id offset 1 limit 1`;
    const v = await voidCharge(id);
    assert.equal(v.status, 200, v.text);
  }
  assert.deepEqual((await lotsOf(a.id)).map((l) => l.remaining), (await lotsOf(b.id)).map((l) => l.remaining));
  assert.deepEqual((await lotsOf(a.id)).map((l) => l.remaining), ['3', '21']);
  await assertLedgerInvariants();
});

Deno.test('one event id sent 10 times in batches and as an Idempotency-Key 10 times at once: one charge on each path', async () => {
  const s = await student('100');
  const id = crypto.randomUUID();
  const all = await Promise.all([
    ...Array.from({ length: 10 }, () => batch([usageEvent(s.id, id, 4)])),
    ...Array.from({ length: 10 }, () => spendWith(s.token, id, 4)),
  ]);
  const batches = all.slice(0, 10);
  const singles = all.slice(10);
  assert.ok(batches.every((r) => r.status === 200), batches.map((r) => r.text).join('\n'));
  const applied = batches.map((r) => outcomesOf(r)[0]).filter((o) => o.status === 'applied');
  assert.equal(applied.length, 1, batches.map((r) => r.text).join('\n'));
  assert.ok(singles.every((r) => r.status === 201), singles.map((r) => r.text).join('\n'));
  assert.equal(new Set(singles.map((r) => dataOf(r).transfer_id)).size, 1);
  assert.equal((await charged(s.id)).n, 2);
  assert.equal((await balanceOf(s.token)).balance, '92');
  await assertLedgerInvariants();
});
