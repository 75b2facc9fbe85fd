// AI batches (docs/ai-gateway.md § Batches) beside the rest of the money: a school paying for a
// member's batch (its wallet, allowance or pool holds and is charged, once; a member removed while
// the batch runs), the student's purchase disputed, lost or refunded while their batch holds it,
// spend caps, credits that expire during the 26-hour hold, and parallel uploads. After each: the
// ledger's invariants, no active hold for an ended batch, one charge of the sum of the lines, and
// lots.reserved equal to the live holds' hold_lots.
import assert from 'node:assert/strict';
import { activeHolds, advanceBatchClock, creditPerToken, student, syncBatches } from '../support/ai.ts';
import { api, backdateLot, env, sweepExpiredHolds, testDb, until, withGateway } from '../support/helpers.ts';
import { accountOf, person, school } from '../support/orgs.ts';
import { buy, chargeOf, emulator } from '../support/purchases.ts';
import { loseDispute, openDispute } from '../support/disputed.ts';
import { grantLot } from '../support/lots.ts';
import { reservationInvariants } from '../support/reserved.ts';
import { call, chatLine, closeAll, createBatch, money, settledOnce, upload } from '../support/batches.ts';

/** A batch of `n` lines of `model`, each due `at` seconds after creation (the stand-in's clock); answers the batch. */
async function batchOf(token: string, model: string, n: number, at: number, extra = '') {
  const f = await upload(
    token,
    Array.from({ length: n }, (_, i) => chatLine(`l${i}`, `q${i} #standin words=5 batch_at=${at} ${extra}`, model)),
  );
  assert.equal(f.status, 200, JSON.stringify(f.json));
  const b = await createBatch(token, f.json.id);
  assert.equal(b.status, 200, b.text);
  return b.json;
}

const balance = async (userId: string) =>
  (await testDb`select trim_scale(balance)::text as b from billing.accounts where user_id = ${userId} and org_id is null`)[
    0
  ]
    .b as string;
const minus = async (a: string, b: string) =>
  (await testDb`select trim_scale(${a}::numeric - ${b}::numeric)::text as d`)[0].d as string;

// ---------------------------------------------------------------- schools

Deno.test("a pool school's member batch: held on the pool, charged there once, the member's own account untouched", async () => {
  const model = await creditPerToken();
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', '1000');
  const b = await batchOf(ada.token, model, 3, 60);
  const held = await money(b.id);
  assert.deepEqual([held.org_id, held.member_id ?? null, held.hold_status], [org, null, 'active']);
  await advanceBatchClock(120);
  await Promise.all([
    call(ada.token, 'GET', `/batches/${b.id}`),
    syncBatches(),
    call(ada.token, 'GET', `/batches/${b.id}`),
  ]);
  const m = await money(b.id);
  settledOnce(m);
  assert.equal(m.captures, 1);
  assert.equal((await accountOf(org, null)).balance, await minus('1000', m.charged));
  assert.equal((await accountOf(org, null)).held, '0');
  const own = await testDb`select count(*)::int as n from billing.transfers t join billing.accounts a
    on a.id in (t.from_account_id, t.to_account_id) where a.user_id = ${ada.id} and a.org_id is null`;
  assert.equal(own[0].n, 0, "nothing moved on the member's own account");
  await reservationInvariants([ada.id]);
});

/** A school funding by allowance, 1,000 in its wallet, `amount` moved to Ada's allowance; Ada's batch of 4 lines due in 50 minutes. */
async function allowanceBatch(amount = '400') {
  const model = await creditPerToken();
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'allowance', '1000');
  const moved = await api(`/orgs/${org}/allowances`, {
    token: owner.token,
    headers: { 'idempotency-key': crypto.randomUUID() },
    body: { amount, user_id: ada.id },
  });
  assert.equal(moved.status, 201, moved.text);
  const b = await batchOf(ada.token, model, 4, 3000);
  assert.equal((await money(b.id)).org_id, org, 'the allowance holds it');
  return { owner, ada, org, b };
}
/**
 * Ada removed; the minute's sync tells the provider to cancel her batch; then its lines' time comes
 * and the sync settles it; the minute sweep of allowances nobody spends from runs.
 */
async function removedThenRun(x: Awaited<ReturnType<typeof allowanceBatch>>) {
  const removed = await api(`/orgs/${x.org}/members/${x.ada.id}`, { method: 'DELETE', token: x.owner.token });
  assert.equal(removed.status, 200, removed.text);
  await syncBatches();
  await advanceBatchClock(3100);
  await syncBatches();
  await call(x.ada.token, 'GET', `/batches/${x.b.id}`);
  await testDb`select billing.sweep_ended_terms(500)`;
  const m = await money(x.b.id);
  settledOnce(m);
  return m;
}

