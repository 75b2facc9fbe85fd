-- B2B provider payments through Stripe Connect. Scholarship providers get an Express
-- account; payers pay them through hosted Checkout as destination charges, and the platform
-- keeps an application fee (PLATFORM_FEE_BPS, 3% by default, rounded half to even).
-- Money in cents is kept in its own double-entry ledger (money_transfers / money_entries),
-- apart from credits; every posting mirrors a fact re-fetched from Stripe. A daily
-- reconciliation compares what was recorded with what Stripe reports.

-- ============================================================ tables

create table billing.providers (
  id uuid primary key default gen_random_uuid(),
  owner_user_id uuid not null references auth.users (id) on delete restrict,
  request_key text not null,                      -- the HTTP Idempotency-Key that created it
  name text not null,
  email text not null,
  country text not null,
  stripe_account_id text unique,
  charges_enabled boolean not null default false,
  payouts_enabled boolean not null default false,
  details_submitted boolean not null default false,
  requirements_due text[] not null default '{}',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint providers_request unique (owner_user_id, request_key),
  constraint providers_name check (length(name) between 1 and 200),
  constraint providers_country check (country ~ '^[A-Z]{2}$')
);
comment on table billing.providers is 'A scholarship provider and its Stripe Connect Express account; status mirrors account.updated.';
alter table billing.providers enable row level security;
grant select on table billing.providers to service_role;

create index providers_owner on billing.providers (owner_user_id);

create table billing.provider_payments (
  id uuid primary key default gen_random_uuid(),
  provider_id uuid not null references billing.providers (id),
  created_by uuid not null,
  request_key text not null,
  amount_cents bigint not null,
  currency text not null,
  fee_bps integer not null,                       -- the fee rate when created: later changes never touch it
  platform_fee_cents bigint not null,             -- expected fee: round-half-even(amount × bps / 10,000)
  description text not null,
  payer_reference text,
  status text not null default 'pending',
  stripe_session_id text unique,
  session_url text,
  session_expires_at timestamptz,
  stripe_payment_intent_id text,
  stripe_charge_id text unique,
  charge_created_at timestamptz,
  application_fee_id text,
  fee_collected_cents bigint not null default 0,  -- Stripe's application fee, as posted to the money ledger
  amount_refunded_cents bigint not null default 0,
  fee_refunded_cents bigint not null default 0,
  created_at timestamptz not null default now(),
  paid_at timestamptz,
  updated_at timestamptz not null default now(),
  constraint provider_payments_request unique (created_by, request_key),
  constraint provider_payments_status check (status in ('pending', 'paid', 'failed', 'expired')),
  constraint provider_payments_amount check (amount_cents > 0),
  constraint provider_payments_fee check (fee_bps between 0 and 10000 and platform_fee_cents between 0 and amount_cents)
);
comment on table billing.provider_payments is 'A payment to a provider: a hosted Checkout Session as a destination charge with an application fee.';
alter table billing.provider_payments enable row level security;
grant select on table billing.provider_payments to service_role;

create index provider_payments_provider on billing.provider_payments (provider_id, created_at desc);

create index provider_payments_charged on billing.provider_payments (charge_created_at) where stripe_charge_id is not null;

