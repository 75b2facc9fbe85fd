// Three behaviours under load: fit_holds bounded by what the balance lost (refunds,
// disputes, renewals), the usage batch answering accounts as locked (lock_usage_batch), and a
// member's charge re-reading its spending order under the locks (spending_sources loop).
// Outside tester: students' and school admins' tokens over HTTP; the service role only reports
// usage (as the product's server) and sets up; the database only for reading figures.
import assert from 'node:assert/strict';
import {
  adminToken,
  api,
  assertLedgerInvariants,
  backdateLot,
  env,
  fund,
  key,
  newUser,
  reportUsage,
  spawnGateway,
  sweepExpiredHolds,
  testDb,
  until,
  untilJobRunning,
  userToken,
  watchTick,
} from '../support/helpers.ts';
import { creditPerToken } from '../support/ai.ts';
import { checkLots } from '../support/money.ts';
import { buy, chargeOf, deliverWithRetries, emulator } from '../support/purchases.ts';
import { grantLot, orgGrant, ownAccount } from '../support/lots.ts';
import { person, school } from '../support/orgs.ts';

type Json = Record<string, unknown>;
type Res = Awaited<ReturnType<typeof api>>;

async function invariants() {
  await checkLots();
  await assertLedgerInvariants();
}
/** Each attack's own figures are checked in place; the whole-ledger invariants (about 30 s a pass
 * on this ledger) once, after the last attack (the final test). */
let pending = 0;
const checked = () => {
  pending++;
  return Promise.resolve();
};
const state = async (accountId: string) =>
  (await testDb`select trim_scale(balance)::text as balance, trim_scale(held)::text as held
    from billing.accounts where id = ${accountId}`)[0] as { balance: string; held: string };

/** `credits` of gpt-4o input (50 tokens a credit), reported by the server for the token's user. */
const use = (token: string, credits: number) =>
  reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: credits * 50, output_tokens: 0 },
  });

// ============================================================ 1. a refund, then a lost dispute, under a running job

const jobBody = (model: string, words: number) => ({
  type: 'ai_completion',
  input: { model, prompt: Array.from({ length: words }, () => 'a').join(' '), max_tokens: words },
});
async function jobMoney(id: string) {
  const [r] = await testDb`select j.status, h.status as hold_status,
      trim_scale(case when h.status = 'active' then h.amount else 0 end)::text as held,
      trim_scale(coalesce(h.captured_amount, 0))::text as captured,
      trim_scale(coalesce((select t.amount from billing.transfers t where t.idempotency_key = 'job-overage:' || j.id::text), 0))::text as overage
    from billing.jobs j left join billing.holds h on h.id = j.hold_id where j.id = ${id}`;
  return r;
}

