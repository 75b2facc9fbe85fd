-- Provider reconciliation: a daily comparison of the cash ledger (52-cash-ledger.sql) with what
-- Stripe reports for connected accounts (charges, application fees, payouts, balances). A run
-- pages through Stripe's lists within the edge's limits, saving each page with its position so
-- a stopped run resumes; when every phase is done the day's mismatches are stored
-- (reconciliation_runs, reconciliation_mismatches) and read by GET /providers/reconciliation.

-- ============================================================ tables

create table billing.reconciliation_runs (
  day date primary key,
  ran_at timestamptz not null default now(),
  stripe_charges integer not null,
  stripe_fees integer not null,
  stripe_payouts integer not null,
  mismatches integer not null
);
comment on table billing.reconciliation_runs is 'The latest provider reconciliation of each day (re-running a day replaces it).';
alter table billing.reconciliation_runs enable row level security;
grant select on table billing.reconciliation_runs to service_role;

create table billing.reconciliation_mismatches (
  id bigint generated always as identity primary key,
  day date not null references billing.reconciliation_runs (day) on delete cascade,
  provider_id uuid references billing.providers (id),
  kind text not null,
  currency text,
  expected_cents bigint,
  actual_cents bigint,
  payment_id uuid,
  stripe_ids text[] not null default '{}',
  detected_at timestamptz not null default now(),
  constraint reconciliation_mismatches_kind check (kind in ('payment_missing', 'charge_missing', 'amount_mismatch',
    'duplicate_charge', 'fee_missing', 'fee_mismatch', 'payout_missing', 'payout_mismatch', 'payout_unknown',
    'balance_mismatch'))
);
comment on table billing.reconciliation_mismatches is 'Each difference a reconciliation found: its kind, the amounts and the Stripe ids to look at.';
alter table billing.reconciliation_mismatches enable row level security;
grant select on table billing.reconciliation_mismatches to service_role;

create index reconciliation_mismatches_day on billing.reconciliation_mismatches (day);

-- A reconciliation pages through Stripe's lists within the edge's limits (a few seconds a
-- request): each page is saved with the run's new position in one transaction, so a run that
-- stops (budget spent, crash, timeout) resumes where it was and never counts a page twice.
create table billing.reconciliation_progress (
  id uuid primary key default gen_random_uuid(),
  day date not null,
  phase text not null default 'charges',          -- charges → fees → accounts → done
  cursor text,                                    -- where the phase resumes: Stripe's starting_after, or the last account done
  pages integer not null default 0,               -- Stripe pages saved
  locked_by text,                                 -- the worker paging it, with a lease as a job's
  locked_until timestamptz,
  started_at timestamptz not null default now(),  -- recorded facts count up to here (see store_reconciliation)
  updated_at timestamptz not null default now(),
  finished_at timestamptz,
  constraint reconciliation_progress_phase check (phase in ('charges', 'fees', 'accounts', 'done')),
  constraint reconciliation_progress_finished check ((phase = 'done') = (finished_at is not null))
);
comment on table billing.reconciliation_progress is 'Each reconciliation run: its phase and Stripe cursor, saved page by page so it can resume; at most one unfinished per day.';
alter table billing.reconciliation_progress enable row level security;
grant select on table billing.reconciliation_progress to service_role;

create unique index reconciliation_progress_open on billing.reconciliation_progress (day) where finished_at is null;

