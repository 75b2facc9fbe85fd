-- Revenue reporting: daily roll-ups of the ledger (revenue_rollup, daily_revenue) refreshed by
-- pg_cron, and the per-day parts the metrics are built from (91-metrics.sql: metric_parts →
-- metrics_of → metrics_report).
--
-- Each day's row has two halves. The credit ledger's (transfers, entries, lot allocations: the
-- tables that grow with every charge, never changed once written, dated by the inserting
-- transaction's start) covers [day start, ledger_until) and only grows: every minute
-- billing.roll_up_ledger adds the rows up to the ledger's horizon (billing.ledger_horizon: no
-- transaction still running can write before it), so a request sums at most the minute or so
-- after it. The events' half (money postings dated by Stripe, purchases and webhooks that change
-- after they are written, lots whose debt settled is raised by a later void) covers
-- [day start, covered_until) and is recomputed whenever billing.revenue_rollup_is_current finds a
-- late event.

-- ============================================================ types

-- GET /admin/metrics computes one set of per-day parts per request: the parts of a range (each
-- day's two roll-up halves where they are current, one live piece per half and day for the rest) come from
-- billing.metric_parts, and every metric is built from them (billing.metrics_of, organisations
-- included), for the range and for each period of the series (periods are whole days, so each
-- takes its own days' parts). billing.metrics_report returns both in one call. pgTAP
-- (90-reporting-rollup.test.sql) checks the report against revenue_metrics and metrics_series, and those
-- against the raw rows.
-- One part of a range: a stored roll-up half (bitmaps of account ids, the liability at its end)
-- or a live piece read from the rows (account ids, the liability's change over the piece). A
-- credit ledger part leaves the events' fields empty and the other way round.
create type billing.metric_part as (
  lo timestamptz,                   -- the part covers [lo, hi)
  hi timestamptz,
  stored boolean,                   -- a revenue_rollup half; else a live piece
  money jsonb,
  credits jsonb,
  lots jsonb,
  active_bitmap bit varying,        -- stored: accounts with a credit ledger entry
  paying_bitmap bit varying,        -- stored: accounts whose user had a purchase paid
  active_accounts bigint[],         -- live: the same, as ids
  paying_accounts bigint[],
  first_time_purchasers bigint,
  checkouts_created bigint,
  checkouts_paid bigint,
  webhooks_received bigint,
  webhooks_ok bigint,
  user_credit_change numeric,       -- live: Σ user entries over the piece
  outstanding_credits numeric       -- stored credit ledger half: Σ user entries before hi
);
comment on type billing.metric_part is 'Internal: one roll-up half or live piece of a range, as billing.metrics_of combines them.';

-- ============================================================ tables

-- The parts of every metric for each UTC day: the credit ledger's over [the day's start,
-- ledger_until), the events' over [the day's start, covered_until). Internal: read by
-- revenue_metrics.
create table billing.revenue_rollup (
  day date primary key,
  -- The events' half (billing.event_parts), recomputed when stale:
  covered_until timestamptz not null,             -- the day's end, or (today) computed_at − 5 minutes
  money jsonb not null,                           -- [{kind, account, currency, cents}]: Σ money entries
  paying_accounts bit varying not null,           -- bit n set: account n's user had a purchase paid
  first_time_purchasers bigint not null,
  checkouts_created bigint not null,
  checkouts_paid bigint not null,
  webhooks_received bigint not null,
  webhooks_ok bigint not null,
  sessionless_purchases bigint not null,          -- purchases in the covered span without a Checkout Session
  computed_at timestamptz not null default now(), -- when the events' half was computed
  -- The credit ledger's half (billing.ledger_parts), only ever added to:
  ledger_until timestamptz not null,              -- the day's end, or (today) the ledger's horizon at the last roll-up
  credits jsonb not null,                         -- [{kind, model, amount, events}]: Σ credit transfers
  lots jsonb not null,                            -- [{currency, category, kind, source, credits, cents}]: lots drawn and granted
  active_accounts bit varying not null,           -- bit n set: account n had a credit ledger entry
  outstanding_credits numeric(38, 18) not null    -- Σ user entries before ledger_until: the liability then
);
comment on table billing.revenue_rollup is 'Each UTC day''s metric parts, which ranges combine exactly: the credit ledger''s up to its horizon (added to every minute), the events'' (today''s up to a few minutes ago) recomputed when a late event reaches a day.';
alter table billing.revenue_rollup enable row level security;
grant select on table billing.revenue_rollup to service_role;

-- Each UTC day's numbers (revenue_metrics of the day), for the daily report and its email.
create table billing.daily_revenue (
  day date primary key,
  metrics jsonb not null,                         -- billing.revenue_metrics for the UTC day
  computed_at timestamptz not null default now()
);
comment on table billing.daily_revenue is 'Each UTC day''s metrics, replaced whenever the day is recomputed (late events are picked up then).';
alter table billing.daily_revenue enable row level security;
grant select on table billing.daily_revenue to service_role;

-- ============================================================ functions

-- Σ of user entries in [p_from, p_to): how much the unspent liability moved.
create or replace function billing.user_credit_change(p_from timestamptz, p_to timestamptz) returns numeric
language sql stable
set search_path = ''
as $$
  select coalesce(sum(e.amount), 0) from billing.entries e
  where p_from < p_to and e.balance_after is not null and e.created_at >= p_from and e.created_at < p_to
$$;
comment on function billing.user_credit_change(p_from timestamp with time zone, p_to timestamp with time zone) is 'Internal: Σ of user entries in [from, to).';
revoke execute on function billing.user_credit_change(p_from timestamp with time zone, p_to timestamp with time zone) from public;

-- Whether the rest of today from p_from on may be read from what the writer kept
-- (billing.ledger_tail, lots_tail, active_tail) instead of the rows: only today's
-- whole tail, as only that is exact. p_to is today's end (which no transaction this statement
-- sees started at: clock_timestamp() is before it), p_from a whole second of today (the writer
-- sums per second), no earlier than the writer has kept them (billing.ledger_tail_kept). The
-- caller's parts must hold today's rolled-up half up to p_from (or p_from be midnight): the
-- accounts first active today since p_from are then exactly the accounts with an entry since
-- that the rolled-up bitmap may lack (one first active before p_from has an entry before it, in
-- the bitmap).
create or replace function billing.ledger_tail_readable(p_from timestamptz, p_to timestamptz) returns boolean
language sql stable
set search_path = ''
as $$
  select coalesce(p_from = date_trunc('second', p_from) and p_from >= date_trunc('day', now(), 'UTC')
    and p_to = date_trunc('day', now(), 'UTC') + interval '1 day' and clock_timestamp() < p_to
    and p_from >= (select k.since from billing.ledger_tail_kept k), false)
