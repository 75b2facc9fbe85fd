// Packages and plans as data an operator owns (docs/pricing.md § Packages and plans), over real
// HTTP, Postgres and the Stripe emulator: an admin creates, changes and retires them; each
// version gets its own Stripe Price; a Checkout opened before a change is fulfilled at the old
// version and a subscription renews at the version it was sold at; only a current admin may
// change anything (a student reaches no catalogue route); bad input gets the error envelope and changes nothing; identical requests
// sent together make one version. Every package and plan made here is retired before its test
// ends (other tests list what is on sale).
import assert from 'node:assert/strict';
import { adminToken, api, key, newUser, student, testDb, userToken } from '../support/helpers.ts';
import { balanceOf, emulator, startCheckout, stripeApi } from '../support/purchases.ts';
import { renew, startPlan, subscribeTo } from '../support/plans.ts';

const admin = await adminToken();
const unique = () => crypto.randomUUID().slice(0, 8);

type Item = Record<string, unknown> & { id: string; version: number; stripe_price_id: string; active: boolean };

async function adminPost(path: string, body: unknown, token = admin) {
  return await api(`/admin${path}`, { token, body, headers: key() });
}

async function create(kind: 'packages' | 'plans', body: Record<string, unknown>): Promise<Item> {
  const r = await adminPost(`/${kind}`, { sort_order: 9000, reason: 'a test item', ...body });
  assert.equal(r.status, 201, r.text);
  return r.body.data as Item;
}

async function change(kind: 'packages' | 'plans', id: string, body: Record<string, unknown>): Promise<Item> {
  const r = await adminPost(`/${kind}/${id}/versions`, { reason: 'a test change', ...body });
  assert.equal(r.status, 201, r.text);
  return r.body.data as Item;
}

async function retire(kind: 'packages' | 'plans', id: string) {
  const r = await api(`/admin/${kind}/${id}/retire`, { token: admin, body: { reason: 'test done' } });
  assert.equal(r.status, 200, r.text);
  return r.body.data as Item;
}

const onSale = async (path: string, token: string) =>
  ((await api(path, { token })).body.data as { items: { id: string }[] }).items.map((p) => p.id);

Deno.test('an admin creates, changes and retires a package: each version has its Stripe Price, history stays', async () => {
  const id = `t-pack-${unique()}`;
  const student = await userToken(await newUser());
  try {
    const v1 = await create('packages', { id, name: 'Test pack', price_cents: 700, credits: '7000' });
    assert.deepEqual([v1.version, v1.price_cents, v1.credits, v1.bonus_credits, v1.active], [
      1,
      700,
      '7000',
      '0',
      true,
    ]);
    const price1 = await stripeApi(`/v1/prices/${v1.stripe_price_id}`);
    assert.deepEqual([price1.unit_amount, price1.currency, price1.type], [700, 'usd', 'one_time']);
    assert.ok((await onSale('/checkout/packages', student)).includes(id));

    const v2 = await change('packages', id, { price_cents: 900, bonus_credits: '500' });
    assert.deepEqual([v2.version, v2.price_cents, v2.credits, v2.bonus_credits], [2, 900, '7000', '500']);
    assert.notEqual(v2.stripe_price_id, v1.stripe_price_id);
    assert.equal((await stripeApi(`/v1/prices/${v2.stripe_price_id}`)).unit_amount, 900);

    const retired = await retire('packages', id);
    assert.equal(retired.active, false);
    assert.ok(!(await onSale('/checkout/packages', student)).includes(id), 'a retired package is not on sale');
    const refused = await api('/checkout/sessions', { token: student, headers: key(), body: { package_id: id } });
    assert.equal(refused.status, 404, refused.text);
    assert.equal((refused.body.error as { code: string }).code, 'PACKAGE_NOT_FOUND');
    const again = await api(`/admin/packages/${id}/retire`, { token: admin, body: { reason: 'twice' } });
    assert.deepEqual([again.status, (again.body.data as Item).replayed], [200, true], 'retiring again changes nothing');

    const catalog = (await api('/admin/catalog', { token: admin })).body.data as {
      packages: (Item & { versions: { version: number; price_cents: number }[] })[];
      changes: { item_id: string; action: string }[];
    };
    const listed = catalog.packages.find((p) => p.id === id);
    assert.deepEqual(
      listed?.versions.map((v) => [v.version, v.price_cents]),
      [[2, 900], [1, 700]],
      'every version kept',
    );
    assert.deepEqual(
      catalog.changes.filter((c) => c.item_id === id).map((c) => c.action),
      ['retired', 'changed', 'created'],
      'each change audited, newest first',
    );
  } finally {
    await api(`/admin/packages/${id}/retire`, { token: admin, body: { reason: 'cleanup' } });
  }
});

