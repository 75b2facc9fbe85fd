// Attacks on POST /credits/usage/batch as it prices, checks, keys and describes its events before
// locking any account (billing.charge_usage_batch): the reporter is a trusted server, but the
// events name students who race it with their own tokens (holds, AI calls, single usage), with
// Stripe's refunds and disputes, joining and leaving schools, caps and credits for some models.
// Each scenario checks every outcome by its place, the transfers the batch wrote (amount, rate
// card, facts), the balances it answered, and the ledger's invariants.
import assert from 'node:assert/strict';
import {
  api,
  assertLedgerInvariants,
  env,
  fund,
  key,
  newUser,
  reportUsage,
  testDb,
  until,
  userToken,
  watchTick,
} from '../support/helpers.ts';
import { checkLots, type Json } from '../support/money.ts';
import { grantLot } from '../support/lots.ts';
import { join, person, school } from '../support/orgs.ts';
import { balanceOf, buy, chargeOf, deliverWithRetries, emulator } from '../support/purchases.ts';

// ============================================================ helpers

type Outcome = {
  event_id: string;
  status: string;
  charged?: string;
  transfer_id?: string | null;
  balance?: string;
  org_id?: string;
  required?: string;
  available?: string;
  error?: string;
  cap?: Json;
};
type Event = Record<string, unknown> & { event_id: string; user_id: string; model: string };

const service = env('SUPABASE_SERVICE_ROLE_KEY');
const send = (events: Event[]) => api('/credits/usage/batch', { token: service, body: { events } });
const outcomesOf = (r: Awaited<ReturnType<typeof api>>) => {
  assert.equal(r.status, 200, r.text);
  return (r.body.data as { outcomes: Outcome[] }).outcomes;
};
/** A gpt-4o event (50 input tokens = 1 credit, an output token 0.06), occurred `minutesAgo` minutes ago. */
const ev = (user: string, input: number, output = 0, extra: Record<string, unknown> = {}, minutesAgo = 1): Event => ({
  event_id: crypto.randomUUID(),
  user_id: user,
  model: 'gpt-4o',
  input_tokens: input,
  output_tokens: output,
  occurred_at: new Date(Date.now() - minutesAgo * 60_000).toISOString(),
  ...extra,
});
/** `credits` of gpt-4o input. */
const credits = (user: string, n: number, extra: Record<string, unknown> = {}) => ev(user, n * 50, 0, extra);

/** A user's own account: balance, held, available. */
async function own(user: string) {
  const [r] = await testDb`select trim_scale(balance)::text as balance, trim_scale(held)::text as held,
    trim_scale(balance - held)::text as available from billing.accounts where user_id = ${user}`;
  return r ?? { balance: null, held: null, available: null };
}

/** Every usage transfer the batch wrote for these events (user + event id), with what it records. */
async function written(events: Event[]) {
  const keys = events.map((e) => `usage-event:${e.user_id}:${e.event_id}`);
  return await testDb`
    select t.id::text, t.idempotency_key as key, trim_scale(t.amount)::text as amount, t.rate_card_id::text, t.metadata,
      t.correlation_id, t.member_id::text, a.user_id::text as payer_user, a.org_id::text as payer_org,
      (select trim_scale(e.balance_after)::text from billing.entries e where e.transfer_id = t.id and e.account_id = a.id) as after
    from billing.transfers t join billing.accounts a on a.id = t.from_account_id
    where t.kind = 'usage' and t.idempotency_key = any(${keys}) order by t.id`;
}

/** The rate card now in force for a model. */
const cardOf = async (model: string) =>
  (await testDb`select id::text from billing.rate_cards where model = ${model} and effective_from <= now()
    order by effective_from desc, version desc limit 1`)[0].id as string;

/**
 * Each applied outcome against its event and the transfer it names: the same event (user, id), the
 * amount charged, the facts recorded (model, every count, occurred_at, event id, correlation id),
 * the rate card whose price it is, and the balance answered (the payer's balance after it).
 */