create table billing.reconciliation_items (
  progress_id uuid not null references billing.reconciliation_progress (id) on delete cascade,
  kind text not null,
  stripe_id text not null,                        -- the charge, fee or payout; a balance: '<account>:<currency>'
  account text,                                   -- the connected account (a charge's destination)
  charge_id text,                                 -- a fee's charge
  payment_ref text,                               -- a charge's metadata.payment_id
  amount_cents bigint not null,
  currency text not null,
  status text,                                    -- a payout's
  ledger_cents bigint,                            -- a balance: the money ledger's, read when Stripe's was saved
  primary key (progress_id, kind, stripe_id),
  constraint reconciliation_items_kind check (kind in ('charge', 'fee', 'payout', 'balance'))
);
comment on table billing.reconciliation_items is 'What Stripe reported to an unfinished run, page by page (a page read twice overwrites itself); deleted when the run finishes.';
alter table billing.reconciliation_items enable row level security;
grant select on table billing.reconciliation_items to service_role;

create index reconciliation_items_fee on billing.reconciliation_items (progress_id, charge_id) where kind = 'fee';

-- ============================================================ functions

-- A run compares one UTC day with what Stripe reports for it: destination charges created that
-- day with their application fees, each connected account's payouts created that day, and each
-- account's balance. The providers function pages through Stripe (charges, then fees, then the
-- accounts a few at a time) and saves each page here with the run's new position; the last
-- step compares everything in one statement. A run has a lease, like a job: one worker at a time.
create or replace function billing.claim_reconciliation(p_day date, p_worker text, p_lease_seconds integer default 30)
returns billing.reconciliation_progress
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_run billing.reconciliation_progress;
begin
  perform pg_advisory_xact_lock(hashtextextended('reconciliation-progress:' || p_day, 0)); -- one unfinished run a day
  select * into v_run from billing.reconciliation_progress r where r.day = p_day and r.finished_at is null for update;
  if not found then
    insert into billing.reconciliation_progress (day) values (p_day) returning * into v_run;
  end if;
  if v_run.locked_by is null or v_run.locked_by = p_worker or v_run.locked_until < now() then
    update billing.reconciliation_progress r
    set locked_by = p_worker, locked_until = now() + make_interval(secs => p_lease_seconds), updated_at = now()
    where r.id = v_run.id returning * into v_run;
  end if;
  return v_run;
end;
$$;
comment on function billing.claim_reconciliation(p_day date, p_worker text, p_lease_seconds integer) is 'The day''s unfinished reconciliation run (a new one if there is none), leased to p_worker unless another worker holds a live lease (then locked_by says who).';
revoke execute on function billing.claim_reconciliation(p_day date, p_worker text, p_lease_seconds integer) from public;
grant execute on function billing.claim_reconciliation(p_day date, p_worker text, p_lease_seconds integer) to service_role;

-- The worker still holds the run; otherwise it must stop (another resumed it, or it finished).
create or replace function billing.lock_reconciliation(p_run uuid, p_worker text) returns billing.reconciliation_progress
language plpgsql
set search_path = ''
as $$
declare
  v_run billing.reconciliation_progress;
begin
  select * into v_run from billing.reconciliation_progress r where r.id = p_run for update;
  if not found or v_run.finished_at is not null or v_run.locked_by is distinct from p_worker then
    perform billing.raise_error('LEASE_LOST', jsonb_build_object('reconciliation', p_run));
  end if;
  return v_run;
end;
$$;
comment on function billing.lock_reconciliation(p_run uuid, p_worker text) is 'Locks a run its worker still holds; LEASE_LOST otherwise.';
revoke execute on function billing.lock_reconciliation(p_run uuid, p_worker text) from public;

-- p_items: [{kind: charge|fee|payout|balance, stripe_id, account, charge_id, payment_ref, amount_cents, currency, status}]
create or replace function billing.save_reconciliation_items(p_run uuid, p_items jsonb) returns void
language sql
set search_path = ''
as $$
  insert into billing.reconciliation_items (progress_id, kind, stripe_id, account, charge_id, payment_ref, amount_cents,
    currency, status, ledger_cents)
  select distinct on (x.kind, x.stripe_id) p_run, x.kind, x.stripe_id, x.account, x.charge_id, x.payment_ref,
    x.amount_cents, lower(x.currency), x.status,
    -- Our side of a balance is read now, as Stripe's was: a run that takes a while still compares one moment.
    case when x.kind = 'balance' then (select billing.provider_balance_cents(pr.id, lower(x.currency))
                                       from billing.providers pr where pr.stripe_account_id = x.account) end
  from jsonb_to_recordset(coalesce(p_items, '[]')) as x(kind text, stripe_id text, account text, charge_id text,
    payment_ref text, amount_cents bigint, currency text, status text)
  -- A page read again (after a crash) overwrites itself: nothing is counted twice.
  on conflict (progress_id, kind, stripe_id) do update
  set account = excluded.account, charge_id = excluded.charge_id, payment_ref = excluded.payment_ref,
      amount_cents = excluded.amount_cents, currency = excluded.currency, status = excluded.status,
      ledger_cents = excluded.ledger_cents