$$;
comment on function billing.ledger_tail_readable(p_from timestamp with time zone, p_to timestamp with time zone) is 'Internal: whether [from, to) is today''s tail from a whole second, which billing.ledger_parts may read from what the writer kept.';
revoke execute on function billing.ledger_tail_readable(p_from timestamp with time zone, p_to timestamp with time zone) from public;

-- The credit ledger's parts of [p_from, p_to), from the raw rows: credit transfers by kind and
-- model, what each kind of transfer drew from lots, and the user entries. With p_tail (the
-- caller's parts hold today's rolled-up half up to p_from), today's tail reads the transfers'
-- sums and the active accounts from what the writer kept, when billing.ledger_tail_readable.
create or replace function billing.ledger_parts(p_from timestamp with time zone, p_to timestamp with time zone,
  p_tail boolean default false)
returns table(credits jsonb, lots jsonb, active_accounts bigint[], user_credit_change numeric)
language plpgsql
stable rows 1
set search_path = ''
set plan_cache_mode to 'force_custom_plan'
set jit to 'off'
set max_parallel_workers_per_gather to '0'
-- A minute of a busy ledger is 10^5 rows a table: grouped in memory, not sorted through disk.
set work_mem to '32MB'
-- Hashed, never sorted: rows written since the last ANALYZE lie past the statistics' newest
-- created_at (a BRIN index cannot tell the planner better), so right after a burst it expects a
-- few hundred rows and sorted 100,000 (117 ms of ledger_parts against 85 hashed).
set enable_sort to 'off'
as $$
declare
  v_kept boolean := p_tail and billing.ledger_tail_readable(p_from, p_to);