async function checkApplied(events: Event[], outcomes: Outcome[]) {
  assert.equal(outcomes.length, events.length, 'one outcome per event');
  const rows = new Map((await written(events)).map((t) => [t.id as string, t]));
  for (const [i, o] of outcomes.entries()) {
    const e = events[i];
    assert.equal(o.event_id, e.event_id, `outcome ${i} is its own event's`);
    if (o.status !== 'applied' || o.transfer_id === null) continue;
    const t = rows.get(o.transfer_id!);
    assert.ok(t, `outcome ${i}: its transfer ${o.transfer_id} is this event's (${JSON.stringify(o)})`);
    assert.equal(t.key, `usage-event:${e.user_id}:${e.event_id}`, `outcome ${i}: keyed by its user and event id`);
    assert.equal(t.amount, o.charged, `outcome ${i}: charged what the transfer moved`);
    const m = t.metadata as Json;
    assert.deepEqual(
      [m.model, m.input_tokens, m.output_tokens, m.cached_input_tokens, m.reasoning_tokens, m.images, m.audio_seconds],
      [
        e.model,
        e.input_tokens,
        e.output_tokens,
        e.cached_input_tokens ?? 0,
        e.reasoning_tokens ?? 0,
        e.images ?? 0,
        e.audio_seconds ?? 0,
      ],
      `outcome ${i}: the transfer records its own event's model and counts`,
    );
    assert.equal(m.event_id, e.event_id, `outcome ${i}: the transfer records its event id`);
    assert.equal(new Date(m.occurred_at as string).getTime(), new Date(e.occurred_at as string).getTime());
    assert.equal(t.correlation_id ?? undefined, e.correlation_id, `outcome ${i}: its correlation id`);
    // The amount is the price of these counts on the card the transfer names.
    const [{ price }] = await testDb`select trim_scale(billing.usage_amount((f ->> 'input_tokens')::numeric,
      (f ->> 'cached_input_tokens')::numeric, (f ->> 'output_tokens')::numeric, (f ->> 'reasoning_tokens')::numeric,
      (f ->> 'images')::numeric, (f ->> 'audio_seconds')::numeric, r.credits_per_input_token,
      r.credits_per_cached_input_token, r.credits_per_output_token, r.credits_per_reasoning_token, r.credits_per_image,
      r.credits_per_audio_second))::text as price
      from billing.transfers x cross join lateral (select x.metadata as f) m join billing.rate_cards r on r.id = x.rate_card_id
      where x.id = ${t.id} and r.model = ${e.model}`;
    assert.equal(price, t.amount, `outcome ${i}: priced on the card it records`);
    if (t.payer_org) {
      assert.equal(o.org_id, t.payer_org, `outcome ${i}: names the school that paid`);
      assert.equal(t.member_id, e.user_id, `outcome ${i}: the school's charge names its member`);
      assert.equal(o.balance, undefined, `outcome ${i}: never a school's balance`);
    } else {
      assert.equal(t.payer_user, e.user_id, `outcome ${i}: paid by its own user`);
      assert.equal(o.balance, t.after, `outcome ${i}: the balance answered is the balance after it`);
    }
  }
}

/**
 * The ledger's invariants, the lots', and no usage that took a balance below zero (but what a
 * provider billed past a hold: the one debt, its metadata names what the hold `reserved`).
 */
async function invariants() {
  await assertLedgerInvariants();
  await checkLots();
  const [{ n }] =
    await testDb`select count(*)::int as n from billing.entries e join billing.transfers t on t.id = e.transfer_id
    join billing.accounts a on a.id = e.account_id where t.kind = 'usage' and e.balance_after < 0 and a.code is null
      and not t.metadata ? 'reserved'`;
  assert.equal(n, 0, 'no usage charge left a balance below zero');
}

/** Sessions waiting on a lock (this stack runs nothing else meanwhile). */
const lockWaiters = async () =>
  (await testDb`select count(*)::int as n from pg_stat_activity
    where wait_event_type = 'Lock' and state = 'active' and datname = current_database()`)[0].n as number;

/**
 * Holds the accounts of `users` locked in a transaction of its own, runs `during` (which starts
 * requests that queue on those locks, in the order it starts them), then commits.
 */
async function withAccountsLocked(users: string[], during: (waitFor: (n: number) => Promise<void>) => Promise<void>) {
  const before = await lockWaiters();
  await testDb.begin(async (tx) => {
    await tx`select 1 from billing.accounts where user_id = any(${users}) order by id for update`;
    await during(async (n) => {
      await until(`${n} requests queued on the locks`, async () => (await lockWaiters()) - before >= n);
    });
  });
}

/** A gateway chat call as the student (non-streamed). */
const chat = (token: string, directives = 'words=20') =>
  api('/ai/v1/chat/completions', {
    token,
    body: { model: 'gpt-4o', messages: [{ role: 'user', content: `#standin ${directives}` }], max_tokens: 100 },
  });

const shuffle = <T>(xs: T[]) => [...xs].sort(() => Math.random() - 0.5);

// ============================================================ outcomes in their places

