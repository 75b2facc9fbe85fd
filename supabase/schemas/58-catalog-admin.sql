-- Prices as data an operator owns: admins create, change and retire credit packages and plans
-- (docs/pricing.md § Packages and plans). A change is a new version, never an edit of one sold:
--   packages: credit_package_versions keeps every version; credit_packages says which is on
--     sale; a purchase names its version and copies its price and credits at Checkout.
--   plans: every version is a row of billing.plans; a subscription names the row it was sold at,
--     so its renewals keep that price and those credits (56-plans.sql).
-- Each version has its own Stripe Price, made by the admin function before the version is
-- saved (save_*_version takes its id). Retiring takes an item off sale; nothing is deleted.
-- Two calls make a version: next_*_version (read-only: the version number and the full spec,
-- or the answer when nothing is to be made) before the Stripe Price, save_*_version after it,
-- which refuses if another change came in between (CATALOG_VERSION_CONFLICT) and answers the
-- same version again when an identical request already saved it (parallel identical requests;
-- a Stripe Price such a twin made goes unused).

-- ============================================================ tables

create table billing.catalog_changes (
  id bigint generated always as identity primary key,
  item text not null,                             -- package | plan
  item_id text not null,                          -- the package's id, or the plan's (its family)
  version integer not null,                       -- the version on sale after the change
  action text not null,
  admin_id uuid not null,
  reason text not null,
  before jsonb,                                   -- the version on sale before (null: created)
  after jsonb,
  created_at timestamptz not null default now(),
  constraint catalog_changes_item check (item in ('package', 'plan')),
  constraint catalog_changes_action check (action in ('created', 'changed', 'retired')),
  constraint catalog_changes_reason check (length(reason) between 1 and 500)
);
comment on table billing.catalog_changes is 'Audit of every package and plan change: who, why, and the version on sale before and after. Append-only.';
alter table billing.catalog_changes enable row level security;

create index catalog_changes_recent on billing.catalog_changes (id desc);

-- ============================================================ functions

-- What a version sells, normalised (exact strings), so two specs compare equal when they sell the same.
create or replace function billing.package_spec(p_name text, p_price_cents integer, p_currency text, p_credits numeric,
  p_bonus_credits numeric) returns jsonb
language sql immutable
set search_path = ''
as $$
  select jsonb_build_object('name', p_name, 'price_cents', p_price_cents, 'currency', p_currency,
    'credits', trim_scale(p_credits)::text, 'bonus_credits', trim_scale(p_bonus_credits)::text)
$$;
comment on function billing.package_spec(p_name text, p_price_cents integer, p_currency text, p_credits numeric, p_bonus_credits numeric) is 'Internal: what a package version sells, as normalised JSON.';
revoke execute on function billing.package_spec(p_name text, p_price_cents integer, p_currency text, p_credits numeric, p_bonus_credits numeric) from public;

create or replace function billing.package_json(p_id text) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('id', k.id, 'version', k.version, 'active', k.active, 'sort_order', k.sort_order,
      'stripe_price_id', k.stripe_price_id)
    || billing.package_spec(k.name, k.price_cents, k.currency, k.credits, k.bonus_credits)
  from billing.credit_packages k where k.id = p_id
$$;
comment on function billing.package_json(p_id text) is 'Internal: a package as the admin API shows it (the version on sale).';
revoke execute on function billing.package_json(p_id text) from public;

create or replace function billing.plan_spec(p_name text, p_price_cents integer, p_currency text, p_interval text,
  p_credits numeric, p_rollover text, p_rollover_limit numeric, p_applies_to text[]) returns jsonb
language sql immutable
set search_path = ''
as $$
  select jsonb_build_object('name', p_name, 'price_cents', p_price_cents, 'currency', p_currency, 'interval', p_interval,
    'credits', trim_scale(p_credits)::text, 'rollover', p_rollover, 'rollover_limit', trim_scale(p_rollover_limit)::text,
    'applies_to', to_jsonb(p_applies_to))
$$;
comment on function billing.plan_spec(p_name text, p_price_cents integer, p_currency text, p_interval text, p_credits numeric, p_rollover text, p_rollover_limit numeric, p_applies_to text[]) is 'Internal: what a plan version sells, as normalised JSON.';
revoke execute on function billing.plan_spec(p_name text, p_price_cents integer, p_currency text, p_interval text, p_credits numeric, p_rollover text, p_rollover_limit numeric, p_applies_to text[]) from public;

