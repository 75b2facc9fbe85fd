// A balance as of a past instant (GET /credits/balance?at=, /credits/lots?at=, the admin and
// organisation equivalents; docs/credit-lots.md § As of): what the account showed then, exactly,
// read from the ledger. Random sequences of purchases (the Stripe emulator), grants, usage,
// holds, refunds, disputes and voids, each followed by a live read: the as-of read at an instant
// after it must answer that live read, lot by lot, and the balance at every transfer's instant
// must be the statement's running sum. Then what a student's token can try.
import assert from 'node:assert/strict';
import type { Balance, Lot, LotPage } from '../../supabase/functions/_shared/contract/index.ts';
import { adminToken, api, backdateLot, newUser, reportUsage, student, testDb, userToken } from '../support/helpers.ts';
import { codeOf, dataOf } from '../support/money.ts';
import { encodeCursor } from '../../supabase/functions/_shared/values/page.ts';
import { join, key, person, school, usage, walletOf } from '../support/orgs.ts';
import { buy, chargeOf, emulator, startCheckout } from '../support/purchases.ts';

/** The database's clock now, to the microsecond, as the API takes an instant. */
const instant = async () =>
  (await testDb`select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as t`)[0]
    .t as string;

/** A small deterministic generator, so a failing sequence can be run again from its seed. */
function random(seed: number) {
  let s = seed >>> 0;
  return (n: number) => {
    s = (Math.imul(s ^ (s >>> 15), 2246822507) + 0x9e3779b9) >>> 0;
    s = Math.imul(s ^ (s >>> 13), 3266489909) >>> 0;
    return ((s ^ (s >>> 16)) >>> 0) % n;
  };
}

type Snapshot = { at: string; balance: Balance; lots: Lot[] };

/** What the account shows now: its balance and every lot. */
async function live(token: string): Promise<Omit<Snapshot, 'at'>> {
  const balance = dataOf(await api('/credits/balance', { token })) as unknown as Balance;
  const lots = (dataOf(await api('/credits/lots?limit=200', { token })) as unknown as LotPage).items;
  return { balance, lots };
}

type Purchase = { session: string; refunded: number; dispute?: 'open' | 'closed' };
type State = { purchases: Purchase[]; holds: string[]; charges: string[] };

/** One random movement on the student's account, among those its state allows. */
async function step(
  rand: (n: number) => number,
  s: { id: string; token: string; admin: string },
  state: State,
  available: number,
) {
  const usable = Math.floor(available);
  const choice = rand(10);
  const purchase = state.purchases.length > 0 ? state.purchases[rand(state.purchases.length)] : undefined;
  const disputed = state.purchases.find((p) => p.dispute === 'open');
  if (disputed) {
    // The buyer is suspended while a dispute of theirs is open (403 ACCOUNT_DISPUTED on every
    // money path): an admin grants credits, or the dispute closes, won or lost.
    if (rand(2) === 0) {
      const r = await api('/credits/grants', {
        token: s.admin,
        headers: key(),
        body: { user_id: s.id, amount: String(1 + rand(900)), reason: 'as-of sequence', kind: 'promo_grant' },
      });
      assert.equal(r.status, 201, r.text);
    } else {
      await emulator(`/_emulator/charges/${await chargeOf(disputed.session)}/dispute`, {
        outcome: rand(2) === 0 ? 'won' : 'lost',
      });
      disputed.dispute = 'closed';
    }
  } else if (choice === 0 || usable < 10) {
    state.purchases.push({ session: (await buy(s.token, 'mini')).session_id, refunded: 0 }); // 5,000 credits for 500¢
  } else if (choice === 1) {
    const paid = rand(2) === 0;
    const r = await api('/credits/grants', {
      token: s.admin,
      headers: key(),
      body: {
        user_id: s.id,
        amount: String(1 + rand(900)),
        reason: 'as-of sequence',
        kind: paid ? 'adjustment' : 'promo_grant',
        ...(paid ? { lot: { category: 'paid', cost_cents: String(rand(300)) } } : {}),
      },
    });
    assert.equal(r.status, 201, r.text);
  } else if (choice <= 3) {
    const r = await spendCredits(s.token, 1 + rand(Math.min(usable, 400)));
    assert.equal(r.status, 201, r.text);
    state.charges.push(String(dataOf(r).transfer_id));
  } else if (choice === 4) {
    const amount = String(1 + rand(Math.min(usable, 300)));
    const r = await api('/credits/holds', { token: s.token, headers: key(), body: { amount, ttl_seconds: 900 } });
    assert.equal(r.status, 201, r.text);
    state.holds.push(String(dataOf(r).hold_id));
  } else if (choice === 5 && state.holds.length > 0) {
    const id = state.holds.splice(rand(state.holds.length), 1)[0];
    const capture = rand(2) === 0;
    const r = await api(`/credits/holds/${id}/${capture ? 'capture' : 'release'}`, {
      token: s.token,
      headers: key(),
      body: capture ? { amount: '1' } : {},
    });
    // A hold that lapsed is gone (409); a capture of credits it no longer has is refused (402).
    assert.ok([200, 402, 409].includes(r.status), r.text);
  } else if (choice === 6 && purchase && !purchase.dispute && purchase.refunded < 400) {
    const cents = 1 + rand(100);
    await emulator(`/_emulator/charges/${await chargeOf(purchase.session)}/refund`, { amount: cents });
    purchase.refunded += cents;
  } else if (choice === 7 && purchase && purchase.refunded === 0 && !purchase.dispute) {
    // A dispute opens: the purchase's lots freeze (holds keep what they reserved of them).
    await emulator(`/_emulator/charges/${await chargeOf(purchase.session)}/dispute`, { outcome: 'open' });
    purchase.dispute = 'open';
  } else if (choice === 8 && state.charges.length > 0) {
    const id = state.charges.splice(rand(state.charges.length), 1)[0];
    const r = await api(`/admin/charges/${id}/void`, { token: s.admin, body: { reason: 'as-of sequence' } });
    assert.equal(r.status, 200, r.text);
  } else {
    const r = await spendCredits(s.token, 1);
    assert.ok([201, 402].includes(r.status), r.text);
    if (r.status === 201) state.charges.push(String(dataOf(r).transfer_id));
  }
}