Deno.test('a Checkout opened before a price change is paid and credited at the old version; a new one sells the new', async () => {
  const id = `t-pack-${unique()}`;
  try {
    await create('packages', { id, name: 'Before', price_cents: 1000, credits: '10000' });
    const user = await newUser();
    const token = await userToken(user);
    const before = await startCheckout(token, id);
    await change('packages', id, { price_cents: 2000, credits: '25000', bonus_credits: '100' });

    const session = await stripeApi(`/v1/checkout/sessions/${before.session_id}`);
    assert.equal(session.amount_total, 1000, 'the open session still asks the old price');
    await emulator(`/_emulator/checkout/sessions/${before.session_id}/pay`, { outcome: 'succeeded' });
    const status = await api(`/checkout/sessions/${before.purchase_id}`, { token });
    assert.equal((status.body.data as { status: string }).status, 'paid', status.text);
    assert.equal((await balanceOf(token)).balance, '10000', 'credited what version 1 said, no bonus');
    const [row] = await testDb`select price_cents, trim_scale(credits)::text as credits, package_version
      from billing.purchases where id = ${before.purchase_id}`;
    assert.deepEqual({ ...row }, { price_cents: 1000, credits: '10000', package_version: 1 });

    const after = await startCheckout(token, id);
    assert.notEqual(after.purchase_id, before.purchase_id);
    assert.equal((await stripeApi(`/v1/checkout/sessions/${after.session_id}`)).amount_total, 2000);
    const [next] =
      await testDb`select price_cents, package_version from billing.purchases where id = ${after.purchase_id}`;
    assert.deepEqual({ ...next }, { price_cents: 2000, package_version: 2 });
  } finally {
    await retire('packages', id);
  }
});

Deno.test('a live subscription renews at the price and credits it was sold at; new subscribers get the new version', async () => {
  const id = `t_plan_${unique()}`;
  try {
    const v1 = await create('plans', { id, name: 'Test plan', price_cents: 1500, interval: 'month', credits: '5000' });
    assert.equal((await stripeApi(`/v1/prices/${v1.stripe_price_id}`)).type, 'recurring');
    const user = await newUser();
    const token = await userToken(user);
    const sub = await subscribeTo(token, id);

    const v2 = await change('plans', id, { price_cents: 2500, credits: '9000' });
    assert.deepEqual([v2.version, v2.version_id], [2, `${id}.v2`]);
    const listed = ((await api('/checkout/plans', { token })).body.data as { items: Item[] }).items.find((p) =>
      p.id === id
    );
    assert.deepEqual([listed?.version, listed?.price_cents], [2, 2500], 'students see the version on sale');

    const { invoice } = await renew(sub.stripe_subscription);
    const grants = await testDb`select invoice_id, plan_id, amount_cents, trim_scale(credits)::text as credits
      from billing.plan_grants where subscription_id = ${sub.subscription_id} order by granted_at`;
    assert.deepEqual(grants.map((g) => [g.plan_id, g.amount_cents, g.credits]), [[id, 1500, '5000'], [
      id,
      1500,
      '5000',
    ]]);
    assert.equal(grants[1].invoice_id, invoice);
    const mine = (await api('/checkout/subscription', { token })).body.data as {
      plan_id: string;
      plan_version: number;
    };
    assert.deepEqual([mine.plan_id, mine.plan_version], [id, 1]);
    const same = await api('/checkout/subscription/change', { token, headers: key(), body: { plan_id: id } });
    assert.equal(same.status, 200, 'the same plan at a newer price is no change');

    const newcomer = await userToken(await newUser());
    const started = await startPlan(newcomer, id);
    assert.equal((await stripeApi(`/v1/checkout/sessions/${started.session_id}`)).amount_total, 2500);
    const [row] = await testDb`select plan_id from billing.subscriptions where id = ${started.subscription_id}`;
    assert.equal(row.plan_id, `${id}.v2`);
  } finally {
    await retire('plans', id);
  }
});

