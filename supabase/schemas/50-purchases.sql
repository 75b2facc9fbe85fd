-- B2C credit purchases through Stripe Checkout: purchases, and the one convergent function that
-- brings a purchase in line with Stripe's current state (paid → credits; refunded → pro-rata
-- reversal; disputed → hold, then release or reversal). Every webhook and the success-page poll
-- call it with state re-fetched from Stripe, so events in any order, any number of times, end in
-- the same place. Here: purchases, checkout and a purchase's payment (with what a payment sets
-- off: a gift's code activated, an auto-recharge recorded); refunds and disputes of a paid
-- purchase, and billing.sync_purchase above all three, in 51-refunds-disputes.sql; the Stripe
-- event log: 77-stripe-events.sql.

-- ============================================================ types

create type billing.checkout as (
  purchase_id uuid,
  status text,
  reused boolean,
  package_id text,
  package_name text,
  price_cents integer,
  currency text,
  credits numeric(38, 18),
  bonus_credits numeric(38, 18),
  session_id text,
  session_url text,
  session_expires_at timestamptz,
  client_temp_id text,
  created_at timestamptz
);

-- ============================================================ tables

create table billing.purchases (
  id uuid default gen_random_uuid() not null,
  user_id uuid not null,
  package_id text not null,
  request_key text not null,
  client_temp_id text,
  status text default 'pending'::text not null,
  price_cents integer not null,
  currency text not null,
  credits numeric(38,18) not null,
  bonus_credits numeric(38,18) not null,
  stripe_session_id text,
  session_url text,
  session_expires_at timestamp with time zone,
  stripe_payment_intent_id text,
  stripe_charge_id text,
  stripe_fee_cents integer,
  amount_refunded_cents integer default 0 not null,
  credits_refund_reversed numeric(38,18) default 0 not null,
  bonus_refund_reversed numeric(38,18) default 0 not null,
  dispute_id text,
  dispute_status text,
  disputed_at timestamp with time zone,
  created_at timestamp with time zone default now() not null,
  paid_at timestamp with time zone,
  updated_at timestamp with time zone default now() not null,
  origin text default 'checkout'::text not null,
  save_card boolean default false not null,
  org_id uuid,
  bonus_expiry_forgiven numeric(38,18) default 0 not null,
  credits_expiry_forgiven numeric(38,18) default 0 not null,
  gift boolean default false not null,
  tax_cents integer default 0 not null,
  package_version integer not null,
  -- Paid after an operator verified its organisation: the wallet answers for it, not who paid.
  wallet_answers boolean default false not null,
  constraint purchases_wallet_answers check (not wallet_answers or org_id is not null),
  constraint purchases_dispute_status check (((dispute_status is null) or (dispute_status = any (array['open'::text, 'won'::text, 'lost'::text])))),
  constraint purchases_origin check ((origin = any (array['checkout'::text, 'auto_recharge'::text, 'invoice'::text]))),
  constraint purchases_refund_within check (((amount_refunded_cents >= 0) and (amount_refunded_cents <= (price_cents + tax_cents)))),
  constraint purchases_tax_cents check ((tax_cents >= 0)),
  constraint purchases_status check ((status = any (array['pending'::text, 'paid'::text, 'failed'::text, 'expired'::text]))),
  constraint purchases_pkey primary key (id),
  constraint purchases_request unique (user_id, request_key),
  constraint purchases_stripe_charge_id_key unique (stripe_charge_id),
  constraint purchases_stripe_session_id_key unique (stripe_session_id),
  constraint purchases_org_id_fkey foreign key (org_id) references billing.orgs(id) on delete restrict,
  constraint purchases_package_id_fkey foreign key (package_id) references billing.credit_packages(id),
  constraint purchases_package_version_fkey foreign key (package_id, package_version) references billing.credit_package_versions(package_id, version),
  constraint purchases_user_id_fkey foreign key (user_id) references auth.users(id) on delete restrict
);
comment on table billing.purchases is 'A credit package bought through a hosted Stripe Checkout Session. Stripe ids only: no card data.';
comment on column billing.purchases.disputed_at is 'When its charge''s dispute opened.';
comment on column billing.purchases.tax_cents is 'Stripe Tax collected on top of the price (the session''s total_details.amount_tax): charged, owed to tax authorities, never revenue; the credits and their cost basis are the price''s.';
comment on column billing.purchases.gift is 'Bought as a gift: paid, its credits go to its code''s escrow (billing.codes), not the buyer''s account.';
comment on column billing.purchases.package_version is 'The package version sold (its price, credits and Stripe Price): price_cents, credits and bonus_credits are its, whatever the package says now.';
comment on column billing.purchases.org_id is 'The organisation whose wallet the credits are for (null: the buyer''s own account).';
comment on column billing.purchases.bonus_expiry_forgiven is 'Bonus credits a refund or lost dispute did not take back because they had expired (already gone; never more than expired of the purchase''s lots).';
comment on column billing.purchases.credits_expiry_forgiven is 'The same for the paid credits (their cost was breakage revenue when they expired).';
alter table billing.purchases enable row level security;
grant select on table billing.purchases to authenticated;
grant select on table billing.purchases to service_role;

