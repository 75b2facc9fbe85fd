-- B2C credit purchases through Stripe Checkout: purchases, the Stripe event log, the
-- notification outbox, and the one convergent function that brings a purchase in line with
-- Stripe's current state (paid → credits; refunded → pro-rata reversal; disputed → hold,
-- then release or reversal). Every webhook and the success-page poll call it with state
-- re-fetched from Stripe, so events in any order, any number of times, end in the same place.

-- ============================================================ tables

create table billing.purchases (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete restrict,
  package_id text not null references billing.credit_packages (id),
  request_key text not null,                      -- the HTTP Idempotency-Key that created it
  client_temp_id text,
  status text not null default 'pending',
  -- A snapshot of the package when bought: later price changes never touch this purchase.
  price_cents integer not null,
  currency text not null,
  credits numeric(38, 18) not null,
  bonus_credits numeric(38, 18) not null,
  stripe_session_id text unique,
  session_url text,
  session_expires_at timestamptz,
  stripe_payment_intent_id text,
  stripe_charge_id text unique,
  stripe_fee_cents integer,                       -- Stripe's processing fee on the charge (its balance transaction)
  amount_refunded_cents integer not null default 0,
  credits_refund_reversed numeric(38, 18) not null default 0,
  bonus_refund_reversed numeric(38, 18) not null default 0,
  dispute_id text,
  dispute_status text,                            -- open | won | lost
  dispute_hold_id uuid references billing.holds (id),
  created_at timestamptz not null default now(),
  paid_at timestamptz,
  updated_at timestamptz not null default now(),
  constraint purchases_status check (status in ('pending', 'paid', 'failed', 'expired')),
  constraint purchases_request unique (user_id, request_key),
  constraint purchases_dispute_status check (dispute_status is null or dispute_status in ('open', 'won', 'lost')),
  constraint purchases_refund_within check (amount_refunded_cents between 0 and price_cents)
);
comment on table billing.purchases is 'A credit package bought through a hosted Stripe Checkout Session. Stripe ids only: no card data.';
create index purchases_open on billing.purchases (user_id, package_id) where status = 'pending';
-- A client's temporary id names one purchase per user (optimistic UIs retry with it).
create unique index purchases_client_temp_id on billing.purchases (user_id, client_temp_id) where client_temp_id is not null;
create index purchases_pending_age on billing.purchases (created_at) where status = 'pending';

create table billing.stripe_events (
  id text primary key,                            -- Stripe's event id
  type text not null,
  api_created timestamptz not null,
  livemode boolean not null,
  object_id text,
  status text not null,                           -- processed | ignored | failed
  attempts integer not null default 1,
  last_error text,
  received_at timestamptz not null default now(),
  processed_at timestamptz,
  constraint stripe_events_status check (status in ('processed', 'ignored', 'failed'))
);
comment on table billing.stripe_events is 'Every verified Stripe event, once by id: type, timing, outcome. No customer data.';
create index stripe_events_type_time on billing.stripe_events (type, api_created);

create table billing.notification_outbox (
  id bigint generated always as identity primary key,
  template text not null,                         -- purchase_receipt | refund_notice | low_balance | alert
  user_id uuid,
  dedupe_key text not null unique,
  payload jsonb not null,                         -- ids and amounts only; the sender looks up the address
  status text not null default 'pending',
  attempts integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  last_error text,
  created_at timestamptz not null default now(),
  sent_at timestamptz,
  constraint notification_outbox_status check (status in ('pending', 'sent', 'failed'))
);
comment on table billing.notification_outbox is 'Notifications written in the same transaction as their cause; a separate sender delivers them.';
create index notification_outbox_due on billing.notification_outbox (next_attempt_at) where status = 'pending';

create table billing.counters (
  name text primary key,
  value bigint not null default 0
);
comment on table billing.counters is 'Monotonic operational counters (e.g. rejected webhook signatures).';

revoke all on billing.purchases, billing.stripe_events, billing.notification_outbox, billing.counters
  from public, anon, authenticated, service_role;
alter table billing.purchases enable row level security;
alter table billing.stripe_events enable row level security;
alter table billing.notification_outbox enable row level security;
alter table billing.counters enable row level security;
grant select on billing.purchases to authenticated, service_role;
grant select on billing.stripe_events, billing.notification_outbox, billing.counters to service_role;
create policy "Users can read their own purchases" on billing.purchases
  for select to authenticated using (user_id = (select auth.uid()));