begin
  return query
  select
    -- Grouped by rate card first, so the model lookup runs once per card, not per transfer.
    (select coalesce(jsonb_agg(jsonb_build_object('kind', c.kind, 'model', c.model, 'amount', c.amount, 'events', c.events)),
        '[]'::jsonb)
     from (select g.kind, r.model, sum(g.amount) as amount, sum(g.events) as events
           from (select t.kind, t.rate_card_id, sum(t.amount) as amount, count(*) as events from billing.transfers t
                 where not v_kept and t.created_at >= p_from and t.created_at < p_to group by 1, 2
                 union all
                 select x.kind, x.rate_card_id, sum(x.amount), sum(x.events)::bigint from billing.ledger_tail x
                 where v_kept and x.at >= p_from and x.at < p_to group by 1, 2) g
           left join billing.rate_cards r on r.id = g.rate_card_id and g.kind = 'usage'
           group by 1, 2) c),
    -- Credits drawn from lots by each kind of transfer (spent, expired, reversed, voided), each at
    -- its lot's cost basis; of credits given back to a lot, the part that paid a debt then (kind
    -- 'debt_settled_by_return'): spent on what the debt was for, on the day they came back. By
    -- source too (the lot's origin: 'plan', 'promo_code'), so the plan and code reports read what
    -- their lots drew from here (as plan_metrics and codes_report read the rows). Then the lots
    -- granted. Today's tail from what the writer kept (billing.lots_tail), summed as below.
    (select coalesce(jsonb_agg(jsonb_build_object('currency', x.currency, 'category', x.category, 'kind', x.kind,
        'source', x.source, 'credits', x.credits, 'cents', x.cents)), '[]'::jsonb)
     -- Summed per lot in one pass, then each lot read once: a row's cost basis is kept on it
     -- (cents); rows from before it was kept, and the part of a give-back that paid a debt, are
     -- worked out from the lot row by row, as the kept ones were, so the sums are the same to the
     -- last digit.
     from (select l.currency, l.category, p.kind, l.origin as source, sum(p.credits) as credits, sum(p.cents) as cents
           from (select a.lot_id, a.kind, sum(a.amount) as credits, coalesce(sum(a.cents), 0) as kept,
                        array_agg(a.amount) filter (where a.cents is null) as unkept,
                        array_agg(a.debt_settled) filter (where a.debt_settled > 0) as settled
                 from billing.lot_allocations a where not v_kept and a.created_at >= p_from and a.created_at < p_to
                 group by 1, 2) s
           join billing.lots l on l.id = s.lot_id
           cross join lateral (
             select s.kind::text, s.credits, s.kept + coalesce((select sum(l.cost_cents * u / l.amount) from unnest(s.unkept) u), 0)
             union all
             select 'debt_settled_by_return', sum(u), sum(l.cost_cents * u / l.amount) from unnest(s.settled) u
             having count(*) > 0) p(kind, credits, cents)
           group by 1, 2, 3, 4
           union all
           -- Lots granted, net of the debt they settled on arrival (a move is not a grant); of moved
           -- lots, the part that paid a debt on arrival (credits already held, spent on the debt).
           select l.currency, l.category, g.kind, l.origin, sum(g.credits), sum(l.cost_cents * g.credits / l.amount)
           from billing.lots l
           cross join lateral (select case when l.moved_from is null then 'granted' else 'debt_settled_by_move' end as kind,
                                 case when l.moved_from is null then l.amount - l.debt_settled else l.debt_settled end as credits) g
           where not v_kept and l.granted_at >= p_from and l.granted_at < p_to and (l.moved_from is null or l.debt_settled > 0)
           group by 1, 2, 3, 4
           union all
           select k.currency, k.category, k.kind, k.origin, sum(k.credits), sum(k.cents) from billing.lots_tail k
           where v_kept and k.at >= p_from and k.at < p_to group by 1, 2, 3, 4) x),
    case when v_kept then array(select x.account_id from billing.active_tail x where x.at >= p_from and x.at < p_to)
         else u.accounts end,
    case when v_kept then (select coalesce(sum(x.credit_change), 0) from billing.ledger_tail x where x.at >= p_from and x.at < p_to)
         else u.credit_change end
  from
    -- One pass over the user entries: who was active, and (as user_credit_change) what moved.
    (select coalesce(array_agg(distinct e.account_id), '{}') as accounts, coalesce(sum(e.amount), 0) as credit_change
     from billing.entries e
     where not v_kept and e.balance_after is not null and e.created_at >= p_from and e.created_at < p_to) u;
end;
$$;
comment on function billing.ledger_parts(p_from timestamp with time zone, p_to timestamp with time zone, p_tail boolean) is 'Internal: the credit ledger''s combinable parts of every metric over [from, to), from the raw rows (today''s tail, when asked, from what the writer kept).';
revoke execute on function billing.ledger_parts(p_from timestamp with time zone, p_to timestamp with time zone, p_tail boolean) from public;

-- The events' parts of [p_from, p_to), from the raw rows: money postings by when they happened at
-- Stripe, purchases, webhooks (the lots granted are the credit ledger's: billing.ledger_parts).
create or replace function billing.event_parts(p_from timestamp with time zone, p_to timestamp with time zone)
returns table(money jsonb, paying_accounts bigint[], first_time_purchasers bigint, checkouts_created bigint, checkouts_paid bigint, webhooks_received bigint, webhooks_ok bigint)
language plpgsql
stable rows 1
set search_path = ''
set plan_cache_mode to 'force_custom_plan'
set jit to 'off'
set max_parallel_workers_per_gather to '0'
as $$
begin
  return query
  select
    (select coalesce(jsonb_agg(jsonb_build_object('kind', m.kind, 'account', m.account, 'currency', m.currency,
        'cents', m.cents)), '[]'::jsonb)
     from (select t.kind, case when e.account in ('payers', 'platform_fees', 'b2c_revenue', 'stripe_fees', 'tax_payable') then e.account
                              else 'other' end as account, e.currency, sum(e.amount_cents) as cents
           from billing.money_transfers t join billing.money_entries e on e.transfer_id = t.id
           where t.occurred_at >= p_from and t.occurred_at < p_to
           group by 1, 2, 3) m),
    array(select distinct a.id from billing.purchases p join billing.accounts a on a.user_id = p.user_id
          where p.paid_at >= p_from and p.paid_at < p_to),
    -- A user's first paid purchase is in the period when one is and none came before it.
    (select count(distinct p.user_id) from billing.purchases p
     where p.status = 'paid' and p.paid_at >= p_from and p.paid_at < p_to
       and not exists (select 1 from billing.purchases q where q.user_id = p.user_id and q.status = 'paid' and q.paid_at < p_from)),
    k.created, k.paid, w.received, w.ok
  from
    (select count(*) as created, count(*) filter (where p.status = 'paid') as paid from billing.purchases p
     where p.created_at >= p_from and p.created_at < p_to and p.stripe_session_id is not null) k,
    (select count(*) as received, count(*) filter (where e.status in ('processed', 'ignored')) as ok
     from billing.stripe_events e where e.received_at >= p_from and e.received_at < p_to) w;
end;
$$;
comment on function billing.event_parts(p_from timestamp with time zone, p_to timestamp with time zone) is 'Internal: the events'' combinable parts of every metric over [from, to) (money, lots granted, purchases, webhooks), from the raw rows.';
revoke execute on function billing.event_parts(p_from timestamp with time zone, p_to timestamp with time zone) from public;

-- Two credit parts as one: amounts and events summed per kind and model.
create or replace function billing.sum_credits(p_a jsonb, p_b jsonb) returns jsonb
language sql immutable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('kind', c.kind, 'model', c.model, 'amount', c.amount, 'events', c.events)), '[]'::jsonb)
  from (select x.kind, x.model, sum(x.amount) as amount, sum(x.events) as events
        from jsonb_to_recordset(p_a || p_b) x(kind text, model text, amount numeric, events bigint) group by 1, 2) c