$$;
comment on function billing.save_reconciliation_items(p_run uuid, p_items jsonb) is 'Saves Stripe records to a run (upserted by kind and id); balances get the money ledger''s side as of now.';
revoke execute on function billing.save_reconciliation_items(p_run uuid, p_items jsonb) from public;

create or replace function billing.record_reconciliation_page(
  p_run uuid, p_worker text, p_items jsonb, p_phase text, p_cursor text, p_lease_seconds integer default 30
) returns billing.reconciliation_progress
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_run billing.reconciliation_progress := billing.lock_reconciliation(p_run, p_worker);
begin
  perform billing.save_reconciliation_items(p_run, p_items);
  update billing.reconciliation_progress r
  set phase = p_phase, cursor = p_cursor, pages = r.pages + 1, updated_at = now(),
      locked_until = now() + make_interval(secs => p_lease_seconds)
  where r.id = p_run returning * into v_run;
  return v_run;
end;
$$;
comment on function billing.record_reconciliation_page(p_run uuid, p_worker text, p_items jsonb, p_phase text, p_cursor text, p_lease_seconds integer) is 'Saves one page of Stripe''s records and the run''s new position (phase, cursor) atomically, renewing the lease; LEASE_LOST tells the worker to stop.';
revoke execute on function billing.record_reconciliation_page(p_run uuid, p_worker text, p_items jsonb, p_phase text, p_cursor text, p_lease_seconds integer) from public;
grant execute on function billing.record_reconciliation_page(p_run uuid, p_worker text, p_items jsonb, p_phase text, p_cursor text, p_lease_seconds integer) to service_role;

create or replace function billing.release_reconciliation(p_run uuid, p_worker text) returns void
language sql
security definer
set search_path = ''
as $$
  update billing.reconciliation_progress r set locked_by = null, locked_until = null
  where r.id = p_run and r.locked_by = p_worker and r.finished_at is null
$$;
comment on function billing.release_reconciliation(p_run uuid, p_worker text) is 'Hands an unfinished run back, so the next call resumes it at once.';
revoke execute on function billing.release_reconciliation(p_run uuid, p_worker text) from public;
grant execute on function billing.release_reconciliation(p_run uuid, p_worker text) to service_role;

-- Compares a run's saved Stripe records with the database and replaces the day's results.
create or replace function billing.store_reconciliation(p_run billing.reconciliation_progress) returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_from timestamptz := p_run.day::timestamp at time zone 'UTC';
  -- Recorded charges and payouts count up to the run's start: a run of a day still under way
  -- (or resumed later) never reports what was made after its Stripe pages were read.
  v_to timestamptz := least((p_run.day + 1)::timestamp at time zone 'UTC', p_run.started_at);
  v_count integer;