Deno.test('a plan version may name the models its credits pay for; a later version clears the list with null', async () => {
  const id = `t_plan_${unique()}`;
  const v1 = await create('plans', {
    id,
    name: 'Tutor',
    price_cents: 900,
    interval: 'month',
    credits: '1000',
    applies_to: ['claude-haiku-4-5', 'gpt-4o-mini*'],
  });
  assert.deepEqual(v1.applies_to, ['claude-haiku-4-5', 'gpt-4o-mini*']);
  const v2 = await change('plans', id, { price_cents: 1000 });
  assert.deepEqual(v2.applies_to, ['claude-haiku-4-5', 'gpt-4o-mini*'], 'a change keeps the list unless it names one');
  const v3 = await change('plans', id, { applies_to: null });
  assert.equal(v3.applies_to, null);
  const bad = await adminPost(`/plans/${id}/versions`, { applies_to: ['no spaces allowed'], reason: 'bad' });
  assert.equal(bad.status, 400, bad.text);
  await retire('plans', id);
});

Deno.test('a retired plan takes no new subscriber', async () => {
  const id = `t_plan_${unique()}`;
  await create('plans', { id, name: 'Gone', price_cents: 900, interval: 'year', credits: '1000', rollover: 'none' });
  await retire('plans', id);
  const r = await api('/checkout/subscriptions', {
    token: await userToken(await newUser()),
    headers: key(),
    body: { plan_id: id },
  });
  assert.equal(r.status, 404, r.text);
  assert.equal((r.body.error as { code: string }).code, 'PLAN_NOT_FOUND');
});

Deno.test('catalogue routes refuse a student (403), a demoted admin (403) and a deleted admin (401), changing nothing', async () => {
  const id = `t-pack-${unique()}`;
  const demoted = await adminToken();
  const deleted = await adminToken();
  await testDb`update auth.users set raw_app_meta_data = '{}' where id = ${
    JSON.parse(atob(demoted.split('.')[1])).sub
  }`;
  await testDb`delete from auth.users where id = ${JSON.parse(atob(deleted.split('.')[1])).sub}`;
  const body = { id, name: 'Nope', price_cents: 100, credits: '1', reason: 'no' };
  for (const [token, status] of [[await userToken(await newUser()), 403], [demoted, 403], [deleted, 401]] as const) {
    for (
      const [path, b] of [['/packages', body], ['/packages/starter/versions', { price_cents: 1, reason: 'x' }], [
        '/packages/starter/retire',
        { reason: 'x' },
      ], ['/plans/pro_monthly/retire', { reason: 'x' }]] as const
    ) {
      const r = await adminPost(path, b, token);
      assert.equal(r.status, status, `${path}: ${r.text}`);
      assert.ok((r.body.error as { code: string }).code, 'the error envelope');
    }
    assert.equal((await api('/admin/catalog', { token })).status, status);
  }
  const [n] = await testDb`select count(*)::int as n from billing.credit_packages where id = ${id}`;
  assert.equal(n.n, 0);
  const [starter] = await testDb`select active, version from billing.credit_packages where id = 'starter'`;
  assert.deepEqual({ ...starter }, { active: true, version: 1 });
});

