// Step 0, on the local stack: GET /admin/metrics (30 days, by day) over HTTP with a busy last
// hour. BENCH_REPORTING_HOUR (default 1,000,000) credit transfers dated over the last hour
// (usage on three rate cards, each with its user entry and its lot allocation; every 100th a
// promotional grant with its lot) are written with set-based SQL as the superuser, under the
// run's own keys; the credit ledger is rolled up as the minute job does (billing.roll_up_ledger,
// run after run to its horizon), then another minute of usage is charged after the watermark
// through the writer (billing.charge_usage_batch: what is dated after the watermark must be the
// writer's, which keeps today's tail for reports), the tail a request reads, and then a burst of
// BENCH_REPORTING_BURST (default 100,000) more events, not rolled up (the roll-up held from the
// minute's writes to the last timing). The report is also timed after the roll-up's first run from the
// start of the day (a fresh start). Baseline: the same request before the hour was
// written. The SQL answer must equal the raw rows (one snapshot), or the run fails.
// The rows stay in the local database (their users' balances are not kept: reset the stack's
// database after, ./scripts/dev --help).
import postgres from 'postgres';
import { importJWK, SignJWT } from 'jose';
import { env, fmt, fmtMs, median, timed } from '../lib.ts';
import { burst, hour, note, say } from './settings.ts';
import { onboard, onboardSchool, rollUpToHorizon } from './onboarding.ts';

const runs = 15;
const users = 2_000;

/** A token for a fresh admin (the claim and auth.users agree), as Supabase Auth would sign it. */
async function adminToken(sql: postgres.Sql, base: string): Promise<string> {
  const [{ id }] =
    await sql`insert into auth.users (id, raw_app_meta_data) values (gen_random_uuid(), '{"role": "admin"}')
    returning id::text`;
  const jwk = JSON.parse(await Deno.readTextFile(`${env('LOCAL_AUTH_DIR')}/private.jwk.json`));
  return await new SignJWT({
    role: 'authenticated',
    aud: 'authenticated',
    iss: `${base}/auth/v1`,
    app_metadata: { role: 'admin' },
  })
    .setProtectedHeader({ alg: 'ES256', kid: jwk.kid, typ: 'JWT' }).setSubject(id).setIssuedAt().setExpirationTime('1h')
    .sign(await importJWK(jwk, 'ES256'));
}

/** Holds the roll-up (the minute job's runs wait) until the transaction ends. */
async function held(tx: postgres.TransactionSql) {
  await tx`select pg_advisory_xact_lock(hashtext('billing.roll_up_ledger'))`;
  await tx`lock table billing.revenue_rollup in exclusive mode`;
}

/** `n` transfers of the run's users dated evenly over [from, to) (SQL expressions), in one statement per table. */
async function write(sql: postgres.TransactionSql, tag: string, n: number, from: string, to: string) {
  await sql.unsafe(`
    with u as (select array_agg(a.id order by a.id) as accounts, array_agg(l.id order by a.id) as lots
               from billing.accounts a join billing.lots l on l.account_id = a.id
               join auth.users x on x.id = a.user_id where x.email like '${tag}-%'),
    c as (select array_agg(r.id order by r.id) as cards from (select id from billing.rate_cards order by id limit 3) r),
    g as (select g, 1 + (hashint8(g) & 1048575) % ${users} as k,
            ${from} + (g - 0.5) / ${n} * (${to} - ${from}) as at, g % 100 = 0 as grant_
          from generate_series(1, ${n}) g),
    t as (
      insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key, rate_card_id, created_at)
      select case when g.grant_ then 'promo_grant' else 'usage' end::billing.transfer_kind,
        case when g.grant_ then billing.platform_account_id('promotions') else u.accounts[g.k] end,
        case when g.grant_ then u.accounts[g.k] else billing.platform_account_id('usage_revenue') end,
        ((hashint8(g.g + 7) & 65535) + 1) / 1000.0, '${tag}:' || ${from}::text || ':' || g.g,
        case when not g.grant_ then c.cards[1 + g.g % 3] end, g.at
      from g, u, c order by g.g
      returning id, kind, from_account_id, to_account_id, amount, created_at),
    e as (
      insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version, created_at)
      select t.id, case when t.kind = 'usage' then t.from_account_id else t.to_account_id end,
        case when t.kind = 'usage' then -t.amount else t.amount end, 0, t.id, t.created_at from t)
    insert into billing.lot_allocations (transfer_id, lot_id, kind, amount, created_at, cents)
    select t.id, l.id, t.kind, t.amount, t.created_at, l.cost_cents * t.amount / l.amount
    from t, u, billing.lots l where t.kind = 'usage' and l.id = u.lots[array_position(u.accounts, t.from_account_id)]`);
  await sql.unsafe(`
    insert into billing.lots (account_id, grant_transfer_id, category, priority, amount, remaining, granted_at)
    select t.to_account_id, t.id, 'promotional', 0, t.amount, t.amount, t.created_at from billing.transfers t
    where t.kind = 'promo_grant' and t.idempotency_key like '${tag}:' || ${from}::text || ':%'`);
}