Deno.test('a mixed batch answers every outcome at its own place: users interleaved, repeats, refusals, a school member and credits for some models', async () => {
  const [p1, p2, nobody] = [await newUser(), await newUser(), crypto.randomUUID()];
  await testDb`insert into auth.users (id) values (${nobody})`; // a user with no account
  await fund(p1, '25');
  await fund(p2, '3');
  const [owner, member] = await Promise.all(['owner', 'member'].map(person));
  const org = await school(owner, [member], 'pool', '1000');
  const r = await newUser(); // 10 for any model, 100 for gpt-4o-mini only
  await fund(r, '10');
  assert.equal((await grantLot(r, '100', 'promo_grant', { applies_to: ['gpt-4o-mini'] })).status, 201);
  const mini = (user: string) => ({ ...ev(user, 1000, 1000), model: 'gpt-4o-mini' }); // 0.6 + 2.4 = 3

  const e0 = credits(p1, 10, { correlation_id: 'corr-0' });
  const e1 = ev(p2, 100, 10, { cached_input_tokens: 0 }, 7); // 2 + 0.6 = 2.6
  const e2 = credits(member.id, 5);
  const events: Event[] = [
    e0, // 0 p1: 10 of 25
    e1, // 1 p2: 2.6 of 3
    e2, // 2 the member: the school's pool pays 5
    { ...credits(p1, 1), model: 'no-such-model' }, // 3 invalid
    { ...mini(r), correlation_id: 'corr-4' }, // 4 r: 3 from the credits for gpt-4o-mini
    { ...e0, input_tokens: 50 }, // 5 p1's repeat of 0: what 0 did
    credits(p2, 1), // 6 p2: 1 > 0.4 left
    credits(nobody, 1), // 7 no account
    ev(p1, 0, 0), // 8 p1: nothing to charge
    credits(r, 5, {}), // 9 r: 5 of the 10 for any model
    { ...e2, input_tokens: 999 }, // 10 the member's repeat of 2
    ev(p2, 0, 0, { images: 2 }), // 11 gpt-4o prices no images
    { ...credits(p1, 1), event_id: e1.event_id }, // 12 p1, p2's event id: another event
    credits(p1, 14, { reasoning_tokens: 0 }), // 13 p1: exactly the 14 left
    ev(p1, 1), // 14 p1: 0.02 > 0
    credits(r, 6), // 15 r: 6 > the 5 left for gpt-4o
    { ...mini(member.id), event_id: e0.event_id }, // 16 the member, p1's event id: 3 from the pool
  ];
  const o = outcomesOf(await send(events));
  assert.deepEqual(o.map((x) => x.event_id), events.map((e) => e.event_id));
  assert.deepEqual(o.map((x) => [x.status, x.charged ?? x.error ?? x.required ?? null]), [
    ['applied', '10'],
    ['applied', '2.6'],
    ['applied', '5'],
    ['invalid', 'UNKNOWN_MODEL'],
    ['applied', '3'],
    ['duplicate', '10'],
    ['insufficient', '1'],
    ['insufficient', '1'],
    ['applied', '0'],
    ['applied', '5'],
    ['duplicate', '5'],
    ['invalid', 'UNPRICED_USAGE'],
    ['applied', '1'],
    ['applied', '14'],
    ['insufficient', '0.02'],
    ['insufficient', '6'],
    ['applied', '3'],
  ]);
  assert.deepEqual(o.map((x) => x.balance ?? x.available ?? null), [
    '15',
    '0.4',
    null,
    null,
    '107',
    '15',
    '0.4',
    '0',
    null,
    '102',
    null,
    null,
    '14',
    '0',
    '0',
    o[15].available ?? null,
    null,
  ]);
  assert.equal(o[5].transfer_id, o[0].transfer_id, "a repeat names its first occurrence's transfer");
  assert.equal(o[10].transfer_id, o[2].transfer_id);
  assert.deepEqual([o[2].org_id, o[10].org_id, o[16].org_id], [org, org, org], 'the school paid, and is named');
  assert.equal(o[8].transfer_id, null, 'nothing charged, nothing written');
  assert.notEqual(o[12].transfer_id, o[1].transfer_id);
  await checkApplied(events, o);
  assert.equal(
    (await written(events)).length,
    8,
    'one transfer per applied event (p1 ×3, p2, r ×2, the member ×2), nothing for a repeat or a refusal',
  );
  assert.deepEqual(
    [(await own(p1)).balance, (await own(p2)).balance, (await own(r)).balance, (await own(nobody)).balance],
    ['0', '0.4', '102', null],
  );
  const [pool] =
    await testDb`select trim_scale(balance)::text as b from billing.accounts where org_id = ${org} and member_id is null`;
  assert.equal(pool.b, '992', '1,000 − 5 − 3');
  for (const [i, card] of [[0, 'gpt-4o'], [4, 'gpt-4o-mini']] as const) {
    const [t] = (await written(events)).filter((x) => x.id === o[i].transfer_id);
    assert.equal(t.rate_card_id, await cardOf(card));
  }
  await invariants();
});

// ============================================================ balances read under the locks