create view billing_api.purchases with (security_invoker = true) as
  select p.id, p.package_id, p.status, p.price_cents, p.currency, p.credits, p.bonus_credits,
         p.amount_refunded_cents, p.created_at, p.paid_at
  from billing.purchases p;
comment on view billing_api.purchases is 'The signed-in user''s purchases.';
grant select on billing_api.purchases to authenticated, service_role;

-- ============================================================ checkout

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
  client_temp_id text
);

create function billing.checkout_of(p billing.purchases, p_reused boolean) returns billing.checkout
language sql stable
set search_path = ''
as $$
  select p.id, p.status, p_reused, p.package_id, k.name, p.price_cents, p.currency, p.credits, p.bonus_credits,
         p.stripe_session_id, p.session_url, p.session_expires_at, p.client_temp_id
  from billing.credit_packages k where k.id = p.package_id
$$;

create function billing.begin_checkout(p_user uuid, p_package_id text, p_request_key text, p_client_temp_id text default null,
  p_save_card boolean default false)
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
    if v_purchase.package_id <> p_package_id then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', 'checkout'));
    end if;
    return billing.checkout_of(v_purchase, false);  -- a retry of the same request
  end if;

  select * into v_package from billing.credit_packages k where k.id = p_package_id and k.active;
  if not found then
    perform billing.raise_error('PACKAGE_NOT_FOUND', jsonb_build_object('package_id', p_package_id));
  end if;

  -- One checkout at a time per user, so two tabs cannot open two sessions for one package.
  perform pg_advisory_xact_lock(hashtextextended('checkout:' || p_user::text, 0));
  if p_client_temp_id is not null then
    select * into v_purchase from billing.purchases p where p.user_id = p_user and p.client_temp_id = p_client_temp_id;
    if found and v_purchase.package_id <> p_package_id then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', 'checkout', 'client_temp_id', p_client_temp_id));
    elsif found then
      return billing.checkout_of(v_purchase, true);  -- the same optimistic operation, sent again under another key
    end if;
  end if;
  select * into v_purchase from billing.purchases p
  where p.user_id = p_user and p.package_id = p_package_id and p.status = 'pending'
    and (p.session_expires_at > now() + interval '1 minute' or (p.stripe_session_id is null and p.created_at > now() - interval '2 minutes'))
  order by p.created_at desc limit 1;
  if found then
    if v_purchase.stripe_session_id is null then
      perform billing.raise_error('CHECKOUT_IN_PROGRESS', jsonb_build_object('purchase_id', v_purchase.id));
    end if;
    return billing.checkout_of(v_purchase, true);
  end if;

  insert into billing.purchases (user_id, package_id, request_key, client_temp_id, price_cents, currency, credits, bonus_credits,
                                 save_card)
  values (p_user, v_package.id, p_request_key, p_client_temp_id, v_package.price_cents, v_package.currency,
          v_package.credits, v_package.bonus_credits, coalesce(p_save_card, false))
  returning * into v_purchase;
  return billing.checkout_of(v_purchase, false);
end;
$$;
comment on function billing.begin_checkout(uuid, text, text, text, boolean)
  is 'Creates a pending purchase, or returns the user''s open one for the same package, or the one this request key already made.';

create function billing.attach_checkout_session(p_purchase_id uuid, p_session_id text, p_url text, p_expires_at timestamptz)
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
comment on function billing.attach_checkout_session(uuid, text, text, timestamptz) is 'Records the Stripe Checkout Session made for a purchase.';

create function billing.expire_stale_purchases(p_limit integer default 500) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  -- A pending purchase whose session never got created (Stripe was down) or has expired.
  update billing.purchases p set status = 'expired', updated_at = now()
  where p.id in (
    select p2.id from billing.purchases p2
    where p2.status = 'pending' and p2.origin = 'checkout' -- a recharge has no session: its webhook decides
      and ((p2.stripe_session_id is null and p2.created_at < now() - interval '1 hour')
           or p2.session_expires_at < now() - interval '1 hour')
    limit p_limit);
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;
comment on function billing.expire_stale_purchases(integer)
  is 'pg_cron: expires pending purchases left without a session, or whose session expired an hour ago (Stripe''s own expiry event normally does this).';