$$;
comment on function billing.sum_credits(p_a jsonb, p_b jsonb) is 'Internal: two credits parts ([{kind, model, amount, events}]) summed into one.';
revoke execute on function billing.sum_credits(p_a jsonb, p_b jsonb) from public;

-- Two lot parts as one: credits and cents summed per currency, category, kind and source.
create or replace function billing.sum_lots(p_a jsonb, p_b jsonb) returns jsonb
language sql immutable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('currency', c.currency, 'category', c.category, 'kind', c.kind,
      'source', c.source, 'credits', c.credits, 'cents', c.cents)), '[]'::jsonb)
  from (select x.currency, x.category, x.kind, x.source, sum(x.credits) as credits, sum(x.cents) as cents
        from jsonb_to_recordset(p_a || p_b) x(currency text, category text, kind text, source text, credits numeric, cents numeric)
        group by 1, 2, 3, 4) c
$$;
comment on function billing.sum_lots(p_a jsonb, p_b jsonb) is 'Internal: two lots parts ([{currency, category, kind, source, credits, cents}]) summed into one.';
revoke execute on function billing.sum_lots(p_a jsonb, p_b jsonb) from public;

-- A set of account ids as a bitmap: bit n (counting from 0, left to right) is account n.
create or replace function billing.account_bitmap(p_ids bigint[]) returns bit varying
language sql immutable
set search_path = ''
as $$
  select coalesce(('x' || string_agg(lpad(to_hex(coalesce(b.v, 0)), 2, '0'), '' order by g.i))::bit varying, B'')
  from generate_series(0::bigint, (select max(x) from unnest(p_ids) x) / 8) g(i)
  left join (select x / 8 as i, bit_or(128 >> (x % 8)::integer) as v from unnest(p_ids) x group by 1) b on b.i = g.i