// Its job must be seen running (its hold live) before the dispute (untilJobRunning: op sanitizers off).
Deno.test({
  name:
    'a dispute open over spent credits, a 10-credit refund of the other purchase, then the dispute lost, all while a 75-credit job (price 40) runs: the job finishes, charged from what its hold reserved, and the buyer owes the rest as debt',
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const m = await creditPerToken();
  const id = await newUser();
  const token = await userToken(id);
  const p1 = await buy(token, 'mini');
  const p2 = await buy(token, 'mini');
  const acct = await until('paid', async () => {
    const r =
      await testDb`select id::text from billing.accounts where user_id = ${id} and org_id is null and balance = 10000`;
    return r[0]?.id as string | undefined;
  });
  assert.equal((await use(token, 5000)).status, 201);
  assert.deepEqual(await state(acct), { balance: '5000', held: '0' });
  const gw = spawnGateway({ AI_LOCAL_CHUNK_DELAY_MS: '2500' });
  await gw.ready();
  try {
    const created = await fetch(`${gw.url}/jobs`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${token}`,
        'idempotency-key': crypto.randomUUID(),
        'content-type': 'application/json',
      },
      body: JSON.stringify(jobBody(m, 20)),
    });
    const cb = await created.json() as Json;
    assert.equal(created.status, 202, JSON.stringify(cb));
    const jobId = (cb.data as { job_id: string }).job_id;
    await untilJobRunning(gw.url, jobId);
    const open = (await emulator(`/_emulator/charges/${await chargeOf(p1.session_id)}/dispute`, {
      outcome: 'open',
      deliver: false,
    })).events;
    for (const e of open) assert.ok((await deliverWithRetries(e)).status < 300);
    const disputed = await state(acct);
    const refund = await api('/checkout/refunds', {
      token: await adminToken(),
      headers: key(),
      body: { purchase_id: p2.purchase_id, amount_cents: 1 },
    });
    assert.equal(refund.status, 202, refund.text);
    await until('refunded', async () => (await state(acct)).balance === '4990');
    const afterRefund = await jobMoney(jobId);
    const lost = (await emulator(`/_emulator/charges/${await chargeOf(p1.session_id)}/dispute`, {
      outcome: 'lost',
      deliver: false,
    })).events;
    for (const e of lost) assert.ok((await deliverWithRetries(e)).status < 300);
    await until('lost', async () => Number((await state(acct)).balance) < 4990);
    const afterLost = { ...await state(acct), job: await jobMoney(jobId) };
    const end = await until('done', async () => {
      const x = await jobMoney(jobId);
      return ['completed', 'failed', 'cancelled'].includes(x.status) && x;
    }, 60_000);
    const figures = JSON.stringify({ disputed, afterRefund, afterLost, end });
    assert.deepEqual(
      {
        held_after_refund: afterRefund.held,
        balance_after_lost: afterLost.balance,
        held_after_lost: afterLost.held,
        status: end.status,
        captured: end.captured,
        overage: end.overage,
      },
      // The loss owes the 5,000 spent of the first purchase: the 4,915 free of the second at once,
      // the job's 75 when its hold ends (35 returned, taken; 40 spent, owed), and 10 as debt.
      {
        held_after_refund: '75',
        balance_after_lost: '65',
        held_after_lost: '75',
        status: 'completed',
        captured: '40', // its whole price, from what its hold reserved
        overage: '0', // nothing past the hold
      },
      figures,
    );
    await sweepExpiredHolds(); // what the job returned is the refund's at the minute's tick
    assert.deepEqual(await state(acct), { balance: '-50', held: '0' }, 'bought 4,990 net, spent 5,040');
  } finally {
    await gw.kill();
  }
  await checked();
});

// ============================================================ 2. usage batch: mixed accounts, repeats, three identical batches at once

type Outcome = {
  event_id: string;
  status: string;
  charged?: string;
  transfer_id?: string | null;
  balance?: string;
  org_id?: string;
};
const service = env('SUPABASE_SERVICE_ROLE_KEY');
const ev = (user: string, id: string, credits: number) => ({
  event_id: id,
  user_id: user,
  model: 'gpt-4o',
  input_tokens: credits * 50,
  output_tokens: 0,
  occurred_at: new Date(Date.now() - 60_000).toISOString(),
});

Deno.test('three identical batches at once mixing a plain student, a pool member, credits for some models (one list expired under the lock), a low-balance watcher, a student without an account and repeats: every event charged once to the right account, outcomes in input order', async () => {
  const a = await newUser();
  await fund(a, '100');
  const owner = await person('owner');
  const b = await person('bea');
  const org = await school(owner, [b], 'pool', null);
  await orgGrant(org, '100', 'promo_grant');
  const c = await newUser();
  assert.equal((await grantLot(c, '50', 'promo_grant', { applies_to: ['gpt-4o'] })).status, 201);
  assert.equal((await grantLot(c, '20', 'promo_grant')).status, 201);
  const d = await newUser();
  await fund(d, '100');
  const set = await api('/credits/alerts/low-balance', {
    method: 'PUT',
    token: await userToken(d),
    body: { threshold: '50' },
  });
  assert.equal(set.status, 200, set.text);
  const e = await newUser();
  assert.equal(
    (await grantLot(e, '20', 'promo_grant', {
      applies_to: ['gpt-4o'],
      expires_at: new Date(Date.now() + 86_400_000).toISOString(),
    })).status,
    201,
  );
  assert.equal((await grantLot(e, '30', 'promo_grant')).status, 201);
  const eAcct = await ownAccount(e);
  const [{ lot }] =
    await testDb`select id::text as lot from billing.lots where account_id = ${eAcct} and applies_to is not null`;
  await backdateLot(lot);
  const f = crypto.randomUUID(); // no account at all
  await testDb`insert into auth.users (id, email, email_confirmed_at) values (${f}, ${f + '@x.test'}, now())`;

  const events = [
    ev(a, 'e1', 10),
    ev(b.id, 'e1', 10),
    ev(c, 'e1', 10),
    ev(d, 'e1', 30),
    ev(a, 'e1', 10),
    ev(e, 'e1', 25),
    ev(c, 'e2', 45),
    ev(d, 'e2', 30),
    ev(b.id, 'e2', 95),
    ev(f, 'e1', 1),
    ev(a, 'e2', 95),
    ev(e, 'e2', 10),
    ev(a, 'e3', 90),
    ev(c, 'e3', 20),
    ev(b.id, 'e1', 10),
    ev(d, 'e1', 30),
  ];
  const rs = await Promise.all([1, 2, 3].map(() => api('/credits/usage/batch', { token: service, body: { events } })));
  const outs = rs.map((r) => {
    assert.equal(r.status, 200, r.text);
    return (r.body.data as { outcomes: Outcome[] }).outcomes;
  });
  const applied = outs.map((o) => o.filter((x) => x.status === 'applied').length);
  const winner = outs[applied.findIndex((n) => n > 0)];
  assert.deepEqual(applied.filter((n) => n > 0).length, 1, JSON.stringify(applied));
  const short = (o: Outcome) =>
    `${o.event_id} ${o.status}${o.charged ? ' ' + o.charged : ''}${o.balance ? ' bal ' + o.balance : ''}${
      o.org_id ? ' org' : ''
    }`;
  assert.deepEqual(winner.map(short), [
    'e1 applied 10 bal 90',
    'e1 applied 10 org',
    'e1 applied 10 bal 60',
    'e1 applied 30 bal 70',
    'e1 duplicate 10 bal 90',
    'e1 applied 25 bal 5',
    'e2 applied 45 bal 15',
    'e2 applied 30 bal 40',
    'e2 insufficient',
    'e1 insufficient',
    'e2 insufficient',
    'e2 insufficient',
    'e3 applied 90 bal 0',
    'e3 insufficient',
    'e1 duplicate 10 org',
    'e1 duplicate 30 bal 70',
  ]);
  for (const o of outs.filter((x) => x !== winner)) {
    assert.deepEqual(
      o.map((x) => `${x.event_id} ${x.status}${x.charged ? ' ' + x.charged : ''}`),
      winner.map((x) =>
        `${x.event_id} ${x.status === 'applied' ? 'duplicate' : x.status}${x.charged ? ' ' + x.charged : ''}`
      ),
    );
  }
  const keys = events.map((x) => `usage-event:${x.user_id}:${x.event_id}`);
  const ws = await testDb`select t.idempotency_key as k, count(*)::int as n, trim_scale(sum(t.amount))::text as amount,
      min(a.user_id::text) as payer_user, min(a.org_id::text) as payer_org
    from billing.transfers t join billing.accounts a on a.id = t.from_account_id
    where t.kind = 'usage' and t.idempotency_key = any(${keys}) group by 1 order by 1`;
  const want = new Map([
    [`usage-event:${a}:e1`, `1 10 ${a} null`],
    [`usage-event:${a}:e3`, `1 90 ${a} null`],
    [`usage-event:${b.id}:e1`, `1 10 null ${org}`],
    [`usage-event:${c}:e1`, `1 10 ${c} null`],
    [`usage-event:${c}:e2`, `1 45 ${c} null`],
    [`usage-event:${d}:e1`, `1 30 ${d} null`],
    [`usage-event:${d}:e2`, `1 30 ${d} null`],
    [`usage-event:${e}:e1`, `1 25 ${e} null`],
  ]);
  assert.deepEqual(
    Object.fromEntries(ws.map((w) => [w.k, `${w.n} ${w.amount} ${w.payer_user} ${w.payer_org}`])),
    Object.fromEntries([...want].sort(([x], [y]) => (x < y ? -1 : 1))),
  );
  const bal = async (u: string) =>
    (await testDb`select trim_scale(balance)::text as b from billing.accounts where user_id = ${u}`)[0]?.b ?? null;
  assert.deepEqual({
    a: await bal(a),
    b: await bal(b.id),
    c: await bal(c),
    d: await bal(d),
    e: await bal(e),
    f: await bal(f),
  }, { a: '0', b: '0', c: '15', d: '40', e: '5', f: null });
  const wallet =
    await testDb`select trim_scale(balance)::text as b from billing.accounts where org_id = ${org} and member_id is null`;
  assert.equal(wallet[0].b, '90');
  await watchTick();
  const alerts =
    await testDb`select payload from billing.notification_outbox where user_id = ${d} and payload ->> 'kind' = 'balance_below'`;
  assert.deepEqual(alerts.map((x) => x.payload.available), ['40']);
  await checked();
});

Deno.test('batches charging a student race her joining a pool school (org pays first): each event charged once, by the payer its outcome names, and nothing made or lost', async () => {
  const owner = await person('owner');
  const gia = await person('gia');
  const org = await school(owner, [], 'pool', null);
  await orgGrant(org, '60', 'promo_grant');
  // Her own 100 covers all 32 events (96) whichever batches run before she joins.
  await fund(gia.id, '100');
  const batches = [0, 1, 2, 3].map((k) => Array.from({ length: 8 }, (_, i) => ev(gia.id, `b${k}-${i}`, 3)));
  const inv = await api(`/orgs/${org}/invitations`, { token: owner.token, body: { email: gia.email } });
  assert.equal(inv.status, 201, inv.text);
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const [accepted, ...rs] = await Promise.all([
    (async () => {
      await sleep(30);
      return await api('/orgs/invitations/accept', {
        token: gia.token,
        body: { token: (inv.body.data as { token: string }).token },
      });
    })(),
    ...batches.map(async (b, k) => {
      await sleep(k * 20);
      return await api('/credits/usage/batch', { token: service, body: { events: b } });
    }),
  ]);
  assert.equal(accepted.status, 200, accepted.text);
  const outs = rs.flatMap((r) => {
    assert.equal(r.status, 200, r.text);
    return (r.body.data as { outcomes: Outcome[] }).outcomes;
  });
  assert.deepEqual(outs.filter((o) => o.status !== 'applied').map((o) => o.status), []);
  const keys = batches.flat().map((x) => `usage-event:${x.user_id}:${x.event_id}`);
  const ws =
    await testDb`select t.id::text, coalesce(a.org_id::text, 'self') as payer, trim_scale(t.amount)::text as amount
    from billing.transfers t join billing.accounts a on a.id = t.from_account_id
    where t.kind = 'usage' and t.idempotency_key = any(${keys})`;
  const byId = new Map(ws.map((w) => [w.id, w.payer]));
  assert.equal(ws.length, 32);
  assert.deepEqual(
    outs.filter((o) => byId.get(o.transfer_id!) !== (o.org_id ?? 'self')).map((o) => JSON.stringify(o)),
    [],
  );
  const wallet =
    await testDb`select trim_scale(balance)::text as b from billing.accounts where org_id = ${org} and member_id is null`;
  const mine = await testDb`select trim_scale(balance)::text as b from billing.accounts where user_id = ${gia.id}`;
  const byOrg = ws.filter((w) => w.payer !== 'self').length;
  assert.deepEqual({ wallet: wallet[0].b, mine: mine[0].b }, {
    wallet: String(60 - 3 * byOrg),
    mine: String(100 - 3 * (32 - byOrg)),
  });
  await checked();
});

// ============================================================ 3. a member's charges racing funding switches and order flips

Deno.test("a member's 45 charges racing her school's funding flips (allowance → pool → allowance) and org_pays_first flips: each charge 201 or 402 (never 5xx), one transfer each, paid by one source, and no credit made or lost", async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'allowance', null);
  await orgGrant(org, '600', 'promo_grant');
  const fundA = (amount: string) =>
    api(`/orgs/${org}/allowances`, { token: owner.token, headers: key(), body: { amount, user_id: ada.id } });
  assert.equal((await fundA('60')).status, 201);
  await fund(ada.id, '30');
  const own = await ownAccount(ada.id);
  const patch = (body: Json) => api(`/orgs/${org}`, { method: 'PATCH', token: owner.token, headers: key(), body });
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const flips = (async () => {
    const out: Res[] = [];
    for (
      const body of [
        { funding: 'pool' },
        { org_pays_first: false },
        { funding: 'allowance' },
        { org_pays_first: true },
        { funding: 'pool' },
        { funding: 'allowance' },
      ]
    ) {
      await sleep(40);
      out.push(await patch(body));
    }
    return out;
  })();
  const charges = await Promise.all(Array.from({ length: 45 }, async (_, k) => {
    await sleep(k * 12);
    return await use(ada.token, 3);
  }));
  const patched = await flips;
  for (const p of patched) assert.equal(p.status, 200, p.text);
  for (const r of charges) assert.ok(r.status === 201 || r.status === 402, `${r.status} ${r.text}`);
  const ok = charges.filter((r) => r.status === 201);
  const ids = ok.map((r) => (r.body.data as { transfer_id: string }).transfer_id);
  assert.equal(new Set(ids).size, ok.length);
  const orgAccts = (await testDb`select id::text from billing.accounts where org_id = ${org}`).map((r) =>
    r.id as string
  );
  const [{ n, total }] = await testDb`select count(*)::int as n, trim_scale(coalesce(sum(t.amount), 0))::text as total
    from billing.transfers t where t.kind = 'usage' and t.from_account_id = any(${[own, ...orgAccts]}::bigint[])`;
  // Each response names the payer its transfer has.
  const payers = await testDb`select t.id::text, coalesce(a.org_id::text, 'self') as payer from billing.transfers t
    join billing.accounts a on a.id = t.from_account_id where t.id = any(${ids}::bigint[])`;
  const byId = new Map(payers.map((p) => [p.id, p.payer]));
  const mism = ok.filter((r) => {
    const d = r.body.data as { transfer_id: string; paid_by: string | { org_id: string } };
    return byId.get(d.transfer_id) !== (d.paid_by === 'self' ? 'self' : (d.paid_by as { org_id: string }).org_id);
  });
  assert.deepEqual(mism.map((r) => r.text), []);
  const sum = (await Promise.all([own, ...orgAccts].map(state))).reduce((s, x) => s + Number(x.balance), 0);
  assert.deepEqual({ n, total, sum, ok: ok.length }, {
    n: ok.length,
    total: String(3 * ok.length),
    sum: 630 - 3 * ok.length,
    ok: ok.length,
  });
  // A refusal only when nothing she may use had 3: her own spent, and (allowance funding, the
  // allowance swept by the pool switch) nothing the school lets her spend.
  const refusals = charges.filter((r) => r.status === 402).map((r) =>
    JSON.stringify(
      ((r.body.error as Json).details as { wallets: Json[] }).wallets.map((w) => `${w.wallet} ${w.available}`).sort(),
    )
  );
  assert.deepEqual([...new Set(refusals)].filter((x) => x !== '["organisation 0","personal 0"]'), []);
  assert.equal(Number((await state(own)).balance), refusals.length ? 0 : Number((await state(own)).balance));
  await checked();
});

Deno.test("a pool member's charges and holds racing her removal: afterwards nothing of hers is paid or held by the school, her later charges come from her own credits only, no 5xx", async () => {
  const owner = await person('owner');
  const ada = await person('ada');
  const org = await school(owner, [ada], 'pool', null);
  await orgGrant(org, '300', 'promo_grant');
  await fund(ada.id, '30');
  const own = await ownAccount(ada.id);
  const [{ id: wallet }] =
    await testDb`select id::text from billing.accounts where org_id = ${org} and member_id is null`;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const [removed, ...rs] = await Promise.all([
    (async () => {
      await sleep(150);
      return await api(`/orgs/${org}/members/${ada.id}`, { method: 'DELETE', token: owner.token, headers: key() });
    })(),
    ...Array.from({ length: 30 }, async (_, k) => {
      await sleep(k * 10);
      return k % 5 === 4
        ? await api('/credits/holds', { token: ada.token, headers: key(), body: { amount: '4' } })
        : await use(ada.token, 3);
    }),
  ]);
  assert.equal(removed.status, 200, removed.text);
  for (const r of rs) assert.ok(r.status === 201 || r.status === 402, `${r.status} ${r.text}`);
  const ws = await state(wallet);
  assert.equal(ws.held, '0', 'no hold of hers left on the wallet');
  const before = await state(own);
  const later = [];
  for (let i = 0; i < 12; i++) later.push(await use(ada.token, 3));
  const ok = later.filter((r) => r.status === 201);
  assert.deepEqual(ok.map((r) => (r.body.data as { paid_by: unknown }).paid_by).filter((p) => p !== 'self'), []);
  const avail = Number(before.balance) - Number(before.held);
  assert.equal(ok.length, Math.floor(avail / 3), JSON.stringify(before));
  assert.deepEqual(await state(wallet), ws);
  await checked();
});

Deno.test('the ledger invariants and the lots hold after every attack above', async () => {
  assert.ok(pending > 0);
  await invariants();
});
