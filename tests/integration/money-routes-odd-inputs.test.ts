// The writer answers what an account has (billing.post_transfers: applied, exists, insufficient,
// capped), attacked again with students' and school members' tokens only: odd text and numbers
// through every route a student reaches (holds, captures, releases, the gateway, codes, an
// organisation of their own), a member removed while they spend, and a lost dispute on credits
// already moved (an allowance, a sponsor code) while the members spend them. The operator only
// sets up (grants, the card payment and the dispute in the Stripe emulator) and usage is reported
// as the product's server reports it. Each scenario ends on exact amounts and the ledger's
// invariants (Σ entries = balance per account, lots = balances, held = Σ live holds).
import assert from 'node:assert/strict';
import {
  api,
  assertLedgerInvariants,
  key,
  reportUsage,
  sha256hex,
  student,
  sweepExpiredHolds,
  testDb,
  until,
} from '../support/helpers.ts';
import { batch, checkLots, codeOf, dataOf, microCard, outcomesOf } from '../support/money.ts';
import { accountOf as orgAccountOf, person, school, verifyOrg } from '../support/orgs.ts';
import { grantLot } from '../support/lots.ts';
import { issue, redeem } from '../support/codes.ts';
import { buy, chargeOf, emulator } from '../support/purchases.ts';

const hold = (token: string, amount: unknown, headers: Record<string, string> = key(), extra = {}) =>
  api('/credits/holds', { token, headers, body: { amount, ttl_seconds: 600, ...extra } });
const capture = (token: string, id: unknown, body: Record<string, unknown> = {}, headers = key()) =>
  api(`/credits/holds/${id}/capture`, { token, headers, body });
const release = (token: string, id: unknown, headers = key()) =>
  api(`/credits/holds/${id}/release`, { token, headers, body: {} });
/** Usage the product's server reports for the token's user: gpt-4o input, 50 tokens = 1 credit. */
const usage = (token: string, credits: number, k: string = crypto.randomUUID(), extra: Record<string, unknown> = {}) =>
  reportUsage('/credits/usage', {
    token,
    headers: { 'idempotency-key': k },
    body: { model: 'gpt-4o', input_tokens: credits * 50, output_tokens: 0, ...extra },
  });
const chat = (token: string, model: string, directives = 'words=5', max_tokens = 50) =>
  api('/ai/v1/chat/completions', {
    token,
    body: { model, messages: [{ role: 'user', content: `#standin ${directives}` }], max_tokens },
  });

/** A user's own account: balance and held (trimmed). */
async function own(userId: string) {
  const [a] = await testDb`select trim_scale(balance)::text as balance, trim_scale(held)::text as held
    from billing.accounts where user_id = ${userId} and org_id is null`;
  return a;
}
/** How many transfers and holds a user's own account has. */
async function rowsOf(userId: string) {
  const [r] = await testDb`select
    (select count(*)::int from billing.transfers t where t.from_account_id = a.id or t.to_account_id = a.id) as transfers,
    (select count(*)::int from billing.holds h where h.account_id = a.id) as holds
    from billing.accounts a where a.user_id = ${userId} and a.org_id is null`;
  return r;
}

// ============================================================ 1. odd numbers and text