begin
  perform pg_advisory_xact_lock(hashtextextended('reconcile-providers:' || p_run.day, 0)); -- one result of a day at a time
  delete from billing.reconciliation_runs r where r.day = p_run.day;
  insert into billing.reconciliation_runs (day, stripe_charges, stripe_fees, stripe_payouts, mismatches)
  select p_run.day, count(*) filter (where i.kind = 'charge'),
    count(*) filter (where i.kind = 'charge' and exists (select 1 from billing.reconciliation_items f
      where f.progress_id = p_run.id and f.kind = 'fee' and f.charge_id = i.stripe_id)),
    count(*) filter (where i.kind = 'payout'), 0
  from billing.reconciliation_items i
  join billing.providers pr on pr.stripe_account_id = i.account
  where i.progress_id = p_run.id and i.kind in ('charge', 'payout');

  insert into billing.reconciliation_mismatches (day, provider_id, kind, currency, expected_cents, actual_cents, payment_id, stripe_ids)
  with rc_charges as (
    select c.stripe_id as id, c.amount_cents as amount, c.currency, pr.id as provider_id,
           nullif(c.payment_ref, '') as payment_ref, f.amount_cents as fee
    from billing.reconciliation_items c
    join billing.providers pr on pr.stripe_account_id = c.account
    left join lateral (select f.amount_cents from billing.reconciliation_items f
                       where f.progress_id = p_run.id and f.kind = 'fee' and f.charge_id = c.stripe_id
                       order by f.stripe_id limit 1) f on true
    where c.progress_id = p_run.id and c.kind = 'charge'
  ), rc_payouts as (
    select s.stripe_id as id, s.account, s.amount_cents as amount, s.currency, s.status
    from billing.reconciliation_items s where s.progress_id = p_run.id and s.kind = 'payout'
  )
  -- A Stripe charge with no payment recorded for it: a second charge for a recorded payment is a duplicate.
  select p_run.day, c.provider_id,
         case when p.id is not null then 'duplicate_charge' else 'payment_missing' end,
         c.currency, p.amount_cents, c.amount, p.id, array_remove(array[c.id, p.stripe_charge_id], null)
  from rc_charges c
  left join billing.provider_payments p on p.id::text = c.payment_ref
  where not exists (select 1 from billing.provider_payments x where x.stripe_charge_id = c.id)
  union all
  -- Recorded payments: the charge must exist at Stripe with the same amount and the expected fee.
  select p_run.day, p.provider_id,
         case when c.id is null then 'charge_missing'
              when c.amount <> p.amount_cents or c.currency <> p.currency then 'amount_mismatch'
              when c.fee is null and p.platform_fee_cents > 0 then 'fee_missing'
              else 'fee_mismatch' end,
         p.currency,
         case when c.id is null or c.amount <> p.amount_cents then p.amount_cents else p.platform_fee_cents end,
         case when c.id is null then null when c.amount <> p.amount_cents then c.amount else c.fee end,
         p.id, array_remove(array[p.stripe_charge_id, p.application_fee_id], null)
  from billing.provider_payments p
  left join rc_charges c on c.id = p.stripe_charge_id
  where p.status = 'paid' and p.charge_created_at >= v_from and p.charge_created_at < v_to
    and (c.id is null or c.amount <> p.amount_cents or c.currency <> p.currency
         or coalesce(c.fee, 0) <> p.platform_fee_cents)
  union all
  -- Payouts Stripe made on the day, against the ones recorded (and the other way round).
  select p_run.day, pr.id,
         case when po.id is null then 'payout_missing' else 'payout_mismatch' end,
         s.currency, po.amount_cents, s.amount, null, array[s.id]
  from rc_payouts s
  join billing.providers pr on pr.stripe_account_id = s.account
  left join billing.provider_payouts po on po.id = s.id
  where po.id is null or po.amount_cents <> s.amount or po.status <> s.status
  union all
  select p_run.day, po.provider_id, 'payout_unknown', po.currency, po.amount_cents, null, null, array[po.id]
  from billing.provider_payouts po
  where po.stripe_created_at >= v_from and po.stripe_created_at < v_to
    and not exists (select 1 from rc_payouts s where s.id = po.id)
  union all
  -- What Stripe holds for each connected account, against the money ledger at the same moment.
  select p_run.day, pr.id, 'balance_mismatch', b.currency, b.ledger_cents, b.amount_cents, null, array[pr.stripe_account_id]
  from billing.reconciliation_items b
  join billing.providers pr on pr.stripe_account_id = b.account
  where b.progress_id = p_run.id and b.kind = 'balance' and b.ledger_cents is distinct from b.amount_cents;

  get diagnostics v_count = row_count;
  update billing.reconciliation_runs r set mismatches = v_count where r.day = p_run.day;
  return v_count;