Deno.test('a member removed while their school-paid batch runs: no line run after the removal is charged to the school', async () => {
  // Removing a member cancels their queued jobs ("once removed, nothing more starts on its
  // credits"); a batch is up to 24 hours of lines not yet started, paid by the school.
  const x = await allowanceBatch();
  try {
    const m = await removedThenRun(x);
    assert.equal(m.succeeded, 0, 'no line that started after the removal succeeded on the school');
    assert.equal(m.charged, '0', 'the school is charged nothing for lines run after the removal');
  } finally {
    await closeAll(x.ada.id, x.ada.token);
    await reservationInvariants([x.ada.id]);
  }
});

Deno.test("what a removed member's batch did not spend goes back to the school's wallet, not their swept allowance", async () => {
  const x = await allowanceBatch();
  try {
    const m = await removedThenRun(x);
    const wallet = await accountOf(x.org, null);
    const allowance = await accountOf(x.org, x.ada.id);
    assert.deepEqual({ allowance: allowance.balance, held: allowance.held, wallet: wallet.balance }, {
      allowance: '0',
      held: '0',
      wallet: await minus('1000', m.charged),
    }, "the removed member's allowance keeps nothing");
  } finally {
    await closeAll(x.ada.id, x.ada.token);
    await reservationInvariants([x.ada.id]);
  }
});

// ---------------------------------------------------------------- disputes and refunds

async function buyer() {
  const s = await student('0');
  const p = await buy(s.token, 'mini');
  await until('paid', async () => (await balance(s.id)) === '5000');
  return { s, p };
}

Deno.test('a purchase disputed while its batch runs: the batch is charged its lines once from its hold; lost, the buyer owes them', async () => {
  const model = await creditPerToken();
  const { s, p } = await buyer();
  const b = await batchOf(s.token, model, 3, 60);
  await openDispute(p.session_id);
  // Suspended: no new batch, no upload.
  const f = await upload(s.token, [chatLine('a', 'q', model)]);
  assert.equal(f.status, 403, JSON.stringify(f.json));
  await advanceBatchClock(120);
  await Promise.all([syncBatches(), call(s.token, 'GET', `/batches/${b.id}`)]);
  const m = await money(b.id);
  settledOnce(m);
  assert.ok(Number(m.charged) > 0);
  assert.equal(await balance(s.id), await minus('5000', m.charged));
  await loseDispute(p.session_id);
  assert.equal(await balance(s.id), await minus('0', m.charged), 'the buyer owes what the batch spent, once');
  assert.equal(await activeHolds(s.id), 0);
  await reservationInvariants([s.id]);
});

Deno.test('a dispute lost while the batch runs: the reservation is taken back when the batch ends, its lines owed once', async () => {
  const model = await creditPerToken();
  const { s, p } = await buyer();
  const b = await batchOf(s.token, model, 3, 600);
  const held = await money(b.id);
  await openDispute(p.session_id);
  await loseDispute(p.session_id);
  assert.equal(await balance(s.id), held.held, 'only what the batch reserved is left, until it ends');
  await advanceBatchClock(700);
  await Promise.all([syncBatches(), call(s.token, 'GET', `/batches/${b.id}`), syncBatches()]);
  const m = await money(b.id);
  settledOnce(m);
  assert.ok(Number(m.charged) > 0);
  await sweepExpiredHolds(); // the take-back is pg_cron's minute tick's
  assert.equal(await balance(s.id), await minus('0', m.charged));
  await reservationInvariants([s.id]);
});

Deno.test('a refund while the batch runs, the batch cancelled: nothing created, nothing charged twice', async () => {
  const model = await creditPerToken();
  const { s, p } = await buyer();
  const b = await batchOf(s.token, model, 4, 600);
  const refunded = await emulator(`/_emulator/charges/${await chargeOf(p.session_id)}/refund`, {});
  assert.ok(refunded);
  await until(
    'refunded',
    async () =>
      (await testDb`select amount_refunded_cents > 0 as r from billing.purchases where stripe_session_id = ${p.session_id}`)[
        0
      ]
        ?.r,
  );
  await Promise.all([call(s.token, 'POST', `/batches/${b.id}/cancel`), syncBatches()]);
  await call(s.token, 'GET', `/batches/${b.id}`);
  const m = await money(b.id);
  settledOnce(m);
  assert.equal(m.charged, '0');
  await sweepExpiredHolds(); // the take-back is pg_cron's minute tick's
  assert.equal(await balance(s.id), '0', 'the refund took everything back once the hold returned it');
  await reservationInvariants([s.id]);
});

// ---------------------------------------------------------------- caps