Deno.test('amounts Postgres or the contract refuse are 400 on holds and captures, nothing stored; 18 places are held and captured exactly', async () => {
  const s = await student('100');
  const before = await rowsOf(s.id);
  const bad: unknown[] = [
    '0',
    '0.0',
    '0.000000000000000000',
    '-1',
    '-0',
    '-0.000000000000000001',
    '1e2',
    '1E2',
    '0x10',
    '+5',
    ' 5',
    '5 ',
    '5.',
    '.5',
    '1.0000000000000000001',
    '\u0661\u0662',
    '5\u0000',
    '５',
    '',
    'NaN',
    'Infinity',
    '100000000000000000000',
    1.5,
    -3,
    0,
    1e21,
    null,
    true,
    ['5'],
    { amount: '5' },
  ];
  for (const amount of bad) {
    const r = await hold(s.token, amount);
    assert.equal(r.status, 400, `hold ${JSON.stringify(amount)}: ${r.text}`);
  }
  assert.deepEqual(await rowsOf(s.id), before, 'no refused hold wrote anything');
  assert.deepEqual(await own(s.id), { balance: '100', held: '0' });

  // The largest amount the contract takes is answered by the writer as short, not a 5xx.
  const huge = await hold(s.token, '99999999999999999999.999999999999999999');
  assert.equal(huge.status, 402, huge.text);
  assert.equal(codeOf(huge), 'INSUFFICIENT_CREDITS');

  // Exactly what is there, to the 18th place, then one unit more.
  const tiny = await hold(s.token, '0.000000000000000001');
  assert.equal(tiny.status, 201, tiny.text);
  const rest = await hold(s.token, '99.999999999999999999');
  assert.equal(rest.status, 201, rest.text);
  const over = await hold(s.token, '0.000000000000000001');
  assert.equal(over.status, 402, over.text);
  assert.deepEqual(await own(s.id), { balance: '100', held: '100' });

  const restId = dataOf(rest).hold_id;
  for (const amount of ['0', '-1', '1e1', '0.0000000000000000001', 1.5, '99.9999999999999999991']) {
    const r = await capture(s.token, restId, { amount });
    assert.equal(r.status, 400, `capture ${JSON.stringify(amount)}: ${r.text}`);
  }
  const above = await capture(s.token, restId, { amount: '100' });
  assert.equal(codeOf(above), 'CAPTURE_EXCEEDS_HOLD', above.text);
  const took = await capture(s.token, restId, { amount: '99.999999999999999998' });
  assert.equal(took.status, 200, took.text);
  assert.deepEqual(await own(s.id), { balance: '0.000000000000000002', held: '0.000000000000000001' });
  // The tiny hold is still live, and its unit is all that may be held beside it.
  assert.equal((await hold(s.token, '0.000000000000000002')).status, 402);
  assert.equal((await hold(s.token, '0.000000000000000001')).status, 201);
  const tinyTook = await capture(s.token, dataOf(tiny).hold_id);
  assert.equal(tinyTook.status, 200, tinyTook.text);
  assert.deepEqual(await own(s.id), { balance: '0.000000000000000001', held: '0.000000000000000001' });
  const [{ spent }] = await testDb`select trim_scale(sum(t.amount))::text as spent from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id where a.user_id = ${s.id} and t.kind = 'hold_capture'`;
  assert.equal(spent, '99.999999999999999999', 'the captures took exactly what they said');
  await assertLedgerInvariants();
});

Deno.test('one Idempotency-Key across a hold, its capture, its release and a usage report is four requests; a key reading sha256: of another never replays it', async () => {
  const s = await student('100');
  const k = 'same-key-for-every-action';
  const h = await hold(s.token, '10', { 'idempotency-key': k });
  assert.equal(h.status, 201, h.text);
  const id = dataOf(h).hold_id;
  const c = await capture(s.token, id, { amount: '4' }, { 'idempotency-key': k });
  assert.equal(c.status, 200, c.text);
  assert.equal(c.headers.get('idempotent-replayed'), null, 'the capture is not the hold replayed');
  const u = await usage(s.token, 3, k);
  assert.equal(u.status, 201, u.text);
  // The same key on a second hold of another amount: reused, not a second hold nor the first's answer.
  const again = await hold(s.token, '11', { 'idempotency-key': k });
  assert.equal(again.status, 409, again.text);
  assert.equal(codeOf(again), 'IDEMPOTENCY_KEY_REUSED');
  assert.deepEqual(await own(s.id), { balance: '93', held: '0' });

  // A 255-character key (its ledger key hashed) and a key that reads as that hash: two holds.
  const long = 'L'.repeat(255);
  const hashed = `sha256:${await sha256hex(long)}`;
  const a = await hold(s.token, '5', { 'idempotency-key': long });
  const b = await hold(s.token, '5', { 'idempotency-key': hashed });
  assert.equal(a.status, 201, a.text);
  assert.equal(b.status, 201, b.text);
  assert.notEqual(dataOf(a).hold_id, dataOf(b).hold_id, 'a key reading sha256:… is not the long key it hashes');
  // Usage under the same pair: charged twice.
  const ua = await usage(s.token, 2, long);
  const ub = await usage(s.token, 2, hashed);
  assert.equal(ua.status, 201, ua.text);
  assert.equal(ub.status, 201, ub.text);
  assert.notEqual(dataOf(ua).transfer_id, dataOf(ub).transfer_id);
  assert.deepEqual(await own(s.id), { balance: '89', held: '10' });
  for (const bad of ['K'.repeat(256), 'has space', 'tab\there']) {
    const r = await hold(s.token, '1', { 'idempotency-key': bad });
    assert.equal(r.status, 400, `key ${JSON.stringify(bad)}: ${r.text}`);
  }
  await release(s.token, dataOf(a).hold_id);
  await release(s.token, dataOf(b).hold_id);
  assert.deepEqual(await own(s.id), { balance: '89', held: '0' });
  await assertLedgerInvariants();
});