Deno.test('bad input gets the error envelope and changes nothing', async () => {
  const id = `t-pack-${unique()}`;
  const plan = `t_plan_${unique()}`;
  const changes = async () => (await testDb`select count(*)::int as n from billing.catalog_changes`)[0].n;
  try {
    await create('packages', { id, name: 'Kept', price_cents: 500, credits: '5000' });
    const before = await changes();
    const cases: [string, unknown, number, string][] = [
      ['/packages', { id: 'Bad Id', name: 'x', price_cents: 1, credits: '1', reason: 'r' }, 400, 'VALIDATION_FAILED'],
      [
        '/packages',
        { id: `${id}-x`, name: 'x\u0000', price_cents: 1, credits: '1', reason: 'r' },
        400,
        'VALIDATION_FAILED',
      ],
      [
        '/packages',
        { id: `${id}-x`, name: 'x', price_cents: 1.5, credits: '1', reason: 'r' },
        400,
        'VALIDATION_FAILED',
      ],
      [
        '/packages',
        { id: `${id}-x`, name: 'x', price_cents: 100, credits: '-1', reason: 'r' },
        400,
        'VALIDATION_FAILED',
      ],
      ['/packages', { id: `${id}-x`, name: 'x', price_cents: 100, credits: '1' }, 400, 'VALIDATION_FAILED'],
      ['/packages', { id, name: 'Other', price_cents: 600, credits: '5000', reason: 'r' }, 409, 'CATALOG_ITEM_EXISTS'],
      [`/packages/${id}/versions`, { reason: 'nothing to change' }, 400, 'VALIDATION_FAILED'],
      [`/packages/${id}/versions`, { price_cents: 600, extra: 1, reason: 'r' }, 400, 'VALIDATION_FAILED'],
      [`/packages/no-such-${unique()}/versions`, { price_cents: 600, reason: 'r' }, 404, 'PACKAGE_NOT_FOUND'],
      ['/packages/%00/retire', { reason: 'r' }, 404, 'PACKAGE_NOT_FOUND'],
      [
        '/plans',
        {
          id: plan,
          name: 'x',
          price_cents: 100,
          interval: 'month',
          credits: '10',
          rollover: 'up_to_share',
          rollover_limit: '2',
          reason: 'r',
        },
        400,
        'VALIDATION_FAILED',
      ],
      [
        '/plans',
        { id: plan, name: 'x', price_cents: 100, interval: 'week', credits: '10', reason: 'r' },
        400,
        'VALIDATION_FAILED',
      ],
      [
        '/plans',
        {
          id: plan,
          name: 'x',
          price_cents: 100,
          interval: 'month',
          credits: '10',
          rollover: 'none',
          rollover_limit: '5',
          reason: 'r',
        },
        400,
        'VALIDATION_FAILED',
      ],
    ];
    for (const [path, body, status, code] of cases) {
      const r = await adminPost(path, body);
      assert.equal(r.status, status, `${path} ${JSON.stringify(body)}: ${r.text}`);
      const error = r.body.error as { code: string; message: string };
      assert.equal(error.code, code, r.text);
      assert.ok(error.message && (r.body.metadata as { requestId: string }).requestId, 'the standard envelope');
    }
    const notJson = await api('/admin/packages', {
      token: admin,
      headers: { ...key(), 'content-type': 'application/json' },
      method: 'POST',
    });
    assert.equal(notJson.status, 400);
    assert.equal(await changes(), before, 'no change recorded');
    const [kept] = await testDb`select version, price_cents from billing.credit_packages where id = ${id}`;
    assert.deepEqual({ ...kept }, { version: 1, price_cents: 500 });
    const [none] = await testDb`select count(*)::int as n from billing.plans where family = ${plan}`;
    assert.equal(none.n, 0);

    await retire('packages', id);
    const late = await adminPost(`/packages/${id}/versions`, { price_cents: 800, reason: 'r' });
    assert.deepEqual([late.status, (late.body.error as { code: string }).code], [409, 'CATALOG_ITEM_RETIRED']);
  } finally {
    await api(`/admin/packages/${id}/retire`, { token: admin, body: { reason: 'cleanup' } });
  }
});

