// The ledger core's three money paths, attacked with students' and school members' tokens:
// an AI call's or job's finish posting its hold under the caller's lock (charge_hold_at →
// post_capture), an AI call's record written after its hold (begin_ai_call), and a charge on an
// account with credits for some models and no live hold drawn for its model (lots 'for'). Each
// scenario asserts exact amounts, then the core's invariants over the accounts it touched.
import assert from 'node:assert/strict';
import postgres from 'postgres';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  backdateLot,
  env,
  key,
  newUser,
  reportUsage,
  sweepExpiredHolds,
  testDb,
  userToken,
} from '../support/helpers.ts';
import { batch, codeOf, outcomesOf } from '../support/money.ts';
import { grantLot } from '../support/lots.ts';
import { person, school } from '../support/orgs.ts';
import { buy, chargeOf, emulator } from '../support/purchases.ts';

type Json = Record<string, unknown>;
const detailsOf = (r: { body: Json }) => (r.body.error as { details: Record<string, string> }).details;

/** gpt-4o-mini input: 5,000 tokens = 3 credits; gpt-4o input: 50 tokens = 1 credit; haiku input: 1,000 tokens = 4 credits. */
const tokensFor = { 'gpt-4o-mini': 5000 / 3, 'gpt-4o': 50, 'claude-haiku-4-5': 1000 / 4 } as Record<string, number>;
const charge = (token: string, model: string, credits: number) =>
  reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model, input_tokens: Math.round(credits * tokensFor[model]), output_tokens: 0 },
  });

/** A student with lots granted in this order of spending (priority), each `[amount, applies_to]`. */
async function studentWith(...lots: [string, string[] | null][]) {
  const id = await newUser();
  for (const [i, [amount, applies_to]] of lots.entries()) {
    const r = await grantLot(id, amount, 'promo_grant', { priority: 10 + i, ...(applies_to ? { applies_to } : {}) });
    assert.equal(r.status, 201, r.text);
  }
  return { id, token: await userToken(id) };
}

/** The student's own lots' remaining, in spending order. */
const remainingOf = async (user: string) =>
  (await testDb`select trim_scale(l.remaining)::text as r from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.user_id = ${user} order by l.priority, l.id`).map((l) => l.r as string);

/**
 * The core's invariants over the accounts of `users` (their own, and those of the schools `orgs`),
 * beside the whole ledger's: each debit drew lots of exactly its amount (what work cost past its
 * hold, the one debt, at most: the rest is debt), no lot for some models
 * paid a charge of a model its list does not cover, a captured hold has one capture of its
 * captured amount, and an active hold belongs to a call or job still running.
 */
