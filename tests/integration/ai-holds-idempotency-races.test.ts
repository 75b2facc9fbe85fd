// Holds are pending transfers (billing.post_transfers places, resizes, posts and voids them) and
// an AI call's begin answers every refusal as a row, in one round trip with its values written
// into the statement (sql.oneTrip). Attacked as students: one Idempotency-Key sent many times at
// once over a balance for one call or for none, hostile keys against the inlined literal, a debt a
// call's excess left, calls overrunning their holds racing each other, and a call's hold past its
// TTL racing the expiry sweep and
// the call's own end. Each asserts exact amounts and records, the ledger's invariants, and that a
// hold is posted only by a capture transfer of its captured amount.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  fund,
  holdsLapse,
  key,
  newUser,
  testDb,
  until,
  userToken,
} from '../support/helpers.ts';
import { codeOf } from '../support/money.ts';
import { buy } from '../support/purchases.ts';

const chat = (token: string, directives: string, headers: Record<string, string> = {}, max_tokens = 100) =>
  api('/ai/v1/chat/completions', {
    token,
    headers,
    body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: `#standin ${directives}` }], max_tokens },
  });

async function funded(credits: string | null) {
  const id = await newUser();
  if (credits) await fund(id, credits);
  return { id, token: await userToken(id) };
}

/** What the gateway holds for one chat call of `max_tokens` on gpt-4o-mini (the prompt's bound at its dearest). */
async function holdOf(maxTokens: number) {
  const s = await funded('100');
  const r = await chat(s.token, 'words=2 first_byte_delay=400', {}, maxTokens);
  assert.equal(r.status, 200, r.text);
  const [h] = await testDb`select trim_scale(h.amount)::text as amount from billing.ai_calls c
    join billing.holds h on h.id = c.hold_id where c.user_id = ${s.id}`;
  return h.amount as string;
}

/** A user's calls by status, their keys' claims, active holds and account, in exact text. */
async function stateOf(user: string, key: string | null = null) {
  const [r] = await testDb`select
    (select count(*)::int from billing.ai_calls where user_id = ${user} and status = 'refused') as refused,
    (select count(*)::int from billing.ai_calls where user_id = ${user} and status = 'charged') as charged,
    (select count(*)::int from billing.ai_calls where user_id = ${user} and idempotency_key = ${key}) as claims,
    (select count(*)::int from billing.holds h join billing.accounts a on a.id = h.account_id
      where a.user_id = ${user} and h.status = 'active') as active_holds,
    (select trim_scale(coalesce(sum(charged), 0))::text from billing.ai_calls where user_id = ${user}) as spent,
    (select trim_scale(balance)::text from billing.accounts where user_id = ${user}) as balance,
    (select trim_scale(held)::text from billing.accounts where user_id = ${user}) as held`;
  return { ...r };
}

/** The ledger's invariants and the pending transfers': a post is its capture, no live hold on a settled call. */
async function invariants() {
  await assertLedgerInvariants();
  const [r] = await testDb`select
    (select count(*)::int from billing.holds h left join billing.transfers t on t.id = h.capture_transfer_id
      where h.status = 'captured' and (t.id is null or t.amount <> h.captured_amount or t.hold_id is distinct from h.id
        or t.from_account_id <> h.account_id)) as posts_off_capture,
    (select count(*)::int from billing.holds h where h.status <> 'captured'
      and (h.captured_amount is not null or h.capture_transfer_id is not null)) as unposted_with_capture,
    (select count(*)::int from billing.ai_calls c join billing.holds h on h.id = c.hold_id
      where h.status = 'active' and c.status <> 'held') as live_hold_settled_call,
    (select count(*)::int from billing.transfers t where t.kind = 'hold_capture'
      and not exists (select 1 from billing.holds h where h.capture_transfer_id = t.id)) as capture_without_post`;
  assert.deepEqual({ ...r }, {
    posts_off_capture: 0,
    unposted_with_capture: 0,
    live_hold_settled_call: 0,
    capture_without_post: 0,
  });
}

/** The Postgres server log from here on (scripts/lib.sh writes it in the data directory). */
async function pgLogMark() {
  const file = `${(await testDb`show data_directory`)[0].data_directory}/server.log`;
  return { file, at: (await Deno.stat(file)).size };
}
async function pgLogSince(mark: { file: string; at: number }) {
  return new TextDecoder().decode((await Deno.readFile(mark.file)).subarray(mark.at));
}