Deno.test("a student's hold queued before the batch: the batch's greedy order sees what the hold left, exactly", async () => {
  const s = await newUser();
  await fund(s, '100');
  const token = await userToken(s);
  const events = [credits(s, 20), credits(s, 20), credits(s, 10), credits(s, 5)];
  let hold: Promise<Awaited<ReturnType<typeof api>>> | undefined;
  let batch: Promise<Awaited<ReturnType<typeof api>>> | undefined;
  await withAccountsLocked([s], async (waitFor) => {
    hold = api('/credits/holds', { token, headers: key(), body: { amount: '70' } });
    await waitFor(1);
    batch = send(events); // priced now, before the hold takes its lock; balances read after it
    await waitFor(2);
  });
  assert.equal((await hold!).status, 201, (await hold!).text);
  const o = outcomesOf(await batch!);
  assert.deepEqual(o.map((x) => [x.status, x.charged ?? x.required, x.balance ?? x.available]), [
    ['applied', '20', '80'],
    ['insufficient', '20', '10'],
    ['applied', '10', '70'],
    ['insufficient', '5', '0'],
  ]);
  assert.deepEqual(await own(s), { balance: '70', held: '70', available: '0' });
  await checkApplied(events, o);
  await invariants();
});

Deno.test('a batch queued before the student’s hold and single usage: they see what the batch left, exactly', async () => {
  const s = await newUser();
  await fund(s, '100');
  const token = await userToken(s);
  const events = [credits(s, 30), credits(s, 50), credits(s, 25)];
  let batch: Promise<Awaited<ReturnType<typeof api>>> | undefined;
  let hold: Promise<Awaited<ReturnType<typeof api>>> | undefined;
  let single: Promise<Awaited<ReturnType<typeof api>>> | undefined;
  await withAccountsLocked([s], async (waitFor) => {
    batch = send(events);
    await waitFor(1);
    hold = api('/credits/holds', { token, headers: key(), body: { amount: '21' } });
    await waitFor(2);
    single = reportUsage('/credits/usage', {
      token,
      headers: key(),
      body: { model: 'gpt-4o', input_tokens: 20 * 50, output_tokens: 0 },
    });
    await waitFor(3);
  });
  const o = outcomesOf(await batch!);
  assert.deepEqual(o.map((x) => [x.status, x.balance ?? x.available]), [
    ['applied', '70'],
    ['applied', '20'],
    ['insufficient', '20'],
  ]);
  assert.equal((await hold!).status, 402, (await hold!).text);
  assert.equal((await single!).status, 201, (await single!).text);
  assert.deepEqual(await own(s), { balance: '0', held: '0', available: '0' });
  await checkApplied(events, o);
  await invariants();
});

Deno.test('two batches queued on the same students: each event applied once, every repeat names the first transfer', async () => {
  const [a, b] = [await newUser(), await newUser()];
  await fund(a, '10');
  await fund(b, '10');
  const [ea, eb, ea2] = [credits(a, 4), credits(b, 3), credits(a, 5)];
  const first = [ea, eb, { ...ea, input_tokens: 1 }, credits(b, 8)];
  const second = [eb, ea2, ea, credits(b, 7), credits(a, 2)];
  let r1: Promise<Awaited<ReturnType<typeof api>>> | undefined;
  let r2: Promise<Awaited<ReturnType<typeof api>>> | undefined;
  await withAccountsLocked([a, b], async (waitFor) => {
    r1 = send(first);
    await waitFor(1);
    r2 = send(second);
    await waitFor(2);
  });
  const o1 = outcomesOf(await r1!);
  const o2 = outcomesOf(await r2!);
  assert.deepEqual(o1.map((x) => [x.status, x.charged ?? x.required, x.balance ?? x.available]), [
    ['applied', '4', '6'],
    ['applied', '3', '7'],
    ['duplicate', '4', '6'],
    ['insufficient', '8', '7'],
  ]);
  assert.deepEqual(o2.map((x) => [x.status, x.charged ?? x.required, x.balance ?? x.available ?? null]), [
    ['duplicate', '3', null],
    ['applied', '5', '1'],
    ['duplicate', '4', null],
    ['applied', '7', '0'],
    ['insufficient', '2', '1'],
  ]);
  assert.equal(o2[0].transfer_id, o1[1].transfer_id);
  assert.equal(o2[2].transfer_id, o1[0].transfer_id);
  assert.equal(o1[2].transfer_id, o1[0].transfer_id);
  await checkApplied(first, o1);
  await checkApplied(second, o2);
  assert.deepEqual([(await own(a)).balance, (await own(b)).balance], ['1', '0']);
  await invariants();
});

// ============================================================ a new price published mid-batch