Deno.test('odd correlation ids, metadata and models on holds and usage are 400 and write nothing; unicode metadata is kept as sent', async () => {
  const s = await student('50');
  const before = await rowsOf(s.id);
  for (const correlation_id of ['\u0000', 'é', '💸', 'x'.repeat(129), '', '\ud800']) {
    const r = await hold(s.token, '1', key(), { correlation_id });
    assert.equal(r.status, 400, `correlation ${JSON.stringify(correlation_id)}: ${r.text}`);
  }
  const odd: Record<string, unknown>[] = [
    { model: 'gpt-4o*' },
    { model: 'gpt-4o\u0000' },
    { model: 'GPT-4O' },
    { model: 'gpt-4o'.padEnd(65, 'x') },
    { model: '' },
    { metadata: { note: '\u0000' } },
    { metadata: { note: '\ud800' } },
    { metadata: { note: 'x'.repeat(501) } },
    { metadata: { model: 'gpt-4o-mini' } },
    { metadata: { reserved: '1' } },
    { metadata: { priced: '1' } },
    { metadata: { ['k'.repeat(65)]: 1 } },
    { metadata: { deep: { er: 1 } } },
    { input_tokens: '1e3' },
    { input_tokens: -1 },
    { input_tokens: 10_000_001 },
    { input_tokens: 1.5 },
    { output_tokens: '0x10' },
  ];
  for (const extra of odd) {
    const r = await usage(s.token, 1, crypto.randomUUID(), extra);
    assert.ok(r.status === 400 || r.status === 404 || r.status === 422, `usage ${JSON.stringify(extra)}: ${r.text}`);
  }
  assert.deepEqual(await rowsOf(s.id), before, 'nothing refused was written');
  const kept = { note: 'Zoë 📚 — 学生 \uFFFF', 'ключ': 'значение' };
  const ok = await usage(s.token, 2, crypto.randomUUID(), { metadata: kept });
  assert.equal(ok.status, 201, ok.text);
  const [t] = await testDb`select metadata ->> 'note' as note, metadata ->> 'ключ' as k from billing.transfers
    where id = ${String(dataOf(ok).transfer_id)}`;
  assert.deepEqual(t, { note: kept.note, k: 'значение' });
  assert.deepEqual(await own(s.id), { balance: '48', held: '0' });
  await assertLedgerInvariants();
});

Deno.test('credits for a family (gpt-4o-mini*) pay its models only: a family name, a case or a NUL as the model buys nothing, a hold cannot reach them', async () => {
  const s = await student(null);
  const g = await grantLot(s.id, '40', 'promo_grant', { applies_to: ['gpt-4o-mini*'] });
  assert.equal(g.status, 201, g.text);
  for (const model of ['gpt-4o-mini*', 'gpt-4o-mini%', 'GPT-4O-MINI', 'gpt-4o-mini\u0000', 'gpt-4o-mini ', 'gpt-4o']) {
    const r = await chat(s.token, model);
    assert.ok(r.status >= 400 && r.status < 500, `model ${JSON.stringify(model)}: ${r.status} ${r.text.slice(0, 300)}`);
  }
  for (const model of ['gpt-4o-mini*', 'gpt-4o']) {
    const r = await usage(s.token, 1, crypto.randomUUID(), { model });
    assert.ok(r.status >= 400 && r.status < 500, `usage ${model}: ${r.text}`);
  }
  const h = await hold(s.token, '1');
  assert.equal(h.status, 402, `a hold for no model never reaches credits for some: ${h.text}`);
  assert.deepEqual(await own(s.id), { balance: '40', held: '0' }, 'nothing charged for the refused models');
  // gpt-4o-mini (in the family) is paid from them, to the exact price.
  const r = await reportUsage('/credits/usage', {
    token: s.token,
    headers: key(),
    body: { model: 'gpt-4o-mini', input_tokens: 50_000, output_tokens: 0 },
  });
  assert.equal(r.status, 201, r.text);
  const charged = String(dataOf(r).charged ?? dataOf(r).amount);
  const [{ left }] = await testDb`select trim_scale(40 - ${charged}::numeric)::text as left`;
  assert.deepEqual(await own(s.id), { balance: left, held: '0' });
  const call = await chat(s.token, 'gpt-4o-mini');
  assert.equal(call.status, 200, call.text.slice(0, 300));
  await until(
    'the call settled',
    async () =>
      (await testDb`select count(*)::int as n from billing.ai_calls where user_id = ${s.id} and status = 'held'`)[0]
        .n === 0,
  );
  await assertLedgerInvariants();
  await checkLots();
});

