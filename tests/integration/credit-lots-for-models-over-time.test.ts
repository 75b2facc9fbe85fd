// Credits for some models only (docs/credit-lots.md § Credits for some models) over time and under
// load, with students' tokens (members of a school a platform admin set up): many small holds do not
// make a school's plan slow, a streamed call over credits that expire mid-stream is still charged,
// next term's narrowed allowance stays narrowed, and one school's failing sweep stops no other's.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, backdateLot, holdsLapse, key, testDb } from '../support/helpers.ts';
import { callsOf, gatewayUrl } from '../support/ai.ts';
import { person, school } from '../support/orgs.ts';
import { grantLot, models, orgGrant } from '../support/lots.ts';

type Json = Record<string, unknown>;

/** `n` holds of the smallest amount there is, a student's own, placed `par` at a time. */
async function dust(token: string, n: number, par = 8) {
  for (let i = 0; i < n; i += par) {
    const rs = await Promise.all(Array.from({ length: Math.min(par, n - i) }, () =>
      api('/credits/holds', {
        token,
        headers: key(),
        body: { amount: '0.000000000000000001', ttl_seconds: 86400 },
      })));
    for (const r of rs) assert.equal(r.status, 201, r.text);
  }
}

const chat = (token: string, model: string) =>
  api('/ai/v1/chat/completions', {
    token,
    body: { model, messages: [{ role: 'user', content: '#standin words=3' }], max_tokens: 16 },
  });

// ============================================================ the planner under the wallet's lock

Deno.test("a member's dust holds on a pooled wallet with credits for some models leave another member's call to go through", async () => {
  const lists = await models(12);
  const [owner, ada, mallory, trudy] = await Promise.all(['owner', 'ada', 'mallory', 'trudy'].map(person));
  const org = await school(owner, [ada, mallory, trudy], 'pool', null);
  await orgGrant(org, '1000', 'adjustment'); // credits for anything

  // Two members each leave 90 holds of 10^-18 credits on the pool (a day's TTL; 100 requests a
  // minute is the default limit per student). They cost nothing and reserve nothing.
  await Promise.all([dust(mallory.token, 90), dust(trudy.token, 90)]);

  // The school gets credits for some models (12 lists: past the 2^10 sets the plan once walked): from now on
  // every hold, charge, capture and move on the pool is planned over its holds.
  for (const m of lists) await orgGrant(org, '1', 'promo_grant', [m]);

  // Ada, who did nothing, makes one small call: the plan sums the holds by the lists that may pay
  // them (one sum here), so its cost does not grow with their number (bench/ledger.ts times it).
  const r = await chat(ada.token, 'gpt-4o-mini');
  assert.equal(r.status, 200, r.text);
  const [sums] =
    await testDb`select count(distinct case when h.purpose in ('ai', 'job') then h.metadata ->> 'model' end)::int as n
    from billing.holds h join billing.accounts a on a.id = h.account_id
    where a.org_id = ${org} and a.member_id is null and h.status = 'active'`;
  assert.equal(sums.n, 0, 'the dust holds are all of one kind: one sum for the plan');
  await assertLedgerInvariants();
});

// ============================================================ settling a gateway call over a due lot