create index purchases_open on billing.purchases (user_id, package_id) where status = 'pending';

-- A client's temporary id names one purchase per user (optimistic UIs retry with it).
create unique index purchases_client_temp_id on billing.purchases (user_id, client_temp_id) where client_temp_id is not null;

create index purchases_pending_age on billing.purchases (created_at) where status = 'pending';

-- Purchases, money postings and Stripe events are a few percent of the ledger's volume: B-trees.
create index purchases_created on billing.purchases (created_at);

create index purchases_paid on billing.purchases (paid_at) where paid_at is not null;

create index purchases_first_paid on billing.purchases (user_id, paid_at) where status = 'paid';

create index purchases_paid_late on billing.purchases (created_at, paid_at)
  where (paid_at at time zone 'UTC')::date > (created_at at time zone 'UTC')::date;

-- ... and the purchases still without a Checkout Session (attaching one changes a day's checkouts).
create index purchases_sessionless on billing.purchases (created_at) where stripe_session_id is null;

create index purchases_org on billing.purchases (org_id, created_at) where org_id is not null;

-- A lost dispute's money posting finds its purchase by the dispute (billing.org_revenue).
create index purchases_dispute on billing.purchases (dispute_id) where dispute_id is not null;

create table billing.counters (
  name text primary key,
  value bigint not null default 0
);
comment on table billing.counters is 'Monotonic operational counters (e.g. rejected webhook signatures).';
alter table billing.counters enable row level security;
grant select on table billing.counters to service_role;

-- ============================================================ functions

create or replace function billing.tax_refunded_cents(p_tax_cents integer, p_total_cents integer, p_refunded_cents integer)
returns integer
language sql immutable strict
set search_path = ''
as $$
  -- floor(tax × refunded / total) in integer arithmetic: all of it once the whole charge is back.
  select case when p_total_cents > 0 then (p_tax_cents::bigint * p_refunded_cents / p_total_cents)::integer else 0 end
$$;
comment on function billing.tax_refunded_cents(p_tax_cents integer, p_total_cents integer, p_refunded_cents integer) is 'Internal: of p_refunded_cents refunded (cumulative) of a charge of p_total_cents that included p_tax_cents of tax, the tax part: floor(tax × refunded / total).';
revoke execute on function billing.tax_refunded_cents(p_tax_cents integer, p_total_cents integer, p_refunded_cents integer) from public;

create or replace function billing.checkout_of(p billing.purchases, p_reused boolean) returns billing.checkout
language sql stable
set search_path = ''
as $$
  select p.id, p.status, p_reused, p.package_id, k.name, p.price_cents, p.currency, p.credits, p.bonus_credits,
         p.stripe_session_id, p.session_url, p.session_expires_at, p.client_temp_id, p.created_at
  from billing.credit_package_versions k where k.package_id = p.package_id and k.version = p.package_version
$$;
comment on function billing.checkout_of(p billing.purchases, p_reused boolean) is 'Internal: a purchase as POST /checkout answers it, with its package version''s name.';
revoke execute on function billing.checkout_of(p billing.purchases, p_reused boolean) from public;

create or replace function billing.attach_checkout_session(p_purchase_id uuid, p_session_id text, p_url text, p_expires_at timestamptz)
returns billing.checkout
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_purchase billing.purchases;
begin
  update billing.purchases p
  set stripe_session_id = p_session_id, session_url = p_url, session_expires_at = p_expires_at, updated_at = now()
  where p.id = p_purchase_id and (p.stripe_session_id is null or p.stripe_session_id = p_session_id)
  returning * into v_purchase;
  if not found then
    perform billing.raise_error('PURCHASE_NOT_FOUND', jsonb_build_object('purchase_id', p_purchase_id));
  end if;
  return billing.checkout_of(v_purchase, false);
end;
$$;
comment on function billing.attach_checkout_session(p_purchase_id uuid, p_session_id text, p_url text, p_expires_at timestamp with time zone) is 'Records the Stripe Checkout Session made for a purchase.';
revoke execute on function billing.attach_checkout_session(p_purchase_id uuid, p_session_id text, p_url text, p_expires_at timestamp with time zone) from public;
grant execute on function billing.attach_checkout_session(p_purchase_id uuid, p_session_id text, p_url text, p_expires_at timestamp with time zone) to service_role;

create or replace function billing.expire_stale_purchases(p_limit integer default 500) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  -- A pending purchase whose session never got created (Stripe was down) or has expired.
  -- `status = 'pending'` again on the row itself: a payment that converged while this waited on
  -- the row (an async method settling late) leaves it paid.
  update billing.purchases p set status = 'expired', updated_at = now()
  where p.status = 'pending' and p.id in (
    select p2.id from billing.purchases p2
    where p2.status = 'pending' and p2.origin = 'checkout' -- a recharge has no session: its webhook decides
      and ((p2.stripe_session_id is null and p2.created_at < now() - interval '1 hour')
           or p2.session_expires_at < now() - interval '1 hour')
    limit p_limit);
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;
comment on function billing.expire_stale_purchases(p_limit integer) is 'pg_cron: expires pending purchases left without a session, or whose session expired an hour ago (Stripe''s own expiry event normally does this).';
revoke execute on function billing.expire_stale_purchases(p_limit integer) from public;
grant execute on function billing.expire_stale_purchases(p_limit integer) to service_role;

-- Called by sync_purchase when a gift purchase is paid: the account its credits go to.
create or replace function billing.activate_gift_code(p_purchase billing.purchases) returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_code billing.codes;
begin
  update billing.codes c set status = 'active', updated_at = now()
  where c.purchase_id = p_purchase.id and c.status = 'pending' returning * into v_code;
  if not found then
    select * into v_code from billing.codes c where c.purchase_id = p_purchase.id;
  end if;
  -- The buyer's account exists from now on: a refund or dispute of the gift compares every lot's
  -- account with it (take_back_purchase), and owes there what the redeemer spent.
  perform billing.ensure_user_account(p_purchase.user_id);
  insert into billing.notification_outbox (template, user_id, dedupe_key, payload)
  values ('gift_code', p_purchase.user_id, 'gift-code:' || v_code.id,
          jsonb_build_object('purchase_id', p_purchase.id, 'code_id', v_code.id))
  on conflict (dedupe_key) do nothing;
  return billing.code_escrow_id(v_code.id);
end;
$$;
comment on function billing.activate_gift_code(p_purchase billing.purchases) is 'Internal: a paid gift''s code becomes redeemable and its email is queued (the id only: the sender derives the code); returns the escrow account the purchase credits.';
revoke execute on function billing.activate_gift_code(p_purchase billing.purchases) from public;

-- A purchase's payment as Stripe reports it: paid → its credits (and bonus) granted once, the
-- receipt queued, the card kept when asked; or the Checkout expired, failed, or an off-session
-- recharge's charge failed. Called by billing.sync_purchase with the purchase locked.
create or replace function billing.sync_purchase_payment(p billing.purchases, p_state jsonb, p_user uuid, p_wallet bigint)
returns billing.purchases
language plpgsql
set search_path = ''
as $$
declare
  v_tax integer := coalesce((p_state ->> 'amount_tax')::integer, 0);
  v_credited bigint;  -- where the payment's credits go: the wallet, a gift's escrow, or (null) the buyer
begin
  if p.status <> 'paid' and p_state ->> 'payment_status' = 'paid' then
    -- The price before tax must be ours, and the total that price plus Stripe Tax's amount (none
    -- when automatic tax is off): anything else was not the package we sold.
    if coalesce((p_state ->> 'amount_subtotal')::integer, (p_state ->> 'amount_total')::integer) <> p.price_cents
       or (p_state ->> 'amount_total')::integer <> p.price_cents + v_tax or v_tax < 0
       or lower(p_state ->> 'currency') <> p.currency then
      perform billing.raise_error('PAYMENT_AMOUNT_MISMATCH', jsonb_build_object('purchase_id', p.id,
        'expected_cents', p.price_cents, 'paid_cents', p_state ->> 'amount_total', 'tax_cents', v_tax,
        'currency', p_state ->> 'currency'));
    end if;
    -- The credits are a paid lot whose cost is the price; the bonus a promotional lot. A gift's
    -- go into its code's escrow until someone redeems the code (75-codes.sql).
    v_credited := case when p.gift then billing.activate_gift_code(p) else p_wallet end;
    perform billing.grant_credits(p_user, p.credits, 'purchase', 'purchase:' || p.id, p.stripe_session_id, null,
      billing.purchase_metadata(p), jsonb_build_object('category', 'paid', 'cost_cents', p.price_cents, 'currency', p.currency,
        'purchase_id', p.id), v_credited);
    if p.bonus_credits > 0 then
      perform billing.grant_credits(p_user, p.bonus_credits, 'promo_grant', 'purchase-bonus:' || p.id, p.stripe_session_id,
        null, billing.purchase_metadata(p), jsonb_build_object('category', 'promotional', 'currency', p.currency,
          'purchase_id', p.id), v_credited);
    end if;
    -- Who answers for it is settled by when it was paid (Stripe's charge time, in whole seconds:
    -- a charge in the verification's second counts as after it), not when we learn of it (a late
    -- webhook after a verification moves no payment made before it); verifying the school later
    -- moves no old payment.
    update billing.purchases x set status = 'paid', paid_at = now(), tax_cents = v_tax, updated_at = now(),
      wallet_answers = exists (select 1 from billing.orgs o where o.id = p.org_id
        and date_trunc('second', o.verified_at) <= coalesce(to_timestamp((p_state ->> 'charge_created')::bigint), now()))
    where x.id = p.id returning * into p;
    update billing.recharges r set status = 'succeeded', payment_intent_id = p_state ->> 'payment_intent', updated_at = now()
    where r.purchase_id = p.id;
    -- The card the student asked to keep, for auto-recharge (Stripe ids only).
    if p.save_card and p_state ->> 'customer' is not null and p_state ->> 'payment_method' is not null then
      insert into billing.saved_cards as c (user_id, customer_id, payment_method_id)
      values (p.user_id, p_state ->> 'customer', p_state ->> 'payment_method')
      on conflict (user_id) do update set customer_id = excluded.customer_id,
        payment_method_id = excluded.payment_method_id, saved_at = now();
    end if;
    insert into billing.notification_outbox (template, user_id, dedupe_key, payload)
    values ('purchase_receipt', p.user_id, 'receipt:' || p.id, jsonb_build_object(
      'purchase_id', p.id, 'package_id', p.package_id, 'price_cents', p.price_cents, 'tax_cents', p.tax_cents,
      'currency', p.currency,
      'credits', trim_scale(p.credits)::text, 'bonus_credits', trim_scale(p.bonus_credits)::text)
      || coalesce(billing.purchase_metadata(p), '{}'))
    on conflict (dedupe_key) do nothing;
  elsif p.status = 'pending' and p_state ->> 'session_status' = 'expired' then
    update billing.purchases x set status = 'expired', updated_at = now() where x.id = p.id returning * into p;
  elsif p.status = 'pending' and p_state ->> 'session_status' = 'complete' and p_state ->> 'payment_status' = 'unpaid'
        and p_state ->> 'payment_intent_status' in ('requires_payment_method', 'canceled') then
    update billing.purchases x set status = 'failed', updated_at = now() where x.id = p.id returning * into p;
  elsif p.status = 'pending' and p.origin = 'auto_recharge'
        and p_state ->> 'payment_intent_status' in ('requires_payment_method', 'requires_action', 'canceled') then
    -- The off-session charge failed (the worker may have recorded it already: this converges).
    perform billing.record_recharge(r.id, p_state ->> 'payment_intent', coalesce(p_state ->> 'failure_code', 'payment_failed'))
    from billing.recharges r where r.purchase_id = p.id;
    select * into p from billing.purchases x where x.id = p.id;
  end if;
  return p;
