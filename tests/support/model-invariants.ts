// What the model tests (tests/reliability/*-model*.test.ts) check from the database after every
// step, beside each file's own reference model (issue #77, docs/credit-lots.md § Spending order
// and § Refunds, disputes and debt), and how their random sequences are seeded and replayed.
import assert from 'node:assert/strict';
import { testDb } from './helpers.ts';

/**
 * The seed of a file's random sequences: MODEL_SEED replays one (printed with every run), else a
 * fresh one. MODEL_PATH replays a shrunk failure's path as fast-check printed it.
 */
export function modelSeed(file: string) {
  const given = Deno.env.get('MODEL_SEED');
  const seed = given ? Number(given) : Math.floor(Math.random() * 2 ** 31);
  console.log(`${file}: seed ${seed} (replay with MODEL_SEED=${seed})`);
  const path = Deno.env.get('MODEL_PATH');
  return { seed, ...(path ? { path } : {}) };
}

/**
 * Whether the operations of the rules of #77 run (reservations, freezes, suspension, refunds and
 * disputes of moved credits). MODEL_OPS=old runs only the operations the SQL before #77 already
 * follows, and leaves out the checks only the new SQL meets (a hold's reservation = its amount).
 */
export const newRules = Deno.env.get('MODEL_OPS') !== 'old';

/** The accounts a run looks at: its users' and organisations', and any holding lots their purchases granted. */
export interface Scope {
  users: string[];
  orgs?: string[];
}

/** A frozen lot as the previous step left it, and the last transfer id seen then. */
interface FrozenLot {
  remaining: string;
  reserved: string;
}
export interface FrozenWatch {
  lots: Map<string, FrozenLot>;
  lastTransfer: string;
}
export const frozenWatch = (): FrozenWatch => ({ lots: new Map(), lastTransfer: '0' });

const accountsSql = (s: Scope) =>
  testDb`select a.id from billing.accounts a
    where a.user_id = any(${s.users}::uuid[]) or a.org_id = any(${s.orgs ?? []}::uuid[])
       or a.id in (select l.account_id from billing.lots l join billing.purchases p on p.id = l.purchase_id
                   where p.user_id = any(${s.users}::uuid[]) or p.org_id = any(${s.orgs ?? []}::uuid[]))`;

/**
 * The invariants of every step, over the run's accounts: Σ entries = balance; held = Σ active
 * holds, none of purpose 'dispute'; Σ remaining of the lots for any model = the balance beyond
 * the credits for some models (0 in debt), or more only while what is left is reserved or frozen
 * (a debt does not take what holds reserved: the hold pays it when it returns them); per lot, reserved = Σ of the active holds' hold_lots
 * and 0 ≤ reserved ≤ remaining (with the new rules, an active hold's hold_lots = its amount); a
 * lot frozen at the previous step lost remaining only to expiry, take-back (refund or dispute
 * reversal) or captures of what was reserved before (its reserved never grows while frozen, and
 * nothing moved it); a reversal from an account that is not its purchase's buyer took only that
 * purchase's lots there and nothing else; only a buyer is in debt.
 */
export async function stepInvariants(scope: Scope, watch: FrozenWatch) {
  const ids = (await accountsSql(scope)).map((a) => a.id as string);
  const [r] = await testDb`
    with acc as (select a.* from billing.accounts a where a.id = any(${ids}::bigint[])),
    lot as (select l.* from billing.lots l where l.account_id in (select id from acc))
    select
      (select coalesce(array_agg(a.id::text), '{}') from acc a
        where a.balance <> coalesce((select sum(e.amount) from billing.entries e where e.account_id = a.id), 0))
        as entries_off,
      (select coalesce(array_agg(a.id::text), '{}') from acc a
        where a.held <> coalesce((select sum(h.amount) from billing.holds h where h.account_id = a.id
                                  and h.status = 'active'), 0)) as held_off,
      (select count(*)::int from billing.holds h where h.account_id in (select id from acc)
        and h.purpose not in ('user', 'job', 'ai', 'claims')) as other_purposes,
      (select coalesce(array_agg(a.id::text), '{}') from acc a, lateral (select
          coalesce(sum(l.remaining) filter (where l.applies_to is null), 0) as any_left,
          coalesce(sum(l.remaining) filter (where l.applies_to is not null), 0) as some_left,
          coalesce(sum(l.remaining - l.reserved) filter (where l.applies_to is null and not l.frozen), 0) as any_free
        from lot l where l.account_id = a.id) x
        where not (x.any_left = greatest(a.balance - x.some_left, 0)
                   or (x.any_left > a.balance - x.some_left and x.any_free = 0))) as lots_off,
      (select coalesce(array_agg(l.id::text), '{}') from lot l
        where l.reserved <> coalesce((select sum(x.amount) from billing.hold_lots x join billing.holds h on h.id = x.hold_id
                                      where x.lot_id = l.id and h.status = 'active'), 0)
           or l.reserved < 0 or l.reserved > l.remaining) as reserved_off,
      (select coalesce(array_agg(h.id::text), '{}') from billing.holds h
        where ${newRules} and h.account_id in (select id from acc) and h.status = 'active'
          and h.amount <> coalesce((select sum(x.amount) from billing.hold_lots x where x.hold_id = h.id), 0))
        as hold_unreserved,
      (select coalesce(array_agg(a.id::text), '{}') from acc a where a.balance < 0
        and not exists (select 1 from billing.purchases p
          where (p.amount_refunded_cents > 0 or p.dispute_status = 'lost')
            and ((not p.wallet_answers and a.user_id = p.user_id and a.org_id is null)
                 or (p.wallet_answers and a.org_id = p.org_id and a.member_id is null))))
        as debt_not_buyer,
      (select coalesce(array_agg(t.id::text), '{}') from billing.transfers t join acc a on a.id = t.from_account_id
        join billing.purchases p on p.stripe_charge_id = t.reference
        where t.kind in ('refund_reversal', 'dispute_reversal')
          and not ((not p.wallet_answers and a.user_id = p.user_id and a.org_id is null)
                   or (p.wallet_answers and a.org_id = p.org_id and a.member_id is null))
          and (t.amount <> coalesce((select sum(x.amount) from billing.lot_allocations x where x.transfer_id = t.id), 0)
               or exists (select 1 from billing.lot_allocations x join billing.lots l on l.id = x.lot_id
                          where x.transfer_id = t.id and l.purchase_id is distinct from p.id))) as non_buyer_billed,
      (select coalesce(max(id), 0)::text from billing.transfers) as last_transfer`;
  assert.deepEqual(
    {
      entries_off: r.entries_off,
      held_off: r.held_off,
      other_purposes: r.other_purposes,
      lots_off: r.lots_off,
      reserved_off: r.reserved_off,
      hold_unreserved: r.hold_unreserved,
      debt_not_buyer: r.debt_not_buyer,
      non_buyer_billed: r.non_buyer_billed,
    },
    {
      entries_off: [],
      held_off: [],
      other_purposes: 0,
      lots_off: [],
      reserved_off: [],
      hold_unreserved: [],
      debt_not_buyer: [],
      non_buyer_billed: [],
    },
    'Σ entries = balance, held = Σ active holds (no dispute holds), Σ lots = balance, reserved = Σ hold_lots, only buyers in debt, non-buyers lose only the disputed lots',
  );
  await checkFrozen(watch, ids, r.last_transfer as string);
}

