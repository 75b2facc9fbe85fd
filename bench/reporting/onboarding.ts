// The onboarding burst (bench/reporting/hour.ts): a school's students arrive at once. BENCH_REPORTING_ONBOARD
// (default 2,000) new students join a school by invitation (new auth.users rows, new accounts and
// allowance accounts), the school buys a package through Checkout (the Stripe emulator pays it and
// delivers the signed webhook) and its wallet funds an allowance for each, and each student is
// given credits ten times (billing.grant_credits, each student's grants in a
// transaction of their own, four at a time, as an admin tool would send them): new accounts,
// grants, lots and moves, the writes a report's tail must keep besides usage.
import postgres from 'postgres';
import { importJWK, SignJWT } from 'jose';
import { fixtures } from '../fixtures.ts';

export const onboard = Number(Deno.env.get('BENCH_REPORTING_ONBOARD') ?? 2_000);
const grantsEach = 10;

/** Rolls the credit ledger up to its horizon as the minute job does, and today's events half. */
export async function rollUpToHorizon(sql: postgres.Sql) {
  for (;;) {
    const [{ w, h }] =
      await sql`select billing.roll_up_ledger() as w, billing.ledger_horizon() - interval '5 seconds' as h`;
    if (w !== null && w >= h) break;
  }
  await sql`select billing.refresh_revenue_rollup((now() at time zone 'UTC')::date)`;
}

/** Writes the burst; returns how many grants it made. */
export async function onboardSchool(sql: postgres.Sql, tag: string): Promise<number> {
  const { orgWithMembers } = fixtures(sql, tag);
  const school = await orgWithMembers('allowance', onboard);
  await schoolBuys(sql, school.owner, school.org, tag);
  await sql`select billing.fund_allowances(${school.owner}, ${school.org}, null, 1000, ${`${tag}:onboard-allowances`})`;
  const pool = postgres(Deno.env.get('SUPABASE_DB_URL') ?? '', { max: 4, onnotice: () => {}, prepare: false });
  try {
    let next = 0;
    await Promise.all(Array.from({ length: 4 }, async () => {
      for (let i = next++; i < school.users.length; i = next++) {
        await pool`select count(billing.grant_credits(${school.users[i]}, 10, 'promo_grant',
          ${`${tag}:onboard:${school.users[i]}:`} || k, null, null, null, '{"category": "promotional"}'))
          from generate_series(1, ${grantsEach}) k`;
      }
    }));
  } finally {
    await pool.end();
  }
  return school.users.length * grantsEach;
}

/** The school's owner buys a package for the school through Checkout; returns once it is paid. */
async function schoolBuys(sql: postgres.Sql, owner: string, org: string, tag: string) {
  const base = Deno.env.get('SUPABASE_URL') ?? '';
  const jwk = JSON.parse(await Deno.readTextFile(`${Deno.env.get('LOCAL_AUTH_DIR')}/private.jwk.json`));
  const token = await new SignJWT({ role: 'authenticated', aud: 'authenticated', iss: `${base}/auth/v1` })
    .setProtectedHeader({ alg: 'ES256', kid: jwk.kid, typ: 'JWT' }).setSubject(owner).setIssuedAt().setExpirationTime(
      '1h',
    )
    .sign(await importJWK(jwk, 'ES256'));
  const res = await fetch(`${base}/functions/v1/checkout/sessions`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${token}`,
      'content-type': 'application/json',
      'idempotency-key': `${tag}:school-buys`,
    },
    body: JSON.stringify({ package_id: 'plus', org_id: org }),
  });
  const body = await res.json();
  if (res.status !== 201) throw new Error(`the school's checkout: ${res.status} ${JSON.stringify(body)}`);
  const { purchase_id, session_id } = body.data as { purchase_id: string; session_id: string };
  const paid = await fetch(`${Deno.env.get('STRIPE_API_BASE')}/_emulator/checkout/sessions/${session_id}/pay`, {
    method: 'POST',
    body: JSON.stringify({ outcome: 'succeeded' }),
  });
  if (!paid.ok) throw new Error(`the emulator's payment: ${paid.status} ${await paid.text()}`);
  for (let i = 0; i < 200; i++) {
    const [p] = await sql`select status from billing.purchases where id = ${purchase_id}`;
    if (p?.status === 'paid') return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("the school's purchase was not paid within 10 s");
}