/** A usage charge of whole credits (gpt-4o input: 50 tokens a credit), reported by the server. */
const spendCredits = (token: string, credits: number) =>
  reportUsage('/credits/usage', {
    token,
    headers: key(),
    body: { model: 'gpt-4o', input_tokens: credits * 50, output_tokens: 0 },
  });

/** Asks for the balance and lots as of each snapshot's instant: each must be what was shown then. */
async function assertSnapshots(token: string, snapshots: Snapshot[]) {
  for (const snap of snapshots) {
    const b = await api(`/credits/balance?at=${snap.at}`, { token });
    assert.equal(b.status, 200, b.text);
    const asOf = snap.at.replace(/(\.\d{3})\d*Z$/, '$1Z');
    assert.deepEqual(dataOf(b), { ...snap.balance, as_of: asOf }, `balance at ${snap.at}`);
    const l = await api(`/credits/lots?limit=200&at=${snap.at}`, { token });
    assert.deepEqual((dataOf(l) as unknown as LotPage).items, snap.lots, `lots at ${snap.at}`);
  }
}

/**
 * The statement's running sum: at each instant a movement of the account is dated, the as-of
 * balance (read in SQL: the HTTP route is checked above, within its rate limit) is Σ its entries
 * dated by then, and the balance_after of the last of them (its transactions here never overlap).
 */
async function assertRunningSum(userId: string) {
  const entries = await testDb<{ at: Date; as_of: string; after: string; sum: string }[]>`
    with mine as (select e.* from billing.entries e join billing.accounts a on a.id = e.account_id where a.user_id = ${userId})
    select t.at, billing.user_balance_as_of(${userId}, t.at) ->> 'balance' as as_of,
      (select trim_scale(sum(m.amount))::text from mine m where m.created_at <= t.at) as sum,
      (select trim_scale(m.balance_after)::text from mine m where m.created_at <= t.at order by m.id desc limit 1) as after
    from (select distinct m.created_at as at from mine m) t order by t.at`;
  assert.ok(entries.length >= 5, `a sequence with movements (${entries.length})`);
  for (const e of entries) {
    assert.equal(e.as_of, e.sum, `the running sum at ${e.at.toISOString()}`);
    assert.equal(e.as_of, e.after, `the last balance_after at ${e.at.toISOString()}`);
  }
}