Deno.test('one Idempotency-Key sent 20 times at once over a balance for one call: charged once, every other answer a replay or IN_USE, each refusal recorded once', async () => {
  const held = await holdOf(100);
  const s = await funded(held);
  const k = crypto.randomUUID();
  const rs = await Promise.all(
    Array.from({ length: 20 }, () => chat(s.token, 'words=5 first_byte_delay=300', { 'idempotency-key': k })),
  );
  const ok = rs.filter((r) => r.status === 200);
  const inUse = rs.filter((r) => r.status === 409);
  assert.equal(ok.length + inUse.length, 20, rs.map((r) => `${r.status} ${codeOf(r)}`).join(', '));
  assert.ok(inUse.every((r) => codeOf(r) === 'IDEMPOTENCY_KEY_IN_USE'), inUse.map((r) => r.text).join('\n'));
  const st = await stateOf(s.id, k);
  assert.equal(st.charged, 1, 'one call charged');
  assert.equal(st.claims, 1, 'the key claimed once');
  assert.equal(st.refused, inUse.length, 'each IN_USE recorded once, nothing else');
  assert.equal(st.active_holds, 0);
  assert.equal(st.held, '0');
  const [{ left }] = await testDb`select trim_scale(${held}::numeric - ${st.spent}::numeric)::text as left`;
  assert.equal(st.balance, left, 'the balance is the grant less the one charge');
  await invariants();
});

Deno.test('one Idempotency-Key sent 10 times at once over a balance for none: ten 402s, ten refusals, no hold, no claim; the key is free once funded', async () => {
  const s = await funded('0.001');
  const k = crypto.randomUUID();
  const rs = await Promise.all(Array.from({ length: 10 }, () => chat(s.token, 'words=5', { 'idempotency-key': k })));
  assert.deepEqual(rs.map((r) => r.status), Array(10).fill(402), rs.map((r) => r.text).join('\n'));
  let st = await stateOf(s.id, k);
  assert.deepEqual(
    {
      refused: st.refused,
      charged: st.charged,
      claims: st.claims,
      holds: st.active_holds,
      held: st.held,
      balance: st.balance,
    },
    { refused: 10, charged: 0, claims: 0, holds: 0, held: '0', balance: '0.001' },
  );
  const [codes] = await testDb`select array_agg(distinct failure) as f from billing.ai_calls
    where user_id = ${s.id} and status = 'refused'`;
  assert.deepEqual(codes.f, ['INSUFFICIENT_CREDITS']);
  await fund(s.id, '100');
  const again = await chat(s.token, 'words=5', { 'idempotency-key': k });
  assert.equal(again.status, 200, again.text);
  st = await stateOf(s.id, k);
  assert.deepEqual({ charged: st.charged, claims: st.claims, refused: st.refused, holds: st.active_holds }, {
    charged: 1,
    claims: 1,
    refused: 10,
    holds: 0,
  });
  await invariants();
});

Deno.test('hostile Idempotency-Keys (quotes, backslashes, comments, dollar quotes, 255 characters) are held and charged once, replayed, and never reach the Postgres log', async () => {
  const s = await funded('100');
  const marker = `k${crypto.randomUUID().slice(0, 8)}`;
  const keys = [
    `${marker}'`,
    `${marker}\\`,
    `${marker}\\'`,
    `${marker}''\\\\`,
    `${marker}');select(pg_sleep(3));--`,
    `${marker}$$;$x$`,
    `${marker}/*`,
    `${marker}E'\\x00'\\u0000\\U0001F600`,
    `${marker}${"'".repeat(255 - marker.length)}`,
    `${marker}${'\\'.repeat(255 - marker.length)}`,
  ];
  const mark = await pgLogMark();
  for (const k of keys) {
    const first = await chat(s.token, 'words=3', { 'idempotency-key': k });
    assert.equal(first.status, 200, `${k}: ${first.text}`);
    const again = await chat(s.token, 'words=3', { 'idempotency-key': k });
    assert.equal(again.status, 200, `${k}: ${again.text}`);
    assert.equal(again.headers.get('idempotent-replayed'), 'true', k);
    assert.deepEqual(again.body, first.body, `${k}: the replay is the first answer`);
    const [c] = await testDb`select count(*)::int as n, min(status) as status from billing.ai_calls
      where user_id = ${s.id} and idempotency_key = ${k}`;
    assert.deepEqual({ ...c }, { n: 1, status: 'charged' }, `${k} stored as sent, once`);
  }
  // A key past 255 characters or beyond printable ASCII never reaches begin.
  for (const k of [`${marker}${'x'.repeat(250)}`, `${marker} é`]) {
    const r = await chat(s.token, 'words=3', { 'idempotency-key': k });
    assert.equal(r.status, 400, r.text);
  }
  const st = await stateOf(s.id);
  assert.deepEqual({ charged: st.charged, holds: st.active_holds, held: st.held }, {
    charged: 10,
    holds: 0,
    held: '0',
  });
  const [{ left }] = await testDb`select trim_scale(100 - ${st.spent}::numeric)::text as left`;
  assert.equal(st.balance, left);
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(!(await pgLogSince(mark)).includes(marker), 'no statement with a caller key reached the Postgres log');
  await invariants();
});