async function coreInvariants(users: string[], orgs: string[] = []) {
  await assertLedgerInvariants();
  const [r] = await testDb`
    with acc as (select a.id from billing.accounts a where a.user_id = any(${users}::uuid[]) or a.org_id = any(${orgs}::uuid[]))
    select
      (select count(*)::int from billing.transfers t
        cross join lateral (select coalesce(sum(x.amount), 0) as drawn from billing.lot_allocations x
                            where x.transfer_id = t.id) x
        where t.from_account_id in (select id from acc) and t.kind in ('usage', 'hold_capture')
          and (x.drawn > t.amount or (x.drawn < t.amount and not (t.kind = 'usage' and t.metadata ? 'reserved'))))
        as debit_off_allocations,
      (select count(*)::int from billing.lot_allocations x join billing.lots l on l.id = x.lot_id
        join billing.transfers t on t.id = x.transfer_id
        where l.account_id in (select id from acc) and x.amount > 0 and t.kind in ('usage', 'hold_capture')
          and not billing.lot_pays_for(l.applies_to, coalesce(t.metadata ->> 'model',
            (select c.model from billing.rate_cards c where c.id = t.rate_card_id)))) as restricted_paid_other_model,
      (select count(*)::int from billing.holds h where h.account_id in (select id from acc) and h.status = 'captured'
        and (select count(*) from billing.transfers t where t.hold_id = h.id and t.kind = 'hold_capture'
             and t.id = h.capture_transfer_id and t.amount = h.captured_amount) <> 1) as capture_off_hold,
      (select count(*)::int from billing.transfers t where t.kind = 'hold_capture' and t.from_account_id in (select id from acc)
        and not exists (select 1 from billing.holds h where h.capture_transfer_id = t.id)) as capture_without_hold,
      (select count(*)::int from billing.ai_calls c join billing.holds h on h.id = c.hold_id
        where c.user_id = any(${users}::uuid[]) and h.status = 'active' and c.status <> 'held') as live_hold_settled_call,
      (select count(*)::int from billing.holds h where h.account_id in (select id from acc) and h.purpose = 'ai'
        and not exists (select 1 from billing.ai_calls c where c.hold_id = h.id)) as ai_hold_without_call,
      (select count(*)::int from (select c.hold_id from billing.ai_calls c where c.user_id = any(${users}::uuid[])
        and c.hold_id is not null group by 1 having count(*) > 1) x) as hold_of_two_calls,
      (select count(*)::int from billing.ai_calls c where c.user_id = any(${users}::uuid[])
        and c.status in ('held', 'charged') and c.hold_id is null) as call_without_hold`;
  assert.deepEqual({ ...r }, {
    debit_off_allocations: 0,
    restricted_paid_other_model: 0,
    capture_off_hold: 0,
    capture_without_hold: 0,
    live_hold_settled_call: 0,
    ai_hold_without_call: 0,
    hold_of_two_calls: 0,
    call_without_hold: 0,
  });
}

// ============================================================ credits for some models, no live hold

Deno.test('credits for a family, a model and another family: each charge drawn only from lots whose list covers its model, in spending order; a short one refused with restricted and reason', async () => {
  const s = await studentWith(['10', ['gpt-4o*']], ['5', ['gpt-4o-mini']], ['4', ['claude*']]);
  // gpt-4o-mini is in the family gpt-4o*: the first lot pays.
  assert.equal((await charge(s.token, 'gpt-4o-mini', 3)).status, 201);
  assert.deepEqual(await remainingOf(s.id), ['7', '5', '4']);
  // gpt-4o: only the family's 7 may pay, though the balance is 16.
  const short = await charge(s.token, 'gpt-4o', 9);
  assert.equal(short.status, 402, short.text);
  assert.equal(codeOf(short), 'INSUFFICIENT_CREDITS');
  assert.deepEqual(
    { ...detailsOf(short) },
    {
      required: '9',
      available: '7',
      debt: false,
      model: 'gpt-4o',
      restricted: '9',
      reason: 'some credits may only pay for other models',
    },
  );
  assert.equal((await charge(s.token, 'gpt-4o', 7)).status, 201);
  assert.deepEqual(await remainingOf(s.id), ['0', '5', '4']);
  // gpt-4o-mini short by one of its 5 (haiku's 4 may not pay), then paid whole.
  const shortMini = await charge(s.token, 'gpt-4o-mini', 6);
  assert.equal(shortMini.status, 402, shortMini.text);
  assert.equal(detailsOf(shortMini).restricted, '4');
  assert.equal((await charge(s.token, 'gpt-4o-mini', 3)).status, 201);
  assert.equal((await charge(s.token, 'claude-haiku-4-5', 4)).status, 201);
  assert.deepEqual(await remainingOf(s.id), ['0', '2', '0']);
  const [{ balance }] =
    await testDb`select trim_scale(balance)::text as balance from billing.accounts where user_id = ${s.id}`;
  assert.equal(balance, '2');
  await coreInvariants([s.id]);
});