/** Runs `ops` one by one, reading the account after each; then checks every as-of read and the running sum. */
async function replay(s: { id: string; token: string }, ops: ((last: Snapshot) => Promise<unknown>)[]) {
  const snapshots: Snapshot[] = [{ ...await live(s.token), at: await instant() }];
  for (const op of ops) {
    await op(snapshots[snapshots.length - 1]);
    const now = await live(s.token);
    snapshots.push({ ...now, at: await instant() });
  }
  await assertSnapshots(s.token, snapshots);
  await assertRunningSum(s.id);
  return snapshots;
}

for (const seed of [46, 4601, 460_002, 4_600_003]) {
  Deno.test(`as of the instant after each movement, balance, held and every lot are what the account showed then (seed ${seed})`, async () => {
    const rand = random(seed);
    const id = await newUser();
    const s = { id, token: await userToken(id), admin: await adminToken() };
    const state: State = { purchases: [], holds: [], charges: [] };
    // 20 movements: with the reads after each and the as-of reads, within a route's 100 a minute.
    await replay(
      s,
      Array.from({ length: 20 }, () => (last: Snapshot) => step(rand, s, state, Number(last.balance.available))),
    );
  });
}

const charge = async (token: string, credits: number) => {
  const r = await spendCredits(token, credits);
  assert.equal(r.status, 201, r.text);
  return String(dataOf(r).transfer_id);
};

Deno.test("as of each instant around a dispute: the frozen lots, the loss taking their free credits, the hold's part when it ends", async () => {
  const id = await newUser();
  const s = { id, token: await userToken(id) };
  let first = '';
  let hold = '';
  await replay(s, [
    async () => (first = (await buy(s.token, 'mini')).session_id),
    () => buy(s.token, 'mini'),
    () => charge(s.token, 1000),
    async () => {
      // Reserves the first purchase's 4,000 left and 4,000 of the second's.
      const r = await api('/credits/holds', { token: s.token, headers: key(), body: { amount: '8000' } });
      hold = String(dataOf(r).hold_id);
    },
    // Freezes the first purchase's lot: the hold keeps what it reserved, nothing gives way.
    async () => emulator(`/_emulator/charges/${await chargeOf(first)}/dispute`, { outcome: 'open' }),
    // Lost: the lot's free credits go at once (none: the hold reserved them), the 1,000 spent is owed.
    async () => emulator(`/_emulator/charges/${await chargeOf(first)}/dispute`, { outcome: 'lost' }),
    // The hold ends: what it returns of the first lot is taken back then.
    () => api(`/credits/holds/${hold}/release`, { token: s.token, headers: key(), body: {} }),
    () => charge(s.token, 2000),
  ]);
  const changes = await testDb`select x.frozen_before from billing.lot_changes x join billing.lots l on l.id = x.lot_id
    join billing.purchases p on p.id = l.purchase_id where p.stripe_session_id = ${first} order by x.changed_at, x.id`;
  assert.deepEqual(
    changes.map((c) => c.frozen_before),
    [false, true],
    'the lot froze, then thawed: the case is exercised',
  );
  const [{ n }] = await testDb`select count(*)::int as n from billing.hold_resizes r where r.hold_id = ${hold}`;
  assert.equal(n, 0, 'a dispute resizes no hold');
});

Deno.test('as of each instant around a debt: a refund of spent credits, a void into the debt, the purchase that pays it', async () => {
  const id = await newUser();
  const s = { id, token: await userToken(id) };
  let first = '';
  let spent = '';
  const admin = await adminToken();
  const snapshots = await replay(s, [
    async () => (first = (await buy(s.token, 'mini')).session_id),
    () => charge(s.token, 2000),
    async () => (spent = await charge(s.token, 1000)),
    async () => emulator(`/_emulator/charges/${await chargeOf(first)}/refund`, { amount: 500 }), // 3,000 owed
    async () => {
      const r = await api(`/admin/charges/${spent}/void`, { token: admin, body: { reason: 'as-of debt' } });
      assert.equal(r.status, 200, r.text); // its 1,000 pay part of the debt, into the lot it drew
    },
    () => buy(s.token, 'mini'), // pays the other 2,000 first
    () => charge(s.token, 100),
  ]);
  assert.deepEqual(snapshots.map((x) => x.balance.balance), [
    '0',
    '5000',
    '3000',
    '2000',
    '-3000',
    '-2000',
    '3000',
    '2900',
  ]);
});