/** A user's charged calls: each one's price of its usage, what it cost past its hold, and Σ its excess charges. */
async function excessesOf(user: string) {
  return await testDb`select
      trim_scale(c.charged)::text as charged,
      trim_scale((billing.price_usage('gpt-4o-mini', (c.usage ->> 'input_tokens')::bigint,
        (c.usage ->> 'output_tokens')::bigint, 0, 0)).amount)::text as price,
      trim_scale(greatest(c.charged - h.amount, 0))::text as excess,
      (select trim_scale(coalesce(sum(t.amount), 0))::text from billing.transfers t where t.kind = 'usage'
        and (t.idempotency_key = 'ai-overage:' || c.id or t.idempotency_key like 'ai-overage:' || c.id || ':%'))
        as excess_charged
    from billing.ai_calls c join billing.holds h on h.id = c.hold_id where c.user_id = ${user} and c.status = 'charged'`;
}

Deno.test('a debt a call left refuses the next call until a grant pays it first; then ten calls overrunning their holds race each other, each excess charged once, the balance exact', async () => {
  const s = await funded('1');
  // The provider bills 200,000 prompt tokens more than the gateway counted: more than the balance holds.
  const first = await chat(s.token, 'words=5 extra_prompt=200000', {}, 10);
  assert.equal(first.status, 200, first.text);
  let st = await stateOf(s.id);
  const [{ debt }] = await testDb`select trim_scale(1 - ${st.spent}::numeric)::text as debt`;
  assert.ok(Number(debt) < 0, `the call cost ${st.spent}`);
  assert.equal(st.balance, debt, 'charged whole: what the 1 credit could not pay is debt');
  // Refused while in debt: one refusal, nothing held.
  const refused = await chat(s.token, 'words=5', {}, 10);
  assert.equal(refused.status, 402, refused.text);
  assert.equal(codeOf(refused), 'INSUFFICIENT_CREDITS');
  assert.equal((refused.body.error as { details: { debt?: boolean } }).details.debt, true);
  st = await stateOf(s.id);
  assert.deepEqual({ refused: st.refused, holds: st.active_holds, held: st.held, balance: st.balance }, {
    refused: 1,
    holds: 0,
    held: '0',
    balance: debt,
  });
  await fund(s.id, '1000');
  const [{ paid }] = await testDb`select trim_scale(1000 + ${debt}::numeric)::text as paid`;
  assert.equal((await stateOf(s.id)).balance, paid, 'the grant paid the debt first');
  const rs = await Promise.all(Array.from({ length: 10 }, () => chat(s.token, 'words=5 extra_prompt=20000', {}, 10)));
  assert.deepEqual(rs.map((r) => r.status), Array(10).fill(200), rs.map((r) => r.text).join('\n'));
  const calls = await excessesOf(s.id);
  assert.equal(calls.length, 11);
  for (const c of calls) {
    assert.equal(c.charged, c.price, 'each call is charged the whole price of its usage');
    assert.ok(Number(c.excess) > 0, 'each call cost more than its hold');
    assert.equal(c.excess_charged, c.excess, 'and its excess is charged once, exactly');
  }
  st = await stateOf(s.id);
  const [{ expected }] = await testDb`select trim_scale(1001 - ${st.spent}::numeric)::text as expected`;
  assert.equal(st.balance, expected, 'grants less what the calls charged');
  assert.deepEqual({ charged: st.charged, refused: st.refused, holds: st.active_holds, held: st.held }, {
    charged: 11,
    refused: 1,
    holds: 0,
    held: '0',
  });
  await invariants();
});