create or replace function billing.plan_json(p billing.plans) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('id', p.family, 'version', p.version, 'version_id', p.id, 'active', p.active,
      'sort_order', p.sort_order, 'stripe_price_id', p.stripe_price_id, 'created_at', billing.json_time(p.created_at))
    || billing.plan_spec(p.name, p.price_cents, p.currency, p.billing_interval, p.credits, p.rollover, p.rollover_limit,
      p.applies_to)
$$;
comment on function billing.plan_json(p billing.plans) is 'Internal: a plan version as the admin API shows it.';
revoke execute on function billing.plan_json(p billing.plans) from public;

-- The spec a request makes: the fields it sends over those of the version on sale (`p_current`,
-- null for a new item), normalised; INVALID_CATALOG_ITEM when a value cannot be one.
create or replace function billing.merge_package_spec(p_current jsonb, p_spec jsonb) returns jsonb
language plpgsql immutable
set search_path = ''
as $$
declare
  m jsonb := coalesce(p_current, '{}') || jsonb_strip_nulls(p_spec);
begin
  return billing.package_spec(m ->> 'name', (m ->> 'price_cents')::integer, coalesce(m ->> 'currency', 'usd'),
    (m ->> 'credits')::numeric, coalesce((m ->> 'bonus_credits')::numeric, 0));
exception when numeric_value_out_of_range or invalid_text_representation then
  perform billing.raise_error('INVALID_CATALOG_ITEM', jsonb_build_object('rule', 'prices in whole cents, credits as decimals'));
  return null;                                      -- not reached: raise_error raised
end;
$$;
comment on function billing.merge_package_spec(p_current jsonb, p_spec jsonb) is 'Internal: a package request''s fields over the version on sale, normalised.';
revoke execute on function billing.merge_package_spec(p_current jsonb, p_spec jsonb) from public;

create or replace function billing.merge_plan_spec(p_current jsonb, p_spec jsonb) returns jsonb
language plpgsql immutable
set search_path = ''
as $$
declare
  m jsonb := coalesce(p_current, '{}') || jsonb_strip_nulls(p_spec);
begin
  -- A rule without a limit (none) clears the one on sale.
  if p_spec ? 'rollover' and coalesce(jsonb_typeof(p_spec -> 'rollover_limit'), 'null') = 'null' then
    m := m - 'rollover_limit';
  end if;
  -- So does an explicit null list: its credits then pay for any model.
  if p_spec ? 'applies_to' and jsonb_typeof(p_spec -> 'applies_to') = 'null' then
    m := m - 'applies_to';
  end if;
  return billing.plan_spec(m ->> 'name', (m ->> 'price_cents')::integer, coalesce(m ->> 'currency', 'usd'), m ->> 'interval',
    (m ->> 'credits')::numeric, coalesce(m ->> 'rollover', 'none'), (m ->> 'rollover_limit')::numeric,
    billing.applies_to_of(m));
exception when numeric_value_out_of_range or invalid_text_representation then
  perform billing.raise_error('INVALID_CATALOG_ITEM', jsonb_build_object('rule', 'prices in whole cents, credits as decimals'));
  return null;                                      -- not reached: raise_error raised
end;
$$;
comment on function billing.merge_plan_spec(p_current jsonb, p_spec jsonb) is 'Internal: a plan request''s fields over the version on sale, normalised.';
revoke execute on function billing.merge_plan_spec(p_current jsonb, p_spec jsonb) from public;

-- Before the Stripe Price: the version a create (p_create) or change of package `p_id` would
-- make and its full spec; or `answer` when nothing is to be made (the same create saved
-- already, or a change that sells the same). Reads only.
create or replace function billing.next_package_version(p_id text, p_spec jsonb, p_create boolean) returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  k billing.credit_packages;
  v_current jsonb;
  v_spec jsonb;