Deno.test('codes with odd text are refused without a 5xx and grant nothing; an allowance of odd amounts moves nothing, one of 18 places moves exactly it', async () => {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'allowance', '10');
  for (const code of ['\u0000', '💸'.repeat(10), 'A'.repeat(65), "' or 1=1 --", 'sha256:abc', '', ' ']) {
    const r = await redeem(ada.token, code);
    assert.ok(r.status >= 400 && r.status < 500, `code ${JSON.stringify(code)}: ${r.status} ${r.text}`);
  }
  for (const amount of ['0', '-1', '1e1', '0x1', '1.0000000000000000001', 2.5, '10.000000000000000001']) {
    const r = await api(`/orgs/${org}/allowances`, {
      token: owner.token,
      headers: key(),
      body: { user_id: ada.id, amount },
    });
    assert.ok(r.status === 400 || r.status === 402, `allowance ${JSON.stringify(amount)}: ${r.text}`);
  }
  // A member cannot fund anyone's allowance (their own included).
  const self = await api(`/orgs/${org}/allowances`, { token: ada.token, headers: key(), body: { amount: '1' } });
  assert.equal(self.status, 403, self.text);
  assert.deepEqual(await orgAccountOf(org, null), { balance: '10', held: '0' });
  const ok = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: key(),
    body: { user_id: ada.id, amount: '9.999999999999999999' },
  });
  assert.equal(ok.status, 201, ok.text);
  assert.deepEqual(await orgAccountOf(org, null), { balance: '0.000000000000000001', held: '0' });
  assert.deepEqual(await orgAccountOf(org, ada.id), { balance: '9.999999999999999999', held: '0' });
  // Ada holds all of it, and not one unit more.
  assert.equal((await hold(ada.token, '9.999999999999999999')).status, 201);
  const more = await hold(ada.token, '0.000000000000000001');
  assert.equal(more.status, 402, more.text);
  await assertLedgerInvariants();
});

// ============================================================ 2. a member removed while they spend