Deno.test('before the account existed the balance is zero and there are no lots; the account is then as bought', async () => {
  const id = await newUser();
  const token = await userToken(id);
  const before = await instant();
  await buy(token, 'mini');
  const zero = dataOf(await api(`/credits/balance?at=${before}`, { token }));
  assert.deepEqual(
    { ...zero, as_of: undefined },
    { balance: '0', held: '0', available: '0', expiring: null, as_of: undefined },
  );
  assert.deepEqual((dataOf(await api(`/credits/lots?at=${before}`, { token })) as unknown as LotPage).items, []);
  const after = dataOf(await api(`/credits/balance?at=${await instant()}`, { token }));
  assert.equal(after.balance, '5000');
});

Deno.test('?at= must be an instant with an offset, not in the future: else 400 VALIDATION_FAILED naming at', async () => {
  const token = await userToken(await newUser());
  const future = new Date(Date.now() + 3_600_000).toISOString();
  for (
    const at of [
      'yesterday',
      '2026-11-20',
      '2026-11-20T10:00:00',
      '2026-13-01T00:00:00Z',
      '1969-12-31T23:59:59Z',
      future,
    ]
  ) {
    for (const path of ['/credits/balance', '/credits/lots']) {
      const r = await api(`${path}?at=${encodeURIComponent(at)}`, { token });
      assert.equal(r.status, 400, `${path} at=${at}`);
      assert.equal(codeOf(r), 'VALIDATION_FAILED');
      assert.equal((r.body.error as { field?: string }).field, 'at');
    }
  }
  const offset = await api(`/credits/balance?at=${encodeURIComponent('2026-01-01T09:00:00+09:00')}`, { token });
  assert.equal(offset.status, 200, offset.text);
  assert.equal(dataOf(offset).as_of, '2026-01-01T00:00:00.000Z');
});

Deno.test('a student reads only their own account as of any instant: another account is out of reach', async () => {
  const owner = await newUser();
  await buy(await userToken(owner), 'mini');
  const at = await instant();
  const other = await userToken(await newUser());

  // No parameter names another user: trying one is refused, and the caller's own (empty) account is all there is.
  const named = await api(`/credits/balance?at=${at}&user_id=${owner}`, { token: other });
  assert.equal(named.status, 400);
  assert.equal(named.body.data, undefined);
  assert.equal(dataOf(await api(`/credits/balance?at=${at}`, { token: other })).balance, '0');
  // The admin routes refuse a student's token, the owner's own included.
  for (const path of [`/admin/users/${owner}/balance?at=${at}`, `/admin/users/${owner}/lots?at=${at}`]) {
    const r = await api(path, { token: other });
    assert.equal(r.status, 403, r.text);
    assert.equal(r.body.data, undefined);
    assert.equal((await api(path, { token: await userToken(owner) })).status, 403);
  }
  // An admin reads anyone's.
  const admin = await adminToken();
  assert.equal(dataOf(await api(`/admin/users/${owner}/balance?at=${at}`, { token: admin })).balance, '5000');
  const lots = dataOf(await api(`/admin/users/${owner}/lots?at=${at}`, { token: admin })) as unknown as LotPage;
  assert.deepEqual(lots.items.map((l) => [l.source, l.remaining]), [['purchase', '5000']]);
  assert.equal((await api(`/admin/users/not-a-user/balance?at=${at}`, { token: admin })).status, 400);
});