end;
$$;
comment on function billing.store_reconciliation(p_run billing.reconciliation_progress) is 'Compares a run''s saved Stripe records with the payments, payouts and money ledger; replaces that day''s result and mismatch rows.';
revoke execute on function billing.store_reconciliation(p_run billing.reconciliation_progress) from public;

create or replace function billing.finish_reconciliation(p_run uuid, p_worker text) returns billing.reconciliation_progress
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_run billing.reconciliation_progress := billing.lock_reconciliation(p_run, p_worker);
begin
  perform billing.store_reconciliation(v_run);
  delete from billing.reconciliation_items i where i.progress_id = p_run;
  update billing.reconciliation_progress r
  set phase = 'done', cursor = null, finished_at = now(), updated_at = now(), locked_by = null, locked_until = null
  where r.id = p_run returning * into v_run;
  return v_run;
end;
$$;
comment on function billing.finish_reconciliation(p_run uuid, p_worker text) is 'The last step of a run: compares, stores the day''s result, and drops the saved Stripe records.';
revoke execute on function billing.finish_reconciliation(p_run uuid, p_worker text) from public;
grant execute on function billing.finish_reconciliation(p_run uuid, p_worker text) to service_role;

create or replace function billing.due_reconciliation_day(p_yesterday date) returns date
language sql stable
security definer
set search_path = ''
as $$
  -- Yesterday while it has an unfinished run or none begun since it ended; else the latest unfinished run.
  select case
    when exists (select 1 from billing.reconciliation_progress r
                 where r.day = p_yesterday and r.finished_at is null)
      or not exists (select 1 from billing.reconciliation_progress r
                     where r.day = p_yesterday and r.started_at >= (p_yesterday + 1)::timestamp at time zone 'UTC')
      then p_yesterday
    else (select max(r.day) from billing.reconciliation_progress r where r.finished_at is null)
  end
$$;
comment on function billing.due_reconciliation_day(p_yesterday date) is 'The day a scheduled reconciliation call works on: yesterday until it has been reconciled since it ended, then any unfinished run; null when nothing is due.';
revoke execute on function billing.due_reconciliation_day(p_yesterday date) from public;
grant execute on function billing.due_reconciliation_day(p_yesterday date) to service_role;

create or replace function billing.reconciliation_of(p_day date) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select jsonb_build_object('date', r.day, 'ran_at', r.ran_at, 'stripe_charges', r.stripe_charges,
    'stripe_fees', r.stripe_fees, 'stripe_payouts', r.stripe_payouts, 'mismatch_count', r.mismatches,
    'mismatches', coalesce((select jsonb_agg(jsonb_build_object('kind', m.kind, 'provider_id', m.provider_id,
        'currency', m.currency, 'expected_cents', m.expected_cents, 'actual_cents', m.actual_cents,
        'payment_id', m.payment_id, 'stripe_ids', to_jsonb(m.stripe_ids)) order by m.id)
      from billing.reconciliation_mismatches m where m.day = r.day), '[]'::jsonb))
  from billing.reconciliation_runs r where r.day = p_day
$$;
comment on function billing.reconciliation_of(p_day date) is 'A day''s provider reconciliation: when it ran, what Stripe reported, and each mismatch; null when the day was not reconciled.';
revoke execute on function billing.reconciliation_of(p_day date) from public;
grant execute on function billing.reconciliation_of(p_day date) to service_role;

-- The connected accounts a run compares balances of, a page at a time.
create or replace function billing.list_connected_accounts(p_after text, p_limit integer) returns table (account text)
language sql stable
security definer
set search_path = ''
as $$
  select x.stripe_account_id from billing.providers x
  where x.stripe_account_id > p_after order by x.stripe_account_id limit p_limit
$$;
comment on function billing.list_connected_accounts(p_after text, p_limit integer) is 'Reconciliation: a page of providers'' Stripe connected accounts, in id order, after a cursor.';
revoke execute on function billing.list_connected_accounts(p_after text, p_limit integer) from public;
grant execute on function billing.list_connected_accounts(p_after text, p_limit integer) to service_role;