begin
  select * into k from billing.credit_packages x where x.id = p_id;
  if found then
    v_current := billing.package_spec(k.name, k.price_cents, k.currency, k.credits, k.bonus_credits);
  end if;
  v_spec := billing.merge_package_spec(case when p_create then null else v_current end, p_spec);
  if p_create and k.id is not null then
    if k.version = 1 and v_current = v_spec then
      return jsonb_build_object('answer', billing.package_json(p_id) || jsonb_build_object('replayed', true));
    end if;
    perform billing.raise_error('CATALOG_ITEM_EXISTS', jsonb_build_object('item', 'package'));
  elsif not p_create and k.id is null then
    perform billing.raise_error('PACKAGE_NOT_FOUND', '{}'); -- never the caller's text: DETAILs reach the Postgres log
  elsif not p_create and not k.active then
    perform billing.raise_error('CATALOG_ITEM_RETIRED', jsonb_build_object('item', 'package'));
  elsif not p_create and v_current = v_spec then
    return jsonb_build_object('answer', billing.package_json(p_id) || jsonb_build_object('replayed', true));
  end if;
  return jsonb_build_object('version', coalesce(k.version, 0) + 1, 'spec', v_spec);
end;
$$;
comment on function billing.next_package_version(p_id text, p_spec jsonb, p_create boolean) is 'The version a package create or change would make and its full spec (or the answer when it makes none); read-only, called before its Stripe Price is made.';
revoke execute on function billing.next_package_version(p_id text, p_spec jsonb, p_create boolean) from public;
grant execute on function billing.next_package_version(p_id text, p_spec jsonb, p_create boolean) to service_role;