Deno.test('a rate card published while the batch waits on its locks: every charge is the price on the card it records', async () => {
  const model = `batch-card-${crypto.randomUUID().slice(0, 8)}`;
  // v1: 1 credit per 1,000 input tokens ($1 a million, ×1).
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from) values (${model}, 1, 1, 0, 1, now() - interval '1 hour')`;
  const v1 = await cardOf(model);
  const plain = await newUser();
  await fund(plain, '100');
  const r = await newUser(); // credits for this model only: charged alone
  await fund(r, '1');
  assert.equal((await grantLot(r, '100', 'promo_grant', { applies_to: [model] })).status, 201);
  const events: Event[] = [
    { ...ev(plain, 10_000), model },
    { ...ev(r, 10_000), model },
    { ...ev(plain, 5_000), model },
  ];
  let batch: Promise<Awaited<ReturnType<typeof api>>> | undefined;
  await withAccountsLocked([plain, r], async (waitFor) => {
    batch = send(events);
    await waitFor(1);
    // v2, three times the price, in force since before the batch began (committed now).
    await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
      effective_from) values (${model}, 2, 3, 0, 1, now() - interval '1 minute')`;
  });
  const o = outcomesOf(await batch!);
  assert.ok(o.every((x) => x.status === 'applied'), JSON.stringify(o));
  // The plain events were priced when the batch read them (as a single request prices before its
  // lock); whatever card each names, its amount is that card's price and the balances follow.
  const rows = await written(events);
  const plainRows = rows.filter((t) => t.payer_user === plain);
  assert.deepEqual(plainRows.map((t) => [t.rate_card_id, t.amount]), [[v1, '10'], [v1, '5']]);
  await checkApplied(events, o);
  const rRow = rows.find((t) => t.payer_user === r)!;
  assert.ok(['10', '30'].includes(rRow.amount), rRow.amount);
  assert.deepEqual(
    [(await own(plain)).balance, (await own(r)).balance],
    ['85', String(101 - Number(rRow.amount))],
  );
  await invariants();
});

// ============================================================ to the last 10⁻¹⁸

Deno.test('a batch spends a balance to exactly zero and refuses the next millionth; in debt it refuses everything', async () => {
  const model = `batch-micro-${crypto.randomUUID().slice(0, 8)}`;
  await testDb`insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup,
    effective_from) values (${model}, 1, 0.001, 0, 1, now() - interval '1 minute')`; // 1 token = 0.000001
  const s = await newUser();
  await fund(s, '1');
  const micro = (n: number) => ({ ...ev(s, n), model });
  const events = [micro(999_998), micro(1), micro(2), micro(1), micro(1)];
  const o = outcomesOf(await send(events));
  assert.deepEqual(o.map((x) => [x.status, x.charged ?? x.required, x.balance ?? x.available]), [
    ['applied', '0.999998', '0.000002'],
    ['applied', '0.000001', '0.000001'],
    ['insufficient', '0.000002', '0.000001'],
    ['applied', '0.000001', '0'],
    ['insufficient', '0.000001', '0'],
  ]);
  await checkApplied(events, o);
  // Debt: a student whose purchase is disputed and lost after spending.
  const buyer = await newUser();
  const token = await userToken(buyer);
  const co = await buy(token, 'starter');
  const spent = outcomesOf(await send([credits(buyer, 1000)]));
  assert.equal(spent[0].status, 'applied');
  const charge = await chargeOf(co.session_id);
  for (const outcome of ['open', 'lost']) {
    const { events: hooks } = await emulator(`/_emulator/charges/${charge}/dispute`, { outcome, deliver: false });
    for (const h of hooks) assert.ok((await deliverWithRetries(h)).status < 300);
  }
  assert.equal((await own(buyer)).balance, '-1000');
  const refused = outcomesOf(await send([credits(buyer, 1), ev(buyer, 0, 0)]));
  assert.deepEqual(refused.map((x) => [x.status, x.available ?? x.charged]), [['insufficient', '0'], ['applied', '0']]);
  assert.equal((await own(buyer)).balance, '-1000');
  await invariants();
});

// ============================================================ races with the student's own spending, Stripe, schools

