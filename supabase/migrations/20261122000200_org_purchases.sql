-- An organisation buys credits through Stripe Checkout exactly as a student does: the same
-- packages, the same session, the same webhook convergence (billing.sync_purchase). What
-- differs is whose account the credits land in: purchases.org_id names the organisation, and
-- its wallet receives the paid and bonus lots; refunds and disputes take them back from the
-- wallet (debt included), as they would from a student. The buyer (purchases.user_id) is the
-- owner or admin who paid; the receipt goes to them and names the organisation.

alter table billing.purchases add column org_id uuid references billing.orgs (id) on delete restrict;
comment on column billing.purchases.org_id is 'The organisation whose wallet the credits are for (null: the buyer''s own account).';
create index purchases_org on billing.purchases (org_id, created_at) where org_id is not null;

create or replace view billing_api.purchases with (security_invoker = true) as
  select p.id, p.package_id, p.status, p.price_cents, p.currency, p.credits, p.bonus_credits,
         p.amount_refunded_cents, p.created_at, p.paid_at, p.org_id
  from billing.purchases p;

-- What an organisation's purchase adds to its ledger entries and receipt.
create function billing.purchase_metadata(p billing.purchases) returns jsonb
language sql stable
set search_path = ''
as $$
  select case when p.org_id is not null then
    jsonb_build_object('org_id', p.org_id, 'org_name', o.name, 'bought_by', p.user_id) end
  from (select) x left join billing.orgs o on o.id = p.org_id
$$;
comment on function billing.purchase_metadata(billing.purchases) is 'Internal: an organisation purchase''s organisation and buyer (null for a student''s own).';

-- ============================================================ grants and reversals into any tracked account

drop function billing.grant_credits(uuid, numeric, billing.transfer_kind, text, text, text, jsonb, jsonb);
create function billing.grant_credits(
  p_user uuid,
  p_amount numeric,
  p_kind billing.transfer_kind,
  p_idempotency_key text,
  p_reference text default null,
  p_correlation_id text default null,
  p_metadata jsonb default null,
  p_lot jsonb default null,
  p_account_id bigint default null                -- an organisation's wallet instead of p_user's account
) returns billing.transfer_result
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_kind not in ('purchase', 'promo_grant', 'adjustment') then
    perform billing.raise_error('INVALID_KIND', jsonb_build_object('kind', p_kind, 'allowed', 'purchase, promo_grant, adjustment'));
  end if;
  return billing.post_user_transfer(p_user, 1, 'credit', p_amount, p_kind,
    case p_kind when 'purchase' then 'purchases' when 'promo_grant' then 'promotions' else 'adjustments' end,
    p_idempotency_key, p_correlation_id, p_reference, p_metadata, null, null, p_lot, p_account_id);
end;
$$;
comment on function billing.grant_credits(uuid, numeric, billing.transfer_kind, text, text, text, jsonb, jsonb, bigint)
  is 'Adds credits to a user (or the account p_account_id) as a new lot (p_lot: see create_lot): a purchase, a promotion, or a support adjustment. Idempotent by (key, kind).';

drop function billing.reverse_credits(uuid, numeric, billing.transfer_kind, text, text, text, jsonb, bigint[]);
create function billing.reverse_credits(
  p_user uuid,
  p_amount numeric,
  p_kind billing.transfer_kind,
  p_idempotency_key text,
  p_reference text default null,
  p_correlation_id text default null,
  p_metadata jsonb default null,
  p_first_lots bigint[] default null,
  p_account_id bigint default null                -- an organisation's wallet instead of p_user's account
) returns billing.transfer_result
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_kind not in ('refund_reversal', 'dispute_reversal', 'expiry') then
    perform billing.raise_error('INVALID_KIND', jsonb_build_object('kind', p_kind, 'allowed', 'refund_reversal, dispute_reversal, expiry'));
  end if;
  return billing.post_user_transfer(p_user, -1, 'reverse', p_amount, p_kind,
    case p_kind when 'refund_reversal' then 'refunds' when 'dispute_reversal' then 'disputes' else 'expired' end,
    p_idempotency_key, p_correlation_id, p_reference, p_metadata, null, null,
    jsonb_build_object('first', to_jsonb(coalesce(p_first_lots, '{}'))), p_account_id);