/**
 * `n` usage events of the run's users charged now through the writer (billing.charge_usage_batch,
 * 1,000 a call, as POST /credits/usage/batch does): rows dated after the watermark must be the
 * writer's, which keeps today's tail for reports (billing.ledger_tail).
 */
async function charge(sql: postgres.Sql, tag: string, events: string, n: number) {
  const ids: { id: string }[] = await sql`select u.id::text as id from auth.users u where u.email like ${
    tag + '-%'
  } order by u.email`;
  const models: { model: string }[] = await sql`select model from billing.rate_cards order by id limit 3`;
  for (let start = 0; start < n; start += 1000) {
    const batch = Array.from({ length: Math.min(1000, n - start) }, (_, i) => {
      const k = start + i;
      return {
        event_id: `${events}-${k}`,
        user_id: ids[(k * 7919) % ids.length].id,
        model: models[k % models.length].model,
        input_tokens: 1 + (k * 104729) % 4000,
        output_tokens: 1 + (k * 1299709) % 1000,
        occurred_at: new Date().toISOString(),
      };
    });
    const [{ applied }] = await sql`select count(*) filter (where o ->> 'status' = 'applied')::int as applied
      from jsonb_array_elements(billing.charge_usage_batch(${sql.json(batch)})) o`;
    if (applied !== batch.length) throw new Error(`a batch applied ${applied} of ${batch.length} events`);
  }
}

/** Medians of `runs` GET /admin/metrics (30 days to tomorrow, by day) over HTTP, after one warm-up. */
async function timeGets(base: string, token: string, today: string): Promise<number[]> {
  const d = new Date(`${today}T00:00:00Z`);
  const day = (k: number) => new Date(d.getTime() + k * 86_400_000).toISOString().slice(0, 10);
  const url = `${base}/functions/v1/admin/metrics?from=${day(-29)}&to=${day(1)}&granularity=day`;
  const get = async () => {
    const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
    const body = await res.text();
    if (res.status !== 200) throw new Error(`GET /admin/metrics: ${res.status} ${body.slice(0, 300)}`);
  };
  await get();
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) ms.push((await timed(get))[0]);
  return ms;
}