/** Σ of what a member's charges and captures took from an organisation's accounts. */
async function spentFromOrg(org: string, member: string) {
  const [r] = await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as n, count(*)::int as c
    from billing.transfers t join billing.accounts a on a.id = t.from_account_id
    where a.org_id = ${org} and t.member_id = ${member} and t.kind in ('usage', 'hold_capture')`;
  return r as { n: string; c: number };
}
/** Σ balances and held of all an organisation's accounts (wallet and allowances). */
async function orgTotal(org: string) {
  const [r] = await testDb`select trim_scale(coalesce(sum(balance), 0))::text as balance,
    trim_scale(coalesce(sum(held), 0))::text as held, count(*)::int as accounts from billing.accounts where org_id = ${org}`;
  return r;
}
const orgTransfers = async (org: string) =>
  (await testDb`select count(*)::int as n from billing.transfers t join billing.accounts a
    on a.id = t.from_account_id where a.org_id = ${org}`)[0].n as number;

for (const funding of ['allowance', 'pool'] as const) {
  Deno.test(`a ${funding} member removed while 70 of their usage reports, holds and captures race: nothing after the removal, not a credit lost or made`, async () => {
    const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
    const org = await school(owner, [ada], funding, '1000');
    if (funding === 'allowance') {
      const f = await api(`/orgs/${org}/allowances`, {
        token: owner.token,
        headers: key(),
        body: { user_id: ada.id, amount: '600' },
      });
      assert.equal(f.status, 201, f.text);
    } else {
      const cap = await api(`/orgs/${org}/members/${ada.id}/cap`, {
        method: 'PUT',
        token: owner.token,
        body: { period: 'day', amount: '300' },
      });
      assert.equal(cap.status, 200, cap.text);
    }
    // Ten holds placed first, to be captured in the race.
    const placed = await Promise.all(Array.from({ length: 10 }, () => hold(ada.token, '9')));
    for (const p of placed) assert.equal(p.status, 201, p.text);
    const ids = placed.map((p) => dataOf(p).hold_id as string);
    const race: Promise<Awaited<ReturnType<typeof api>>>[] = [];
    for (let i = 0; i < 10; i++) {
      race.push(usage(ada.token, 7), usage(ada.token, 2), hold(ada.token, '1'));
      race.push(hold(ada.token, '5'));
      race.push(capture(ada.token, ids[i], { amount: '6' }));
      race.push(usage(ada.token, 3));
    }
    const removed = await api(`/orgs/${org}/members/${ada.id}`, { method: 'DELETE', token: owner.token });
    assert.equal(removed.status, 200, removed.text);
    const afterRemoval = await orgTransfers(org);
    const answers = await Promise.all(race);
    for (const a of answers) assert.ok(a.status < 500, `no 5xx in the race: ${a.status} ${a.text}`);

    // Requests sent after the removal answered: refused, nothing from the school.
    const late = await Promise.all([
      usage(ada.token, 1),
      hold(ada.token, '1'),
      ...ids.map((id) => capture(ada.token, id, { amount: '1' })),
      chat(ada.token, 'gpt-4o-mini'),
    ]);
    for (const l of late) {
      assert.ok([402, 403, 404, 409].includes(l.status), `after removal: ${l.status} ${l.text.slice(0, 300)}`);
    }
    // Every hold on the school's accounts ended: captured in the race, or released by the removal.
    const holds = await testDb`select h.status, trim_scale(coalesce(h.captured_amount, 0))::text as captured
      from billing.holds h join billing.accounts a on a.id = h.account_id where a.org_id = ${org}`;
    assert.ok(holds.every((h) => h.status !== 'active'), JSON.stringify(holds));
    // Once the removal answered, the ledger wrote nothing more from the school's accounts.
    const spent = await spentFromOrg(org, ada.id);
    const total = await orgTotal(org);
    const ok = answers.filter((a) => a.status === 200 || a.status === 201).length;
    console.log(
      `${funding}: ${ok}/70 applied, spent ${spent.n} in ${spent.c}, transfers after removal ${
        (await orgTransfers(org)) - afterRemoval
      }`,
    );
    assert.equal(await orgTransfers(org), afterRemoval, 'nothing moved from the school once the removal answered');
    assert.equal(total.held, '0');
    const [{ sum }] = await testDb`select trim_scale(${total.balance}::numeric + ${spent.n}::numeric)::text as sum`;
    assert.equal(sum, '1000', `not a credit lost or made: ${JSON.stringify({ total, spent })}`);
    if (funding === 'allowance') {
      assert.deepEqual(await orgAccountOf(org, ada.id), { balance: '0', held: '0' }, 'the allowance swept back');
    } else {
      assert.ok(Number(spent.n) <= 300, `the cap held: ${spent.n}`);
      const [c] =
        await testDb`select trim_scale(spent)::text as spent from billing.spend_caps where member_id = ${ada.id}`;
      assert.equal(c.spent, spent.n, 'the cap counted exactly what was charged');
    }
    assert.deepEqual(await own(ada.id), { balance: '0', held: '0' }, 'her own account paid nothing and got nothing');
    assert.deepEqual(await rowsOf(ada.id), { transfers: 0, holds: 0 });
    await assertLedgerInvariants();
  });
}

// ============================================================ 3. a dispute after the credits moved

Deno.test("a school's purchase moved to an allowance and a sponsor code, spent in parallel while its dispute opens and is lost: the wallet owes exactly what was spent", async () => {
  const [owner, ada, bo] = await Promise.all(['owner', 'ada', 'bo'].map(person));
  const org = await school(owner, [ada, bo], 'allowance', null);
  await verifyOrg(org); // its wallet answers for its purchases
  const co = await buy(owner.token, 'starter', org); // 9,990 credits for the wallet
  const charge = await chargeOf(co.session_id);
  const f = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: key(),
    body: { user_id: ada.id, amount: '4000' },
  });
  assert.equal(f.status, 201, f.text);
  const issued = await issue(owner.token, org, { credits: '3000', user_id: bo.id });
  assert.equal(issued.status, 201, issued.text);
  const red = await redeem(bo.token, (dataOf(issued) as { code: string }).code);
  assert.equal(red.status, 200, red.text);
  assert.deepEqual(await own(bo.id), { balance: '3000', held: '0' });
  // Ada and Bo spend in parallel (usage, holds, captures) while the dispute opens.
  const parked = await Promise.all([hold(ada.token, '100'), hold(bo.token, '100')]);
  for (const p of parked) assert.equal(p.status, 201, p.text);
  const race: Promise<Awaited<ReturnType<typeof api>>>[] = [];
  for (let i = 0; i < 12; i++) {
    race.push(usage(ada.token, 11), usage(bo.token, 13), hold(ada.token, '7'), hold(bo.token, '7'));
  }
  race.push(capture(ada.token, dataOf(parked[0]).hold_id, { amount: '40' }));
  race.push(capture(bo.token, dataOf(parked[1]).hold_id, { amount: '60' }));
  const opened = emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  const answers = await Promise.all(race);
  await opened;
  for (const a of answers) assert.ok(a.status < 500, `${a.status} ${a.text}`);
  // Once open: nothing of the purchase is spendable, wherever it went.
  const after = await Promise.all([usage(ada.token, 1), usage(bo.token, 1), hold(ada.token, '1'), hold(bo.token, '1')]);
  for (const a of after) assert.equal(a.status, 402, a.text);
  // Holds parked in the race reserved their credits before the freeze: they finish normally.
  const live =
    await testDb`select h.id::text, a.user_id, a.member_id from billing.holds h join billing.accounts a on a.id = h.account_id
    where (a.org_id = ${org} or a.user_id = ${bo.id}) and h.status = 'active' and h.purpose = 'user'`;
  for (const h of live) {
    const who = (h.member_id ?? h.user_id) === ada.id ? ada : bo;
    const c = await capture(who.token, h.id);
    assert.equal(c.status, 200, c.text);
  }
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
  await sweepExpiredHolds(); // the minute's tick: what waited on the ended holds
  const [s] = await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as n from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id
    where (a.org_id = ${org} or a.user_id in (${ada.id}, ${bo.id})) and t.kind in ('usage', 'hold_capture')`;
  // The wallet's reversal names the dispute; a member's or redeemer's reads as a refund of what they got.
  const [r] = await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as n from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id
    where (a.org_id = ${org} or a.user_id in (${ada.id}, ${bo.id})) and t.kind in ('dispute_reversal', 'refund_reversal')`;
  const [left] = await testDb`select trim_scale(coalesce(sum(l.remaining), 0))::text as n from billing.lots l
    where l.purchase_id = ${co.purchase_id}`;
  console.log('dispute after moves:', {
    spent: s.n,
    reversed: r.n,
    applied: answers.filter((a) => a.status < 300).length,
  });
  assert.equal(left.n, '0', 'no credit of the lost purchase is left anywhere');
  assert.ok(Number(s.n) > 0, 'some spending went through before the dispute');
  assert.equal(r.n, '9990', 'the lost dispute reversed the whole purchase: what was left, and what was spent as debt');
  const [{ debt }] = await testDb`select trim_scale(-${s.n}::numeric)::text as debt`;
  assert.deepEqual(
    await orgAccountOf(org, null),
    { balance: debt, held: '0' },
    'the wallet owes exactly what was spent',
  );
  assert.deepEqual(await orgAccountOf(org, ada.id), { balance: '0', held: '0' });
  assert.deepEqual(await own(bo.id), { balance: '0', held: '0' });
  assert.deepEqual(await own(ada.id) ?? { balance: '0', held: '0' }, { balance: '0', held: '0' });
  await assertLedgerInvariants();
  await checkLots();
});

// ============================================================ 1b. the batch, to the millionth

Deno.test('a batch of millionths: event ids that read as hashes, repeats and two users sharing an id each get their own answer, to the exact unit', async () => {
  const model = await microCard(); // n input tokens cost n / 1,000,000 credits
  const [a, b] = await Promise.all([student('0.000005'), student('0.000001')]);
  const long = 'E'.repeat(200);
  const ev = (user: string, event_id: string, tokens: number) => ({
    event_id,
    user_id: user,
    model,
    input_tokens: tokens,
    output_tokens: 0,
    occurred_at: new Date().toISOString(),
  });
  const r = await batch([
    ev(a.id, long, 1),
    ev(a.id, `sha256:${await sha256hex(long)}`, 2),
    ev(a.id, long, 1), // a repeat within the batch
    ev(b.id, long, 1), // another user's event with the same id
    ev(a.id, 'x', 3), // 3 > the 2 left
    ev(a.id, 'y', 2),
    ev(b.id, 'z', 1), // b has nothing left
  ]);
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(
    outcomesOf(r).map((o) => o.status),
    ['applied', 'applied', 'duplicate', 'applied', 'insufficient', 'applied', 'insufficient'],
    r.text,
  );
  assert.deepEqual(await own(a.id), { balance: '0', held: '0' });
  assert.deepEqual(await own(b.id), { balance: '0', held: '0' });
  // The same batch again: nothing more.
  const again = await batch([ev(a.id, long, 1), ev(a.id, `sha256:${await sha256hex(long)}`, 2), ev(b.id, long, 1)]);
  assert.deepEqual(outcomesOf(again).map((o) => o.status), ['duplicate', 'duplicate', 'duplicate'], again.text);
  for (
    const bad of [
      { event_id: 'é' },
      { event_id: '\u0000' },
      { event_id: 'E'.repeat(201) },
      { model: 'gpt-4o*' },
      { input_tokens: '1e3' },
      { occurred_at: 'yesterday' },
    ]
  ) {
    const x = await batch([{ ...ev(a.id, crypto.randomUUID(), 1), ...bad }]);
    assert.equal(x.status, 400, `${JSON.stringify(bad)}: ${x.text}`);
  }
  await assertLedgerInvariants();
});

Deno.test("a school's purchase moved to an allowance and a sponsor code, spent in parallel while it is refunded in full: the wallet owes exactly what was spent", async () => {
  const [owner, ada, bo] = await Promise.all(['owner', 'ada', 'bo'].map(person));
  const org = await school(owner, [ada, bo], 'allowance', null);
  await verifyOrg(org); // its wallet answers for its purchases
  const co = await buy(owner.token, 'starter', org); // 9,990 credits for 999¢
  const charge = await chargeOf(co.session_id);
  const f = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: key(),
    body: { user_id: ada.id, amount: '4000' },
  });
  assert.equal(f.status, 201, f.text);
  const issued = await issue(owner.token, org, { credits: '3000', user_id: bo.id });
  const red = await redeem(bo.token, (dataOf(issued) as { code: string }).code);
  assert.equal(red.status, 200, red.text);
  const race: Promise<Awaited<ReturnType<typeof api>>>[] = [];
  for (let i = 0; i < 12; i++) {
    race.push(usage(ada.token, 11), usage(bo.token, 13), hold(ada.token, '7'), hold(bo.token, '7'));
  }
  const refunded = emulator(`/_emulator/charges/${charge}/refund`, { amount: 999 });
  const answers = await Promise.all(race);
  await refunded;
  for (const a of answers) assert.ok(a.status < 500, `${a.status} ${a.text}`);
  const after = await Promise.all([usage(ada.token, 1), usage(bo.token, 1), hold(ada.token, '1'), hold(bo.token, '1')]);
  for (const a of after) assert.equal(a.status, 402, a.text);
  // The holds placed in the race keep what they reserved until they end: released, it is taken back
  // at the minute's tick.
  const live = await testDb`select h.id::text, coalesce(a.member_id, a.user_id) as who from billing.holds h
    join billing.accounts a on a.id = h.account_id where (a.org_id = ${org} or a.user_id = ${bo.id}) and h.status = 'active'`;
  for (const h of live) {
    const r = await api(`/credits/holds/${h.id}/release`, {
      token: (h.who === ada.id ? ada : bo).token,
      headers: key(),
      body: {},
    });
    assert.equal(r.status, 200, r.text);
  }
  await sweepExpiredHolds(); // the minute's tick takes it back
  const [s] = await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as n from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id
    where (a.org_id = ${org} or a.user_id in (${ada.id}, ${bo.id})) and t.kind in ('usage', 'hold_capture')`;
  const [r] = await testDb`select trim_scale(coalesce(sum(t.amount), 0))::text as n from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id
    where (a.org_id = ${org} or a.user_id in (${ada.id}, ${bo.id})) and t.kind = 'refund_reversal'`;
  const [left] = await testDb`select trim_scale(coalesce(sum(l.remaining), 0))::text as n from billing.lots l
    where l.purchase_id = ${co.purchase_id}`;
  console.log('refund after moves:', {
    spent: s.n,
    reversed: r.n,
    applied: answers.filter((a) => a.status < 300).length,
  });
  assert.equal(left.n, '0', 'no credit of the refunded purchase is left anywhere');
  assert.equal(r.n, '9990', 'the refund reversed the whole purchase: what was left, and what was spent as debt');
  const [{ debt }] = await testDb`select trim_scale(-${s.n}::numeric)::text as debt`;
  assert.equal((await orgAccountOf(org, null)).balance, debt, 'the wallet owes exactly what was spent');
  assert.equal((await orgAccountOf(org, ada.id)).balance, '0');
  assert.equal((await own(bo.id)).balance, '0');
  const [{ over }] = await testDb`select count(*)::int as over from billing.accounts a
    where (a.org_id = ${org} or a.user_id = ${bo.id}) and a.held > greatest(a.balance, 0)`;
  assert.equal(over, 0, 'no hold keeps reserving credits the refund took back');
  await assertLedgerInvariants();
  await checkLots();
});

