-- Auto-recharge: when a student's available balance falls below their threshold, a recharge
-- of a chosen package is queued (by the tick, from the account watch queue, under the account
-- lock) and charged off-session to the card saved at Checkout, at most once per window. The
-- check itself is the tick's (run_account_watch, check_auto_recharge: 11-ledger-caps.sql); what a
-- recharge's payment or a dispute does to it (record_recharge, turn_off_auto_recharge,
-- stop_off_session_charges) with the purchase's sync (50-purchases.sql, 51-refunds-disputes.sql).

-- ============================================================ tables

create table billing.saved_cards (
  user_id uuid primary key references auth.users (id) on delete restrict,
  customer_id text not null,                     -- Stripe ids only: no card data here
  payment_method_id text not null,
  saved_at timestamptz not null default now()
);
comment on table billing.saved_cards is 'The Stripe customer and payment method a student saved at Checkout for off-session recharges.';
alter table billing.saved_cards enable row level security;
grant select on table billing.saved_cards to service_role;

create table billing.auto_recharge (
  user_id uuid primary key references auth.users (id) on delete restrict,
  enabled boolean not null default false,
  package_id text references billing.credit_packages (id),
  threshold numeric(38, 18),
  monthly_max_count integer not null default 5,
  monthly_max_cents integer not null default 10000,
  disabled_reason text,                          -- why it turned itself off (card_declined, authentication_required)
  updated_at timestamptz not null default now(),
  constraint auto_recharge_complete check (not enabled or (package_id is not null and threshold > 0)),
  constraint auto_recharge_limits check (monthly_max_count between 1 and 31 and monthly_max_cents > 0)
);
comment on table billing.auto_recharge is 'A student''s auto-recharge settings and guardrails.';
alter table billing.auto_recharge enable row level security;
grant select on table billing.auto_recharge to service_role;
grant select on table billing.auto_recharge to authenticated;

create table billing.recharges (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete restrict,
  package_id text not null references billing.credit_packages (id),
  package_version integer not null,              -- the version queued: its purchase is its price and credits
  price_cents integer not null,
  currency text not null,
  status text not null default 'queued',
  purchase_id uuid references billing.purchases (id),
  payment_intent_id text,
  failure_code text,
  claimed_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint recharges_status check (status in ('queued', 'processing', 'submitted', 'succeeded', 'failed'))
);
comment on table billing.recharges is 'Each off-session recharge: queued → processing (a worker charges the card) → submitted → succeeded | failed.';
alter table billing.recharges enable row level security;
grant select on table billing.recharges to service_role;
grant select on table billing.recharges to authenticated;

create unique index recharges_one_in_flight on billing.recharges (user_id) where status in ('queued', 'processing', 'submitted');

create index recharges_due on billing.recharges (created_at) where status in ('queued', 'processing');

create index recharges_user on billing.recharges (user_id, created_at desc);

create index recharges_purchase on billing.recharges (purchase_id) where purchase_id is not null;

create table billing.auto_recharge_audit (
  id bigint generated always as identity primary key,
  user_id uuid not null,
  actor uuid,                                    -- the student; null for the system (a decline, the monthly limit)
  change jsonb not null,
  created_at timestamptz not null default now()
);
comment on table billing.auto_recharge_audit is 'Every change to a student''s auto-recharge, by whom.';
alter table billing.auto_recharge_audit enable row level security;
grant select on table billing.auto_recharge_audit to service_role;

create index auto_recharge_audit_user on billing.auto_recharge_audit (user_id, id desc);

-- ============================================================ functions