Deno.test("an AI call's hold past its TTL while the provider answers, the sweep racing its end: the call charged its price once, nothing left held", async () => {
  const s = await funded('100');
  const call = chat(s.token, 'words=20 first_byte_delay=1500', {}, 100);
  let hold: string | undefined;
  for (let i = 0; i < 100 && !hold; i++) {
    await new Promise((r) => setTimeout(r, 20));
    [{ hold } = { hold: undefined }] = await testDb`select c.hold_id::text as hold from billing.ai_calls c
      where c.user_id = ${s.id} and c.status = 'held'`;
  }
  assert.ok(hold, 'the call was held');
  // The call outlives its hold; the sweep runs over and over while the provider answers.
  await holdsLapse(testDb`h.id = ${hold}`);
  let sweeping = true;
  const sweeps = (async () => {
    let n = 0;
    while (sweeping) n += (await testDb`select billing.release_expired_holds(100000) as n`)[0].n;
    return n;
  })();
  const r = await call;
  sweeping = false;
  await sweeps;
  assert.equal(r.status, 200, r.text);
  const [c] = await testDb`select trim_scale(c.charged)::text as charged, c.status, h.status as hold_status,
    trim_scale((billing.price_usage('gpt-4o-mini', (c.usage ->> 'input_tokens')::bigint, (c.usage ->> 'output_tokens')::bigint,
      0, 0)).amount)::text as price
    from billing.ai_calls c join billing.holds h on h.id = c.hold_id where c.user_id = ${s.id}`;
  assert.equal(c.status, 'charged');
  assert.equal(c.hold_status, 'expired', 'the overdue hold expired, captured nothing');
  assert.equal(c.charged, c.price, 'charged the price of what the provider reported, once');
  const st = await stateOf(s.id);
  const [{ left }] = await testDb`select trim_scale(100 - ${c.price}::numeric)::text as left`;
  assert.deepEqual({ balance: st.balance, held: st.held, holds: st.active_holds }, {
    balance: left,
    held: '0',
    holds: 0,
  });
  await invariants();
});

Deno.test('a call whose credits a refund reached is not swept as lost while the provider answers: its hold keeps its reservation, and its cost is charged', async () => {
  const id = await newUser();
  const token = await userToken(id);
  const co = await buy(token, 'starter');
  const call = chat(token, 'words=50 first_byte_delay=3000', {}, 200);
  const held = async () =>
    (await testDb`select c.id, h.status from billing.ai_calls c join billing.holds h on h.id = c.hold_id
      where c.user_id = ${id} and c.status <> 'refused'`)[0];
  for (let i = 0; i < 100 && !(await held()); i++) await new Promise((r) => setTimeout(r, 20));
  const refunded = await api('/checkout/refunds', {
    token: await adminToken(),
    headers: key(),
    body: { purchase_id: co.purchase_id },
  });
  assert.equal(refunded.status, 202, refunded.text);
  // A refund takes the free credits at once; what the call's hold reserved is taken back when it
  // ends (docs/credit-lots.md § Refunds, disputes and debt 1).
  await until(
    'the refund',
    async () =>
      (await testDb`select 1 from billing.transfers t join billing.accounts a on a.id = t.from_account_id
      where a.user_id = ${id} and t.kind = 'refund_reversal'`).length > 0,
  );
  assert.equal((await held()).status, 'active', 'the refund leaves the live hold its reservation');
  // The call has been running for two minutes (a long answer); the gateway is alive and the
  // hold's TTL is far off. The every-minute sweep runs meanwhile.
  await testDb`update billing.ai_calls set created_at = now() - interval '2 minutes' where id = ${(await held()).id}`;
  await testDb`select billing.sweep_ai_calls()`;
  const r = await call;
  assert.equal(r.status, 200, r.text);
  const u = r.body.usage as { prompt_tokens: number; completion_tokens: number };
  const [c] = await testDb`select c.status, c.failure, trim_scale(c.charged)::text as cost,
    trim_scale((billing.price_usage('gpt-4o-mini', ${u.prompt_tokens}, ${u.completion_tokens}, 0, 0)).amount)::text as price
    from billing.ai_calls c where c.user_id = ${id} and c.status <> 'refused'`;
  assert.deepEqual({ status: c.status, failure: c.failure, cost: c.cost }, {
    status: 'charged',
    failure: null,
    cost: c.price,
  }, 'a served call is charged its whole price, never marked lost');
  await invariants();
});
