// Users, funding and organisations for the benchmarks that run on the local stack's database,
// made as the product makes them (members join through answer_invitation), every key under the
// run's own tag so runs never collide.
import type postgres from 'postgres';

export function fixtures(admin: postgres.Sql, tag: string) {
  /** `n` new users with addresses under `label` (members need one to answer an invitation). */
  async function newUsers(n: number, label: string): Promise<string[]> {
    const rows = await admin`
      with ins as (insert into auth.users (id, email)
        select id, ${label} || '-' || id || '@bench.invalid' from (select gen_random_uuid() as id from generate_series(1, ${n})) g
        returning id)
      select id::text from ins`;
    return rows.map((r) => r.id as string);
  }

  /** Grants each user `lots` lots of 1e9 credits (promotional, never expiring). */
  async function fundUsers(users: string[], lots = 1) {
    await admin`select billing.grant_credits(u, 1000000000, 'adjustment', ${tag} || ':fund:' || u || ':' || n,
        null, null, null, '{"category": "promotional"}') from unnest(${users}::uuid[]) u, generate_series(1, ${lots}) n`;
  }

  /** An organisation with `members` members who joined by invitation, its wallet granted 1e12 credits. */
  async function orgWithMembers(funding: 'allowance' | 'pool', members: number) {
    const [owner] = await newUsers(1, `owner-${funding}`);
    const [{ org }] = await admin`
      select billing.create_org(${owner}, ${`${tag} ${funding}`}, ${funding}, true) ->> 'id' as org`;
    await admin`select billing.grant_org_credits(${org}, 1e12, 'adjustment', ${`${tag}:org:${org}`}, 'bench', ${owner})`;
    const users = await newUsers(members, `member-${funding}`);
    await admin`insert into billing.org_invitations (org_id, email, role, token_hash, invited_by, expires_at)
      select ${org}, u.email, 'member', ${tag} || ':' || u.id, ${owner}, now() + interval '1 day'
      from auth.users u where u.id = any(${users}::uuid[])`;
    await admin`select billing.answer_invitation(u.id, u.email, ${tag} || ':' || u.id, true)
      from auth.users u where u.id = any(${users}::uuid[])`;
    return { owner, org: org as string, users };
  }

  return { newUsers, fundUsers, orgWithMembers };
}