end;
$$;
comment on function billing.reverse_credits(uuid, numeric, billing.transfer_kind, text, text, text, jsonb, bigint[], bigint)
  is 'Takes credits back after a refund, a lost dispute or an expiry, from p_first_lots first. The only path that may make a balance negative (debt).';

-- ============================================================ checkout for an organisation

drop function billing.begin_checkout(uuid, text, text, text, boolean);
create function billing.begin_checkout(p_user uuid, p_package_id text, p_request_key text, p_client_temp_id text default null,
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
    perform billing.raise_error('PACKAGE_NOT_FOUND', jsonb_build_object('package_id', p_package_id));
  end if;

  -- One checkout at a time per user, so two tabs cannot open two sessions for one package.
  perform pg_advisory_xact_lock(hashtextextended('checkout:' || p_user::text, 0));
  if p_client_temp_id is not null then
    select * into v_purchase from billing.purchases p where p.user_id = p_user and p.client_temp_id = p_client_temp_id;
    if found and (v_purchase.package_id <> p_package_id or v_purchase.org_id is distinct from p_org) then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', 'checkout', 'client_temp_id', p_client_temp_id));
    elsif found then
      return billing.checkout_of(v_purchase, true);  -- the same optimistic operation, sent again under another key
    end if;
  end if;
  select * into v_purchase from billing.purchases p
  where p.user_id = p_user and p.package_id = p_package_id and p.org_id is not distinct from p_org and p.status = 'pending'
    and (p.session_expires_at > now() + interval '1 minute' or (p.stripe_session_id is null and p.created_at > now() - interval '2 minutes'))
  order by p.created_at desc limit 1;
  if found then
    if v_purchase.stripe_session_id is null then
      perform billing.raise_error('CHECKOUT_IN_PROGRESS', jsonb_build_object('purchase_id', v_purchase.id));
    end if;
    return billing.checkout_of(v_purchase, true);
  end if;

  insert into billing.purchases (user_id, package_id, request_key, client_temp_id, price_cents, currency, credits, bonus_credits,
                                 save_card, org_id)
  values (p_user, v_package.id, p_request_key, p_client_temp_id, v_package.price_cents, v_package.currency,
          v_package.credits, v_package.bonus_credits, coalesce(p_save_card, false) and p_org is null, p_org)
  returning * into v_purchase;
  return billing.checkout_of(v_purchase, false);
end;
$$;
comment on function billing.begin_checkout(uuid, text, text, text, boolean, uuid)
  is 'Creates a pending purchase (for p_org''s wallet when given: owners and admins only), or returns the user''s open one for the same package and organisation, or the one this request key already made.';

-- ============================================================ converging on Stripe's state, into the right account

drop function billing.place_dispute_hold(uuid, numeric, text);
create function billing.place_dispute_hold(p_account_id bigint, p_amount numeric, p_dispute_id text) returns uuid
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
  select * into v_account from billing.accounts a where a.id = p_account_id for update;
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
comment on function billing.place_dispute_hold(bigint, numeric, text)
  is 'Internal: freezes up to p_amount of an account''s credits for an open dispute, taking them back from its own holds first.';

-- p_state (all from Stripe, re-fetched, never from event payload order):
--   session_id, session_status, payment_status, amount_total, currency, payment_intent,
--   payment_intent_status, charge_id, amount_refunded, dispute_id, dispute_status
create or replace function billing.sync_purchase(p_state jsonb) returns text
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
  v_user uuid;        -- whose account the credits are in: the buyer's,
  v_wallet bigint;    -- or, for an organisation's purchase, its wallet
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
  if p.org_id is not null then
    v_wallet := billing.org_wallet_id(p.org_id);
  else
    v_user := p.user_id;
  end if;

  -- 1. Payment.
  if p.status <> 'paid' and p_state ->> 'payment_status' = 'paid' then
    if (p_state ->> 'amount_total')::integer <> p.price_cents or lower(p_state ->> 'currency') <> p.currency then
      perform billing.raise_error('PAYMENT_AMOUNT_MISMATCH', jsonb_build_object('purchase_id', p.id,
        'expected_cents', p.price_cents, 'paid_cents', p_state ->> 'amount_total', 'currency', p_state ->> 'currency'));
    end if;
    -- The credits are a paid lot whose cost is the price; the bonus a promotional lot.
    perform billing.grant_credits(v_user, p.credits, 'purchase', 'purchase:' || p.id, p.stripe_session_id, null,
      billing.purchase_metadata(p), jsonb_build_object('category', 'paid', 'cost_cents', p.price_cents, 'currency', p.currency,
        'purchase_id', p.id), v_wallet);
    if p.bonus_credits > 0 then
      perform billing.grant_credits(v_user, p.bonus_credits, 'promo_grant', 'purchase-bonus:' || p.id, p.stripe_session_id,
        null, billing.purchase_metadata(p), jsonb_build_object('category', 'promotional', 'currency', p.currency,
          'purchase_id', p.id), v_wallet);
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
      perform billing.reverse_credits(v_user, v_target_c - p.credits_refund_reversed, 'refund_reversal',
        'refund:' || p.id || ':' || v_refunded, v_charge, null, billing.purchase_metadata(p), billing.purchase_lots(p.id, 'paid'),
        v_wallet);
    end if;
    if v_target_b > p.bonus_refund_reversed then
      perform billing.reverse_credits(v_user, v_target_b - p.bonus_refund_reversed, 'refund_reversal',
        'refund-bonus:' || p.id || ':' || v_refunded, v_charge, null, billing.purchase_metadata(p),
        billing.purchase_lots(p.id, 'promotional'), v_wallet);
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
      p.dispute_hold_id := billing.place_dispute_hold(coalesce(v_wallet, (select a.id from billing.accounts a where a.user_id = p.user_id)),
        v_remaining, p_state ->> 'dispute_id');
    elsif v_dispute in ('won', 'lost') and p.dispute_hold_id is not null then
      perform billing.release_hold(null, p.dispute_hold_id);
    end if;
    -- While disputed, the purchase's own lots are spent last (only a job's hold can reach them).
    update billing.lots l set frozen = (v_dispute = 'open') where l.purchase_id = p.id and l.frozen <> (v_dispute = 'open');
    if v_dispute = 'lost' and v_remaining > 0 then
      perform billing.reverse_credits(v_user, v_remaining, 'dispute_reversal', 'dispute:' || (p_state ->> 'dispute_id'), v_charge,
        null, billing.purchase_metadata(p), billing.purchase_lots(p.id, null), v_wallet);
    end if;
    update billing.purchases x
    set dispute_id = p_state ->> 'dispute_id', dispute_status = v_dispute, dispute_hold_id = p.dispute_hold_id, updated_at = now()
    where x.id = p.id returning * into p;
  end if;
  return p.status;
end;
$$;
comment on function billing.sync_purchase(jsonb)
  is 'fulfillCheckout: converges a purchase on Stripe''s current state (credits in the buyer''s account, or the organisation''s wallet). Safe to run any number of times, concurrently, in any order.';

revoke execute on all functions in schema billing from public, anon, authenticated;
grant execute on function billing.balance_of(bigint) to authenticated, service_role;
grant execute on function
  billing.grant_credits(uuid, numeric, billing.transfer_kind, text, text, text, jsonb, jsonb, bigint),
  billing.reverse_credits(uuid, numeric, billing.transfer_kind, text, text, text, jsonb, bigint[], bigint),
  billing.begin_checkout(uuid, text, text, text, boolean, uuid)
to service_role;