end;
$$;
comment on function billing.sync_purchase_payment(p billing.purchases, p_state jsonb, p_user uuid, p_wallet bigint) is 'Internal: a locked purchase''s payment brought in line with Stripe''s state (paid → credits granted once; expired; failed); returns the purchase as it now is.';
revoke execute on function billing.sync_purchase_payment(p billing.purchases, p_state jsonb, p_user uuid, p_wallet bigint) from public, anon, authenticated;

create or replace function billing.record_recharge(p_recharge_id uuid, p_payment_intent text, p_failure_code text) returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  r billing.recharges;
begin
  select * into r from billing.recharges x where x.id = p_recharge_id for update;
  if not found or r.status in ('succeeded', 'failed') then
    return coalesce(r.status, 'unknown');
  end if;
  if p_failure_code is null then
    update billing.recharges x set status = 'submitted', payment_intent_id = p_payment_intent, updated_at = now()
    where x.id = r.id;
    return 'submitted';
  end if;
  perform 1 from billing.accounts a where a.user_id = r.user_id for update;
  update billing.recharges x set status = 'failed', failure_code = p_failure_code,
    payment_intent_id = coalesce(p_payment_intent, x.payment_intent_id), updated_at = now()
  where x.id = r.id;
  update billing.purchases p set status = 'failed', updated_at = now() where p.id = r.purchase_id and p.status = 'pending';
  if billing.turn_off_auto_recharge(r.user_id, p_failure_code, jsonb_build_object('recharge_id', r.id)) then
    insert into billing.notification_outbox (template, user_id, dedupe_key, payload)
    values ('auto_recharge', r.user_id, 'recharge-failed:' || r.id,
      jsonb_build_object('event', 'disabled', 'reason', p_failure_code, 'package_id', r.package_id,
        'price_cents', r.price_cents, 'currency', r.currency))
    on conflict (dedupe_key) do nothing;
  end if;
  return 'failed';