// ============================================================ 2b. a sponsor code redeemed while its member is removed

Deno.test('a sponsor code redeemed 10 times at once while its member is removed and the code revoked: its credits land once, in one place', async () => {
  for (let round = 0; round < 4; round++) {
    const [owner, bo] = await Promise.all(['owner', 'bo'].map(person));
    const org = await school(owner, [bo], 'allowance', '10000');
    const issued = await issue(owner.token, org, { credits: '3000', user_id: bo.id });
    assert.equal(issued.status, 201, issued.text);
    const { code, id } = dataOf(issued) as { code: string; id: string };
    // Odd rounds send the removal and the revocation first.
    const ends = () => [
      api(`/orgs/${org}/members/${bo.id}`, { method: 'DELETE', token: owner.token }),
      api(`/orgs/${org}/sponsor-codes/${id}`, { method: 'DELETE', token: owner.token }),
    ];
    const first = round % 2 ? ends() : [];
    const redemptions = Array.from({ length: 10 }, () => redeem(bo.token, code));
    const answers = await Promise.all([...redemptions, ...first, ...(round % 2 ? [] : ends())]);
    for (const a of answers) assert.ok(a.status < 500, `${a.status} ${a.text}`);
    const redeemed = answers.slice(0, 10).filter((a) => a.status === 200).length;
    const [{ escrow }] = await testDb`select trim_scale(coalesce(sum(a.balance), 0))::text as escrow
      from billing.accounts a join billing.codes c on c.id = a.code_id where c.id = ${id}`;
    const bal = (await own(bo.id))?.balance ?? '0';
    const wallet = (await orgAccountOf(org, null)).balance;
    console.log(`round ${round}: redeemed ${redeemed}/10, bo ${bal}, wallet ${wallet}, escrow ${escrow}`);
    assert.equal(escrow, '0', 'nothing left in escrow');
    assert.ok(
      (bal === '3000' && wallet === '7000') || (bal === '0' && wallet === '10000'),
      `the code's credits in one place: bo ${bal}, wallet ${wallet}`,
    );
    assert.equal(redeemed > 0, bal === '3000', 'a redemption answered 200 exactly when bo has the credits');
  }
  await assertLedgerInvariants();
});