-- ============================================================ converging on Stripe's state

-- A dispute freezes the disputed credits whatever else holds them. The user's own holds give
-- way first (newest first: shrunk, or released when taken whole), so parking credits in a hold
-- before filing a chargeback frees nothing. A job's hold is work already in flight: it keeps
-- its claim and may overlap the dispute's (available goes below zero, so nothing else can be
-- spent); if the job completes, what it spent becomes debt should the dispute be lost, like any
-- credit spent before the dispute. The hold has no expiry: only the dispute's end releases it.
create function billing.place_dispute_hold(p_user uuid, p_amount numeric, p_dispute_id text) returns uuid
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
  v_freeze numeric(38, 18);
  v_short numeric(38, 18);
  v_take numeric(38, 18);
  v_user_hold billing.holds;
begin
  select * into v_account from billing.accounts a where a.user_id = p_user for update;
  if not found then
    return null;
  end if;
  if v_account.held > 0 then
    perform billing.expire_overdue_holds(v_account.id);
    select * into v_account from billing.accounts a where a.id = v_account.id;
  end if;
  -- What is left of the balance once earlier disputes have frozen theirs.
  select least(p_amount, greatest(v_account.balance - coalesce(sum(h.amount), 0), 0)) into v_freeze
  from billing.holds h where h.account_id = v_account.id and h.status = 'active' and h.purpose = 'dispute';
  if v_freeze <= 0 then
    return null;
  end if;

  v_short := v_freeze - greatest(v_account.balance - v_account.held, 0);
  for v_user_hold in
    select * from billing.holds h
    where h.account_id = v_account.id and h.status = 'active' and h.purpose = 'user'
    order by h.created_at desc, h.id
    for update
  loop
    exit when v_short <= 0;
    v_take := least(v_user_hold.amount, v_short);
    update billing.holds h
    set amount = h.amount - case when v_take < h.amount then v_take else 0 end,
        status = case when v_take < h.amount then h.status else 'released' end,
        finished_at = case when v_take < h.amount then null else now() end,
        metadata = coalesce(h.metadata, '{}'::jsonb) || jsonb_build_object('given_to_dispute', p_dispute_id,
          'given_amount', trim_scale(v_take)::text)
    where h.id = v_user_hold.id;
    update billing.accounts a set held = a.held - v_take where a.id = v_account.id;
    perform billing.return_hold_cap_room(v_user_hold, v_take);
    v_short := v_short - v_take;
  end loop;

  return (billing.place_hold(v_account.id, v_freeze, 'dispute:' || p_dispute_id, 'infinity', 'dispute', p_dispute_id)).id;
end;
$$;
comment on function billing.place_dispute_hold(uuid, numeric, text)
  is 'Internal: freezes up to p_amount of a user''s credits for an open dispute, taking them back from the user''s own holds first.';

create function billing.purchase_lots(p_purchase_id uuid, p_category text) returns bigint[]
language sql stable
set search_path = ''
as $$
  select coalesce(array_agg(l.id order by l.category, l.id), '{}') from billing.lots l
  where l.purchase_id = p_purchase_id and (p_category is null or l.category = p_category)
$$;
comment on function billing.purchase_lots(uuid, text) is 'Internal: the lots a purchase granted (paid before promotional), for its reversals to take back first.';

-- p_state (all from Stripe, re-fetched, never from event payload order):
--   session_id, session_status, payment_status, amount_total, currency, payment_intent,
--   payment_intent_status, charge_id, amount_refunded, dispute_id, dispute_status
create function billing.sync_purchase(p_state jsonb) returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  p billing.purchases;
  v_refunded integer := coalesce((p_state ->> 'amount_refunded')::integer, 0);
  v_charge text := p_state ->> 'charge_id';
  v_dispute text := case
    when p_state ->> 'dispute_status' in ('won', 'warning_closed', 'prevented') then 'won'
    when p_state ->> 'dispute_status' = 'lost' then 'lost'
    when p_state ->> 'dispute_id' is not null then 'open' end;
  v_target_c numeric(38, 18);
  v_target_b numeric(38, 18);
  v_remaining numeric(38, 18);