Deno.test("batches racing the student's holds, AI calls and single usage never overdraw, and every answer is the ledger's", async () => {
  const s = await newUser();
  await fund(s, '100');
  const token = await userToken(s);
  const batches = Array.from({ length: 4 }, () => Array.from({ length: 5 }, () => credits(s, 7)));
  const [answers] = await Promise.all([
    Promise.all(batches.map(send)),
    Promise.all([
      ...Array.from({ length: 4 }, () =>
        reportUsage('/credits/usage', {
          token,
          headers: key(),
          body: { model: 'gpt-4o', input_tokens: 7 * 50, output_tokens: 0 },
        })),
      ...Array.from({ length: 3 }, () => api('/credits/holds', { token, headers: key(), body: { amount: '7' } })),
      ...Array.from({ length: 2 }, () => chat(token)),
    ]),
  ]);
  console.log(
    'batches beside holds, calls and usage:',
    answers.map((r) => outcomesOf(r).map((x) => x.status[0]).join('')),
  );
  for (const [i, r] of answers.entries()) {
    const o = outcomesOf(r);
    await checkApplied(batches[i], o);
    // In event order, each applied event's balance is the last one's less what it charged.
    let last: number | null = null;
    for (const x of o) {
      if (x.status === 'applied') {
        if (last !== null) assert.equal(Number(x.balance), last - Number(x.charged), JSON.stringify(o));
        last = Number(x.balance);
      } else {
        assert.equal(x.status, 'insufficient', JSON.stringify(o));
        assert.ok(Number(x.available) < Number(x.required), JSON.stringify(x));
      }
    }
  }
  const b = await balanceOf(token);
  assert.ok(Number(b.available) >= 0, JSON.stringify(b));
  const [{ out }] = await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as out from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id where a.user_id = ${s}`;
  assert.equal(Number(out) + Number(b.balance), 100, 'what left plus what is left is what came in');
  await invariants();
});

Deno.test("a student's own cap is exact under parallel batches and single usage: 14 charges of 7 under 100, no more", async () => {
  const s = await newUser();
  await fund(s, '1000');
  const token = await userToken(s);
  const capped = await api('/credits/caps', { method: 'PUT', token, body: { period: 'day', amount: '100' } });
  assert.equal(capped.status, 200, capped.text);
  // A cap for another model only never counts these.
  const other = await api('/credits/caps', {
    method: 'PUT',
    token,
    body: { period: 'day', amount: '1', model: 'gpt-4o-mini' },
  });
  assert.equal(other.status, 200, other.text);
  const batches = Array.from({ length: 5 }, () => Array.from({ length: 5 }, () => credits(s, 7)));
  const [answers, singles] = await Promise.all([
    Promise.all(batches.map(send)),
    Promise.all(Array.from({ length: 5 }, () =>
      reportUsage('/credits/usage', {
        token,
        headers: key(),
        body: { model: 'gpt-4o', input_tokens: 7 * 50, output_tokens: 0 },
      }))),
  ]);
  const outcomes = answers.map(outcomesOf);
  for (const [i, o] of outcomes.entries()) await checkApplied(batches[i], o);
  const all = outcomes.flat();
  const applied = all.filter((o) => o.status === 'applied').length + singles.filter((r) => r.status === 201).length;
  assert.equal(applied, 14, JSON.stringify(all.map((o) => o.status)));
  assert.equal(
    all.filter((o) => o.status === 'cap_reached').length + singles.filter((r) => r.status !== 201).length,
    16,
  );
  for (const o of all.filter((o) => o.status === 'cap_reached')) {
    assert.deepEqual([o.cap?.cap, o.cap?.spent, o.cap?.required], ['100', '98', '7']);
  }
  const [cap] = await testDb`select trim_scale(c.spent)::text as spent from billing.spend_caps c
    join billing.accounts a on a.id = c.account_id where a.user_id = ${s} and c.model is null`;
  assert.equal(cap.spent, '98');
  assert.equal((await own(s)).balance, '902');
  await invariants();
});

Deno.test("a school member's cap set by its owner is exact under parallel batches: the pool pays 5 charges of 2 under 10, no more", async () => {
  const [owner, m] = await Promise.all(['owner', 'm'].map(person));
  const org = await school(owner, [m], 'pool', '1000');
  const cap = await api(`/orgs/${org}/members/${m.id}/cap`, {
    method: 'PUT',
    token: owner.token,
    body: { period: 'day', amount: '10' },
  });
  assert.equal(cap.status, 200, cap.text);
  const batches = Array.from({ length: 5 }, () => Array.from({ length: 3 }, () => credits(m.id, 2)));
  const outcomes = (await Promise.all(batches.map(send))).map(outcomesOf);
  for (const [i, o] of outcomes.entries()) await checkApplied(batches[i], o);
  const all = outcomes.flat();
  assert.equal(all.filter((o) => o.status === 'applied').length, 5, JSON.stringify(all));
  console.log('a capped member refused:', JSON.stringify(all.find((o) => o.status !== 'applied')));
  for (const o of all.filter((o) => o.status !== 'applied')) {
    // No credits of their own: refused, the school's cap named as the reason, its balance never.
    assert.equal(o.status, 'insufficient', JSON.stringify(o));
    assert.ok(JSON.stringify(o).includes('"cap"'), JSON.stringify(o));
  }
  const [pool] =
    await testDb`select trim_scale(balance)::text as b from billing.accounts where org_id = ${org} and member_id is null`;
  assert.equal(pool.b, '990');
  await invariants();
});

Deno.test('the same events in 6 parallel batches, shuffled, over plain students, a school member and credits for some models: each applied once, answered alike', async () => {
  const p = await newUser();
  await fund(p, '20');
  const q = await newUser(); // 5: two of its three events of 2 fit, whichever batch comes first
  await fund(q, '5');
  const [owner, m] = await Promise.all(['owner', 'm'].map(person));
  const org = await school(owner, [m], 'pool', '100');
  const r = await newUser(); // 1 for any model, 10 for gpt-4o-mini: its three of 3 fit, its 2 for gpt-4o never
  await fund(r, '1');
  assert.equal((await grantLot(r, '10', 'promo_grant', { applies_to: ['gpt-4o-mini'] })).status, 201);
  const mini = (user: string) => ({ ...ev(user, 1000, 1000), model: 'gpt-4o-mini' }); // 3
  const events: Event[] = [
    ...Array.from({ length: 6 }, () => credits(p, 3)),
    ...Array.from({ length: 3 }, () => credits(q, 2)),
    ...Array.from({ length: 4 }, () => credits(m.id, 2)),
    mini(r),
    mini(r),
    mini(r),
    credits(r, 2),
  ];
  const sent = Array.from({ length: 6 }, () => shuffle(events));
  const answers = await Promise.all(sent.map(send));
  const byEvent = new Map<string, Outcome[]>();
  for (const [i, res] of answers.entries()) {
    const o = outcomesOf(res);
    await checkApplied(sent[i], o);
    for (const x of o) byEvent.set(x.event_id, [...(byEvent.get(x.event_id) ?? []), x]);
  }
  const rows = await written(events);
  assert.equal(new Set(rows.map((t) => t.key)).size, rows.length, 'one transfer per (user, event id)');
  for (const [id, os] of byEvent) {
    const applied = os.filter((o) => o.status === 'applied');
    assert.ok(applied.length <= 1, `${id} applied ${applied.length} times`);
    if (applied.length === 1) {
      for (const d of os.filter((o) => o.status === 'duplicate')) {
        assert.deepEqual([d.transfer_id, d.charged], [applied[0].transfer_id, applied[0].charged], id);
      }
      assert.ok(os.every((o) => o.status === 'applied' || o.status === 'duplicate'), JSON.stringify(os));
    }
  }
  const total = (u: string) => rows.filter((t) => t.payer_user === u).reduce((n, t) => n + Number(t.amount), 0);
  assert.deepEqual([total(p), total(q), total(r)], [18, 4, 9]);
  assert.deepEqual([(await own(p)).balance, (await own(q)).balance, (await own(r)).balance], ['2', '1', '2']);
  const [pool] =
    await testDb`select trim_scale(balance)::text as b from billing.accounts where org_id = ${org} and member_id is null`;
  assert.equal(pool.b, '92');
  await invariants();
});

Deno.test('a lost dispute racing batches: no batch charge overdraws, the debt is exactly what was spent of the purchase', async () => {
  const s = await newUser();
  const token = await userToken(s);
  const co = await buy(token, 'starter'); // 9,990
  const charge = await chargeOf(co.session_id);
  const open = (await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open', deliver: false })).events;
  const lost = (await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost', deliver: false })).events;
  const batches = Array.from({ length: 4 }, () => Array.from({ length: 5 }, () => credits(s, 500)));
  const [answers] = await Promise.all([
    Promise.all(batches.map(send)),
    Promise.all([...open, ...lost, ...open].map(deliverWithRetries)),
    api('/credits/holds', { token, headers: key(), body: { amount: '500' } }),
  ]);
  for (const e of [...open, ...lost]) assert.ok((await deliverWithRetries(e)).status < 300);
  console.log('batches beside a lost dispute:', answers.map((r) => outcomesOf(r).map((x) => x.status[0]).join('')));
  let spent = 0;
  for (const [i, res] of answers.entries()) {
    const o = outcomesOf(res);
    await checkApplied(batches[i], o);
    assert.ok(o.every((x) => ['applied', 'insufficient'].includes(x.status)), JSON.stringify(o));
    spent += o.filter((x) => x.status === 'applied').reduce((n, x) => n + Number(x.charged), 0);
  }
  assert.ok(spent <= 9990, `${spent}`);
  const [{ holds }] = await testDb`select coalesce(sum(t.amount), 0)::numeric::text as holds from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id where a.user_id = ${s} and t.kind = 'hold_capture'`;
  // A hold placed before the dispute keeps its reservation until it ends (taken back then): what
  // is available is minus what was spent.
  const mine = await own(s);
  assert.equal(
    Number(mine.balance) - Number(mine.held),
    -(spent + Number(holds)),
    `the whole purchase taken back: owed what was spent (${JSON.stringify(mine)})`,
  );
  const after = outcomesOf(await send([credits(s, 1)]));
  assert.deepEqual([after[0].status, after[0].available], ['insufficient', '0']);
  await invariants();
});

Deno.test('members leaving and joining a school while batches charge them: each charge paid by the wallet that answered it', async () => {
  const [owner, leaver, joiner] = await Promise.all(['owner', 'leaver', 'joiner'].map(person));
  const org = await school(owner, [leaver], 'pool', '500');
  await fund(leaver.id, '50');
  await fund(joiner.id, '50');
  const batches = Array.from({ length: 6 }, () => [
    credits(leaver.id, 2),
    credits(joiner.id, 2),
    credits(leaver.id, 1),
    credits(joiner.id, 1),
  ]);
  const [answers, removed] = await Promise.all([
    Promise.all(batches.map(send)),
    api(`/orgs/${org}/members/${leaver.id}`, { method: 'DELETE', token: owner.token }),
    join(owner.token, org, joiner),
  ]);
  assert.equal(removed.status, 200, removed.text);
  console.log(
    'batches beside a leave and a join:',
    answers.map((r) => outcomesOf(r).map((x) => x.org_id ? 'P' : 'O').join('')),
  );
  let fromPool = 0;
  let fromOwn = 0;
  for (const [i, res] of answers.entries()) {
    const o = outcomesOf(res);
    await checkApplied(batches[i], o); // org_id ⇔ the pool paid; a balance ⇔ their own account did
    for (const x of o) {
      assert.equal(x.status, 'applied', JSON.stringify(x));
      if (x.org_id) fromPool += Number(x.charged);
      else fromOwn += Number(x.charged);
    }
  }
  assert.equal(fromPool + fromOwn, 6 * 6);
  const [pool] =
    await testDb`select trim_scale(balance)::text as b from billing.accounts where org_id = ${org} and member_id is null`;
  assert.equal(Number(pool.b), 500 - fromPool);
  assert.equal(Number((await own(leaver.id)).balance) + Number((await own(joiner.id)).balance), 100 - fromOwn);
  // Settled: the one who left pays for themselves, the one who joined is paid for by the pool.
  const now = outcomesOf(await send([credits(leaver.id, 1), credits(joiner.id, 1)]));
  assert.deepEqual(now.map((x) => [x.status, x.org_id ?? null]), [['applied', null], ['applied', org]]);
  await invariants();
});

// ============================================================ what a charge sets off

Deno.test("a batch that takes a student's available below their threshold fires the low-balance alert, once, as a single charge does", async () => {
  const s = await newUser();
  await fund(s, '100');
  const token = await userToken(s);
  const set = await api('/credits/alerts/low-balance', { method: 'PUT', token, body: { threshold: '50' } });
  assert.equal(set.status, 200, set.text);
  const o = outcomesOf(await send([credits(s, 30), credits(s, 30), credits(s, 5)]));
  assert.deepEqual(o.map((x) => x.balance), ['70', '40', '35']);
  await watchTick();
  const alerts = await testDb`select payload from billing.notification_outbox where user_id = ${s}
    and template = 'balance_alert' order by id`;
  assert.deepEqual(alerts.map((a) => [a.payload.kind, a.payload.available]), [['balance_below', '35']]);
  const [{ fired }] = await testDb`select low_balance_fired as fired from billing.accounts where user_id = ${s}`;
  assert.equal(fired, true);
  // The same crossing: nothing more.
  outcomesOf(await send([credits(s, 1)]));
  await watchTick();
  assert.equal(
    (await testDb`select count(*)::int as n from billing.notification_outbox where user_id = ${s} and template = 'balance_alert'`)[
      0
    ]
      .n,
    1,
  );
});

Deno.test('a batch that takes a student below their auto-recharge threshold queues one recharge', async () => {
  const s = await newUser();
  const token = await userToken(s);
  const co = await api('/checkout/sessions', {
    token,
    headers: key(),
    body: { package_id: 'starter', save_card: true },
  });
  assert.equal(co.status, 201, co.text);
  await emulator(`/_emulator/checkout/sessions/${(co.body.data as { session_id: string }).session_id}/pay`, {
    outcome: 'succeeded',
  });
  const on = await api('/credits/auto-recharge', {
    method: 'PUT',
    token,
    body: { enabled: true, package_id: 'mini', threshold: '1000' },
  });
  assert.equal(on.status, 200, on.text);
  const o = outcomesOf(await send([credits(s, 8000), credits(s, 1000), credits(s, 10)]));
  assert.deepEqual(o.map((x) => x.balance), ['1990', '990', '980']);
  await watchTick();
  const recharges = await testDb`select status from billing.recharges where user_id = ${s}`;
  assert.deepEqual(recharges.map((r) => r.status), ['queued'], 'one recharge for the crossing');
  await invariants();
});