Deno.test("an allowance member removed while 8 gateway calls billed beyond their holds are in flight: the allowance pays each call whole, the excess its debt, never the wallet or the member's own account", async () => {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'allowance', '1000');
  const f = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: key(),
    body: { user_id: ada.id, amount: '500' },
  });
  assert.equal(f.status, 201, f.text);
  // 200,000 prompt tokens the gateway cannot count: ~120 credits each beyond a small hold.
  const calls = Array.from(
    { length: 8 },
    () => chat(ada.token, 'gpt-4o-mini', 'words=10 first_byte_delay=1500 extra_prompt=200000', 20),
  );
  await until(
    'calls held',
    async () =>
      (await testDb`select count(*)::int as n from billing.ai_calls where user_id = ${ada.id} and status = 'held'`)[0]
        .n >= 6,
  );
  const removed = await api(`/orgs/${org}/members/${ada.id}`, { method: 'DELETE', token: owner.token });
  assert.equal(removed.status, 200, removed.text);
  const swept = await orgTransfers(org);
  const answers = await Promise.all(calls);
  const spent = await spentFromOrg(org, ada.id);
  // Every call held on the school's accounts was held before the removal (none could be after).
  const [x] = await testDb`select
      (select trim_scale(coalesce(sum(h.amount), 0))::text from billing.holds h join billing.accounts a on a.id = h.account_id
        where a.org_id = ${org} and h.purpose = 'ai') as held,
      (select trim_scale(coalesce(sum(t.amount), 0))::text from billing.transfers t join billing.accounts a
        on a.id = t.from_account_id where a.org_id = ${org} and t.kind = 'hold_capture') as captured,
      (select trim_scale(coalesce(sum(c.charged), 0))::text from billing.ai_calls c where c.user_id = ${ada.id}) as priced,
      (select trim_scale(coalesce(sum(t.amount), 0))::text from billing.transfers t where t.kind = 'allowance_sweep'
        and t.from_account_id = (select a.id from billing.accounts a where a.org_id = ${org} and a.member_id = ${ada.id}))
        as swept`;
  console.log('allowance member removed mid-call:', { calls: answers.map((a) => a.status), spent, ...x });
  assert.ok(Number(x.held) > 0, 'calls were held on the allowance');
  // Each call cost more than its hold: a hold still whole was captured whole; one that gave its
  // reservation to another call's excess first captured what it kept (billing.give_way_to_excess).
  assert.ok(Number(x.captured) > 0 && Number(x.captured) <= Number(x.held), JSON.stringify(x));
  assert.equal(spent.n, x.priced, "the allowance paid each call's whole price, the excess past its hold included");
  assert.ok(Number(spent.n) - Number(x.held) > 500, 'six calls or more, each ~120 past its hold');
  const [{ off }] =
    await testDb`select count(*)::int as off from billing.ai_calls c join billing.holds h on h.id = c.hold_id
    where c.user_id = ${ada.id} and c.charged - coalesce(h.captured_amount, 0) is distinct from
      (select sum(t.amount) from billing.transfers t where t.kind = 'usage' and t.idempotency_key like 'ai-overage:' || c.id || '%')`;
  assert.equal(off, 0, "each call's excess charged exactly once");
  const total = await orgTotal(org);
  const [{ sum, allowance, wallet }] = await testDb`select
    trim_scale(${total.balance}::numeric + ${spent.n}::numeric)::text as sum,
    trim_scale(500 - ${x.swept}::numeric - ${spent.n}::numeric)::text as allowance,
    trim_scale(500 + ${x.swept}::numeric)::text as wallet`;
  assert.equal(sum, '1000', `not a credit lost or made: ${JSON.stringify({ total, spent })}`);
  // The removal swept the allowance's free credits to the wallet; what the calls cost past them is
  // the allowance's debt, never the wallet's.
  assert.ok(Number(allowance) < 0, allowance);
  assert.deepEqual(await orgAccountOf(org, ada.id), { balance: allowance, held: '0' }, 'the allowance owes the rest');
  assert.deepEqual(await orgAccountOf(org, null), { balance: wallet, held: '0' }, 'the wallet pays none of it');
  assert.equal(total.held, '0');
  assert.deepEqual(await own(ada.id) ?? { balance: '0', held: '0' }, { balance: '0', held: '0' });
  // Only what calls held before the removal cost (their captures and excesses) moved anything
  // from the school since.
  const [{ n }] = await testDb`select count(*)::int as n from billing.transfers t join billing.accounts a
    on a.id = t.from_account_id where a.org_id = ${org} and t.kind not in ('hold_capture', 'allowance_sweep')
    and not (t.kind = 'usage' and t.idempotency_key like 'ai-overage:%')
    and t.id > (select max(x.id) from billing.transfers x join billing.accounts y on y.id = x.from_account_id
                where y.org_id = ${org} and x.kind = 'allowance_sweep')`;
  assert.equal(n, 0, `nothing but what the calls cost left the school after the removal (${swept} transfers then)`);
  await assertLedgerInvariants();
});