$$;
comment on function billing.account_bitmap(p_ids bigint[]) is 'Internal: account ids as a bitmap (bit n set for account n).';
revoke execute on function billing.account_bitmap(p_ids bigint[]) from public;

-- The union of two account bitmaps (the shorter padded with zeros: bit n is account n in both).
create or replace function billing.bitmap_union(p_a bit varying, p_b bit varying) returns bit varying
language sql immutable
set search_path = ''
as $$
  select (p_a || repeat('0', greatest(length(p_b) - length(p_a), 0))::bit varying)
       | (p_b || repeat('0', greatest(length(p_a) - length(p_b), 0))::bit varying)
$$;
comment on function billing.bitmap_union(p_a bit varying, p_b bit varying) is 'Internal: the union of two account bitmaps.';
revoke execute on function billing.bitmap_union(p_a bit varying, p_b bit varying) from public;

-- How many distinct accounts are in the union of stored bitmaps and live ids.
create or replace function billing.count_accounts(p_bitmaps bit varying[], p_ids bigint[]) returns bigint
language plpgsql immutable
set search_path = ''
as $$
declare
  v_union bit varying;
begin
  -- bit_or needs equal lengths: a day's bitmap is as long as its highest account id.
  select bit_or(b || repeat('0', m.n - length(b))::bit varying) into v_union
  from unnest(p_bitmaps) b, (select max(length(x)) as n from unnest(p_bitmaps) x) m;
  return coalesce(bit_count(v_union), 0) + (
    select count(distinct x) from unnest(p_ids) x
    where case when v_union is null or x >= length(v_union) then true else get_bit(v_union, x::integer) = 0 end);
end;
$$;
comment on function billing.count_accounts(p_bitmaps bit varying[], p_ids bigint[]) is 'Internal: |union of the bitmaps and the ids|.';
revoke execute on function billing.count_accounts(p_bitmaps bit varying[], p_ids bigint[]) from public;

create or replace function billing.revenue_rollup_is_current(
  p_day date, p_covered_until timestamptz, p_computed_at timestamptz, p_sessionless bigint
) returns boolean
language plpgsql stable
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
declare
  v_from timestamptz := p_day::timestamp at time zone 'UTC';
  v_end timestamptz := (p_day + 1)::timestamp at time zone 'UTC';
  v_since timestamptz := p_computed_at - interval '5 minutes';
begin
  return p_covered_until > v_from
    and not exists (select 1 from billing.money_transfers t
      where t.created_at > v_since and t.created_at < v_end and t.occurred_at >= v_from and t.occurred_at < p_covered_until)
    and not exists (select 1 from billing.money_transfers t
      where (t.created_at at time zone 'UTC')::date > (t.occurred_at at time zone 'UTC')::date
        and t.occurred_at >= v_from and t.occurred_at < p_covered_until and t.created_at > v_since)
    -- Today's row (covering part of its day) counts its checkouts paid at read time instead.
    and (p_covered_until < v_end or (
      not exists (select 1 from billing.purchases p
        where p.paid_at > v_since and p.paid_at < v_end and p.created_at >= v_from and p.created_at < p_covered_until)
      and not exists (select 1 from billing.purchases p
        where (p.paid_at at time zone 'UTC')::date > (p.created_at at time zone 'UTC')::date
          and p.created_at >= v_from and p.created_at < p_covered_until and p.paid_at > v_since)))
    and (select count(*) from billing.purchases p
         where p.stripe_session_id is null and p.created_at >= v_from and p.created_at < p_covered_until) = p_sessionless
    and not exists (select 1 from billing.stripe_events e
      where e.processed_at > v_since and e.processed_at < v_end and e.received_at >= v_from and e.received_at < p_covered_until)
    and not exists (select 1 from billing.stripe_events e
      where (e.processed_at at time zone 'UTC')::date > (e.received_at at time zone 'UTC')::date
        and (e.received_at at time zone 'UTC')::date = p_day
        and e.received_at < p_covered_until and e.processed_at > v_since);