Deno.test('an organisation as of an instant: the wallet to its owners and admins, each member their own allowance only', async () => {
  const [owner, member, outsider] = [await person('owner'), await person('member'), await person('outsider')];
  const org = await school(owner, [member], 'allowance', '1000');
  const funded = await api(`/orgs/${org}/allowances`, { token: owner.token, headers: key(), body: { amount: '100' } });
  assert.equal(funded.status, 201, funded.text);
  const at = await instant();
  assert.equal((await usage(member.token)).status, 201); // after the instant: not in what it shows

  const seen = await api(`/orgs/${org}/balance?at=${at}`, { token: owner.token });
  assert.equal(seen.status, 200, seen.text);
  assert.equal((dataOf(seen).wallet as Balance).balance, '900');
  assert.equal(dataOf(seen).allowance, null);
  const own = await api(`/orgs/${org}/balance?at=${at}`, { token: member.token });
  assert.equal(dataOf(own).wallet, null, 'a member never sees the wallet');
  assert.equal((dataOf(own).allowance as Balance).balance, '100');
  const lots = await api(`/orgs/${org}/lots?at=${at}&account=allowance`, { token: member.token });
  assert.equal(lots.status, 200, lots.text);
  assert.deepEqual((dataOf(lots) as unknown as LotPage).items.map((l) => l.remaining), ['100']);
  const wallet = await api(`/orgs/${org}/lots?at=${at}`, { token: member.token });
  assert.equal(wallet.status, 403);
  assert.equal(codeOf(wallet), 'ORG_FORBIDDEN');
  for (const path of [`/orgs/${org}/balance?at=${at}`, `/orgs/${org}/lots?at=${at}&account=allowance`]) {
    const r = await api(path, { token: outsider.token });
    assert.equal(r.status, 404, r.text);
    assert.equal(codeOf(r), 'ORG_NOT_FOUND');
    assert.equal(r.body.data, undefined);
  }
});

Deno.test('an organisation as of an instant: a removed member, a removed admin back as a member, another organisation’s owner and a stranger see none of its money, alike', async () => {
  const [owner, admin, member, other] = [
    await person('owner'),
    await person('admin'),
    await person('member'),
    await person('other'),
  ];
  const org = await school(owner, [member], 'allowance', '1000');
  await join(owner.token, org, admin, 'admin');
  assert.equal(
    (await api(`/orgs/${org}/allowances`, { token: owner.token, headers: key(), body: { amount: '100' } })).status,
    201,
  );
  const theirs = await school(other, [], 'allowance', '50');
  const at = await instant();
  assert.equal(
    (dataOf(await api(`/orgs/${org}/balance?at=${at}`, { token: admin.token })).wallet as Balance).balance,
    '900',
  );

  for (const who of [admin, member]) {
    const r = await api(`/orgs/${org}/members/${who.id}`, { method: 'DELETE', token: owner.token });
    assert.equal(r.status, 200, r.text);
  }
  const refusals = [
    // A removed member asks about an instant when they were one: their old allowance and the wallet.
    [member.token, `/orgs/${org}/balance?at=${at}`],
    [member.token, `/orgs/${org}/lots?at=${at}&account=allowance`],
    [member.token, `/orgs/${org}/lots?at=${at}`],
    // A removed admin, about an instant when they were one.
    [admin.token, `/orgs/${org}/balance?at=${at}`],
    [admin.token, `/orgs/${org}/lots?at=${at}&account=wallet`],
    // The owner of another organisation, and anyone asking about one that does not exist.
    [other.token, `/orgs/${org}/balance?at=${at}`],
    [other.token, `/orgs/${org}/lots?at=${at}`],
    [other.token, `/orgs/${crypto.randomUUID()}/balance?at=${at}`],
    [other.token, `/orgs/${crypto.randomUUID()}/lots?at=${at}`],
  ] as const;
  const shapes = new Set<string>();
  for (const [token, path] of refusals) {
    const r = await api(path, { token });
    assert.equal(r.status, 404, `${path}: ${r.text}`);
    assert.equal(r.body.data, undefined);
    const { code, message, details } = r.body.error as { code: string; message: string; details?: unknown };
    assert.equal(code, 'ORG_NOT_FOUND');
    assert.doesNotMatch(JSON.stringify(details ?? {}), /role|balance|wallet/);
    shapes.add(`${code} ${message.replace(/[0-9a-f-]{36}/g, 'ID')}`);
  }
  assert.equal(shapes.size, 1, `one answer whether the organisation exists or not: ${[...shapes].join(' | ')}`);

  // The removed admin invited back as a member sees their own allowance only, as of the instant they were an admin too.
  await join(owner.token, org, admin, 'member');
  const back = await api(`/orgs/${org}/balance?at=${at}`, { token: admin.token });
  assert.equal(back.status, 200, back.text);
  assert.equal(dataOf(back).wallet, null, 'a member now: no wallet, whatever the instant');
  const wallet = await api(`/orgs/${org}/lots?at=${at}`, { token: admin.token });
  assert.equal(wallet.status, 403);
  assert.equal(wallet.body.data, undefined);
  // Another organisation's owner reads their own wallet, never this one's, whatever the path says.
  assert.equal(
    (dataOf(await api(`/orgs/${theirs}/balance?at=${at}`, { token: other.token })).wallet as Balance).balance,
    '50',
  );
});