create table billing.provider_payouts (
  id text primary key,                            -- Stripe's payout id
  provider_id uuid not null references billing.providers (id),
  amount_cents bigint not null,
  currency text not null,
  status text not null,                           -- Stripe's: pending | in_transit | paid | failed | canceled
  failure_code text,
  arrival_date timestamptz,
  stripe_created_at timestamptz not null,
  posted boolean not null default false,          -- whether the money ledger shows it leaving the provider's balance
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table billing.provider_payouts is 'Payouts from providers'' connected accounts to their banks, as Stripe reports them.';
alter table billing.provider_payouts enable row level security;
grant select on table billing.provider_payouts to service_role;

create index provider_payouts_provider on billing.provider_payouts (provider_id, stripe_created_at desc);

-- Accounts: `payers` (money arriving from outside), `platform_fees` (the platform's revenue),
-- `provider:<uuid>` (what Stripe holds for a provider's connected account),
-- `provider_payouts` (money paid out to providers' banks), and for credit purchases
-- `b2c_revenue` and `stripe_fees` (see the revenue migration), and `tax_payable` (Stripe Tax
-- collected on top of a price: owed to tax authorities, never revenue). Σ of every transfer's entries = 0.
create table billing.money_transfers (
  id uuid primary key default gen_random_uuid(),
  kind text not null,
  idempotency_key text not null unique,
  currency text not null,
  provider_id uuid references billing.providers (id),
  payment_id uuid references billing.provider_payments (id),
  stripe_id text,
  -- When it happened at Stripe (the event's time, when known), so a late event counts on its day.
  occurred_at timestamptz not null default now(),
  created_at timestamptz not null default now(),
  constraint money_transfers_kind check (kind in ('provider_payment', 'fee_adjustment', 'provider_refund', 'payout',
    'payout_reversal', 'credit_purchase', 'credit_refund', 'credit_dispute_lost', 'stripe_fee'))
);
comment on table billing.money_transfers is 'Immutable money movements in cents (B2B), each mirroring a Stripe fact; never credits.';
alter table billing.money_transfers enable row level security;
grant select on table billing.money_transfers to service_role;

create index money_transfers_occurred on billing.money_transfers (occurred_at);

-- What can change a rolled-up day afterwards (billing.revenue_rollup_is_current): what was
-- recorded since, on the same UTC day (a few minutes' worth; purchases_paid serves too) ...
create index money_transfers_created on billing.money_transfers (created_at, occurred_at);

-- ... and on a later UTC day than the day it counts on: tiny, as such rows are rare ...
create index money_transfers_late on billing.money_transfers (occurred_at, created_at)
  where (created_at at time zone 'UTC')::date > (occurred_at at time zone 'UTC')::date;

-- Organisations in the platform's numbers (B2B2C): what each organisation paid through Checkout
-- in a period (GMV, refunds, lost disputes, Stripe's fees, net revenue), how many of its members
-- spent its credits, what they spent, and net revenue per active member (ARPU). Part of
-- revenue_metrics (`organisations`), so the dashboard, the daily report and the API read one
-- definition. Computed from the raw rows: an organisation's purchases are few (found through
-- their Stripe ids), and its members' spending is found through transfers.member_id (indexed
-- where set).
create index money_transfers_credit_stripe on billing.money_transfers (stripe_id)
  where kind in ('credit_purchase', 'credit_refund', 'credit_dispute_lost', 'stripe_fee');

create table billing.money_entries (
  id bigint generated always as identity primary key,
  transfer_id uuid not null references billing.money_transfers (id),
  account text not null,
  currency text not null,
  amount_cents bigint not null,
  created_at timestamptz not null default now(),
  constraint money_entries_account check (account in ('payers', 'platform_fees', 'provider_payouts', 'b2c_revenue', 'stripe_fees',
    'tax_payable')
    or account ~ '^provider:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'),
  constraint money_entries_nonzero check (amount_cents <> 0)
);
comment on table billing.money_entries is 'Immutable double entries of money_transfers (Σ per transfer = 0). Positive: the account gains.';
alter table billing.money_entries enable row level security;
grant select on table billing.money_entries to service_role;

create index money_entries_account on billing.money_entries (account, currency);

create index money_entries_transfer on billing.money_entries (transfer_id);

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

create or replace function billing.platform_fee_cents(p_amount_cents bigint, p_fee_bps integer) returns bigint
language sql immutable strict
set search_path = ''
as $$
  -- amount × bps / 10,000, rounded half to even (banker's rounding), in integer arithmetic.
  select case when r > 5000 or (r = 5000 and q % 2 = 1) then q + 1 else q end
  from (select (p_amount_cents * p_fee_bps) / 10000 as q, (p_amount_cents * p_fee_bps) % 10000 as r) x
$$;
comment on function billing.platform_fee_cents(p_amount_cents bigint, p_fee_bps integer) is 'The platform fee: round-half-even(amount × bps / 10,000).';
revoke execute on function billing.platform_fee_cents(p_amount_cents bigint, p_fee_bps integer) from public;
grant execute on function billing.platform_fee_cents(p_amount_cents bigint, p_fee_bps integer) to service_role;

-- Posts one money transfer once per key; p_entries: [{account, amount_cents}] summing to 0.
create or replace function billing.post_money(
  p_kind text, p_key text, p_currency text, p_provider uuid, p_payment uuid, p_stripe_id text, p_entries jsonb
) returns boolean
language plpgsql
set search_path = ''
as $$
declare
  v_id uuid;
begin
  if (select coalesce(sum((e ->> 'amount_cents')::bigint), 0) from jsonb_array_elements(p_entries) e) <> 0 then
    perform billing.raise_error('MONEY_UNBALANCED', jsonb_build_object('kind', p_kind)); -- not the key: it may carry a caller's Idempotency-Key
  end if;
  insert into billing.money_transfers (kind, idempotency_key, currency, provider_id, payment_id, stripe_id, occurred_at)
  values (p_kind, p_key, p_currency, p_provider, p_payment, p_stripe_id,
    -- billing.event_time: set by process_stripe_event to the Stripe event's time.
    coalesce(nullif(current_setting('billing.event_time', true), '')::timestamptz, now()))
  on conflict (idempotency_key) do nothing
  returning id into v_id;
  if v_id is null then
    return false;
  end if;
  insert into billing.money_entries (transfer_id, account, currency, amount_cents)
  select v_id, e ->> 'account', p_currency, (e ->> 'amount_cents')::bigint
  from jsonb_array_elements(p_entries) e where (e ->> 'amount_cents')::bigint <> 0;
  return true;
end;
$$;
comment on function billing.post_money(p_kind text, p_key text, p_currency text, p_provider uuid, p_payment uuid, p_stripe_id text, p_entries jsonb) is 'Internal: posts a balanced money transfer once per idempotency key.';
revoke execute on function billing.post_money(p_kind text, p_key text, p_currency text, p_provider uuid, p_payment uuid, p_stripe_id text, p_entries jsonb) from public;

create or replace function billing.money_entry(p_account text, p_cents bigint) returns jsonb
language sql immutable
set search_path = ''
as $$ select jsonb_build_object('account', p_account, 'amount_cents', p_cents) $$;
revoke execute on function billing.money_entry(p_account text, p_cents bigint) from public;

create or replace function billing.provider_balance_cents(p_provider uuid, p_currency text) returns bigint
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(sum(e.amount_cents), 0)::bigint from billing.money_entries e
  where e.account = 'provider:' || p_provider and e.currency = p_currency
$$;
comment on function billing.provider_balance_cents(p_provider uuid, p_currency text) is 'What Stripe should hold for a provider''s connected account in a currency, per the money ledger.';
revoke execute on function billing.provider_balance_cents(p_provider uuid, p_currency text) from public;
grant execute on function billing.provider_balance_cents(p_provider uuid, p_currency text) to service_role;

create or replace function billing.begin_provider(p_owner uuid, p_request_key text, p_name text, p_email text, p_country text)
returns billing.providers
language plpgsql
security definer
set search_path = ''
as $$
declare
  v billing.providers;
begin
  if not exists (select 1 from auth.users u where u.id = p_owner) then
    perform billing.raise_error('USER_NOT_FOUND', jsonb_build_object('user_id', p_owner));
  end if;
  insert into billing.providers (owner_user_id, request_key, name, email, country)
  values (p_owner, p_request_key, p_name, p_email, p_country)
  on conflict (owner_user_id, request_key) do nothing
  returning * into v;
  if not found then
    select * into v from billing.providers x where x.owner_user_id = p_owner and x.request_key = p_request_key;
  end if;
  return v;
end;
$$;
comment on function billing.begin_provider(p_owner uuid, p_request_key text, p_name text, p_email text, p_country text) is 'Creates a provider record (before its Stripe account), or returns the one this request key made.';
revoke execute on function billing.begin_provider(p_owner uuid, p_request_key text, p_name text, p_email text, p_country text) from public;
grant execute on function billing.begin_provider(p_owner uuid, p_request_key text, p_name text, p_email text, p_country text) to service_role;

create or replace function billing.attach_provider_account(p_provider uuid, p_account text) returns billing.providers
language plpgsql
security definer
set search_path = ''
as $$
declare
  v billing.providers;
begin
  update billing.providers x set stripe_account_id = p_account, updated_at = now()
  where x.id = p_provider and (x.stripe_account_id is null or x.stripe_account_id = p_account)
  returning * into v;
  if not found then
    perform billing.raise_error('PROVIDER_NOT_FOUND', jsonb_build_object('provider_id', p_provider));
  end if;
  return v;
end;
$$;
comment on function billing.attach_provider_account(p_provider uuid, p_account text) is 'Records the Connect account made for a provider.';
revoke execute on function billing.attach_provider_account(p_provider uuid, p_account text) from public;
grant execute on function billing.attach_provider_account(p_provider uuid, p_account text) to service_role;

create or replace function billing.provider_for(p_provider uuid, p_user uuid, p_is_admin boolean) returns billing.providers
language sql stable
security definer
set search_path = ''
as $$ select * from billing.providers x where x.id = p_provider and (p_is_admin or x.owner_user_id = p_user) $$;
comment on function billing.provider_for(p_provider uuid, p_user uuid, p_is_admin boolean) is 'A provider, if p_user owns it or is an admin (else no row: callers answer 404).';
revoke execute on function billing.provider_for(p_provider uuid, p_user uuid, p_is_admin boolean) from public;
grant execute on function billing.provider_for(p_provider uuid, p_user uuid, p_is_admin boolean) to service_role;

-- p_state (re-fetched from Stripe): account_id, charges_enabled, payouts_enabled, details_submitted, requirements_due
create or replace function billing.sync_provider_account(p_state jsonb) returns text
language plpgsql
security definer
set search_path = ''
as $$
begin
  update billing.providers x
  set charges_enabled = (p_state ->> 'charges_enabled')::boolean,
      payouts_enabled = (p_state ->> 'payouts_enabled')::boolean,
      details_submitted = (p_state ->> 'details_submitted')::boolean,
      requirements_due = array(select jsonb_array_elements_text(coalesce(p_state -> 'requirements_due', '[]'))),
      updated_at = now()
  where x.stripe_account_id = p_state ->> 'account_id';
  return case when found then 'account_updated' else 'unknown_provider' end;
end;
$$;
comment on function billing.sync_provider_account(p_state jsonb) is 'Brings a provider''s status in line with its Connect account (account.updated).';
revoke execute on function billing.sync_provider_account(p_state jsonb) from public;
grant execute on function billing.sync_provider_account(p_state jsonb) to service_role;

create or replace function billing.begin_provider_payment(
  p_provider uuid, p_user uuid, p_request_key text, p_amount_cents bigint, p_currency text, p_description text,
  p_payer_reference text, p_fee_bps integer
) returns billing.provider_payments
language plpgsql
security definer
set search_path = ''
as $$
declare
  v billing.provider_payments;
  v_provider billing.providers;
begin
  select * into v from billing.provider_payments x where x.created_by = p_user and x.request_key = p_request_key;
  if found then
    if v.provider_id <> p_provider or v.amount_cents <> p_amount_cents or v.currency <> p_currency then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', 'provider_payment'));
    end if;
    return v;
  end if;
  select * into v_provider from billing.providers x where x.id = p_provider;
  if not found then
    perform billing.raise_error('PROVIDER_NOT_FOUND', jsonb_build_object('provider_id', p_provider));
  end if;
  if v_provider.stripe_account_id is null or not v_provider.charges_enabled then
    perform billing.raise_error('PROVIDER_NOT_READY', jsonb_build_object('provider_id', p_provider,
      'requirements_due', to_jsonb(v_provider.requirements_due)));
  end if;
  insert into billing.provider_payments (provider_id, created_by, request_key, amount_cents, currency, fee_bps,
    platform_fee_cents, description, payer_reference)
  values (p_provider, p_user, p_request_key, p_amount_cents, p_currency, p_fee_bps,
    billing.platform_fee_cents(p_amount_cents, p_fee_bps), p_description, p_payer_reference)
  returning * into v;
  return v;
end;
$$;
comment on function billing.begin_provider_payment(p_provider uuid, p_user uuid, p_request_key text, p_amount_cents bigint, p_currency text, p_description text, p_payer_reference text, p_fee_bps integer) is 'Creates a pending provider payment with its fee fixed at creation, or returns the one this request key made.';
revoke execute on function billing.begin_provider_payment(p_provider uuid, p_user uuid, p_request_key text, p_amount_cents bigint, p_currency text, p_description text, p_payer_reference text, p_fee_bps integer) from public;
grant execute on function billing.begin_provider_payment(p_provider uuid, p_user uuid, p_request_key text, p_amount_cents bigint, p_currency text, p_description text, p_payer_reference text, p_fee_bps integer) to service_role;

create or replace function billing.attach_provider_payment_session(p_payment uuid, p_session_id text, p_url text, p_expires_at timestamptz)
returns billing.provider_payments
language plpgsql
security definer
set search_path = ''
as $$
declare
  v billing.provider_payments;
begin
  update billing.provider_payments x
  set stripe_session_id = p_session_id, session_url = p_url, session_expires_at = p_expires_at, updated_at = now()
  where x.id = p_payment and (x.stripe_session_id is null or x.stripe_session_id = p_session_id)
  returning * into v;
  if not found then
    perform billing.raise_error('PAYMENT_NOT_FOUND', jsonb_build_object('payment_id', p_payment));
  end if;
  return v;
end;
$$;
revoke execute on function billing.attach_provider_payment_session(p_payment uuid, p_session_id text, p_url text, p_expires_at timestamp with time zone) from public;
grant execute on function billing.attach_provider_payment_session(p_payment uuid, p_session_id text, p_url text, p_expires_at timestamp with time zone) to service_role;

-- p_state: the checkout state (see _shared/domain/purchases.ts) with the charge's application fee and
-- destination. Converges: payment, fee changes and (cumulative, forward-only) refunds.
create or replace function billing.sync_provider_payment(p_state jsonb) returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  p billing.provider_payments;
  v_account text;
  v_destination text;
  v_fee bigint := coalesce((p_state ->> 'application_fee_amount')::bigint, 0);
  v_refunded bigint;
  v_fee_refunded bigint;
  v_key text;
begin
  select * into p from billing.provider_payments x where x.stripe_session_id = p_state ->> 'session_id' for update;
  if not found then
    return 'unknown_payment';
  end if;
  v_account := 'provider:' || p.provider_id;
  select x.stripe_account_id into v_destination from billing.providers x where x.id = p.provider_id;

  if p.status <> 'paid' and p_state ->> 'payment_status' = 'paid' then
    if (p_state ->> 'amount_total')::bigint <> p.amount_cents or lower(p_state ->> 'currency') <> p.currency
       or p_state ->> 'destination' is distinct from v_destination then
      perform billing.raise_error('PAYMENT_AMOUNT_MISMATCH', jsonb_build_object('payment_id', p.id,
        'expected_cents', p.amount_cents, 'paid_cents', p_state ->> 'amount_total', 'currency', p_state ->> 'currency'));
    end if;
    perform billing.post_money('provider_payment', 'provider-payment:' || p.id, p.currency, p.provider_id, p.id,
      p_state ->> 'charge_id', jsonb_build_array(
        billing.money_entry('payers', -p.amount_cents),
        billing.money_entry(v_account, p.amount_cents - v_fee),
        billing.money_entry('platform_fees', v_fee)));
    update billing.provider_payments x set status = 'paid', paid_at = now(), fee_collected_cents = v_fee, updated_at = now()
    where x.id = p.id returning * into p;
  elsif p.status = 'pending' and p_state ->> 'session_status' = 'expired' then
    update billing.provider_payments x set status = 'expired', updated_at = now() where x.id = p.id returning * into p;
  elsif p.status = 'pending' and p_state ->> 'session_status' = 'complete' and p_state ->> 'payment_status' = 'unpaid'
        and p_state ->> 'payment_intent_status' in ('requires_payment_method', 'canceled') then
    update billing.provider_payments x set status = 'failed', updated_at = now() where x.id = p.id returning * into p;
  end if;

  update billing.provider_payments x
  set stripe_payment_intent_id = coalesce(x.stripe_payment_intent_id, p_state ->> 'payment_intent'),
      stripe_charge_id = coalesce(x.stripe_charge_id, p_state ->> 'charge_id'),
      charge_created_at = coalesce(x.charge_created_at, to_timestamp((p_state ->> 'charge_created')::bigint)),
      application_fee_id = coalesce(p_state ->> 'application_fee_id', x.application_fee_id)
  where x.id = p.id returning * into p;
  if p.status <> 'paid' then
    return p.status;
  end if;

  -- Stripe's fee changed since it was posted (created late, or corrected): follow Stripe.
  if v_fee <> p.fee_collected_cents then
    perform billing.post_money('fee_adjustment', 'provider-fee:' || p.id || ':' || p.fee_collected_cents || '>' || v_fee,
      p.currency, p.provider_id, p.id, p_state ->> 'application_fee_id', jsonb_build_array(
        billing.money_entry(v_account, p.fee_collected_cents - v_fee),
        billing.money_entry('platform_fees', v_fee - p.fee_collected_cents)));
    update billing.provider_payments x set fee_collected_cents = v_fee where x.id = p.id returning * into p;
  end if;

  -- Refunds: Stripe reports cumulative amounts; a stale state never moves them back.
  v_refunded := greatest(coalesce((p_state ->> 'amount_refunded')::bigint, 0), p.amount_refunded_cents);
  v_fee_refunded := greatest(coalesce((p_state ->> 'application_fee_refunded')::bigint, 0), p.fee_refunded_cents);
  if v_refunded > p.amount_refunded_cents or v_fee_refunded > p.fee_refunded_cents then
    v_key := 'provider-refund:' || p.id || ':' || v_refunded || ':' || v_fee_refunded;
    perform billing.post_money('provider_refund', v_key, p.currency, p.provider_id, p.id, p_state ->> 'charge_id',
      jsonb_build_array(
        billing.money_entry('payers', v_refunded - p.amount_refunded_cents),
        billing.money_entry(v_account, -((v_refunded - p.amount_refunded_cents) - (v_fee_refunded - p.fee_refunded_cents))),
        billing.money_entry('platform_fees', -(v_fee_refunded - p.fee_refunded_cents))));
    update billing.provider_payments x
    set amount_refunded_cents = v_refunded, fee_refunded_cents = v_fee_refunded, updated_at = now()
    where x.id = p.id returning * into p;
  end if;
  return p.status;
end;
$$;
comment on function billing.sync_provider_payment(p_state jsonb) is 'Converges a provider payment on Stripe''s current state: paid → money posted with the fee; fee and refund changes follow.';
revoke execute on function billing.sync_provider_payment(p_state jsonb) from public;
grant execute on function billing.sync_provider_payment(p_state jsonb) to service_role;

-- p_state (re-fetched from the connected account): payout_id, account_id, amount, currency,
-- status, failure_code, arrival_date, created (unix seconds). Stripe takes a payout out of the
-- balance when it is created and puts it back if it fails or is cancelled.
create or replace function billing.sync_provider_payout(p_state jsonb) returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_provider billing.providers;
  po billing.provider_payouts;
  v_out boolean := p_state ->> 'status' in ('pending', 'in_transit', 'paid');
begin
  select * into v_provider from billing.providers x where x.stripe_account_id = p_state ->> 'account_id';
  if not found then
    return 'unknown_provider';
  end if;
  insert into billing.provider_payouts as x (id, provider_id, amount_cents, currency, status, failure_code, arrival_date,
    stripe_created_at)
  values (p_state ->> 'payout_id', v_provider.id, (p_state ->> 'amount')::bigint, lower(p_state ->> 'currency'),
    p_state ->> 'status', p_state ->> 'failure_code', to_timestamp((p_state ->> 'arrival_date')::bigint),
    to_timestamp((p_state ->> 'created')::bigint))
  on conflict (id) do update set status = excluded.status, failure_code = excluded.failure_code,
    arrival_date = excluded.arrival_date, updated_at = now();
  select * into po from billing.provider_payouts x where x.id = p_state ->> 'payout_id' for update;

  if v_out and not po.posted then
    perform billing.post_money('payout', 'payout:' || po.id, po.currency, po.provider_id, null, po.id, jsonb_build_array(
      billing.money_entry('provider:' || po.provider_id, -po.amount_cents),
      billing.money_entry('provider_payouts', po.amount_cents)));
    update billing.provider_payouts x set posted = true where x.id = po.id;
  elsif not v_out and po.posted then
    perform billing.post_money('payout_reversal', 'payout-reversal:' || po.id, po.currency, po.provider_id, null, po.id,
      jsonb_build_array(
        billing.money_entry('provider:' || po.provider_id, po.amount_cents),
        billing.money_entry('provider_payouts', -po.amount_cents)));
    update billing.provider_payouts x set posted = false where x.id = po.id;
  end if;
  return 'payout_' || (p_state ->> 'status');
end;
$$;
comment on function billing.sync_provider_payout(p_state jsonb) is 'Records a provider''s payout as Stripe reports it now; the money ledger follows (out on create, back on failure).';
revoke execute on function billing.sync_provider_payout(p_state jsonb) from public;
grant execute on function billing.sync_provider_payout(p_state jsonb) to service_role;

-- The Stripe event log's entry point: records a verified event once by id and applies the
-- state re-fetched from Stripe in the same transaction. The state says what it describes
-- (kind); a checkout state goes to the provider payment or the credit purchase of its session.
create or replace function billing.process_stripe_event(
  p_event_id text,
  p_type text,
  p_created timestamptz,
  p_livemode boolean,
  p_object_id text,
  p_state jsonb
) returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_outcome text;
begin
  -- Claims the event; a concurrent delivery of the same id waits here for the first.
  insert into billing.stripe_events as e (id, type, api_created, livemode, object_id, status)
  values (p_event_id, p_type, p_created, p_livemode, p_object_id, 'failed')
  on conflict (id) do update set attempts = e.attempts + 1
    where e.status = 'failed';
  if not found then
    return 'duplicate';
  end if;
  if p_state is null then
    update billing.stripe_events e set status = 'ignored', processed_at = now(), last_error = null where e.id = p_event_id;
    return 'ignored';
  end if;
  perform set_config('billing.event_time', p_created::text, true); -- money postings are dated by the event
  v_outcome := case p_state ->> 'kind'
    when 'account' then billing.sync_provider_account(p_state)
    when 'payout' then billing.sync_provider_payout(p_state)
    when 'subscription' then billing.sync_subscription(p_state)
    when 'plan_charge' then billing.sync_plan_charge(p_state)
    when 'org_invoice' then billing.sync_org_invoice(p_state)
    else case when exists (select 1 from billing.provider_payments x where x.stripe_session_id = p_state ->> 'session_id')
      then billing.sync_provider_payment(p_state) else billing.sync_purchase(p_state) end
  end;
  -- A stale plan invoice is done once the caller has refunded it (billing.finish_stripe_event):
  -- until then the event stays 'failed', so Stripe's retry brings the refund back.
  update billing.stripe_events e
  set status = case when v_outcome = 'plan_invoice_stale' then 'failed' else 'processed' end, processed_at = now(),
      last_error = case when v_outcome = 'plan_invoice_stale' then 'PLAN_REFUND_PENDING' end
  where e.id = p_event_id;
  return v_outcome;
end;
$$;
comment on function billing.process_stripe_event(p_event_id text, p_type text, p_created timestamp with time zone, p_livemode boolean, p_object_id text, p_state jsonb) is 'Records a verified Stripe event once by id and applies it, in one transaction; a duplicate is reported, not applied.';
revoke execute on function billing.process_stripe_event(p_event_id text, p_type text, p_created timestamp with time zone, p_livemode boolean, p_object_id text, p_state jsonb) from public;
grant execute on function billing.process_stripe_event(p_event_id text, p_type text, p_created timestamp with time zone, p_livemode boolean, p_object_id text, p_state jsonb) to service_role;

create or replace function billing.list_provider_payments(p_provider uuid, p_limit integer, p_before timestamptz default null)
returns setof billing.provider_payments
language sql
stable
security definer
set search_path = ''
as $$
  select * from billing.provider_payments x
  where x.provider_id = p_provider and (p_before is null or x.created_at < p_before)
  order by x.created_at desc limit least(greatest(p_limit, 1), 101)
$$;
revoke execute on function billing.list_provider_payments(p_provider uuid, p_limit integer, p_before timestamp with time zone) from public;
grant execute on function billing.list_provider_payments(p_provider uuid, p_limit integer, p_before timestamp with time zone) to service_role;

create or replace function billing.list_provider_payouts(p_provider uuid, p_limit integer, p_before timestamptz default null)
returns setof billing.provider_payouts
language sql
stable
security definer
set search_path = ''
as $$
  select * from billing.provider_payouts x
  where x.provider_id = p_provider and (p_before is null or x.stripe_created_at < p_before)
  order by x.stripe_created_at desc limit least(greatest(p_limit, 1), 101)
$$;
revoke execute on function billing.list_provider_payouts(p_provider uuid, p_limit integer, p_before timestamp with time zone) from public;
grant execute on function billing.list_provider_payouts(p_provider uuid, p_limit integer, p_before timestamp with time zone) to service_role;

create or replace function billing.provider_payment_by_id(p_provider uuid, p_payment uuid) returns billing.provider_payments
language sql stable
security definer
set search_path = ''
as $$ select * from billing.provider_payments x where x.provider_id = p_provider and x.id = p_payment $$;
revoke execute on function billing.provider_payment_by_id(p_provider uuid, p_payment uuid) from public;
grant execute on function billing.provider_payment_by_id(p_provider uuid, p_payment uuid) to service_role;

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

-- p_stripe, a whole day at once (SQL callers and tests; the providers function pages instead):
--   charges: [{id, amount, currency, destination, payment_id, created, application_fee_amount}]
--            (application_fee_amount from the application fee's own object; null: no fee)
--   payouts: [{id, account, amount, currency, status, created}]   (created on the day)
--   balances: [{account, currency, amount}]                       (connected accounts, now)
create or replace function billing.reconcile_providers(p_day date, p_stripe jsonb) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_run billing.reconciliation_progress;
  v_count integer;
begin
  insert into billing.reconciliation_progress (day, phase, finished_at) values (p_day, 'done', now()) returning * into v_run;
  perform billing.save_reconciliation_items(v_run.id, (select coalesce(jsonb_agg(i), '[]') from (
    select jsonb_build_object('kind', 'charge', 'stripe_id', c ->> 'id', 'account', c ->> 'destination',
      'payment_ref', c ->> 'payment_id', 'amount_cents', c -> 'amount', 'currency', c ->> 'currency') as i
    from jsonb_array_elements(coalesce(p_stripe -> 'charges', '[]')) c
    union all
    select jsonb_build_object('kind', 'fee', 'stripe_id', 'fee-of:' || (c ->> 'id'), 'account', c ->> 'destination',
      'charge_id', c ->> 'id', 'amount_cents', c -> 'application_fee_amount', 'currency', c ->> 'currency')
    from jsonb_array_elements(coalesce(p_stripe -> 'charges', '[]')) c where c ->> 'application_fee_amount' is not null
    union all
    select jsonb_build_object('kind', 'payout', 'stripe_id', s ->> 'id', 'account', s ->> 'account',
      'amount_cents', s -> 'amount', 'currency', s ->> 'currency', 'status', s ->> 'status')
    from jsonb_array_elements(coalesce(p_stripe -> 'payouts', '[]')) s
    union all
    select jsonb_build_object('kind', 'balance', 'stripe_id', (b ->> 'account') || ':' || lower(b ->> 'currency'),
      'account', b ->> 'account', 'amount_cents', b -> 'amount', 'currency', b ->> 'currency')
    from jsonb_array_elements(coalesce(p_stripe -> 'balances', '[]')) b) x));
  v_count := billing.store_reconciliation(v_run);
  delete from billing.reconciliation_items i where i.progress_id = v_run.id;
  return v_count;
end;
$$;
comment on function billing.reconcile_providers(p_day date, p_stripe jsonb) is 'Reconciles a day from Stripe''s records given whole (the same comparison as a paged run); replaces that day''s mismatch rows.';
revoke execute on function billing.reconcile_providers(p_day date, p_stripe jsonb) from public;
grant execute on function billing.reconcile_providers(p_day date, p_stripe jsonb) to service_role;

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
revoke execute on function billing.reconciliation_of(p_day date) from public;
grant execute on function billing.reconciliation_of(p_day date) to service_role;

-- Revenue reporting. Credit purchases post their money (cents) to the money ledger as they
-- happen (paid, refunded, dispute lost, Stripe's fee), beside provider payments, so every
-- revenue number is a sum over one ledger. One definition of each metric lives in
-- billing.compute_revenue_metrics (documented in docs/metrics.md), built from parts that
-- combine exactly across periods: sums, counts, and the two user sets as account bitmaps.
-- billing.revenue_rollup keeps each UTC day's parts (today's up to a few minutes ago), so
-- billing.revenue_metrics(from, to) reads them from there and only the rest (the last minutes,
-- and any day not rolled up yet or changed since by a late event) from the raw rows.
-- billing.daily_revenue keeps each day's numbers, refreshed after midnight and mailed to admins.
-- Follows billing.sync_purchase's changes to a purchase: one posting per fact, once by key.
-- Dated by the Stripe event being processed (billing.event_time), else now.
create or replace function billing.post_purchase_money() returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_lost integer;
  v_total integer := new.price_cents + new.tax_cents;
  -- The tax part of what was refunded before and after this change (a refund returns tax and
  -- price in proportion: billing.tax_refunded_cents).
  v_tax_before integer := billing.tax_refunded_cents(old.tax_cents, old.price_cents + old.tax_cents, old.amount_refunded_cents);
  v_tax_after integer := billing.tax_refunded_cents(new.tax_cents, v_total, new.amount_refunded_cents);
begin
  -- The payer paid price and tax; only the price is revenue, the tax is owed (tax_payable).
  if new.status = 'paid' and old.status <> 'paid' then
    perform billing.post_money('credit_purchase', 'credit-purchase:' || new.id, new.currency, null, null,
      new.stripe_charge_id, jsonb_build_array(billing.money_entry('payers', -v_total),
        billing.money_entry('b2c_revenue', new.price_cents), billing.money_entry('tax_payable', new.tax_cents)));
  end if;
  if new.stripe_fee_cents is not null and old.stripe_fee_cents is null and new.stripe_fee_cents > 0 then
    perform billing.post_money('stripe_fee', 'stripe-fee:' || new.id, new.currency, null, null, new.stripe_charge_id,
      jsonb_build_array(billing.money_entry('b2c_revenue', -new.stripe_fee_cents),
        billing.money_entry('stripe_fees', new.stripe_fee_cents)));
  end if;
  if new.amount_refunded_cents > old.amount_refunded_cents then
    perform billing.post_money('credit_refund', 'credit-refund:' || new.id || ':' || new.amount_refunded_cents,
      new.currency, null, null, new.stripe_charge_id, jsonb_build_array(
        billing.money_entry('b2c_revenue', -((new.amount_refunded_cents - old.amount_refunded_cents) - (v_tax_after - v_tax_before))),
        billing.money_entry('tax_payable', -(v_tax_after - v_tax_before)),
        billing.money_entry('payers', new.amount_refunded_cents - old.amount_refunded_cents)));
  end if;
  -- A lost dispute takes back what had not been refunded, tax included.
  v_lost := v_total - new.amount_refunded_cents;
  if new.dispute_status = 'lost' and old.dispute_status is distinct from 'lost' and v_lost > 0 then
    perform billing.post_money('credit_dispute_lost', 'credit-dispute:' || new.id, new.currency, null, null,
      new.dispute_id, jsonb_build_array(billing.money_entry('b2c_revenue', -(v_lost - (new.tax_cents - v_tax_after))),
        billing.money_entry('tax_payable', -(new.tax_cents - v_tax_after)), billing.money_entry('payers', v_lost)));
  end if;
  return null;
end;
$$;
comment on function billing.post_purchase_money() is 'Trigger: posts a credit purchase''s money (paid, Stripe fee, refunds, lost dispute) to the money ledger.';
revoke execute on function billing.post_purchase_money() from public;

-- ============================================================ triggers

create trigger money_transfers_immutable before update or delete on billing.money_transfers
  for each row execute function billing.refuse_ledger_change();

create trigger money_transfers_no_truncate before truncate on billing.money_transfers
  for each statement execute function billing.refuse_ledger_change();

create trigger money_entries_immutable before update or delete on billing.money_entries
  for each row execute function billing.refuse_ledger_change();

create trigger money_entries_no_truncate before truncate on billing.money_entries
  for each statement execute function billing.refuse_ledger_change();

create trigger purchases_post_money after update on billing.purchases
  for each row execute function billing.post_purchase_money();