Deno.test('a model paid partly by credits for it and partly by credits for anything: drawn whole, the restricted lot first when it comes first, never a lot for another model', async () => {
  const s = await studentWith(['4', ['gpt-4o-mini']], ['2', ['claude*']], ['3', null]);
  const r = await charge(s.token, 'gpt-4o-mini', 6);
  assert.equal(r.status, 201, r.text);
  assert.deepEqual(await remainingOf(s.id), ['0', '2', '1']);
  const over = await charge(s.token, 'gpt-4o-mini', 3);
  assert.equal(over.status, 402, over.text);
  assert.deepEqual({ restricted: detailsOf(over).restricted, available: detailsOf(over).available }, {
    restricted: '2',
    available: '1',
  });
  await coreInvariants([s.id]);
});

Deno.test('a batch of usage events for models in and out of a list, beside single charges at once: each paid only by lots that may pay, refusals saying restricted', async () => {
  const s = await studentWith(['6', ['gpt-4o-mini']], ['2', null]);
  const ev = (model: string, credits: number) => ({
    event_id: crypto.randomUUID(),
    user_id: s.id,
    model,
    input_tokens: Math.round(credits * tokensFor[model]),
    output_tokens: 0,
    occurred_at: new Date().toISOString(),
  });
  const [b, ...singles] = await Promise.all([
    batch([ev('gpt-4o', 3), ev('gpt-4o-mini', 3), ev('gpt-4o', 2), ev('gpt-4o-mini', 3)]),
    charge(s.token, 'gpt-4o-mini', 3),
    charge(s.token, 'gpt-4o', 1),
  ]);
  assert.equal(b.status, 200, b.text);
  const outcomes = outcomesOf(b) as unknown as Json[];
  const ok = outcomes.filter((o) => o.status === 'applied').length + singles.filter((r) => r.status === 201).length;
  // gpt-4o's 3 is refused (at most 2 may pay for it), saying why; the lots hold 8 in all.
  assert.equal(outcomes[0].status, 'insufficient', JSON.stringify(outcomes));
  assert.ok('restricted' in outcomes[0] && 'reason' in outcomes[0], JSON.stringify(outcomes[0]));
  const [{ spent, balance }] = await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as spent,
    (select trim_scale(a.balance)::text from billing.accounts a where a.user_id = ${s.id}) as balance
    from billing.transfers t join billing.accounts a on a.id = t.from_account_id
    where a.user_id = ${s.id} and t.kind = 'usage'`;
  assert.equal(Number(spent) + Number(balance), 8, `charged ${ok}: ${spent} spent, ${balance} left`);
  const [{ gpt4o }] = await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as gpt4o from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id
    where a.user_id = ${s.id} and t.kind = 'usage' and t.metadata ->> 'model' = 'gpt-4o'`;
  assert.ok(Number(gpt4o) <= 2, `gpt-4o was charged ${gpt4o}, more than the 2 credits for anything`);
  await coreInvariants([s.id]);
});

Deno.test("a member's allowance for some models pays only for them; another model falls to the member's own credits, never to the allowance", async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'allowance', '100');
  const funded = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: key(),
    body: { user_id: ada.id, amount: '10', applies_to: ['gpt-4o-mini*'] },
  });
  assert.equal(funded.status, 201, funded.text);
  assert.equal((await grantLot(ada.id, '5', 'promo_grant')).status, 201);
  const mini = await charge(ada.token, 'gpt-4o-mini', 6);
  assert.equal(mini.status, 201, mini.text);
  assert.deepEqual((mini.body.data as { paid_by: unknown }).paid_by, { org_id: org });
  const gpt4o = await charge(ada.token, 'gpt-4o', 4);
  assert.equal(gpt4o.status, 201, gpt4o.text);
  const [a] = await testDb`select
    (select trim_scale(x.balance)::text from billing.accounts x where x.org_id = ${org} and x.member_id = ${ada.id}) as allowance,
    (select trim_scale(x.balance)::text from billing.accounts x where x.user_id = ${ada.id}) as own`;
  assert.deepEqual({ ...a }, { allowance: '4', own: '1' });
  const more = await charge(ada.token, 'gpt-4o', 2);
  assert.equal(more.status, 402, more.text);
  await coreInvariants([ada.id], [org]);
});