Deno.test('?at= at the edges of time and text is refused as 400 naming at, never 5xx, with nothing of it in the Postgres log', async () => {
  const owner = await person('owner');
  const org = await school(owner, [], 'allowance', '10');
  const own = await userToken(await newUser()); // the credits routes, so neither caller meets the rate limit
  const tokenOf = (path: string) => path.startsWith('/orgs') ? owner.token : own;
  const serverLog = `${(await testDb`show data_directory`)[0].data_directory}/server.log`;
  const logStart = (await Deno.stat(serverLog)).size;
  const refused = [
    '0001-01-01T00:00:00Z',
    '4713-01-01T00:00:00Z BC',
    '-4713-11-24T00:00:00Z',
    'infinity',
    '-infinity',
    'epoch',
    'now',
    '10000-01-01T00:00:00Z',
    '9999-12-31T23:59:59Z',
    '2026-06-30T23:59:60Z',
    '2026-01-01T24:00:00Z',
    '2026-01-01t00:00:00z',
    '2026-01-01 00:00:00Z',
    '2026-01-01T00:00:00+14:01',
    '2026-01-01T00:00:00-12:01:00',
    '2026-01-01T00:00:00+1400',
    '2026-02-30T00:00:00Z',
    '2026-01-01T00:00:00%00Z',
    '2026-01-01T00:00:00Z%00',
    '%ED%A0%80',
    '2026-01-01T00:00:00.%ED%A0%80Z',
    '%EF%BF%BF',
    'x'.repeat(8000),
  ];
  for (const at of refused) {
    for (
      const path of [
        `/credits/balance?at=${at}`,
        `/credits/lots?at=${at}`,
        `/orgs/${org}/balance?at=${at}`,
        `/orgs/${org}/lots?at=${at}`,
      ]
    ) {
      const r = await api(path, { token: tokenOf(path) });
      assert.equal(r.status, 400, `${path.slice(0, 80)}: ${r.text.slice(0, 200)}`);
      assert.equal((r.body.error as { field?: string }).field, 'at', path.slice(0, 80));
    }
  }
  // Offsets to ±14:00 and -00:00 are instants; two `at`s answer the first, as every query parameter.
  for (
    const [at, asOf] of [
      ['2026-01-01T00:00:00%2B14:00', '2025-12-31T10:00:00.000Z'],
      ['2026-01-01T00:00:00-12:00', '2026-01-01T12:00:00.000Z'],
      ['2026-01-01T00:00:00-00:00', '2026-01-01T00:00:00.000Z'],
      ['1970-01-01T00:00:00Z&at=2026-01-01T00:00:00Z', '1970-01-01T00:00:00.000Z'],
    ]
  ) {
    for (const path of [`/credits/balance?at=${at}`, `/orgs/${org}/balance?at=${at}`]) {
      const r = await api(path, { token: tokenOf(path) });
      assert.equal(r.status, 200, `${path}: ${r.text}`);
      assert.equal(dataOf(r).as_of, asOf, path);
    }
  }
  const file = await Deno.open(serverLog);
  await file.seek(logStart, Deno.SeekMode.Start);
  const log = new TextDecoder().decode(await new Response(file.readable).arrayBuffer());
  assert.deepEqual(
    log.split('\n').filter((l) => / (ERROR|STATEMENT|DETAIL): /.test(l) && !/ ERROR: {2}[A-Z_]+$/.test(l)),
    [],
  );
});