Deno.test('identical creates sent together make one package, one version, one change', async () => {
  const id = `t-pack-${unique()}`;
  const body = { id, name: 'Twins', price_cents: 1100, credits: '11000', sort_order: 9000, reason: 'twins' };
  try {
    // Ten at once under ten keys, and five under one key.
    const sameKey = { 'idempotency-key': crypto.randomUUID() };
    const answers = await Promise.all([
      ...Array.from({ length: 10 }, () => api('/admin/packages', { token: admin, body, headers: key() })),
      ...Array.from({ length: 5 }, () => api('/admin/packages', { token: admin, body, headers: sameKey })),
    ]);
    const statuses = answers.map((r) => r.status);
    assert.ok(statuses.every((s) => s === 200 || s === 201 || s === 409), statuses.join());
    assert.equal(statuses.filter((s) => s === 201).length, 1, `one made it: ${statuses.join()}`);
    for (const r of answers.filter((r) => r.status === 409)) {
      assert.equal((r.body.error as { code: string }).code, 'IDEMPOTENCY_KEY_IN_USE', r.text); // the same key, in flight
    }
    const made = answers.filter((r) => r.status < 300).map((r) => (r.body.data as Item).stripe_price_id);
    const [saved] = await testDb`select stripe_price_id from billing.credit_packages where id = ${id}`;
    assert.ok(made.every((p) => p === saved.stripe_price_id), 'every answer names the version saved');
    const [counts] = await testDb`select
      (select count(*)::int from billing.credit_package_versions where package_id = ${id}) as versions,
      (select count(*)::int from billing.catalog_changes where item = 'package' and item_id = ${id}) as changes`;
    assert.deepEqual({ ...counts }, { versions: 1, changes: 1 });

    // Two identical changes together: one version 2.
    const change = { price_cents: 1200, reason: 'twin change' };
    const changed = await Promise.all(
      Array.from(
        { length: 6 },
        () => api(`/admin/packages/${id}/versions`, { token: admin, body: change, headers: key() }),
      ),
    );
    assert.ok(changed.every((r) => r.status === 200 || r.status === 201), changed.map((r) => r.text).join('\n'));
    const [after] = await testDb`select version, price_cents,
      (select count(*)::int from billing.credit_package_versions where package_id = ${id}) as versions
      from billing.credit_packages where id = ${id}`;
    assert.deepEqual({ ...after }, { version: 2, price_cents: 1200, versions: 2 });
  } finally {
    await api(`/admin/packages/${id}/retire`, { token: admin, body: { reason: 'cleanup' } });
  }
});

Deno.test('a student reaches no admin catalogue route, and reads only their own expiries', async () => {
  const s = await student('100');
  const other = await student('50');
  const routes: [string, unknown][] = [
    ['/admin/catalog', undefined],
    ['/admin/packages', { id: 'cheap', name: 'Cheap', price_cents: 100, credits: '100000', reason: 'mine' }],
    ['/admin/packages/mini/versions', { price_cents: 1, reason: 'mine' }],
    ['/admin/packages/mini/retire', { reason: 'mine' }],
    ['/admin/plans/student-monthly/versions', { price_cents: 1, reason: 'mine' }],
  ];
  for (const [path, body] of routes) {
    const r = await api(path, { token: s.token, body, headers: key() });
    assert.equal(r.status, 403, `${path}: ${r.text}`);
  }
  const mine = await api(`/credits/expiries?user_id=${other.id}`, { token: s.token });
  assert.ok(mine.status === 200 || mine.status === 400, mine.text);
  if (mine.status === 200) {
    const items = (mine.body.data as { items: { credits: string }[] }).items;
    assert.ok(items.every((i) => i.credits !== '50'), `another student's expiries: ${mine.text}`);
  }
});