end;
$$;
comment on function billing.record_recharge(p_recharge_id uuid, p_payment_intent text, p_failure_code text) is 'Records what Stripe answered for a recharge; a failure turns auto-recharge off (audited, emailed).';
revoke execute on function billing.record_recharge(p_recharge_id uuid, p_payment_intent text, p_failure_code text) from public;
grant execute on function billing.record_recharge(p_recharge_id uuid, p_payment_intent text, p_failure_code text) to service_role;

create or replace function billing.turn_off_auto_recharge(p_user uuid, p_reason text, p_audit jsonb)
returns boolean
language plpgsql
set search_path = ''
as $$
begin
  update billing.auto_recharge s set enabled = false, disabled_reason = p_reason, updated_at = now()
  where s.user_id = p_user and s.enabled;
  if not found then
    return false;
  end if;
  update billing.accounts a set auto_recharge_below = null where a.user_id = p_user;
  insert into billing.auto_recharge_audit (user_id, actor, change)
  values (p_user, null, jsonb_build_object('disabled', p_reason) || coalesce(p_audit, '{}'));
  return true;
end;
$$;
comment on function billing.turn_off_auto_recharge(p_user uuid, p_reason text, p_audit jsonb) is 'Internal: turns a user''s auto-recharge off for p_reason (audited); only their own PUT turns it on again. Returns whether it was on.';
revoke execute on function billing.turn_off_auto_recharge(p_user uuid, p_reason text, p_audit jsonb) from public;