Deno.test('as of the instant of a movement it is in, a microsecond before it is not; a hold placed and released at once reserves only between', async () => {
  const s = await student('1000');
  const token = s.token;
  const placed = await api('/credits/holds', { token, headers: key(), body: { amount: '300', ttl_seconds: 900 } });
  assert.equal(placed.status, 201, placed.text);
  const hold = String(dataOf(placed).hold_id);
  const released = await api(`/credits/holds/${hold}/release`, { token, headers: key(), body: {} });
  assert.equal(released.status, 200, released.text);
  assert.equal((await spendCredits(token, 7)).status, 201);
  const [h] = await testDb<{ placed: string; done: string }[]>`
    select to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as placed,
           to_char(finished_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as done
    from billing.holds where id = ${hold}`;
  const [charge] = await testDb<{ at: string; before: string }[]>`
    select to_char(e.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as at,
           to_char((e.created_at - interval '1 microsecond') at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as before
    from billing.entries e join billing.accounts a on a.id = e.account_id
    where a.user_id = ${s.id} and e.amount < 0 and e.balance_after is not null order by e.id desc limit 1`;
  const at = async (instant: string) =>
    dataOf(await api(`/credits/balance?at=${instant}`, { token })) as unknown as Balance;
  assert.equal((await at(h.placed)).held, '300', 'as of the instant the hold was placed it reserves');
  assert.equal((await at(h.done)).held, '0', 'as of the instant it was released it reserves nothing');
  assert.equal((await at(charge.before)).balance, '1000', 'a microsecond before the charge');
  assert.equal((await at(charge.at)).balance, '993', 'at the charge');
  const live = dataOf(await api('/credits/balance', { token })) as unknown as Balance;
  const now = await at(await instant());
  assert.deepEqual([now.balance, now.held, now.available], [live.balance, live.held, live.available]);
});

Deno.test('ordinary charges, holds, captures and releases record no hold resizes or lot changes (the triggers stay off the hot path)', async () => {
  const s = await student('1000');
  const token = s.token;
  const count = async () =>
    (await testDb<{ n: number }[]>`
      select (select count(*) from billing.hold_resizes r join billing.holds h on h.id = r.hold_id
              join billing.accounts a on a.id = h.account_id where a.user_id = ${s.id})::int
           + (select count(*) from billing.lot_changes c join billing.lots l on l.id = c.lot_id
              join billing.accounts a on a.id = l.account_id where a.user_id = ${s.id})::int as n`)[0].n;
  for (let i = 0; i < 5; i++) {
    assert.equal((await spendCredits(token, 3)).status, 201);
    const a = await api('/credits/holds', { token, headers: key(), body: { amount: '20', ttl_seconds: 900 } });
    assert.equal(a.status, 201, a.text);
    const cap = await api(`/credits/holds/${dataOf(a).hold_id}/capture`, {
      token,
      headers: key(),
      body: { amount: '5' },
    });
    assert.equal(cap.status, 200, cap.text);
    const b = await api('/credits/holds', { token, headers: key(), body: { amount: '20', ttl_seconds: 900 } });
    assert.equal(
      (await api(`/credits/holds/${dataOf(b).hold_id}/release`, { token, headers: key(), body: {} })).status,
      200,
    );
  }
  assert.equal(await count(), 0);
});

Deno.test('an organisation’s wallet as of the instant after each move (allowance, spending, a sponsor code issued and voided, a member removed) is what its admin saw then, and its lots sum to it', async () => {
  const [owner, member] = [await person('owner'), await person('member')];
  const org = await school(owner, [member], 'allowance', '1000');
  const seen: { at: string; wallet: { balance: string; held: string; available: string } }[] = [];
  const snap = async () => seen.push({ at: await instant(), wallet: await walletOf(owner.token, org) });
  const ok = (r: { status: number; text: string }, status = 201) => assert.equal(r.status, status, r.text);
  await snap();
  ok(
    await api(`/orgs/${org}/allowances`, {
      token: owner.token,
      headers: key(),
      body: { amount: '120', user_id: member.id },
    }),
  );
  await snap();
  ok(await usage(member.token));
  await snap();
  const code = await api(`/orgs/${org}/sponsor-codes`, {
    token: owner.token,
    headers: key(),
    body: { credits: '50', user_id: member.id },
  });
  ok(code);
  await snap();
  ok(await api(`/orgs/${org}/sponsor-codes/${dataOf(code).id}`, { method: 'DELETE', token: owner.token }), 200);
  await snap();
  ok(await api(`/orgs/${org}/members/${member.id}`, { method: 'DELETE', token: owner.token }), 200);
  await snap();
  for (const s of seen) {
    const r = await api(`/orgs/${org}/balance?at=${s.at}`, { token: owner.token });
    assert.equal(r.status, 200, r.text);
    const w = dataOf(r).wallet as Balance;
    assert.deepEqual([w.balance, w.held, w.available], [s.wallet.balance, s.wallet.held, s.wallet.available], s.at);
    const lots =
      (dataOf(await api(`/orgs/${org}/lots?at=${s.at}&limit=200`, { token: owner.token })) as unknown as LotPage)
        .items;
    const sum = lots.reduce((t, l) => t + Number(l.remaining), 0);
    assert.equal(sum, Number(w.balance), `lots as of ${s.at} sum to the wallet`);
  }
});