end;
$$;
comment on function billing.revenue_rollup_is_current(p_day date, p_covered_until timestamp with time zone, p_computed_at timestamp with time zone, p_sessionless bigint) is 'Internal: whether a revenue_rollup row''s events half still equals its span''s raw rows (no late event since it was computed).';
revoke execute on function billing.revenue_rollup_is_current(p_day date, p_covered_until timestamp with time zone, p_computed_at timestamp with time zone, p_sessionless bigint) from public;

-- The credit ledger is complete before this instant: every transaction still running started
-- after it, and a ledger row is dated by its transaction's start (created_at default now()), so
-- nothing can still commit before it, whatever order transactions commit in. Null (wait) while
-- a prepared transaction, whose start is not known, is pending. The second taken off covers the
-- instant between a transaction taking its start time and showing it in pg_stat_activity.
-- On a whole second, taken down: what the writer keeps for today's tail is summed per second
-- (billing.ledger_tail), so a watermark there splits no second. Autovacuum writes no ledger rows. It reads other roles' sessions, so its owner needs
-- pg_read_all_stats (the superuser here; hosted, the postgres role): a hidden session would make
-- the horizon unsafe, so then it waits, and says so in the log.
create or replace function billing.ledger_horizon() returns timestamptz
language plpgsql stable
set search_path = ''
as $$
begin
  if exists (select 1 from pg_catalog.pg_stat_activity a
             where a.backend_type = 'client backend' and a.query = '<insufficient privilege>') then
    raise warning 'billing.ledger_horizon: % cannot see every session''s transaction; the roll-up waits', current_user;
    return null;
  end if;
  if exists (select 1 from pg_catalog.pg_prepared_xacts) then
    return null;
  end if;
  return (select date_trunc('second', least(now(), min(a.xact_start)) - interval '1 second') from pg_catalog.pg_stat_activity a
          where a.pid <> pg_catalog.pg_backend_pid() and a.backend_type <> 'autovacuum worker');
end;
$$;
comment on function billing.ledger_horizon() is 'Internal: an instant before which every credit ledger row has committed (the oldest running transaction''s start, less a second, on a whole second); null while that cannot be known.';
revoke execute on function billing.ledger_horizon() from public;

-- The liability at p_at (Σ user entries before it): the running total of the roll-up row that
-- ends nearest before it, plus the entries since.
create or replace function billing.outstanding_before(p_at timestamptz) returns numeric
language sql stable
set search_path = ''
as $$
  select coalesce(r.outstanding_credits, 0) + billing.user_credit_change(coalesce(r.ledger_until, '-infinity'), p_at)
  from (select 1) one
  left join lateral (select x.outstanding_credits, x.ledger_until from billing.revenue_rollup x
                     where x.ledger_until <= p_at order by x.ledger_until desc limit 1) r on true
$$;
comment on function billing.outstanding_before(p_at timestamp with time zone) is 'Internal: Σ user entries before an instant, from the roll-up.';
revoke execute on function billing.outstanding_before(p_at timestamp with time zone) from public;

-- Adds the credit ledger's rows of [p_lo, p_hi) (one UTC day's) to that day's row, which must
-- cover up to p_lo (else another roll-up moved it: the caller's work is void, and it raises).
create or replace function billing.add_ledger_span(p_day date, p_lo timestamptz, p_hi timestamptz) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_from timestamptz := p_day::timestamp at time zone 'UTC';
begin
  insert into billing.revenue_rollup as r (day, covered_until, money, paying_accounts, first_time_purchasers,
    checkouts_created, checkouts_paid, webhooks_received, webhooks_ok, sessionless_purchases,
    ledger_until, credits, lots, active_accounts, outstanding_credits)
  -- A new row's events half is empty (covered_until = the day's start): read live until computed.
  select p_day, v_from, '[]', B'', 0, 0, 0, 0, 0, 0,
    p_hi, p.credits, p.lots, billing.account_bitmap(p.active_accounts),
    billing.outstanding_before(p_lo) + p.user_credit_change
  from billing.ledger_parts(p_lo, p_hi) p
  on conflict (day) do update set ledger_until = excluded.ledger_until, credits = billing.sum_credits(r.credits, excluded.credits),
    lots = billing.sum_lots(r.lots, excluded.lots), active_accounts = billing.bitmap_union(r.active_accounts, excluded.active_accounts),
    outstanding_credits = excluded.outstanding_credits
  where r.ledger_until = p_lo;
  if not found then
    perform billing.raise_error('INTERNAL_ERROR', jsonb_build_object('rollup_day', p_day, 'expected_until', p_lo));
  end if;