create or replace function billing.increment_counter(p_name text, p_by bigint default 1) returns bigint
language sql
security definer
set search_path = ''
as $$
  insert into billing.counters as c (name, value) values (p_name, p_by)
  on conflict (name) do update set value = c.value + p_by
  returning value
$$;
comment on function billing.increment_counter(p_name text, p_by bigint) is 'Adds to an operational counter.';
revoke execute on function billing.increment_counter(p_name text, p_by bigint) from public;
grant execute on function billing.increment_counter(p_name text, p_by bigint) to service_role;

create or replace function billing.get_purchase(p_user uuid, p_ref text) returns billing.purchases
language sql stable
security definer
set search_path = ''
as $$
  select * from billing.purchases p
  where (p.stripe_session_id = p_ref or p.id::text = p_ref) and (p_user is null or p.user_id = p_user)
$$;
comment on function billing.get_purchase(p_user uuid, p_ref text) is 'A purchase by id or Checkout Session id, if it belongs to p_user (null: any).';
revoke execute on function billing.get_purchase(p_user uuid, p_ref text) from public;
grant execute on function billing.get_purchase(p_user uuid, p_ref text) to service_role;

-- What an organisation's purchase adds to its ledger entries and receipt.
create or replace function billing.purchase_metadata(p billing.purchases) returns jsonb
language sql stable
set search_path = ''
as $$
  select case when p.org_id is not null then
    jsonb_build_object('org_id', p.org_id, 'org_name', o.name, 'bought_by', p.user_id) end
  from (select) x left join billing.orgs o on o.id = p.org_id
