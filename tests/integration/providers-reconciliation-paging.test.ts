// The providers' reconciliation within edge limits, against the real Stripe emulator: a day with
// more of one provider's charges than one Stripe page is read page by page (202 until done)
// and every mismatch is found; a run whose worker dies after a page resumes from its cursor and
// ends with the same result; the scheduled call (no date) does nothing once the day is done.
import assert from 'node:assert/strict';
import { adminToken, api, env, functionsUrl, spawnGateway, testDb } from '../support/helpers.ts';
import { emulator, emulatorUrl } from '../support/purchases.ts';
import { newProvider, paidPayment } from '../support/providers.ts';

const admin = await adminToken();
const today = () => new Date().toISOString().slice(0, 10);

type Mismatch = {
  kind: string;
  provider_id: string;
  expected_cents: number | null;
  actual_cents: number | null;
  payment_id: string | null;
  stripe_ids: string[];
};
type Result = { date: string; mismatches: Mismatch[] };

// One provider's day: a payment whose fee Stripe changed, and 105 more charges for it.
const duplicates = 105;
const p = await newProvider();
const { pay, charge } = await paidPayment(p, 1_000);
const dupIds: string[] = [];
for (let i = 0; i < duplicates; i++) {
  const res = await fetch(`${emulatorUrl}/_emulator/charges/${charge}/duplicate`, { method: 'POST' });
  dupIds.push((await res.json()).id);
}
await emulator(`/_emulator/charges/${charge}/tamper`, { application_fee_amount: 29 });

const run = (base: string, body: unknown) =>
  fetch(`${base}/providers/reconciliation/run`, {
    method: 'POST',
    headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });

/** Calls the run until it answers 200; returns the result and each 202's progress. */
async function runToEnd(base = functionsUrl) {
  const progress: { pages: number; phase: string }[] = [];
  for (let call = 0; call < 500; call++) {
    const res = await run(base, { date: today() });
    const body = await res.json();
    if (res.status === 200) return { result: body.data as Result, progress };
    assert.equal(res.status, 202, JSON.stringify(body));
    assert.equal(res.headers.get('retry-after'), '1');
    assert.equal(body.data.status, 'running');
    progress.push(body.data);
  }
  throw new Error('the reconciliation never finished');
}

/** The provider's mismatches, in a stable order. */
const mine = (r: Result) =>
  r.mismatches.filter((m) => m.provider_id === p.id)
    .map((m) => ({ ...m, stripe_ids: [...m.stripe_ids].sort() }))
    .sort((x, y) => `${x.kind}${x.stripe_ids}`.localeCompare(`${y.kind}${y.stripe_ids}`));

function assertEveryMismatch(found: Mismatch[]) {
  const byKind = Object.groupBy(found, (m) => m.kind);
  assert.deepEqual(Object.keys(byKind).sort(), ['balance_mismatch', 'duplicate_charge', 'fee_mismatch']);
  const dups = byKind.duplicate_charge ?? [];
  assert.equal(dups.length, duplicates, 'every duplicate, across Stripe pages, once');
  assert.deepEqual(dups.map((m) => m.stripe_ids.find((id) => id !== charge)).sort(), [...dupIds].sort());
  assert.ok(dups.every((m) => m.payment_id === pay.payment_id && m.stripe_ids.includes(charge)));
  const fee = byKind.fee_mismatch?.[0];
  assert.deepEqual([fee?.expected_cents, fee?.actual_cents], [30, 29], 'the fee of the charge on a later page');
}

/** The day's unfinished run, if any. */
const openRun = async () => {
  const [r] = await testDb`select id, pages, phase, cursor, locked_by from billing.reconciliation_progress
    where day = ${today()}::date and finished_at is null`;
  return r;
};

let uninterrupted: Mismatch[] = [];

Deno.test('more charges than a Stripe page: one page per call (202 until done), every mismatch found', async () => {
  const gw = spawnGateway({ RECONCILIATION_BUDGET_MS: '1' });
  try {
    await gw.ready();
    const { result, progress } = await runToEnd(gw.url);
    assert.ok(progress.length >= 3, `the day took ${progress.length + 1} calls`);
    assert.equal(progress[0].phase, 'charges');
    assert.ok(progress.some((s) => s.phase === 'accounts'), 'charges, fees, then the accounts');
    for (let i = 1; i < progress.length; i++) {
      assert.equal(progress[i].pages, progress[i - 1].pages + 1, 'one Stripe page per call');
    }
    uninterrupted = mine(result);
    assertEveryMismatch(uninterrupted);
  } finally {
    await gw.kill();
  }
});

Deno.test('a run whose worker dies after its first page resumes from the cursor and ends with the same result', async () => {
  const before = (await openRun())?.pages ?? 0;
  const gw = spawnGateway({ FAILPOINTS: 'reconciliation.after_page', RECONCILIATION_LEASE_SECONDS: '1' });
  try {
    await gw.ready();
    await run(gw.url, { date: today() }).then((r) => r.body?.cancel(), () => {/* the worker died */});
  } finally {
    await gw.kill();
  }
  const stopped = await openRun();
  assert.ok(stopped, 'the run is left unfinished');
  assert.equal(stopped.pages, before + 1, 'one page was saved before the worker died');
  assert.equal(stopped.phase, 'charges');
  assert.ok(stopped.cursor, 'with the Stripe cursor to resume from');
  assert.match(stopped.locked_by, /^reconcile-/, 'the dead worker still holds the run');

  await new Promise((r) => setTimeout(r, 1100)); // its lease runs out
  const { result } = await runToEnd();
  const [resumed] =
    await testDb`select pages, finished_at from billing.reconciliation_progress where id = ${stopped.id}`;
  assert.ok(resumed.finished_at, 'the same run finished');
  assert.ok(resumed.pages > stopped.pages);
  const [{ left }] =
    await testDb`select count(*)::int as left from billing.reconciliation_items where progress_id = ${stopped.id}`;
  assert.equal(left, 0, 'a finished run keeps no Stripe records');
  assertEveryMismatch(mine(result));
  assert.deepEqual(mine(result), uninterrupted);
});

Deno.test('the scheduled call (no date) reconciles yesterday once, then has nothing to do', async () => {
  const yesterday = new Date(Date.now() - 86_400_000).toISOString().slice(0, 10);
  const cron = async () => {
    for (let attempt = 0;; attempt++) {
      const r = await api('/providers/reconciliation/run', {
        headers: { authorization: `Bearer ${env('CRON_SECRET')}` },
        body: {},
      });
      // Locally every unauthenticated caller shares one address, hence one limit: wait it out.
      if (r.status !== 429 || attempt === 5) return r;
      await new Promise((ok) => setTimeout(ok, 1000 * Number(r.headers.get('retry-after') ?? 1)));
    }
  };
  const runsOfYesterday = async () =>
    (await testDb`select count(*)::int as n from billing.reconciliation_progress where day = ${yesterday}::date`)[0].n;
  let first = await cron();
  for (let i = 0; first.status === 202 && i < 100; i++) first = await cron();
  assert.equal(first.status, 200, first.text);
  const runs = await runsOfYesterday();
  const [{ open }] = await testDb`select count(*)::int as open from billing.reconciliation_progress
    where day = ${yesterday}::date and finished_at is null`;
  assert.equal(open, 0, "yesterday's run finished");
  const again = await cron();
  assert.equal(again.status, 200);
  assert.equal(await runsOfYesterday(), runs, 'no second run of a day already reconciled since it ended');
});