create or replace function billing.auto_recharge_json(p_user uuid) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'enabled', coalesce(s.enabled, false), 'package_id', s.package_id, 'threshold', trim_scale(s.threshold)::text,
    'monthly_max_count', coalesce(s.monthly_max_count, 5), 'monthly_max_cents', coalesce(s.monthly_max_cents, 10000),
    'disabled_reason', s.disabled_reason,
    'card_saved', exists (select 1 from billing.saved_cards c where c.user_id = p_user),
    'recent', coalesce((select jsonb_agg(jsonb_build_object('id', r.id, 'status', r.status, 'package_id', r.package_id,
        'price_cents', r.price_cents, 'failure_code', r.failure_code, 'created_at', billing.json_time(r.created_at))
        order by r.created_at desc)
      from (select * from billing.recharges r where r.user_id = p_user order by r.created_at desc limit 10) r), '[]'::jsonb))
  from (select 1) one left join billing.auto_recharge s on s.user_id = p_user
$$;
comment on function billing.auto_recharge_json(p_user uuid) is 'Internal: a student''s auto-recharge as the API returns it.';
revoke execute on function billing.auto_recharge_json(p_user uuid) from public;

-- Every value a route's schema accepts is one its SQL function answers without failing: a
-- package that does not exist, sent while turning auto-recharge off, was a foreign-key error.
create or replace function billing.set_auto_recharge(p_user uuid, p_enabled boolean, p_package_id text, p_threshold numeric, p_monthly_max_count integer, p_monthly_max_cents integer) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint := billing.ensure_user_account(p_user);
  v_before jsonb := billing.auto_recharge_json(p_user);
