-- B2B provider payments through Stripe Connect. Scholarship providers get an Express
-- account; payers pay them through hosted Checkout as destination charges, and the platform
-- keeps an application fee (PLATFORM_FEE_BPS, 3% by default, rounded half to even).
-- What providers are paid and paid out is posted to the cash ledger (52-cash-ledger.sql), each
-- posting mirroring a fact re-fetched from Stripe; a daily reconciliation (68-reconciliation.sql)
-- compares it with what Stripe reports.

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
    -- The key outlives its stored answer (24 hours): another provider under it is refused, never
    -- answered with the old one as if it were created.
    if (v.name, v.email, v.country) is distinct from (p_name, p_email, p_country) then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', 'providers.create'));
    end if;
  end if;
  return v;
end;
$$;
comment on function billing.begin_provider(p_owner uuid, p_request_key text, p_name text, p_email text, p_country text) is 'Creates a provider record (before its Stripe account), or returns the one this request key made (IDEMPOTENCY_KEY_REUSED for another provider under it).';
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
as $$
  -- p_is_admin is the token's claim: an admin demoted or deleted since it was issued is not one.
  select * from billing.providers x
  where x.id = p_provider and (x.owner_user_id = p_user or (p_is_admin and billing.standing_refusal(p_user, true) is null))
$$;
comment on function billing.provider_for(p_provider uuid, p_user uuid, p_is_admin boolean) is 'A provider, if p_user owns it or (p_is_admin, the token''s claim) is an admin in the database now (else no row: callers answer 404).';
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
comment on function billing.attach_provider_payment_session(p_payment uuid, p_session_id text, p_url text, p_expires_at timestamp with time zone) is 'Records the Checkout session created for a provider payment (its id, URL and expiry); a payment keeps its first session.';
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
comment on function billing.list_provider_payments(p_provider uuid, p_limit integer, p_before timestamp with time zone) is 'A provider''s payments, newest first, before a time (at most 101: the route pages by 100).';
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
comment on function billing.list_provider_payouts(p_provider uuid, p_limit integer, p_before timestamp with time zone) is 'A provider''s payouts, newest first by Stripe''s time, before a time (at most 101: the route pages by 100).';
revoke execute on function billing.list_provider_payouts(p_provider uuid, p_limit integer, p_before timestamp with time zone) from public;
grant execute on function billing.list_provider_payouts(p_provider uuid, p_limit integer, p_before timestamp with time zone) to service_role;

create or replace function billing.provider_payment_by_id(p_provider uuid, p_payment uuid) returns billing.provider_payments
language sql stable
security definer
set search_path = ''
as $$ select * from billing.provider_payments x where x.provider_id = p_provider and x.id = p_payment $$;
comment on function billing.provider_payment_by_id(p_provider uuid, p_payment uuid) is 'One of a provider''s payments by id; no row when it is another provider''s.';
revoke execute on function billing.provider_payment_by_id(p_provider uuid, p_payment uuid) from public;
grant execute on function billing.provider_payment_by_id(p_provider uuid, p_payment uuid) to service_role;

-- A provider as it is now, read again after its Connect account changed it.
create or replace function billing.get_provider(p_provider uuid) returns setof billing.providers
language sql stable
security definer
set search_path = ''
as $$
  select * from billing.providers x where x.id = p_provider
$$;
comment on function billing.get_provider(p_provider uuid) is 'A provider by id, as it is now (no row when there is none); the route has checked who may see it.';
revoke execute on function billing.get_provider(p_provider uuid) from public;
grant execute on function billing.get_provider(p_provider uuid) to service_role;

-- A provider's balance per currency it was paid in.
create or replace function billing.get_provider_balances(p_provider uuid) returns table (currency text, amount_cents bigint)
language sql stable
security definer
set search_path = ''
as $$
  select c.currency, billing.provider_balance_cents(p_provider, c.currency)
  from (select distinct x.currency from billing.provider_payments x where x.provider_id = p_provider) c
  order by c.currency
$$;
comment on function billing.get_provider_balances(p_provider uuid) is 'GET /providers/:id: what Stripe should hold for the provider, per currency it was paid in, per the money ledger.';
revoke execute on function billing.get_provider_balances(p_provider uuid) from public;
grant execute on function billing.get_provider_balances(p_provider uuid) to service_role;

-- ============================================================ references into this domain

-- The cash ledger (52-cash-ledger.sql) sits below the features that post to it, this one
-- included: its transfers' references to a provider and a payment are declared here.
alter table billing.money_transfers add constraint money_transfers_provider_id_fkey
  foreign key (provider_id) references billing.providers (id);

alter table billing.money_transfers add constraint money_transfers_payment_id_fkey
  foreign key (payment_id) references billing.provider_payments (id);
