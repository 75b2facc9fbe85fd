-- The cash ledger: money in cents, in its own double-entry ledger (money_transfers /
-- money_entries), apart from credits. Every posting mirrors a fact re-fetched from Stripe: a
-- provider payment, its fee and refunds, a payout (65-providers.sql), and a credit purchase as it
-- is paid, charged Stripe's fee, refunded or lost to a dispute (the trigger on billing.purchases
-- below), a plan's invoice and its refunds (57-plan-credits.sql). Σ of every transfer's entries
-- = 0; rows are never changed. It sits below every feature that posts to it; its transfers'
-- references to a provider and a payment are declared with those tables, in 65-providers.sql.
--
-- Accounts: `payers` (money arriving from outside), `platform_fees` (the platform's revenue),
-- `provider:<uuid>` (what Stripe holds for a provider's connected account), `provider_payouts`
-- (money paid out to providers' banks), `b2c_revenue` and `stripe_fees` (credit purchases), and
-- `tax_payable` (Stripe Tax collected on top of a price: owed to tax authorities, never revenue).
-- Revenue reporting (90-reporting.sql) sums this ledger.

-- ============================================================ tables

create table billing.money_transfers (
  id uuid primary key default gen_random_uuid(),
  kind text not null,
  idempotency_key text not null unique,
  currency text not null,
  provider_id uuid,                               -- references billing.providers (65-providers.sql)
  payment_id uuid,                                -- references billing.provider_payments (the same)
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

-- An organisation's credit purchases in the revenue metrics (`organisations`), found through
-- their Stripe ids.
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

-- ============================================================ functions

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
comment on function billing.money_entry(p_account text, p_cents bigint) is 'Internal: one entry of a money transfer, {account, amount_cents}, for billing.post_money.';
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

-- A credit purchase's money, posted as it happens (paid, refunded, dispute lost, Stripe's fee),
-- beside provider payments, so every revenue number is a sum over one ledger. Follows
-- billing.sync_purchase's changes to a purchase: one posting per fact, once by key.
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