Deno.test('a streamed call over a promotion that expires before it ends is charged what the account can pay, not nothing', async () => {
  const s = await person('streamer');
  assert.equal((await grantLot(s.id, '40', 'adjustment')).status, 201); // never expires
  // A promotion with 5 credits left, expiring at an hour the student reads on their lots page.
  assert.equal(
    (await grantLot(s.id, '5', 'promo_grant', { expires_at: new Date(Date.now() + 3_600_000).toISOString() })).status,
    201,
  );
  const [promo] = await testDb`select l.id::text from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.user_id = ${s.id} and l.expires_at is not null`;

  // A call that holds nearly all of the 45 credits (gpt-4o, 700 answer tokens) and uses them all,
  // streamed slowly enough that the promotion's hour comes while it runs.
  const res = fetch(`${gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${s.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'gpt-4o',
      messages: [{ role: 'user', content: '#standin words=2000 first_byte_delay=1500' }],
      max_tokens: 700,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  const held = async () =>
    (await testDb`select count(*)::int as n from billing.holds h join billing.accounts a on a.id = h.account_id
      where a.user_id = ${s.id} and h.status = 'active'`)[0].n as number;
  for (const end = Date.now() + 10_000; (await held()) === 0;) {
    if (Date.now() > end) throw new Error('no hold');
    await new Promise((r) => setTimeout(r, 20));
  }
  // The promotion's expiry passes; the minute sweep has not run yet and nobody touched the account.
  await backdateLot(promo.id);
  const r = await res;
  const text = await r.text();
  assert.ok(text.includes('word1'), `the student read the answer: ${r.status} ${text.slice(0, 300)}`);

  // What pg_cron does later: the call's hold reaches its TTL and the sweeps run.
  const [c] = await callsOf(s.id);
  if (c.status === 'held') {
    await holdsLapse(testDb`h.id = (select hold_id from billing.ai_calls where id = ${c.id})`);
    await testDb`update billing.ai_calls set created_at = now() - interval '2 minutes' where id = ${c.id}`;
    await testDb`select billing.release_expired_holds(100000)`;
    await testDb`select billing.sweep_ai_calls(500)`;
  }
  await testDb`select billing.expire_lots(100000)`;
  const [after] = await callsOf(s.id);
  const [bal] = await testDb`select trim_scale(a.balance)::text as b from billing.accounts a where a.user_id = ${s.id}`;
  // 40 credits for anything were there to pay a 42-credit answer the student read in full.
  assert.equal(
    after.status,
    'charged',
    `the answer was streamed in full and the call ended ${after.status} (${after.failure}), charged ${after.charged}; the student still has ${bal.b} credits`,
  );
  assert.ok(Number(after.charged) >= 40, `charged ${after.charged}`);
  await assertLedgerInvariants();
});

// ============================================================ a narrowed allowance regains an old list

Deno.test("next term's allowance for one model only pays for that model, though it comes from last term's sweep of the same member", async () => {
  const [owner, mallory] = await Promise.all(['owner', 'mallory'].map(person));
  const org = await school(owner, [mallory], 'allowance', null);
  await orgGrant(org, '100', 'adjustment'); // the school's credits, for anything
  const soon = new Date(Date.now() + 3_600_000).toISOString();
  const term = await api(`/orgs/${org}`, { method: 'PATCH', token: owner.token, body: { term_ends_at: soon } });
  assert.equal(term.status, 200, term.text);

  // Term 1: everything to Mallory's allowance, for any model.
  const first = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: key(),
    body: { user_id: mallory.id, amount: '100' },
  });
  assert.equal(first.status, 201, first.text);
  // The term ends (pg_cron's sweep): what is left goes back to the wallet.
  await testDb`update billing.orgs set term_started_at = now() - interval '1 minute', term_ends_at = now() - interval '1 second' where id = ${org}`;
  await testDb`select billing.sweep_ended_terms(100)`;

  // Term 2: the school gives Mallory 50 credits for the essay tutor only.
  const next = await api(`/orgs/${org}`, { method: 'PATCH', token: owner.token, body: { term_ends_at: soon } });
  assert.equal(next.status, 200, next.text);
  const second = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: key(),
    body: { user_id: mallory.id, amount: '50', applies_to: ['claude-haiku-4-5'] },
  });
  assert.equal(second.status, 201, second.text);
  const lots = await testDb`select l.applies_to from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.org_id = ${org} and a.member_id = ${mallory.id} and l.open`;
  const r = await chat(mallory.token, 'gpt-4o');
  assert.deepEqual(
    lots.map((l) => l.applies_to),
    [['claude-haiku-4-5']],
    `the allowance given for claude-haiku-4-5 only holds lots for ${JSON.stringify(lots.map((l) => l.applies_to))}; ` +
      `Mallory's gpt-4o call answered ${r.status}`,
  );
  assert.equal(r.status, 402, r.text);
  await assertLedgerInvariants();
});

// ============================================================ the 7-list cap on credits coming back

Deno.test("a term-end sweep that brings back an eighth list is swept, and no school's sweep stops another's", async () => {
  const lists = await models(8);
  const [owner, mallory, owner2, bob] = await Promise.all(['owner', 'mallory', 'owner2', 'bob'].map(person));
  const org = await school(owner, [mallory], 'allowance', null);
  const other = await school(owner2, [bob], 'allowance', null);
  await orgGrant(org, '10', 'adjustment', [lists[0]]); // the school's credits for one course
  await orgGrant(other, '10', 'adjustment');
  const soon = new Date(Date.now() + 3_600_000).toISOString();
  for (const [o, t] of [[org, owner.token], [other, owner2.token]]) {
    const r = await api(`/orgs/${o}`, { method: 'PATCH', token: t, body: { term_ends_at: soon } });
    assert.equal(r.status, 200, r.text);
  }
  // The course's credits all go to Mallory's allowance; Bob gets the other school's.
  for (const [o, t, m] of [[org, owner.token, mallory.id], [other, owner2.token, bob.id]]) {
    const r = await api(`/orgs/${o}/allowances`, { token: t, headers: key(), body: { user_id: m, amount: '10' } });
    assert.equal(r.status, 201, r.text);
  }
  // During the term the school gets credits for seven other courses (7 open lists: within the cap).
  for (const m of lists.slice(1)) await orgGrant(org, '1', 'adjustment', [m]);

  // Both terms end; pg_cron's sweep runs.
  await testDb`update billing.orgs set term_started_at = now() - interval '1 minute',
    term_ends_at = now() - interval '1 second' where id in (${org}, ${other})`;
  let error = '';
  try {
    await testDb`select billing.sweep_ended_terms(100)`;
  } catch (e) {
    error = String((e as Error).message);
  }
  const [left] = await testDb`select trim_scale(a.balance)::text as b from billing.accounts a
    where a.org_id = ${other} and a.member_id = ${bob.id}`;
  // Not left for the suite's other sweeps to trip on while the hole is open.
  if (error) await testDb`update billing.orgs set term_swept_at = now() where id = ${org}`;
  assert.equal(
    error,
    '',
    `the sweep failed (${error}): the other school's 10 credits are still in Bob's allowance (${left.b}) after its term`,
  );
  assert.equal(left.b, '0');
  await assertLedgerInvariants();
});