Deno.test('a lot for the model past its expiry but not yet swept never pays: the charge expires it first and draws only live lots', async () => {
  const id = await newUser();
  const soon = new Date(Date.now() + 86_400_000).toISOString();
  const r = await grantLot(id, '5', 'promo_grant', { priority: 10, expires_at: soon, applies_to: ['gpt-4o-mini'] });
  assert.equal(r.status, 201, r.text);
  assert.equal((await grantLot(id, '3', 'promo_grant', { priority: 11 })).status, 201);
  const token = await userToken(id);
  await backdateLot((r.body.data as { lot_id: string }).lot_id);
  const short = await charge(token, 'gpt-4o-mini', 4);
  assert.equal(short.status, 402, short.text);
  assert.equal((await charge(token, 'gpt-4o-mini', 3)).status, 201);
  assert.deepEqual(await remainingOf(id), ['0', '0']);
  const [{ expired }] =
    await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as expired from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id where a.user_id = ${id} and t.kind = 'expiry'`;
  assert.equal(expired, '5');
  await coreInvariants([id]);
});

// ============================================================ holds racing charges on restricted credits

Deno.test('gateway calls for gpt-4o racing usage charges for gpt-4o-mini on credits for mini and for anything: every call paid its whole price by its hold, mini never paid by gpt-4o holds, no debt', async () => {
  const s = await studentWith(['30', ['gpt-4o-mini']], ['40', null]);
  const ai = (i: number) =>
    api('/ai/v1/chat/completions', {
      token: s.token,
      body: {
        model: 'gpt-4o',
        messages: [{ role: 'user', content: `race ${i} #standin words=20 first_byte_delay=${100 * i}` }],
        max_tokens: 100,
      },
    });
  const rs = await Promise.all([
    ...Array.from({ length: 4 }, (_, i) => ai(i)),
    ...Array.from({ length: 12 }, () => charge(s.token, 'gpt-4o-mini', 3)),
  ]);
  const calls = rs.slice(0, 4);
  assert.ok(calls.every((r) => r.status === 200 || r.status === 402), calls.map((r) => r.text).join('\n'));
  // Each call is charged the card's price of its usage, all of it captured from its hold.
  const rows = await testDb`select c.status, trim_scale(c.charged)::text as charged,
      trim_scale((billing.price_usage('gpt-4o', (c.usage ->> 'input_tokens')::bigint,
        (c.usage ->> 'output_tokens')::bigint, 0, 0)).amount)::text as price, trim_scale(h.captured_amount)::text as captured
    from billing.ai_calls c join billing.holds h on h.id = c.hold_id where c.user_id = ${s.id} and c.status <> 'refused'`;
  assert.ok(rows.length > 0, calls.map((r) => r.text).join('\n'));
  assert.ok(
    rows.every((r) => r.status === 'charged' && r.charged === r.price && r.captured === r.charged),
    JSON.stringify(rows),
  );
  const [{ debt }] =
    await testDb`select trim_scale(coalesce(sum(l.remaining) filter (where l.open), 0) - a.balance)::text as debt
    from billing.accounts a left join billing.lots l on l.account_id = a.id where a.user_id = ${s.id} group by a.balance`;
  assert.equal(debt, '0', 'no debt');
  const [{ mini_from_general }] = await testDb`select trim_scale(coalesce(sum(x.amount), 0))::text as mini_from_general
    from billing.lot_allocations x join billing.lots l on l.id = x.lot_id join billing.transfers t on t.id = x.transfer_id
    join billing.accounts a on a.id = l.account_id
    where a.user_id = ${s.id} and l.applies_to is null and t.metadata ->> 'model' = 'gpt-4o-mini'`;
  // 12 × 3 = 36: the mini lot's 30 first (it comes first), at most 6 from the credits for anything.
  assert.ok(Number(mini_from_general) <= 6, `mini drew ${mini_from_general} of the general credits`);
  await coreInvariants([s.id]);
});