end;
$$;
comment on function billing.add_ledger_span(p_day date, p_lo timestamp with time zone, p_hi timestamp with time zone) is 'Internal: adds the credit ledger''s rows of [lo, hi) to the day''s revenue_rollup row, which must end at lo.';
revoke execute on function billing.add_ledger_span(p_day date, p_lo timestamp with time zone, p_hi timestamp with time zone) from public;

-- Every minute (pg_cron, in refresh_stale_revenue): rolls the credit ledger up from where it
-- stands (the earliest day not rolled up to its end) towards the horizon, bounded by rows, not by
-- time: the longest span from there (a minute, doubled while it holds at most p_rows transfers)
-- up to the horizon, or p_step past where it stands when given. A backlog is caught up in
-- proportion to its size (a day of traffic in one run), and each run's work is bounded (counting
-- reads at most 3 × p_rows transfers, the sums at most about p_rows; a minute holding more than
-- p_rows is rolled up whole). Each day continues from its own ledger_until; one run at a time (a
-- second returns at once). Returns where the roll-up now stands.
create or replace function billing.roll_up_ledger(p_step interval default null, p_rows integer default 1000000)
returns timestamptz
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_from timestamptz;
  v_end timestamptz;
  v_to timestamptz;
  v_next timestamptz;
  v_span interval := interval '1 minute';
  v_day date;
  v_lo timestamptz;
begin
  if not pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('billing.roll_up_ledger')) then
    return null;
  end if;
  select coalesce(min(r.ledger_until) filter (where r.ledger_until < (r.day + 1)::timestamp at time zone 'UTC'), max(r.ledger_until),
    (now() at time zone 'UTC')::date::timestamp at time zone 'UTC') into v_from
  from billing.revenue_rollup r;
  -- least() skips nulls: a horizon that cannot be known stops the roll-up where it stands.
  v_end := least(coalesce(billing.ledger_horizon(), v_from), v_from + p_step);
  if v_end <= v_from then
    return v_from;
  end if;
  v_to := least(v_end, v_from + v_span);
  while v_to < v_end loop
    v_next := least(v_end, v_from + v_span * 2);
    exit when (select count(*) from (select 1 from billing.transfers t where t.created_at >= v_from and t.created_at < v_next
                                     limit p_rows + 1) x) > p_rows;
    v_span := v_span * 2;
    v_to := v_next;
  end loop;
  for v_day in
    select g::date from generate_series((v_from at time zone 'UTC')::date, ((v_to - interval '1 microsecond') at time zone 'UTC')::date,
      interval '1 day') g
  loop
    select greatest(coalesce(r.ledger_until, v_from), v_day::timestamp at time zone 'UTC') into v_lo
    from (select 1) one left join billing.revenue_rollup r on r.day = v_day;
    if v_lo < least(v_to, (v_day + 1)::timestamp at time zone 'UTC') then
      perform billing.add_ledger_span(v_day, v_lo, least(v_to, (v_day + 1)::timestamp at time zone 'UTC'));
    end if;
  end loop;
  -- What the writer kept before here is rolled up.
  delete from billing.ledger_tail x where x.at < v_to;
  delete from billing.lots_tail x where x.at < v_to;
  delete from billing.active_tail x where x.at < v_to;
  return v_to;
end;
$$;
comment on function billing.roll_up_ledger(p_step interval, p_rows integer) is 'pg_cron: adds the credit ledger''s rows up to its horizon to revenue_rollup, at most about p_rows transfers (and p_step, when given) a run; returns where it stands.';
revoke execute on function billing.roll_up_ledger(p_step interval, p_rows integer) from public;
grant execute on function billing.roll_up_ledger(p_step interval, p_rows integer) to service_role;