begin
  -- A Checkout purchase by its session; an off-session recharge (no session) by its purchase id.
  if p_state ->> 'session_id' is not null then
    select * into p from billing.purchases x where x.stripe_session_id = p_state ->> 'session_id' for update;
  else
    select * into p from billing.purchases x
    where x.id = (p_state ->> 'purchase_id')::uuid and x.origin = 'auto_recharge' for update;
  end if;
  if not found then
    return 'unknown_purchase';
  end if;

  -- 1. Payment.
  if p.status <> 'paid' and p_state ->> 'payment_status' = 'paid' then
    if (p_state ->> 'amount_total')::integer <> p.price_cents or lower(p_state ->> 'currency') <> p.currency then
      perform billing.raise_error('PAYMENT_AMOUNT_MISMATCH', jsonb_build_object('purchase_id', p.id,
        'expected_cents', p.price_cents, 'paid_cents', p_state ->> 'amount_total', 'currency', p_state ->> 'currency'));
    end if;
    -- The credits are a paid lot whose cost is the price; the bonus a promotional lot.
    perform billing.grant_credits(p.user_id, p.credits, 'purchase', 'purchase:' || p.id, p.stripe_session_id, null, null,
      jsonb_build_object('category', 'paid', 'cost_cents', p.price_cents, 'currency', p.currency, 'purchase_id', p.id));
    if p.bonus_credits > 0 then
      perform billing.grant_credits(p.user_id, p.bonus_credits, 'promo_grant', 'purchase-bonus:' || p.id, p.stripe_session_id,
        null, null, jsonb_build_object('category', 'promotional', 'currency', p.currency, 'purchase_id', p.id));
    end if;
    update billing.purchases x set status = 'paid', paid_at = now(), updated_at = now() where x.id = p.id returning * into p;
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
      'purchase_id', p.id, 'package_id', p.package_id, 'price_cents', p.price_cents, 'currency', p.currency,
      'credits', trim_scale(p.credits)::text, 'bonus_credits', trim_scale(p.bonus_credits)::text))
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

  update billing.purchases x
  set stripe_payment_intent_id = coalesce(x.stripe_payment_intent_id, p_state ->> 'payment_intent'),
      stripe_charge_id = coalesce(x.stripe_charge_id, v_charge),
      stripe_fee_cents = coalesce(x.stripe_fee_cents, (p_state ->> 'stripe_fee')::integer)
  where x.id = p.id returning * into p;

  if p.status <> 'paid' then
    return p.status;
  end if;

  -- 2. Refunds: Stripe reports the cumulative amount, so the reversal converges on
  -- floor(credits × refunded / paid), for purchased and bonus credits alike.
  if v_refunded > p.amount_refunded_cents then
    v_target_c := floor(p.credits * v_refunded / p.price_cents);
    v_target_b := floor(p.bonus_credits * v_refunded / p.price_cents);
    -- Each reversal takes back its own lot first; what that lot no longer has was spent, and is
    -- owed like any debt (settled from whatever the account holds, or carried as debt).
    if v_target_c > p.credits_refund_reversed then
      perform billing.reverse_credits(p.user_id, v_target_c - p.credits_refund_reversed, 'refund_reversal',
        'refund:' || p.id || ':' || v_refunded, v_charge, null, null, billing.purchase_lots(p.id, 'paid'));
    end if;
    if v_target_b > p.bonus_refund_reversed then
      perform billing.reverse_credits(p.user_id, v_target_b - p.bonus_refund_reversed, 'refund_reversal',
        'refund-bonus:' || p.id || ':' || v_refunded, v_charge, null, null, billing.purchase_lots(p.id, 'promotional'));
    end if;
    update billing.purchases x
    set amount_refunded_cents = v_refunded, credits_refund_reversed = greatest(v_target_c, x.credits_refund_reversed),
        bonus_refund_reversed = greatest(v_target_b, x.bonus_refund_reversed), updated_at = now()
    where x.id = p.id returning * into p;
  end if;

  -- 3. Disputes: open → hold what is left of the purchase; won → release; lost → reverse it.
  if v_dispute is not null and coalesce(p.dispute_status, 'open') = 'open' then
    v_remaining := (p.credits - p.credits_refund_reversed) + (p.bonus_credits - p.bonus_refund_reversed);
    if p.dispute_hold_id is null and v_dispute = 'open' then
      p.dispute_hold_id := billing.place_dispute_hold(p.user_id, v_remaining, p_state ->> 'dispute_id');
    elsif v_dispute in ('won', 'lost') and p.dispute_hold_id is not null then
      perform billing.release_hold(null, p.dispute_hold_id);
    end if;
    -- While disputed, the purchase's own lots are spent last (only a job's hold can reach them).
    update billing.lots l set frozen = (v_dispute = 'open') where l.purchase_id = p.id and l.frozen <> (v_dispute = 'open');
    if v_dispute = 'lost' and v_remaining > 0 then
      perform billing.reverse_credits(p.user_id, v_remaining, 'dispute_reversal', 'dispute:' || (p_state ->> 'dispute_id'), v_charge,
        null, null, billing.purchase_lots(p.id, null));
    end if;
    update billing.purchases x
    set dispute_id = p_state ->> 'dispute_id', dispute_status = v_dispute, dispute_hold_id = p.dispute_hold_id, updated_at = now()
    where x.id = p.id returning * into p;
  end if;
  return p.status;