// ============================================================ an AI call's begin

const chat = (token: string, text: string, headers: Record<string, string> = {}, stream = false) =>
  api('/ai/v1/chat/completions', {
    token,
    headers,
    body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: text }], max_tokens: 50, stream },
  });

Deno.test('one Idempotency-Key sent with twelve different bodies at once: one call held and charged, every other a 409, no orphan hold, no second claim', async () => {
  const s = await studentWith(['100', null]);
  const k = crypto.randomUUID();
  const rs = await Promise.all(
    Array.from(
      { length: 12 },
      (_, i) => chat(s.token, `body ${i} #standin words=5 first_byte_delay=200`, { 'idempotency-key': k }),
    ),
  );
  const ok = rs.filter((r) => r.status === 200);
  assert.equal(ok.length, 1, rs.map((r) => `${r.status} ${codeOf(r)}`).join(', '));
  assert.ok(
    rs.filter((r) => r.status !== 200).every((r) =>
      r.status === 409 && ['IDEMPOTENCY_KEY_IN_USE', 'IDEMPOTENCY_KEY_REUSED'].includes(codeOf(r) ?? '')
    ),
    rs.map((r) => r.text).join('\n'),
  );
  const [st] = await testDb`select
    (select count(*)::int from billing.ai_calls where user_id = ${s.id} and idempotency_key = ${k}) as claims,
    (select count(*)::int from billing.ai_calls where user_id = ${s.id} and status = 'refused') as refused,
    (select count(*)::int from billing.holds h join billing.accounts a on a.id = h.account_id where a.user_id = ${s.id}) as holds,
    (select trim_scale(100 - balance)::text from billing.accounts where user_id = ${s.id}) as spent,
    (select trim_scale(charged)::text from billing.ai_calls where user_id = ${s.id} and status = 'charged') as charged`;
  assert.deepEqual({ ...st }, { claims: 1, refused: 11, holds: 1, spent: st.charged, charged: st.charged });
  await coreInvariants([s.id]);
});

Deno.test('a key freed by a failed call, flooded with other bodies while the first fails: every answered call is a charged record with its own hold', async () => {
  const s = await studentWith(['100', null]);
  for (let round = 0; round < 3; round++) {
    const k = crypto.randomUUID();
    const first = chat(s.token, `first ${round} #standin fail=500 first_byte_delay=150`, { 'idempotency-key': k });
    const flood = Array.from(
      { length: 16 },
      (_, i) =>
        new Promise((r) => setTimeout(r, 5 * i)).then(() =>
          chat(s.token, `other ${round}.${i} #standin words=3`, { 'idempotency-key': k }, true)
        ),
    );
    const rs = await Promise.all([first, ...flood]);
    const served = rs.slice(1).filter((r) => r.status === 200);
    assert.ok(
      rs.every((r) => r.status < 500 || r === rs[0]),
      rs.map((r) => `${r.status} ${r.text.slice(0, 80)}`).join('\n'),
    );
    const [{ charged }] = await testDb`select count(*)::int as charged from billing.ai_calls
      where user_id = ${s.id} and idempotency_key = ${k} and status = 'charged'`;
    assert.equal(served.length, charged, `${served.length} answers served, ${charged} charged`);
    assert.ok(charged <= 1, 'one live claim per key');
  }
  await coreInvariants([s.id]);
});