export async function busyHour() {
  const base = env('SUPABASE_URL');
  const sql = postgres(env('SUPABASE_DB_URL'), { max: 1, onnotice: () => {}, prepare: false });
  const tag = `bench-hour-${crypto.randomUUID().slice(0, 8)}`;
  try {
    const token = await adminToken(sql, base);
    const [{ today }] = await sql`select (now() at time zone 'UTC')::date::text as today`;
    // The range's closed days rolled up, as the nightly job leaves them (the local database may
    // hold nothing before today: a day without a row would be read live, empty).
    await sql`select count(billing.refresh_daily_revenue(${today}::date - k)) from generate_series(1, 30) k`;
    await sql`select billing.refresh_stale_revenue(31)`;
    const before = await timeGets(base, token, today);
    note(`the hour: ${fmt(hour)} transfers`);
    await sql`insert into auth.users (id, email) select gen_random_uuid(), ${tag} || '-' || g || '@bench.invalid'
      from generate_series(1, ${users}) g`;
    await sql`select billing.grant_credits(u.id, 1000000000, 'adjustment', ${tag} || ':fund:' || u.id, null, null, null,
      '{"category": "promotional"}') from auth.users u where u.email like ${tag + '-%'}`;
    // The roll-up starts again from the hour's first day (as if it had been stopped for the hour):
    // rows dated before their transaction's start exist only in this simulation, so the roll-up
    // is held off until they have committed.
    const [loadMs] = await timed(() =>
      sql.begin(async (tx) => {
        await held(tx);
        await tx`delete from billing.revenue_rollup where day >= ((now() - interval '61 minutes') at time zone 'UTC')::date`;
        await write(tx, tag, hour, `(now() - interval '61 minutes')`, `(now() - interval '1 minute')`);
      })
    );
    // The minute job's roll-up (bounded by rows), run after run until it reaches the horizon;
    // after its first run, as within a minute of a fresh start, the report is timed.
    const rollMs: number[] = [];
    let fresh: number[] = [];
    for (;;) {
      const [ms, [{ w, h }]] = await timed(() =>
        sql`select billing.roll_up_ledger() as w, billing.ledger_horizon() - interval '5 seconds' as h`
      );
      if (w === null) continue; // the cron job's run holds the roll-up: try again
      rollMs.push(ms);
      if (rollMs.length === 1) {
        await sql`select billing.refresh_revenue_rollup((now() at time zone 'UTC')::date)`;
        fresh = await timeGets(base, token, today);
      }
      if (w >= h) break;
    }
    await sql`select billing.refresh_revenue_rollup((now() at time zone 'UTC')::date)`;
    // From here the roll-up is held (the minute job's runs return at once) until the timings end:
    // what is written now stays after the watermark, the tail a request reads.
    const hold = postgres(env('SUPABASE_DB_URL'), { max: 1, onnotice: () => {}, prepare: false });
    await hold`select pg_advisory_lock(hashtext('billing.roll_up_ledger'))`;
    // The minute since the last run, charged through the writer.
    const tail = Math.round(hour / 60);
    await charge(sql, tag, `${tag}-tail`, tail);
    const after = await timeGets(base, token, today);
    // A burst: BENCH_REPORTING_BURST more usage events through the writer, not rolled up yet.
    const [burstWriteMs] = await timed(() => charge(sql, tag, `${tag}-burst`, burst));
    const burstMs = burst > 0 ? await timeGets(base, token, today) : [];
    await hold`select pg_advisory_unlock(hashtext('billing.roll_up_ledger'))`;
    // Everything rolled up, then the onboarding burst, not rolled up: the same request after each.
    await rollUpToHorizon(sql);
    const rolled = await timeGets(base, token, today);
    await hold`select pg_advisory_lock(hashtext('billing.roll_up_ledger'))`;
    const [onboardWriteMs, grants] = await timed(() => onboard > 0 ? onboardSchool(sql, tag) : Promise.resolve(0));
    const onboardMs = onboard > 0 ? await timeGets(base, token, today) : [];
    await hold.end();
    // And the onboarding rolled up: the same request once the minute job has caught up with it.
    if (onboard > 0) await rollUpToHorizon(sql);
    const onboardRolled = onboard > 0 ? await timeGets(base, token, today) : [];
    const [{ equal }] = await sql.begin(
      'isolation level repeatable read',
      (tx) =>
        tx`select billing.metrics_report(${today}::date - 29, ${today}::date + 1, 'day') -> 'total'
        = billing.revenue_metrics_live((${today}::date - 29)::timestamp at time zone 'UTC',
            (${today}::date + 1)::timestamp at time zone 'UTC') as equal`,
    );
    const [liveMs] = await timed(() =>
      sql`select billing.revenue_metrics_live(${today}::date::timestamp at time zone 'UTC', now())`
    );
    say('');
    say(`### GET /admin/metrics (30 days, by day) over HTTP, ${fmt(hour)} transfers in the last hour (local stack)`);
    say('');
    say('| what | time | vs before the hour |');
    say('| --- | --- | --- |');
    say(`| before the hour was written (median of ${runs}) | ${fmtMs(median(before))} | 1× |`);
    say(
      `| **after**: rolled up to the horizon, + ${fmt(tail)} transfers after it, live (median of ${runs}; min ${
        fmtMs(Math.min(...after))
      }, max ${fmtMs(Math.max(...after))}) | **${fmtMs(median(after))}** | ${
        (median(after) / median(before)).toFixed(2)
      }× |`,
    );
    say(
      `| within a minute of a fresh start: today's roll-up dropped, one roll-up run (median of ${runs}) | ${
        fmtMs(median(fresh))
      } | ${(median(fresh) / median(before)).toFixed(2)}× |`,
    );
    say(
      `| rolled up to the horizon after the burst (median of ${runs}) | ${fmtMs(median(rolled))} | ${
        (median(rolled) / median(before)).toFixed(2)
      }× |`,
    );
    if (onboard > 0) {
      say(
        `| **right after onboarding a school**: ${fmt(onboard)} new students, ${
          fmt(grants)
        } grants, an allowance each, not rolled up (median of ${runs}) | **${fmtMs(median(onboardMs))}** | ${
          (median(onboardMs) / median(before)).toFixed(2)
        }× |`,
      );
      say(
        `| the onboarding rolled up to the horizon (median of ${runs}) | ${fmtMs(median(onboardRolled))} | ${
          (median(onboardRolled) / median(before)).toFixed(2)
        }× |`,
      );
    }
    if (burst > 0) {
      say(
        `| **right after a burst**: + ${
          fmt(burst)
        } transfers after the watermark, not rolled up (median of ${runs}) | **${fmtMs(median(burstMs))}** | ${
          (median(burstMs) / median(before)).toFixed(2)
        }× |`,
      );
    }
    say(
      `| today from the raw rows alone (revenue_metrics_live, 1 run) | ${fmtMs(liveMs)} | ${
        (liveMs / median(before)).toFixed(0)
      }× |`,
    );
    say('');
    say(
      `Written in ${
        fmtMs(loadMs)
      }; rolled up in ${rollMs.length} run(s) of the minute job (at most 1,000,000 transfers each; max ${
        fmtMs(Math.max(...rollMs))
      }, total ${fmtMs(rollMs.reduce((a, b) => a + b, 0))}). ${
        burst > 0
          ? `The burst charged in ${fmtMs(burstWriteMs)} (${fmt(Math.round(burst / burstWriteMs * 1000))} events/s). `
          : ''
      }Same answer as the raw rows: ${equal ? 'yes' : 'NO'}. ` +
        `Target ≤ 100 ms: after the hour ${median(after) <= 100 ? 'met' : 'MISSED'}, after a fresh start ${
          median(fresh) <= 100 ? 'met' : 'MISSED'
        }${burst > 0 ? `, after the burst ${median(burstMs) <= 100 ? 'met' : 'MISSED'}` : ''}${
          onboard > 0 ? `, after the onboarding ${median(onboardMs) <= 100 ? 'met' : 'MISSED'}` : ''
        }. Right after each burst against rolled up (target ≤ 1.5×): ${
          burst > 0 ? `usage ${(median(burstMs) / median(rolled)).toFixed(2)}×` : ''
        }${
          onboard > 0
            ? `, onboarding ${(median(onboardMs) / median(rolled)).toFixed(2)}× (${
              (median(onboardMs) / median(onboardRolled)).toFixed(2)
            }× the onboarding rolled up)`
            : ''
        }${onboard > 0 ? ` (the onboarding written in ${fmtMs(onboardWriteMs)})` : ''}.`,
    );
    if (!equal) throw new Error('the report differs from the raw rows');
  } finally {
    await sql.end();
  }
}