-- Computes (or recomputes) a day's events half over [day start, covered_until): the whole day
-- once it has closed (five minutes after midnight), else up to five minutes ago. Its credit
-- ledger half is recomputed too, from the rows, once the horizon has passed the day's end (a
-- closed day: its rows are final), or made up to the horizon for a day without a row; else it
-- stays roll_up_ledger's.
create or replace function billing.refresh_revenue_rollup(p_day date) returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_from timestamptz := p_day::timestamp at time zone 'UTC';
  v_end timestamptz := (p_day + 1)::timestamp at time zone 'UTC';
  v_until timestamptz := least(v_end, now() - interval '5 minutes');
  -- least() skips nulls: a horizon that cannot be known is the day's start.
  v_ledger_until timestamptz := greatest(v_from, least(v_end, coalesce(billing.ledger_horizon(), v_from)));
  v_ledger boolean;
begin
  if v_until <= v_from then
    return;  -- nothing of the day can be rolled up yet
  end if;
  v_ledger := v_ledger_until = v_end or not exists (select 1 from billing.revenue_rollup r where r.day = p_day);
  insert into billing.revenue_rollup as d (day, covered_until, money, paying_accounts, first_time_purchasers,
    checkouts_created, checkouts_paid, webhooks_received, webhooks_ok, sessionless_purchases, computed_at,
    ledger_until, credits, lots, active_accounts, outstanding_credits)
  select p_day, v_until, e.money, billing.account_bitmap(e.paying_accounts), e.first_time_purchasers,
    e.checkouts_created, e.checkouts_paid, e.webhooks_received, e.webhooks_ok,
    (select count(*) from billing.purchases x where x.stripe_session_id is null and x.created_at >= v_from and x.created_at < v_until),
    now(),
    l.until, l.credits, l.lots, billing.account_bitmap(l.active_accounts), billing.outstanding_before(v_from) + l.user_credit_change
  from billing.event_parts(v_from, v_until) e,
    lateral (select case when v_ledger then v_ledger_until else v_from end as until) u,
    lateral (select u.until, p.* from billing.ledger_parts(v_from, u.until) p) l
  on conflict (day) do update set covered_until = excluded.covered_until, money = excluded.money,
    paying_accounts = excluded.paying_accounts,
    first_time_purchasers = excluded.first_time_purchasers, checkouts_created = excluded.checkouts_created,
    checkouts_paid = excluded.checkouts_paid, webhooks_received = excluded.webhooks_received,
    webhooks_ok = excluded.webhooks_ok, sessionless_purchases = excluded.sessionless_purchases, computed_at = excluded.computed_at,
    ledger_until = case when v_ledger then excluded.ledger_until else d.ledger_until end,
    credits = case when v_ledger then excluded.credits else d.credits end,
    lots = case when v_ledger then excluded.lots else d.lots end,
    active_accounts = case when v_ledger then excluded.active_accounts else d.active_accounts end,
    outstanding_credits = case when v_ledger then excluded.outstanding_credits else d.outstanding_credits end;
end;
$$;
comment on function billing.refresh_revenue_rollup(p_day date) is 'Computes (or recomputes) a day''s revenue_rollup row: its events half, and its credit ledger half once the day is past the horizon (or up to it, for a new row).';
revoke execute on function billing.refresh_revenue_rollup(p_day date) from public;

-- Closed days whose roll-up is missing, incomplete (computed before the day ended) or stale (a
-- late event since), oldest first: from the first day anything was recorded to yesterday.
create or replace function billing.stale_revenue_days() returns setof date
language sql stable
set search_path = ''
as $$
  select g.day
  from generate_series(
    -- The credit ledger's first day by its first transfer (a BRIN index keeps no minimum).
    (least((select t.created_at from billing.transfers t order by t.id limit 1),
      (select min(t.occurred_at) from billing.money_transfers t), (select min(p.created_at) from billing.purchases p),
      (select min(e.received_at) from billing.stripe_events e)) at time zone 'UTC')::date,
    (now() at time zone 'UTC')::date - 1, interval '1 day') x
  cross join lateral (select x::date as day) g
  left join billing.revenue_rollup r on r.day = g.day
  where r.day is null or r.covered_until < (g.day + 1)::timestamp at time zone 'UTC'
     or not billing.revenue_rollup_is_current(r.day, r.covered_until, r.computed_at, r.sessionless_purchases)
  order by g.day
$$;
comment on function billing.stale_revenue_days() is 'Closed days whose revenue_rollup row is missing, incomplete or stale.';
revoke execute on function billing.stale_revenue_days() from public;