Deno.test('a per-model cap counts a batch once at its hold, refuses one past it, and gets back what failed lines did not spend', async () => {
  const model = await creditPerToken();
  const s = await student('1000');
  const cap = await api('/credits/caps', {
    method: 'PUT',
    token: s.token,
    body: { period: 'day', model, amount: '200' },
  });
  assert.equal(cap.status, 200, cap.text);
  // Past the cap: refused whole, nothing held.
  const big = await upload(
    s.token,
    Array.from({ length: 8 }, (_, i) => chatLine(`l${i}`, 'q #standin words=5', model, 40)),
  );
  const refused = await createBatch(s.token, big.json.id);
  assert.equal(refused.status, 402, refused.text);
  assert.equal(await activeHolds(s.id), 0);
  // Within it: half its lines fail.
  const f = await upload(
    s.token,
    Array.from({ length: 4 }, (_, i) => chatLine(`l${i}`, `q #standin words=5 ${i % 2 ? 'fail=500' : ''}`, model, 10)),
  );
  const b = await createBatch(s.token, f.json.id);
  assert.equal(b.status, 200, b.text);
  const held = await money(b.json.id);
  const spent = async () =>
    (await testDb`select trim_scale(c.spent)::text as s from billing.spend_caps c join billing.accounts a on a.id = c.account_id
      where a.user_id = ${s.id} and c.model = ${model}`)[0].s as string;
  assert.equal(await spent(), held.held, 'the hold counted once');
  await advanceBatchClock(120);
  await Promise.all([syncBatches(), call(s.token, 'GET', `/batches/${b.json.id}`)]);
  const m = await money(b.json.id);
  settledOnce(m);
  assert.equal(
    (await testDb`select count(*)::int as n from billing.ai_batch_lines where batch_id = ${b.json.id}
    and outcome = 'errored' and charged = 0`)[0].n,
    2,
  );
  assert.equal(await spent(), m.charged, 'the cap keeps what the lines cost, no more');
  // An all-model cap below what is left refuses the next batch too.
  const all = await api('/credits/caps', {
    method: 'PUT',
    token: s.token,
    body: { period: 'day', model: null, amount: '1' },
  });
  assert.equal(all.status, 200, all.text);
  const g = await upload(s.token, [chatLine('a', 'q #standin words=5', model, 10)]);
  assert.equal((await createBatch(s.token, g.json.id)).status, 402);
  await reservationInvariants([s.id]);
});

// ---------------------------------------------------------------- expiring credits

Deno.test('credits that expire while a batch holds them: its lines are charged once, what expired is not spent, the rest owed', async () => {
  const model = await creditPerToken();
  const s = await student('0');
  const soon = new Date(Date.now() + 3600_000).toISOString();
  assert.equal((await grantLot(s.id, '1000', 'promo_grant', { expires_at: soon })).status, 201);
  const b = await batchOf(s.token, model, 3, 600);
  const held = await money(b.id);
  const [{ lot }] =
    await testDb`select l.id::text as lot from billing.lots l join billing.accounts a on a.id = l.account_id
    where a.user_id = ${s.id}`;
  await backdateLot(lot);
  await testDb`select billing.expire_lots(100000)`;
  const [{ rem }] = await testDb`select trim_scale(remaining)::text as rem from billing.lots where id = ${lot}`;
  assert.equal(rem, '0', 'the lot expired, held credits too');
  assert.ok(Number(held.held) > 0);
  await advanceBatchClock(700);
  await Promise.all([syncBatches(), call(s.token, 'GET', `/batches/${b.id}`)]);
  const m = await money(b.id);
  settledOnce(m);
  assert.ok(Number(m.charged) > 0);
  assert.equal(await balance(s.id), await minus('0', m.charged), 'the lines are owed, once');
  await reservationInvariants([s.id]);
});

// ---------------------------------------------------------------- uploads racing the limit

Deno.test('twenty uploads at once store at most ten files at the provider', async () => {
  // The waiting-files limit bounds what a student parks at the platform's provider account: a
  // refused upload must not have reached the provider.
  let uploads = 0;
  const standin = env('AI_STANDIN_URL');
  const proxy = Deno.serve({ hostname: '127.0.0.1', port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    if (req.method === 'POST' && url.pathname.endsWith('/files')) uploads++;
    const body = req.method === 'GET' || req.method === 'HEAD' ? undefined : await req.arrayBuffer();
    const res = await fetch(`${standin}${url.pathname}${url.search}`, {
      method: req.method,
      headers: req.headers,
      body,
    });
    return new Response(res.body, { status: res.status, headers: res.headers });
  });
  try {
    await withGateway({ AI_API_BASE: `http://127.0.0.1:${proxy.addr.port}/v1` }, async (base) => {
      const s = await student('0');
      const answers = await Promise.all(
        Array.from(
          { length: 20 },
          (_, i) => upload(s.token, [chatLine('a', `file ${i}`, 'gpt-4o-mini')], `${base}/ai/v1`),
        ),
      );
      const ok = answers.filter((a) => a.status === 200).length;
      assert.equal(ok, 10, answers.map((a) => a.status).join(','));
      assert.ok(uploads <= 10, `${uploads} files reached the provider, ${ok} recorded: ${uploads - ok} orphaned there`);
    });
  } finally {
    await proxy.shutdown();
  }
});