Deno.test('as of the instants around an expiry sweep that a hold gives way to, and a refund after it, the account is what it showed then', async () => {
  const s = await student();
  const token = s.token;
  const co = await startCheckout(token, 'plus'); // 24,990 paid and a 1,249.5 promotional bonus that expires
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });
  const snaps: Snapshot[] = [];
  const snap = async () => snaps.push({ at: await instant(), ...(await live(token)) });
  assert.equal((await spendCredits(token, 200)).status, 201); // from the bonus first
  await snap();
  // A hold as large as everything but 100 of the paid credits: the bonus's expiry takes from it.
  const placed = await api('/credits/holds', { token, headers: key(), body: { amount: '25900', ttl_seconds: 900 } });
  assert.equal(placed.status, 201, placed.text);
  await snap();
  const [{ id: bonus }] = await testDb`select l.id::text from billing.lots l
    where l.purchase_id = ${co.purchase_id} and l.category = 'promotional'`;
  await backdateLot(bonus);
  await testDb`select billing.expire_lots()`;
  await snap();
  const gave = await testDb`select 1 from billing.hold_resizes where hold_id = ${String(dataOf(placed).hold_id)}`;
  assert.equal(gave.length, 1, 'the hold gave way to the expiry');
  const r = await api(`/credits/holds/${dataOf(placed).hold_id}/capture`, {
    token,
    headers: key(),
    body: { amount: '10' },
  });
  assert.equal(r.status, 200, r.text);
  await snap();
  await emulator(`/_emulator/charges/${await chargeOf(co.session_id)}/refund`, { amount: 500 });
  await snap();
  await assertSnapshots(token, snaps);
});

Deno.test('a cursor made from another account’s lot pages only the caller’s own lots, as of any instant', async () => {
  const a = await student('500');
  const b = await student('300');
  const at = await instant();
  const [{ id }] = await testDb<{ id: string }[]>`select l.id::text from billing.lots l
    join billing.accounts x on x.id = l.account_id where x.user_id = ${a.id}`;
  const mine = (dataOf(await api(`/credits/lots?at=${at}`, { token: b.token })) as unknown as LotPage).items;
  for (const position of [String(BigInt(id) + 1n), String(BigInt(id) + 1000n), '9223372036854775807']) {
    const cursor = encodeCursor(position);
    const r = await api(`/credits/lots?at=${at}&cursor=${cursor}`, { token: b.token });
    assert.equal(r.status, 200, r.text);
    const ids = (dataOf(r) as unknown as LotPage).items.map((l) => l.id);
    assert.ok(!ids.includes(id), 'never the other account’s lot');
    assert.ok(ids.every((x) => mine.some((l) => l.id === x)), 'only the caller’s own lots');
  }
});

Deno.test('a hold placed between a lot’s expiry and its sweep, then captured: as of each instant after the sweep, the account is what it showed then', async () => {
  const s = await student();
  const token = s.token;
  const co = await startCheckout(token, 'plus');
  await emulator(`/_emulator/checkout/sessions/${co.session_id}/pay`, { outcome: 'succeeded' });
  const [{ id: bonus }] = await testDb`select l.id::text from billing.lots l
    where l.purchase_id = ${co.purchase_id} and l.category = 'promotional'`;
  await backdateLot(bonus); // expired, not yet swept
  const placed = await api('/credits/holds', { token, headers: key(), body: { amount: '24000', ttl_seconds: 900 } });
  assert.equal(placed.status, 201, placed.text);
  const snaps: Snapshot[] = [];
  const snap = async () => snaps.push({ at: await instant(), ...(await live(token)) });
  await testDb`select billing.expire_lots()`;
  await snap();
  const r = await api(`/credits/holds/${dataOf(placed).hold_id}/capture`, {
    token,
    headers: key(),
    body: { amount: '24000' },
  });
  assert.equal(r.status, 200, r.text);
  await snap();
  await assertSnapshots(token, snaps);
});