$$;
comment on function billing.purchase_metadata(p billing.purchases) is 'Internal: an organisation purchase''s organisation and buyer (null for a student''s own).';
revoke execute on function billing.purchase_metadata(p billing.purchases) from public;

create or replace function billing.begin_checkout(p_user uuid, p_package_id text, p_request_key text, p_client_temp_id text default null,
  p_save_card boolean default false, p_org uuid default null)
returns billing.checkout
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_package billing.credit_packages;
  v_purchase billing.purchases;
begin
  select * into v_purchase from billing.purchases p where p.user_id = p_user and p.request_key = p_request_key;
  if found then
    if v_purchase.package_id <> p_package_id or v_purchase.org_id is distinct from p_org then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', 'checkout'));
    end if;
    return billing.checkout_of(v_purchase, false);  -- a retry of the same request
  end if;

  if p_org is not null then
    perform billing.require_org_role(p_org, p_user, true);  -- only an owner or admin buys for the organisation
  end if;
  select * into v_package from billing.credit_packages k where k.id = p_package_id and k.active;
  if not found then
    perform billing.raise_error('PACKAGE_NOT_FOUND', '{}'); -- never the caller's text: DETAILs reach the Postgres log
  end if;

  -- One checkout at a time per user, so two tabs cannot open two sessions for one package.
  perform pg_advisory_xact_lock(hashtextextended('checkout:' || p_user::text, 0));
  if p_client_temp_id is not null then
    select * into v_purchase from billing.purchases p where p.user_id = p_user and p.client_temp_id = p_client_temp_id;
    if found and (v_purchase.package_id <> p_package_id or v_purchase.org_id is distinct from p_org) then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', 'checkout', 'field', 'client_temp_id'));
    elsif found then
      return billing.checkout_of(v_purchase, true);  -- the same optimistic operation, sent again under another key
    end if;
  end if;
  select * into v_purchase from billing.purchases p
  where p.user_id = p_user and p.package_id = p_package_id and p.org_id is not distinct from p_org and p.status = 'pending' and not p.gift
    and p.package_version = v_package.version -- one opened before a price change is not the package on sale now
    and (p.session_expires_at > now() + interval '1 minute' or (p.stripe_session_id is null and p.created_at > now() - interval '2 minutes'))
  order by p.created_at desc limit 1;
  if found then
    if v_purchase.stripe_session_id is null then
      perform billing.raise_error('CHECKOUT_IN_PROGRESS', jsonb_build_object('purchase_id', v_purchase.id));
    end if;
    return billing.checkout_of(v_purchase, true);
  end if;

  insert into billing.purchases (user_id, package_id, request_key, client_temp_id, price_cents, currency, credits, bonus_credits,
                                 save_card, org_id, package_version)
  values (p_user, v_package.id, p_request_key, p_client_temp_id, v_package.price_cents, v_package.currency,
          v_package.credits, v_package.bonus_credits, coalesce(p_save_card, false) and p_org is null, p_org, v_package.version)
  returning * into v_purchase;
  return billing.checkout_of(v_purchase, false);
end;
$$;
comment on function billing.begin_checkout(p_user uuid, p_package_id text, p_request_key text, p_client_temp_id text, p_save_card boolean, p_org uuid) is 'Creates a pending purchase (for p_org''s wallet when given: owners and admins only), or returns the user''s open one for the same package and organisation, or the one this request key already made.';
revoke execute on function billing.begin_checkout(p_user uuid, p_package_id text, p_request_key text, p_client_temp_id text, p_save_card boolean, p_org uuid) from public;
grant execute on function billing.begin_checkout(p_user uuid, p_package_id text, p_request_key text, p_client_temp_id text, p_save_card boolean, p_org uuid) to service_role;

-- The Stripe Price a purchase's Checkout names, when its package version has one.
create or replace function billing.get_purchase_stripe_price(p_purchase uuid) returns text
language sql stable
security definer
set search_path = ''
as $$
  select v.stripe_price_id from billing.purchases p
  join billing.credit_package_versions v on v.package_id = p.package_id and v.version = p.package_version
  where p.id = p_purchase