Deno.test("a duplicate's begin racing its first call's failure never answers a go-ahead without a call and a hold", async () => {
  // Two sessions as two gateway requests: the first call fails (the provider refused it) while a
  // duplicate under its key, another body, begins again and again until the key is free.
  const first = postgres(env('SUPABASE_DB_URL'), { max: 1, prepare: false, onnotice: () => {} });
  const dup = postgres(env('SUPABASE_DB_URL'), { max: 1, prepare: false, onnotice: () => {} });
  const s = await studentWith(['1000', null]);
  const begin = (db: postgres.Sql, k: string, hash: string) =>
    db`select billing.begin_ai_call(${s.id}, 'gpt-4o-mini', 1, 1, ${k}, ${hash}, 60) as r`.then(([x]) => x.r as Json);
  const answers: Record<string, number> = {};
  try {
    for (let trial = 0; trial < 300; trial++) {
      const k = crypto.randomUUID();
      const a = await begin(first, k, 'hash-a');
      assert.equal(a.state, 'held', JSON.stringify(a));
      // Started now, not awaited: postgres.js sends a query once it is awaited or executed.
      const failing = first`select billing.fail_ai_call(${a.call_id as string}, 'PROVIDER_REFUSED_400')`.execute();
      let b: Json;
      do b = await begin(dup, k, 'hash-b'); while (b.token === 'IDEMPOTENCY_KEY_REUSED');
      await failing;
      const seen = b.state === 'held' ? (b.call_id ? 'held' : 'held without a call') : String(b.token ?? b.state);
      answers[seen] = (answers[seen] ?? 0) + 1;
      if (b.state === 'held' && b.call_id) await dup`select billing.fail_ai_call(${b.call_id as string}, 'test')`;
    }
  } finally {
    await first.end();
    await dup.end();
  }
  assert.equal(answers['held without a call'], undefined, JSON.stringify(answers));
  await coreInvariants([s.id]);
});

// ============================================================ a finish racing what shrinks its hold

Deno.test('an AI call held when a chargeback opens while the provider answers: the capture never exceeds what is held, and the call is charged its whole price', async () => {
  const id = await newUser();
  const token = await userToken(id);
  const co = await buy(token, 'starter');
  const own = async () =>
    (await testDb`select trim_scale(h.amount)::text as amount, h.status from billing.ai_calls c
      join billing.holds h on h.id = c.hold_id where c.user_id = ${id} and c.status <> 'refused'`)[0];
  // Most of the purchase spent, so the call's hold must give way to the dispute's freeze.
  const spent = await charge(token, 'gpt-4o', 9900);
  assert.equal(spent.status, 201, spent.text);
  const call = api('/ai/v1/chat/completions', {
    token,
    body: {
      model: 'gpt-4o',
      messages: [{ role: 'user', content: '#standin words=400 first_byte_delay=1500' }],
      max_tokens: 1000,
    },
  });
  for (let i = 0; i < 100 && !(await own()); i++) await new Promise((r) => setTimeout(r, 20));
  const before = await own();
  assert.ok(before, 'the call was held');
  await emulator(`/_emulator/charges/${await chargeOf(co.session_id)}/dispute`, { outcome: 'open' });
  const r = await call;
  assert.equal(r.status, 200, r.text);
  const [c] = await testDb`select c.status, trim_scale(c.charged)::text as charged,
    h.status as hold_status, trim_scale(h.amount)::text as held, trim_scale(coalesce(h.captured_amount, 0))::text as captured,
    trim_scale(coalesce(o.amount, 0))::text as overage, o.metadata as overage_facts,
    trim_scale((billing.price_usage('gpt-4o', (c.usage ->> 'input_tokens')::bigint, (c.usage ->> 'output_tokens')::bigint,
      0, 0)).amount)::text as price, trim_scale(a.balance)::text as balance, trim_scale(90 - c.charged)::text as left
    from billing.ai_calls c join billing.holds h on h.id = c.hold_id join billing.accounts a on a.id = h.account_id
    left join billing.transfers o on o.idempotency_key = 'ai-overage:' || c.id
    where c.user_id = ${id} and c.status <> 'refused'`;
  assert.equal(c.status, 'charged');
  assert.ok(Number(c.captured) <= Number(c.held), JSON.stringify(c));
  // The whole price is charged: what the hold held captured, any rest past it at once (from the
  // frozen purchase, or as debt), never left off the ledger.
  assert.equal(c.charged, c.price, JSON.stringify(c));
  const [whole] = await testDb`select trim_scale(${c.captured}::numeric + ${c.overage}::numeric)::text as s`;
  assert.equal(whole.s, c.price, JSON.stringify(c));
  if (c.overage !== '0') assert.equal(c.overage_facts.priced, c.price, JSON.stringify(c));
  assert.equal(c.balance, c.left, 'the 90 credits left less the price');
  await coreInvariants([id]);
});