end;
$$;
comment on function billing.sync_purchase(jsonb)
  is 'fulfillCheckout: converges a purchase on Stripe''s current state. Safe to run any number of times, concurrently, in any order.';

-- ============================================================ the event log
-- (its entry point, billing.process_stripe_event, is in the providers migration: it dispatches
-- purchases, provider payments, Connect accounts and payouts alike)

create function billing.stripe_event_done(p_event_id text) returns boolean
language sql stable
security definer
set search_path = ''
as $$ select exists (select 1 from billing.stripe_events e where e.id = p_event_id and e.status <> 'failed') $$;
comment on function billing.stripe_event_done(text) is 'Whether an event was already processed or ignored (a cheap pre-check before re-fetching from Stripe).';

create function billing.record_stripe_event_failure(
  p_event_id text, p_type text, p_created timestamptz, p_livemode boolean, p_object_id text, p_error text
) returns void
language sql
security definer
set search_path = ''
as $$
  insert into billing.stripe_events as e (id, type, api_created, livemode, object_id, status, last_error)
  values (p_event_id, p_type, p_created, p_livemode, p_object_id, 'failed', left(p_error, 500))
  on conflict (id) do update set last_error = left(p_error, 500), attempts = e.attempts + 1
    where e.status = 'failed'
$$;
comment on function billing.record_stripe_event_failure(text, text, timestamptz, boolean, text, text)
  is 'Records that processing an event failed (after its transaction rolled back), so failures are visible and alertable.';

create function billing.increment_counter(p_name text, p_by bigint default 1) returns bigint
language sql
security definer
set search_path = ''
as $$
  insert into billing.counters as c (name, value) values (p_name, p_by)
  on conflict (name) do update set value = c.value + p_by
  returning value
$$;
comment on function billing.increment_counter(text, bigint) is 'Adds to an operational counter.';

create function billing.get_purchase(p_user uuid, p_ref text) returns billing.purchases
language sql stable
security definer
set search_path = ''
as $$
  select * from billing.purchases p
  where (p.stripe_session_id = p_ref or p.id::text = p_ref) and (p_user is null or p.user_id = p_user)
$$;
comment on function billing.get_purchase(uuid, text) is 'A purchase by id or Checkout Session id, if it belongs to p_user (null: any).';

select cron.schedule('billing-expire-stale-purchases', '*/10 * * * *', $$select billing.expire_stale_purchases(500)$$);

revoke execute on all functions in schema billing from public, anon, authenticated;
grant execute on function
  billing.begin_checkout(uuid, text, text, text, boolean),
  billing.attach_checkout_session(uuid, text, text, timestamptz),
  billing.expire_stale_purchases(integer),
  billing.sync_purchase(jsonb),
  billing.stripe_event_done(text),
  billing.record_stripe_event_failure(text, text, timestamptz, boolean, text, text),
  billing.increment_counter(text, bigint),
  billing.get_purchase(uuid, text)
to service_role;
-- balance_of stays callable by the invoker views (see billing_api).
grant execute on function billing.balance_of(bigint) to authenticated, service_role;