-- POST /admin/packages and POST /admin/packages/:id/versions, after the Stripe Price: saves
-- version `p_version` (from next_package_version) and puts it on sale, audited. Open Checkouts
-- and paid purchases keep theirs (purchases.package_version). The package's lock orders
-- concurrent changes: one that lost the race is refused, an identical one answers the first.
create or replace function billing.save_package_version(p_admin uuid, p_id text, p_version integer, p_spec jsonb,
  p_stripe_price_id text, p_sort_order integer, p_reason text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k billing.credit_packages;
  v_before jsonb;
begin
  if p_reason is null or length(p_reason) not between 1 and 500 then
    perform billing.raise_error('INVALID_CATALOG_ITEM', jsonb_build_object('field', 'reason', 'rule', '1 to 500 characters'));
  end if;
  perform pg_advisory_xact_lock(hashtextextended('billing.catalog:package:' || p_id, 0));
  select * into k from billing.credit_packages x where x.id = p_id for update;
  if coalesce(k.version, 0) = p_version
     and billing.package_spec(k.name, k.price_cents, k.currency, k.credits, k.bonus_credits) = p_spec then
    return billing.package_json(p_id) || jsonb_build_object('replayed', true);
  elsif p_version = 1 and k.id is not null then
    perform billing.raise_error('CATALOG_ITEM_EXISTS', jsonb_build_object('item', 'package'));
  elsif coalesce(k.version, 0) <> p_version - 1 then
    perform billing.raise_error('CATALOG_VERSION_CONFLICT', jsonb_build_object('item', 'package', 'version', k.version));
  elsif k.id is not null and not k.active then
    perform billing.raise_error('CATALOG_ITEM_RETIRED', jsonb_build_object('item', 'package'));
  end if;
  v_before := billing.package_json(p_id);
  begin
    insert into billing.credit_packages as x (id, name, price_cents, currency, credits, bonus_credits, sort_order, version,
      stripe_price_id)
    values (p_id, p_spec ->> 'name', (p_spec ->> 'price_cents')::integer, p_spec ->> 'currency',
      (p_spec ->> 'credits')::numeric, (p_spec ->> 'bonus_credits')::numeric, coalesce(p_sort_order, 0), p_version,
      p_stripe_price_id)
    on conflict (id) do update set name = excluded.name, price_cents = excluded.price_cents, currency = excluded.currency,
      credits = excluded.credits, bonus_credits = excluded.bonus_credits, version = excluded.version,
      stripe_price_id = excluded.stripe_price_id, sort_order = coalesce(p_sort_order, x.sort_order);
    insert into billing.credit_package_versions (package_id, version, name, price_cents, currency, credits, bonus_credits,
      stripe_price_id)
    select x.id, x.version, x.name, x.price_cents, x.currency, x.credits, x.bonus_credits, x.stripe_price_id
    from billing.credit_packages x where x.id = p_id;
  exception when check_violation or not_null_violation or numeric_value_out_of_range then
    perform billing.raise_error('INVALID_CATALOG_ITEM', jsonb_build_object('rule',
      'an id of a-z, 0-9, _ and -; a name of 1 to 80 characters; a positive price and credits; bonus credits of 0 or more'));
  end;
  insert into billing.catalog_changes (item, item_id, version, action, admin_id, reason, before, after)
  values ('package', p_id, p_version, case when v_before is null then 'created' else 'changed' end, p_admin, p_reason,
    v_before, billing.package_json(p_id));
  return billing.package_json(p_id) || jsonb_build_object('replayed', false);
end;
$$;
comment on function billing.save_package_version(p_admin uuid, p_id text, p_version integer, p_spec jsonb, p_stripe_price_id text, p_sort_order integer, p_reason text) is 'Saves a package''s next version (with its Stripe Price) and puts it on sale, audited; an identical request saved already answers it again, a change that lost a race is refused.';
revoke execute on function billing.save_package_version(p_admin uuid, p_id text, p_version integer, p_spec jsonb, p_stripe_price_id text, p_sort_order integer, p_reason text) from public;
grant execute on function billing.save_package_version(p_admin uuid, p_id text, p_version integer, p_spec jsonb, p_stripe_price_id text, p_sort_order integer, p_reason text) to service_role;

-- POST /admin/packages/:id/retire: off sale for new purchases (Checkout, gifts, organisation
-- invoices, auto-recharge); open Checkouts and every purchase keep their version. Retiring a
-- retired package answers it again.
create or replace function billing.retire_package(p_admin uuid, p_id text, p_reason text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  k billing.credit_packages;
begin
  if p_reason is null or length(p_reason) not between 1 and 500 then
    perform billing.raise_error('INVALID_CATALOG_ITEM', jsonb_build_object('field', 'reason', 'rule', '1 to 500 characters'));
  end if;
  select * into k from billing.credit_packages x where x.id = p_id for update;
  if not found then
    perform billing.raise_error('PACKAGE_NOT_FOUND', '{}');
  elsif not k.active then
    return billing.package_json(p_id) || jsonb_build_object('replayed', true);
  end if;
  update billing.credit_packages x set active = false where x.id = p_id;
  insert into billing.catalog_changes (item, item_id, version, action, admin_id, reason, before, after)
  values ('package', p_id, k.version, 'retired', p_admin, p_reason,
    billing.package_json(p_id) || jsonb_build_object('active', true), billing.package_json(p_id));
  return billing.package_json(p_id) || jsonb_build_object('replayed', false);
end;
$$;
comment on function billing.retire_package(p_admin uuid, p_id text, p_reason text) is 'Takes a package off sale (audited); its versions and purchases stay.';
revoke execute on function billing.retire_package(p_admin uuid, p_id text, p_reason text) from public;
grant execute on function billing.retire_package(p_admin uuid, p_id text, p_reason text) to service_role;

-- A plan family's latest version (on sale unless retired).
create or replace function billing.latest_plan(p_family text) returns billing.plans
language sql stable
set search_path = ''
as $$
  select * from billing.plans p where p.family = p_family order by p.version desc limit 1
$$;
comment on function billing.latest_plan(p_family text) is 'Internal: a plan''s latest version (null fields when none).';
revoke execute on function billing.latest_plan(p_family text) from public;

-- Plans, as packages: the version a create or change of plan `p_family` would make, its row id
-- and full spec, or the answer when nothing is to be made. Reads only.
create or replace function billing.next_plan_version(p_family text, p_spec jsonb, p_create boolean) returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  p billing.plans := billing.latest_plan(p_family);
  v_current jsonb;
  v_spec jsonb;
  v_version integer := coalesce(p.version, 0) + 1;
begin
  if p.id is not null then
    v_current := billing.plan_spec(p.name, p.price_cents, p.currency, p.billing_interval, p.credits, p.rollover, p.rollover_limit,
      p.applies_to);
  end if;
  v_spec := billing.merge_plan_spec(case when p_create then null else v_current end, p_spec);
  if p_create and p.id is not null then
    if p.version = 1 and v_current = v_spec then
      return jsonb_build_object('answer', billing.plan_json(p) || jsonb_build_object('replayed', true));
    end if;
    perform billing.raise_error('CATALOG_ITEM_EXISTS', jsonb_build_object('item', 'plan'));
  elsif not p_create and p.id is null then
    perform billing.raise_error('PLAN_NOT_FOUND', '{}'); -- never the caller's text: DETAILs reach the Postgres log
  elsif not p_create and not p.active then
    perform billing.raise_error('CATALOG_ITEM_RETIRED', jsonb_build_object('item', 'plan'));
  elsif not p_create and v_current = v_spec then
    return jsonb_build_object('answer', billing.plan_json(p) || jsonb_build_object('replayed', true));
  end if;
  return jsonb_build_object('version', v_version, 'spec', v_spec,
    'version_id', case when v_version = 1 then p_family else p_family || '.v' || v_version end);
end;
$$;
comment on function billing.next_plan_version(p_family text, p_spec jsonb, p_create boolean) is 'The version a plan create or change would make, its row id and full spec (or the answer when it makes none); read-only, called before its Stripe Price is made.';
revoke execute on function billing.next_plan_version(p_family text, p_spec jsonb, p_create boolean) from public;
grant execute on function billing.next_plan_version(p_family text, p_spec jsonb, p_create boolean) to service_role;

-- POST /admin/plans and POST /admin/plans/:id/versions, after the Stripe Price: a new row for
-- version `p_version`, on sale in place of the one before, which stays for the subscriptions sold
-- at it (their renewals grant and charge what it says). Audited; ordered by the plan's lock.
create or replace function billing.save_plan_version(p_admin uuid, p_family text, p_version integer, p_spec jsonb,
  p_stripe_price_id text, p_sort_order integer, p_reason text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  p billing.plans;
  v_new billing.plans;
begin
  if p_reason is null or length(p_reason) not between 1 and 500 then
    perform billing.raise_error('INVALID_CATALOG_ITEM', jsonb_build_object('field', 'reason', 'rule', '1 to 500 characters'));
  end if;
  perform pg_advisory_xact_lock(hashtextextended('billing.catalog:plan:' || p_family, 0));
  p := billing.latest_plan(p_family);
  if coalesce(p.version, 0) = p_version
     and billing.plan_spec(p.name, p.price_cents, p.currency, p.billing_interval, p.credits, p.rollover, p.rollover_limit,
      p.applies_to) = p_spec then
    return billing.plan_json(p) || jsonb_build_object('replayed', true);
  elsif p_version = 1 and p.id is not null then
    perform billing.raise_error('CATALOG_ITEM_EXISTS', jsonb_build_object('item', 'plan'));
  elsif coalesce(p.version, 0) <> p_version - 1 then
    perform billing.raise_error('CATALOG_VERSION_CONFLICT', jsonb_build_object('item', 'plan', 'version', p.version));
  elsif p.id is not null and not p.active then
    perform billing.raise_error('CATALOG_ITEM_RETIRED', jsonb_build_object('item', 'plan'));
  end if;
  update billing.plans x set active = false where x.id = p.id;
  begin
    insert into billing.plans (id, family, version, name, stripe_price_id, price_cents, currency, billing_interval, credits,
      rollover, rollover_limit, sort_order, applies_to)
    values (case when p_version = 1 then p_family else p_family || '.v' || p_version end, p_family, p_version,
      p_spec ->> 'name', p_stripe_price_id, (p_spec ->> 'price_cents')::integer, p_spec ->> 'currency', p_spec ->> 'interval',
      (p_spec ->> 'credits')::numeric, p_spec ->> 'rollover', (p_spec ->> 'rollover_limit')::numeric,
      coalesce(p_sort_order, p.sort_order, 0), billing.applies_to_of(p_spec))
    returning * into v_new;
  exception when check_violation or not_null_violation or numeric_value_out_of_range or unique_violation then
    perform billing.raise_error('INVALID_CATALOG_ITEM', jsonb_build_object('rule',
      'an id of a-z, 0-9, _ and - (at most 48); a name of 1 to 80 characters; a positive price and credits; month or year; '
      || 'rollover none, up_to_credits (a positive limit) or up_to_share (a limit above 0, at most 1)'));
  end;
  insert into billing.catalog_changes (item, item_id, version, action, admin_id, reason, before, after)
  values ('plan', p_family, p_version, case when p.id is null then 'created' else 'changed' end, p_admin, p_reason,
    case when p.id is not null then billing.plan_json(p) end, billing.plan_json(v_new));
  return billing.plan_json(v_new) || jsonb_build_object('replayed', false);
end;
$$;
comment on function billing.save_plan_version(p_admin uuid, p_family text, p_version integer, p_spec jsonb, p_stripe_price_id text, p_sort_order integer, p_reason text) is 'Saves a plan''s next version (a row of its own, with its Stripe Price) on sale in place of the one before, which keeps renewing the subscriptions sold at it; audited.';
revoke execute on function billing.save_plan_version(p_admin uuid, p_family text, p_version integer, p_spec jsonb, p_stripe_price_id text, p_sort_order integer, p_reason text) from public;
grant execute on function billing.save_plan_version(p_admin uuid, p_family text, p_version integer, p_spec jsonb, p_stripe_price_id text, p_sort_order integer, p_reason text) to service_role;

-- POST /admin/plans/:id/retire: no new subscriptions or changes to it; live subscriptions keep
-- renewing at their versions until cancelled. Retiring a retired plan answers it again.
create or replace function billing.retire_plan(p_admin uuid, p_family text, p_reason text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  p billing.plans;
begin
  if p_reason is null or length(p_reason) not between 1 and 500 then
    perform billing.raise_error('INVALID_CATALOG_ITEM', jsonb_build_object('field', 'reason', 'rule', '1 to 500 characters'));
  end if;
  perform pg_advisory_xact_lock(hashtextextended('billing.catalog:plan:' || p_family, 0));
  p := billing.latest_plan(p_family);
  if p.id is null then
    perform billing.raise_error('PLAN_NOT_FOUND', '{}');
  elsif not p.active then
    return billing.plan_json(p) || jsonb_build_object('replayed', true);
  end if;
  update billing.plans x set active = false where x.id = p.id;
  insert into billing.catalog_changes (item, item_id, version, action, admin_id, reason, before, after)
  values ('plan', p_family, p.version, 'retired', p_admin, p_reason, billing.plan_json(p),
    billing.plan_json(p) || jsonb_build_object('active', false));
  return billing.plan_json(p) || jsonb_build_object('active', false, 'replayed', false);
end;
$$;
comment on function billing.retire_plan(p_admin uuid, p_family text, p_reason text) is 'Takes a plan off sale (audited); live subscriptions keep renewing at their versions.';
revoke execute on function billing.retire_plan(p_admin uuid, p_family text, p_reason text) from public;
grant execute on function billing.retire_plan(p_admin uuid, p_family text, p_reason text) to service_role;

-- GET /admin/catalog: every package and plan (on sale and retired) with its versions, how many
-- purchases or live subscriptions each version has, and the latest changes.
create or replace function billing.catalog_overview(p_changes integer default 50) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'packages', coalesce((select jsonb_agg(billing.package_json(k.id) || jsonb_build_object('versions',
        (select jsonb_agg(jsonb_build_object('version', v.version, 'stripe_price_id', v.stripe_price_id,
            'created_at', billing.json_time(v.created_at),
            'purchases', (select count(*) from billing.purchases x where x.package_id = v.package_id and x.package_version = v.version))
            || billing.package_spec(v.name, v.price_cents, v.currency, v.credits, v.bonus_credits) order by v.version desc)
         from billing.credit_package_versions v where v.package_id = k.id))
      order by not k.active, k.sort_order, k.id) from billing.credit_packages k), '[]'),
    'plans', coalesce((select jsonb_agg(billing.plan_json(f.latest) || jsonb_build_object('versions',
        (select jsonb_agg(billing.plan_json(v) || jsonb_build_object('live_subscriptions',
            (select count(*) from billing.subscriptions s where s.plan_id = v.id and s.refused_at is null
             and s.status in ('active', 'past_due', 'trialing', 'unpaid', 'paused'))) order by v.version desc)
         from billing.plans v where v.family = (f.latest).family))
      order by not (f.latest).active, (f.latest).sort_order, (f.latest).family)
      from (select distinct on (p.family) p as latest from billing.plans p order by p.family, p.version desc) f), '[]'),
    'changes', coalesce((select jsonb_agg(jsonb_build_object('id', c.id::text, 'item', c.item, 'item_id', c.item_id,
        'version', c.version, 'action', c.action, 'admin_id', c.admin_id, 'reason', c.reason, 'before', c.before,
        'after', c.after, 'at', billing.json_time(c.created_at)) order by c.id desc)
      from (select * from billing.catalog_changes x order by x.id desc limit least(greatest(p_changes, 1), 200)) c), '[]'))
$$;
comment on function billing.catalog_overview(p_changes integer) is 'Every package and plan with its versions (and what was sold at each), and the latest audited changes.';
revoke execute on function billing.catalog_overview(p_changes integer) from public;
grant execute on function billing.catalog_overview(p_changes integer) to service_role;

-- ============================================================ triggers

create trigger catalog_changes_immutable before update or delete on billing.catalog_changes
  for each row execute function billing.refuse_ledger_change();
