// A school's onboarding, the second burst of the busy-hour cell (bench/reporting/hour.ts):
// `students` new students (auth.users rows; their accounts are made by their first grant), each
// given credits `grants` times through billing.grant_credits (200 grants a transaction, as many
// requests would), then a school that buys paid credits (a Checkout paid through
// billing.sync_purchase, as Stripe's webhook does) and funds an allowance for each of them
// (billing.fund_allowances: a new allowance account and a move of lots per student).
import postgres from 'postgres';

const perTransaction = 200;

export async function onboarding(sql: postgres.Sql, tag: string, students: number, grants: number) {
  await sql`insert into auth.users (id, email) select gen_random_uuid(), ${tag} || '-' || g || '@bench.invalid'
    from generate_series(1, ${students}::int) g`;
  const total = students * grants;
  for (let start = 0; start < total; start += perTransaction) {
    await sql`select count(billing.grant_credits(u.id, 10 + g % 7, case when g % 2 = 0 then 'promo_grant' else 'purchase' end::billing.transfer_kind,
        ${tag} || ':grant:' || g, null, null, null,
        case when g % 2 = 1 then '{"category": "paid", "cost_cents": 99}' end::jsonb))
      from generate_series(${start}::int, ${Math.min(total, start + perTransaction) - 1}::int) g
      join auth.users u on u.email = ${tag} || '-' || (1 + g % ${students}) || '@bench.invalid'`;
  }
  const allowance = 100;
  const [{ admin }] =
    await sql`insert into auth.users (id, email) values (gen_random_uuid(), ${tag} || '.admin@bench.invalid')
    returning id::text as admin`;
  const [{ org }] = await sql`select (billing.create_org(${admin}, ${tag}, 'allowance', true) ->> 'id') as org`;
  await sql`insert into billing.org_members (org_id, user_id, role)
    select ${org}::uuid, u.id, 'member' from auth.users u where u.email like ${tag + '-%'}`;
  // Enough Max packages (99,990 credits each) for every allowance.
  const packages = Math.ceil(students * allowance / 99_990);
  await sql`select billing.attach_checkout_session(c.purchase_id, 'cs_' || ${tag} || g, 'https://checkout.example/' || g,
      now() + interval '1 hour'),
    billing.sync_purchase(jsonb_build_object('session_id', 'cs_' || ${tag} || g, 'session_status', 'complete',
      'payment_status', 'paid', 'amount_total', 9999, 'currency', 'usd', 'payment_intent', 'pi_' || ${tag} || g,
      'payment_intent_status', 'succeeded', 'charge_id', 'ch_' || ${tag} || g, 'amount_refunded', 0))
    from generate_series(1, ${packages}::int) g,
      lateral billing.begin_checkout(${admin}::uuid, 'max', ${tag} || '-buy-' || g, null, false, ${org}::uuid) c`;
  await sql`select billing.fund_allowances(${admin}::uuid, ${org}::uuid, null, ${allowance}, ${tag} || '-allowances')`;
}
