// Step 1: 257 funded accounts (and 64 more for the AI, hold and batch cells) in the stack's own database, and the pids of the stack's processes
// whose CPU each cell reads (Postgres, pgbouncer, redis-server, the Redis REST bridge).
import postgres from 'postgres';
import { firstLineNumber, redisServerOn } from './procfs.ts';
import { env, otherAccounts, spreadAccounts } from './settings.ts';

/** The funded accounts (the first one is the hot account) and what measuring needs. */
export async function fixtures() {
  const db = postgres(env('SUPABASE_DB_URL'), { max: 2, onnotice: () => {}, prepare: false });
  console.error(`setting up ${spreadAccounts + 1} funded accounts …`);
  const users: string[] = (await db`
    with ins as (insert into auth.users (id) select gen_random_uuid() from generate_series(1, ${spreadAccounts + 1})
    returning id) select id from ins`).map((r) => r.id);
  const otherUsers: string[] = (await db`
    with ins as (insert into auth.users (id) select gen_random_uuid() from generate_series(1, ${otherAccounts})
    returning id) select id from ins`).map((r) => r.id);
  await db`select billing.grant_credits(u, 1000000000, 'adjustment', 'bench-fund:' || u) from unnest(${[
    ...users,
    ...otherUsers,
  ]}::uuid[]) u`;
  const [hotUser, ...spreadUsers] = users;
  // The stack's own Postgres and Redis, not other clusters on the machine (other benchmarks start some).
  const [{ data_directory: pgData }] = await db`show data_directory`;
  const postmasterPid = await firstLineNumber(`${pgData}/postmaster.pid`);
  const redisPort = new URL(env('REDIS_URL')).port;
  // The functions' own way to the database (db.ts): the pooler when DB_POOLER_URL is set.
  const functionsDbUrl = Deno.env.get('DB_POOLER_URL') || env('SUPABASE_DB_URL');
  const poolerPid = Deno.env.get('DB_POOLER_URL')
    ? await firstLineNumber(`${pgData.replace(/\/[^/]+\/?$/, '')}/pgbouncer/pgbouncer.pid`) // lib.sh's POOLER_HOME
    : 0;
  const redisPid = await firstLineNumber('.local/run/redis.pid') || await redisServerOn(redisPort);
  const bridgePid = Number(await Deno.readTextFile('.local/run/redis-bridge.pid').catch(() => '0')) || 0;
  return { db, users, otherUsers, hotUser, spreadUsers, postmasterPid, redisPid, poolerPid, bridgePid, functionsDbUrl };
}
export type Fixtures = Awaited<ReturnType<typeof fixtures>>;