Deno.test("a job's hold keeps its reservation through a refund of the purchase under it: its completion captures it, what it spent of the refunded credits is owed, and what it cost past its hold is charged whole as debt", async () => {
  const id = await newUser();
  const token = await userToken(id);
  const co = await buy(token, 'starter');
  assert.equal((await charge(token, 'gpt-4o', 9900)).status, 201);
  // A job reserving 80 of the 90 left, leased by a worker (as claim_jobs leaves it).
  const [{ id: job }] = await testDb`select id from billing.enqueue_job(${id}, 'ai_completion',
    '{"model": "gpt-4o", "prompt": "hello world", "max_tokens": 1000}'::jsonb, ${crypto.randomUUID()}, null, 80)`;
  await testDb`update billing.jobs set status = 'processing', locked_by = 'test-worker',
    locked_until = now() + interval '1 minute', attempts = 1 where id = ${job}`;
  const refunded = await api('/checkout/refunds', {
    token: await adminToken(),
    headers: key(),
    body: { purchase_id: co.purchase_id },
  });
  assert.equal(refunded.status, 202, refunded.text);
  const [before] =
    await testDb`select h.status, trim_scale(h.amount)::text as amount, trim_scale(a.balance)::text as balance
    from billing.jobs j join billing.holds h on h.id = j.hold_id join billing.accounts a on a.id = h.account_id
    where j.id = ${job}`;
  // The job cost (1,000 × 5 + 2,000 × 15) × 4 / 1,000 = 140 credits, more than it reserved.
  const [done] = await testDb`select status from billing.complete_job(${job}, 'test-worker', '{"text": "ok"}'::jsonb,
    '{"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 2000}'::jsonb)`;
  assert.equal(done.status, 'completed');
  // What the refund owes for the spent reservation is the minute's tick's.
  await sweepExpiredHolds();
  const [after] = await testDb`select h.status, trim_scale(h.captured_amount)::text as captured,
    trim_scale(a.balance)::text as balance
    from billing.jobs j join billing.holds h on h.id = j.hold_id join billing.accounts a on a.id = h.account_id
    where j.id = ${job}`;
  // The refund took the 10 free credits at once and left the hold its 80 (docs/credit-lots.md §
  // Refunds, disputes and debt 1); the job captured them; the refunded credits it spent are owed
  // by the buyer (debt), as what was spent before it; the 60 it cost past its hold are charged at
  // once, no credits left to pay them: debt too (rule 7, one debt).
  assert.deepEqual([before.status, before.amount], ['active', '80'], JSON.stringify(before));
  assert.equal(after.captured, '80', JSON.stringify(after));
  assert.equal(Number(after.balance), Number(before.balance) - 80 - 80 - 60, JSON.stringify({ before, after }));
  const [excess] = await testDb`select trim_scale(t.amount)::text as amount, t.metadata ->> 'reserved' as reserved,
      t.metadata ->> 'priced' as priced, t.metadata ? 'unbilled' as unbilled,
      (select count(*)::int from billing.lot_allocations x where x.transfer_id = t.id) as drawn_lots
    from billing.transfers t where t.idempotency_key = ${'job-overage:' + job}`;
  assert.deepEqual({ ...excess }, { amount: '60', reserved: '80', priced: '140', unbilled: false, drawn_lots: 0 });
  await coreInvariants([id]);
});
