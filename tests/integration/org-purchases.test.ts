// An organisation buys credits through Stripe Checkout like a student: the credits land in its
// wallet, the receipt names it, and refunds and disputes take them back from wherever they were
// moved (the wallet, members' allowances), into debt only for what was already spent.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, testDb } from '../support/helpers.ts';
import { key, person, school, usage, verifyOrg, walletOf } from '../support/orgs.ts';
import { chargeOf, emulator } from '../support/purchases.ts';

const checkout = (token: string, body: Record<string, unknown>) =>
  api('/checkout/sessions', { token, body, headers: key() });
const code = (r: { body: { error?: unknown } }) => (r.body.error as { code: string }).code;

Deno.test("an organisation's admin buys credits for its wallet; members and outsiders cannot", async () => {
  const [owner, member, outsider] = await Promise.all(['owner', 'member', 'outsider'].map(person));
  const org = await school(owner, [member], 'allowance', null);

  const notAdmin = await checkout(member.token, { package_id: 'mini', org_id: org });
  assert.equal(notAdmin.status, 403, notAdmin.text);
  assert.equal(code(notAdmin), 'ORG_FORBIDDEN');
  const stranger = await checkout(outsider.token, { package_id: 'mini', org_id: org });
  assert.equal(stranger.status, 404, stranger.text);
  assert.equal(code(stranger), 'ORG_NOT_FOUND');
  const keepCard = await checkout(owner.token, { package_id: 'mini', org_id: org, save_card: true });
  assert.equal(keepCard.status, 400, keepCard.text);
  assert.equal(code(keepCard), 'VALIDATION_FAILED');
  const [{ n }] = await testDb`select count(*)::int as n from billing.purchases where org_id = ${org}`;
  assert.equal(n, 0, 'a refused checkout leaves no purchase');

  const co = await checkout(owner.token, { package_id: 'plus', org_id: org });
  assert.equal(co.status, 201, co.text);
  const { session_id, purchase_id } = co.body.data as { session_id: string; purchase_id: string };
  // The owner's own open checkout for the same package is a separate purchase.
  const own = await checkout(owner.token, { package_id: 'plus' });
  assert.notEqual((own.body.data as { purchase_id: string }).purchase_id, purchase_id);

  await emulator(`/_emulator/checkout/sessions/${session_id}/pay`, { outcome: 'succeeded' });
  assert.deepEqual(await walletOf(owner.token, org), { balance: '26239.5', held: '0', available: '26239.5' });
  const mine = await api('/credits/balance', { token: owner.token });
  assert.equal((mine.body.data as { balance: string }).balance, '0', "the buyer's own account gets nothing");
  const status = await api(`/checkout/sessions/${purchase_id}`, { token: owner.token });
  assert.equal((status.body.data as { status: string }).status, 'paid');

  const [receipt] = await testDb`select user_id, payload from billing.notification_outbox
                                 where dedupe_key = ${'receipt:' + purchase_id}`;
  assert.equal(receipt.user_id, owner.id, 'the receipt goes to the admin who paid');
  assert.equal(receipt.payload.org_name, 'Lakeside School', 'and names the organisation');
  const lots = await testDb`select l.category, trim_scale(l.cost_cents)::text as cost_cents from billing.lots l
                            join billing.accounts a on a.id = l.account_id
                            where l.purchase_id = ${purchase_id} and a.org_id = ${org} and a.member_id is null
                            order by l.category`;
  assert.deepEqual(lots.map((l) => [l.category, l.cost_cents]), [['paid', '2499'], ['promotional', '0']]);

  const ledger = await api(`/orgs/${org}/ledger`, { token: owner.token });
  assert.equal(ledger.status, 200, ledger.text);
  const kinds = (ledger.body.data as { items: { kind: string }[] }).items.map((e) => e.kind).sort();
  assert.deepEqual(kinds, ['promo_grant', 'purchase']);
  await assertLedgerInvariants();
});

Deno.test("a refund and a lost dispute take an organisation's credits back from its wallet, into debt", async () => {
  const [owner, ada, bo] = await Promise.all(['owner', 'ada', 'bo'].map(person));
  const org = await school(owner, [ada, bo], 'allowance', null);
  await verifyOrg(org); // its wallet answers for its purchases
  const co = await checkout(owner.token, { package_id: 'mini', org_id: org });
  const { session_id } = co.body.data as { session_id: string };
  await emulator(`/_emulator/checkout/sessions/${session_id}/pay`, { outcome: 'succeeded' });
  assert.equal((await walletOf(owner.token, org)).balance, '5000');

  // 2,000 each to two members: the wallet keeps 1,000; a member spends from hers.
  const funded = await api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount: '2000' }, headers: key() });
  assert.equal(funded.status, 201, funded.text);
  assert.equal((await usage(ada.token)).status, 201);

  // A refund of 1.00 of 5.00 takes back 1,000 credits: all the wallet has.
  const charge = await chargeOf(session_id);
  await emulator(`/_emulator/charges/${charge}/refund`, { amount: 100 });
  assert.equal((await walletOf(owner.token, org)).balance, '0');

  // The rest is disputed and lost: the 4,000 went to the members' allowances and is taken back
  // from there (the credits follow their purchase); the wallet owes only what Ada spent (3).
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'open' });
  await emulator(`/_emulator/charges/${charge}/dispute`, { outcome: 'lost' });
  assert.deepEqual(await walletOf(owner.token, org), { balance: '-3', held: '0', available: '-3' });
  const allowances = await testDb`select trim_scale(a.balance)::text as balance from billing.accounts a
                                  where a.org_id = ${org} and a.member_id is not null`;
  assert.deepEqual(allowances.map((a) => a.balance), ['0', '0']);
  const refused = await api(`/orgs/${org}/allowances`, { token: owner.token, body: { amount: '1' }, headers: key() });
  assert.equal(refused.status, 402, 'a wallet in debt funds nobody');

  // The next purchase pays the debt first.
  const again = await checkout(owner.token, { package_id: 'starter', org_id: org });
  await emulator(`/_emulator/checkout/sessions/${(again.body.data as { session_id: string }).session_id}/pay`, {
    outcome: 'succeeded',
  });
  assert.equal((await walletOf(owner.token, org)).balance, '9987');

  // The platform's numbers: the organisation's money in revenue_metrics, and its member's spending.
  const [{ metrics }] =
    await testDb`select billing.revenue_metrics(now() - interval '1 hour', now() + interval '1 minute') as metrics`;
  const mine = (metrics.organisations as Record<string, unknown>[]).find((o) => o.org_id === org);
  assert.ok(mine, 'the organisation is in revenue_metrics');
  assert.deepEqual(
    [mine.gmv_cents, mine.refunds_cents, mine.disputes_lost_cents, mine.active_members, mine.members],
    [500 + 999, 100, 400, 1, 2],
  );
  assert.equal(
    mine.net_revenue_cents,
    1499 - 100 - 400 - (mine.stripe_fees_cents as number),
    'net = GMV − refunds − lost disputes − Stripe fees',
  );
  assert.equal(Number(mine.arpu_cents), mine.net_revenue_cents, 'ARPU per member who spent');
  await assertLedgerInvariants();
});