$$;
comment on function billing.get_purchase_stripe_price(p_purchase uuid) is 'The Stripe Price of the package version a purchase sold; null when that version has none (Checkout then sends price_data).';
revoke execute on function billing.get_purchase_stripe_price(p_purchase uuid) from public;
grant execute on function billing.get_purchase_stripe_price(p_purchase uuid) to service_role;

-- A user's checkout velocity, counted in Postgres while Redis is unreachable (exact across instances).
create or replace function billing.get_checkout_velocity(p_user uuid) returns table (sessions integer, amount_cents integer, failed integer)
language sql stable
security definer
set search_path = ''
as $$
  select count(*) filter (where p.created_at > now() - interval '10 minutes')::int,
         coalesce(sum(p.price_cents) filter (where p.created_at > now() - interval '24 hours'), 0)::int,
         (select count(*) from billing.stripe_events e
          where e.type in ('payment_intent.payment_failed', 'checkout.session.async_payment_failed')
            and e.api_created > now() - interval '1 hour'
            and e.object_id in (select x.stripe_payment_intent_id from billing.purchases x where x.user_id = p_user
                                union all
                                select x.stripe_session_id from billing.purchases x where x.user_id = p_user)
         )::int
  from billing.purchases p
  where p.user_id = p_user and p.created_at > now() - interval '24 hours'
$$;
comment on function billing.get_checkout_velocity(p_user uuid) is 'Checkout velocity without Redis: a user''s purchases started in 10 minutes, their amount over 24 hours, and the failed-payment events of the last hour on their purchases.';
revoke execute on function billing.get_checkout_velocity(p_user uuid) from public;
grant execute on function billing.get_checkout_velocity(p_user uuid) to service_role;

-- ============================================================ policies

create policy "Users can read their own purchases" on billing.purchases
  for select to authenticated using (user_id = (select auth.uid()));

-- A purchase's lots, what of them expired unforgiven and its buyer: what a refund or a dispute of
-- it (51-refunds-disputes.sql) reads.
create or replace function billing.purchase_lots(p_purchase_id uuid, p_category text) returns bigint[]
language sql stable
set search_path = ''
as $$
  select coalesce(array_agg(l.id order by l.category, l.id), '{}') from billing.lots l
  where l.purchase_id = p_purchase_id and (p_category is null or l.category = p_category)
$$;
comment on function billing.purchase_lots(p_purchase_id uuid, p_category text) is 'Internal: the lots a purchase granted (paid before promotional), for its reversals to take back first.';
revoke execute on function billing.purchase_lots(p_purchase_id uuid, p_category text) from public;

create or replace function billing.purchase_expiry_unforgiven(p_purchase_id uuid, p_category text) returns numeric
language sql stable
set search_path = ''
as $$
  select billing.lots_expired(billing.purchase_lots(p_purchase_id, p_category))
    - (select case p_category when 'paid' then p.credits_expiry_forgiven when 'promotional' then p.bonus_expiry_forgiven
              else p.credits_expiry_forgiven + p.bonus_expiry_forgiven end
       from billing.purchases p where p.id = p_purchase_id)
$$;
comment on function billing.purchase_expiry_unforgiven(p_purchase_id uuid, p_category text) is 'Internal: how many of a purchase''s credits (of one category; both when null) expired and were not yet forgiven by a refund or a lost dispute.';
revoke execute on function billing.purchase_expiry_unforgiven(p_purchase_id uuid, p_category text) from public;

create or replace function billing.purchase_buyer(p_purchase_id uuid) returns bigint
language plpgsql
set search_path = ''
as $$
declare
  p billing.purchases;
begin
  select * into p from billing.purchases x where x.id = p_purchase_id;
  if p.wallet_answers then
    return billing.org_wallet_id(p.org_id);
  end if;
  return billing.ensure_user_account(p.user_id);
end;
$$;
comment on function billing.purchase_buyer(p_purchase_id uuid) is 'Internal: the account that answers for a purchase at a refund or dispute: the paying user''s own (created if need be), or the wallet of an organisation verified before it was paid (purchases.wallet_answers).';
revoke execute on function billing.purchase_buyer(p_purchase_id uuid) from public;