begin
  -- Settled (locked, holds past their TTL ended): a card is charged only for what is available now.
  perform billing.settled(a) from billing.accounts a where a.id = v_account_id for update;
  if p_enabled then
    if not exists (select 1 from billing.saved_cards c where c.user_id = p_user) then
      perform billing.raise_error('NO_SAVED_CARD', jsonb_build_object('rule', 'buy a package with save_card: true first'));
    end if;
    if not exists (select 1 from billing.credit_packages k where k.id = p_package_id and k.active) then
      perform billing.raise_error('PACKAGE_NOT_FOUND', '{}'); -- never the caller's text (the Postgres log)
    end if;
    perform billing.check_amount(p_threshold);
  elsif p_package_id is not null and not exists (select 1 from billing.credit_packages k where k.id = p_package_id) then
    -- Turning it off may name a package too: one that does not exist is the same 404, not a
    -- foreign-key violation (a 500, with the value in the server log).
    perform billing.raise_error('PACKAGE_NOT_FOUND', '{}'); -- never the caller's text (the Postgres log)
  end if;
  begin
    insert into billing.auto_recharge as s (user_id, enabled, package_id, threshold, monthly_max_count, monthly_max_cents)
    values (p_user, p_enabled, p_package_id, p_threshold, coalesce(p_monthly_max_count, 5), coalesce(p_monthly_max_cents, 10000))
    on conflict (user_id) do update set enabled = excluded.enabled,
      package_id = coalesce(excluded.package_id, s.package_id), threshold = coalesce(excluded.threshold, s.threshold),
      monthly_max_count = coalesce(p_monthly_max_count, s.monthly_max_count),
      monthly_max_cents = coalesce(p_monthly_max_cents, s.monthly_max_cents),
      disabled_reason = case when excluded.enabled then null else s.disabled_reason end, updated_at = now();
  exception when check_violation then
    perform billing.raise_error('INVALID_AUTO_RECHARGE', jsonb_build_object(
      'rule', 'monthly_max_count 1–31, monthly_max_cents > 0; a package and a threshold to turn it on'));
  end;
  -- What postings left available since the tick looked re-arms first, on the old thresholds (the
  -- low-balance alert's crossing is not lost with this change); then armed and checked here.
  perform billing.rearm_watched(a) from billing.accounts a where a.id = v_account_id;
  update billing.accounts a
  set auto_recharge_below = case when p_enabled then p_threshold end, auto_recharge_armed = true
  where a.id = v_account_id;
  insert into billing.auto_recharge_audit (user_id, actor, change)
  values (p_user, p_user, jsonb_build_object('before', v_before - 'recent', 'after', billing.auto_recharge_json(p_user) - 'recent'));
  perform billing.check_auto_recharge(a) from billing.accounts a where a.id = v_account_id;
  return billing.auto_recharge_json(p_user);
end;
$$;
comment on function billing.set_auto_recharge(p_user uuid, p_enabled boolean, p_package_id text, p_threshold numeric, p_monthly_max_count integer, p_monthly_max_cents integer) is 'A student turns auto-recharge on (saved card needed) or off and sets its package, threshold and monthly limits; audited.';
revoke execute on function billing.set_auto_recharge(p_user uuid, p_enabled boolean, p_package_id text, p_threshold numeric, p_monthly_max_count integer, p_monthly_max_cents integer) from public;
grant execute on function billing.set_auto_recharge(p_user uuid, p_enabled boolean, p_package_id text, p_threshold numeric, p_monthly_max_count integer, p_monthly_max_cents integer) to service_role;

-- Due recharges (queued, or claimed over five minutes ago by a worker that died: the Stripe
-- idempotency key makes charging again safe), each with its pending purchase and saved card.
create or replace function billing.claim_recharges(p_limit integer default 10)
returns table (recharge_id uuid, purchase_id uuid, user_id uuid, amount_cents integer, currency text, customer_id text,
               payment_method_id text)
language plpgsql
security definer
set search_path = ''
as $$
declare
  r billing.recharges;
  v_card billing.saved_cards;
begin
  for r in
    select * from billing.recharges x
    where x.status = 'queued' or (x.status = 'processing' and x.claimed_at < now() - interval '5 minutes')
    order by x.created_at limit p_limit for update skip locked
  loop
    select * into v_card from billing.saved_cards c where c.user_id = r.user_id;
    if not exists (select 1 from billing.auto_recharge s where s.user_id = r.user_id and s.enabled) or v_card is null then
      update billing.recharges x set status = 'failed', failure_code = 'disabled', updated_at = now() where x.id = r.id;
      continue;
    end if;
    if r.purchase_id is null then
      insert into billing.purchases (user_id, package_id, request_key, price_cents, currency, credits, bonus_credits, origin,
                                     package_version)
      select r.user_id, k.package_id, 'recharge:' || r.id, k.price_cents, k.currency, k.credits, k.bonus_credits,
        'auto_recharge', k.version
      from billing.credit_package_versions k where k.package_id = r.package_id and k.version = r.package_version
      returning id into r.purchase_id;
    end if;
    update billing.recharges x set status = 'processing', claimed_at = now(), purchase_id = r.purchase_id, updated_at = now()
    where x.id = r.id;
    return query select r.id, r.purchase_id, r.user_id, r.price_cents, r.currency, v_card.customer_id, v_card.payment_method_id;
  end loop;
end;
$$;
comment on function billing.claim_recharges(p_limit integer) is 'Worker: claims due recharges (SKIP LOCKED), creating each one''s pending purchase.';
revoke execute on function billing.claim_recharges(p_limit integer) from public;
grant execute on function billing.claim_recharges(p_limit integer) to service_role;

create or replace function billing.get_auto_recharge(p_user uuid) returns jsonb
language sql stable
security definer
set search_path = ''
as $$ select billing.auto_recharge_json(p_user) $$;
comment on function billing.get_auto_recharge(p_user uuid) is 'A student''s auto-recharge settings, saved card, and last ten recharges.';
revoke execute on function billing.get_auto_recharge(p_user uuid) from public;
grant execute on function billing.get_auto_recharge(p_user uuid) to service_role;

-- ============================================================ policies

create policy "Users can read their own auto-recharge settings" on billing.auto_recharge
  for select to authenticated using (user_id = (select auth.uid()));

create policy "Users can read their own recharges" on billing.recharges
  for select to authenticated using (user_id = (select auth.uid()));