/** What happened to the lots frozen at the previous step, then the frozen lots now. */
async function checkFrozen(watch: FrozenWatch, ids: string[], last: string) {
  const before = [...watch.lots.keys()];
  if (before.length) {
    // A lot thawed in this step (a dispute won) may be drawn after it thawed.
    const now = await testDb`select l.id::text as id, l.frozen, trim_scale(l.remaining)::text as remaining,
        trim_scale(l.reserved)::text as reserved,
        coalesce((select array_agg(distinct case when x.kind = 'usage' and t.metadata ? 'priced' then 'excess'
                                                 else x.kind::text end) from billing.lot_allocations x
                  join billing.transfers t on t.id = x.transfer_id
                  where x.lot_id = l.id and x.transfer_id > ${watch.lastTransfer}::bigint
                    and (l.frozen or t.created_at <= (select max(c.changed_at) from billing.lot_changes c
                                                      where c.lot_id = l.id and c.frozen_before))), '{}') as kinds,
        trim_scale(coalesce((select sum(x.amount) from billing.lot_allocations x where x.lot_id = l.id
                  and x.transfer_id > ${watch.lastTransfer}::bigint and x.kind = 'hold_capture'), 0))::text as captured
      from billing.lots l where l.id = any(${before}::bigint[])`;
    for (const l of now) {
      const was = watch.lots.get(l.id) as FrozenLot;
      const moved = (l.kinds as string[]).filter((k) =>
        !['expiry', 'refund_reversal', 'dispute_reversal', 'hold_capture', 'void', 'excess'].includes(k)
      );
      // 'excess': what a provider billed past an AI call's or job's hold (billing.charge_hold_at:
      // a usage transfer with `priced`) takes frozen credits after free ones (docs/credit-lots.md rule 7).
      assert.deepEqual(moved, [], `frozen lot ${l.id}: nothing but expiry, take-back, captures or an excess drew it`);
      assert.ok(
        Number(l.captured) <= Number(was.reserved),
        `frozen lot ${l.id}: captures took ${l.captured}, only ${was.reserved} was reserved before`,
      );
      if (l.frozen) {
        assert.ok(
          Number(l.reserved) <= Number(was.reserved),
          `frozen lot ${l.id}: nothing new reserved (${was.reserved} → ${l.reserved})`,
        );
      }
    }
  }
  const frozen = await testDb`select l.id::text as id, trim_scale(l.remaining)::text as remaining,
      trim_scale(l.reserved)::text as reserved from billing.lots l
    where l.frozen and l.open and l.account_id = any(${ids}::bigint[])`;
  watch.lots = new Map(frozen.map((l) => [l.id as string, { remaining: l.remaining, reserved: l.reserved }]));
  watch.lastTransfer = last;
}

/**
 * Whether pg_cron's minute tick has refunds' take-backs to take for the run's accounts (the test
 * billing.take_back_due_claims picks accounts by).
 */
export async function takeBacksDue(scope: Scope): Promise<boolean> {
  const [{ due }] = await testDb`select exists (
      select 1 from billing.lot_take_backs t join billing.holds h on h.id = t.hold_id join billing.lots l on l.id = t.lot_id
      where h.account_id in (${
    accountsSql(scope)
  }) and (h.status <> 'active' or h.purpose = 'claims' or not l.open)) as due`;
  return due;
}

/**
 * A step's comparison beside pg_cron's tick, which takes refunds' take-backs each minute on its
 * own: when the model still waits on them and the database has none left, the model takes them
 * too (`tick`), before comparing, or once more when the tick ran during the comparison.
 */
export async function compareBesideTick(
  scope: Scope,
  waiting: () => boolean,
  tick: () => void,
  compare: () => Promise<void>,
) {
  for (let again = true;; again = false) {
    if (waiting() && !(await takeBacksDue(scope))) tick();
    try {
      return await compare();
    } catch (e) {
      if (!again || !waiting() || await takeBacksDue(scope)) throw e;
    }
  }
}
