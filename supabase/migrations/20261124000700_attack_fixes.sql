-- What an outside attack on #30's changes found (tests/integration/attack-*.test.ts):
--
-- * A member read a school pool's exact balance from every answer that was not a refusal
--   (usage, holds, captures, releases) and from a refused capture. Answers about a pool's money
--   show the member their own account and name the organisation that paid.
-- * Credits taken back by a refund or a lost dispute from under a hold left the hold larger than
--   the balance: a job's capture then failed, and the job ran again (the provider paid each time)
--   and ended unbilled. Holds give way to reversals as they do to expiry.
-- * A sweep leaves held credits behind; when the hold ended, what it gave back stayed in an
--   allowance nobody could spend from (a removed member's job, a switch to a pool). The minute
--   sweep now returns it to the wallet.
-- * A removed member's queued jobs kept the organisation's credits held and then ran on them:
--   removal cancels the org-funded jobs no worker has started.
-- * Opening a dispute lowered what was available and so queued an auto-recharge: the disputed
--   card was charged again off-session, and the new credits were spendable. A dispute turns
--   auto-recharge off and forgets the saved card.

-- ============================================================ what a member sees
create function billing.as_seen_by(p_user uuid, p_account_id bigint, p_answer jsonb)
returns jsonb
language sql
stable
set search_path = ''
as $$
  -- Paid by an organisation: which one; its pool's balance never (the caller's own account's
  -- instead, as GET /credits/balance shows it); an allowance is the member's own to see.
  select coalesce((
    select case when a.member_id is not null then p_answer || jsonb_build_object('org_id', a.org_id)
                else p_answer || jsonb_build_object('org_id', a.org_id,
                  'balance', trim_scale(coalesce(b.balance, 0))::text, 'available', trim_scale(coalesce(b.available, 0))::text)
           end
    from billing.accounts a
    left join billing.accounts own on own.user_id = p_user
    left join lateral billing.balance_of(own.id) b on true
    where a.id = p_account_id and a.org_id is not null), p_answer)
$$;
comment on function billing.as_seen_by(uuid, bigint, jsonb) is
  'Internal: a money answer as p_user may see it when p_account_id (the account that paid or holds) is an organisation''s: its org_id added, and for a pooled wallet the caller''s own balance and available instead of the pool''s.';
revoke execute on function billing.as_seen_by(uuid, bigint, jsonb) from public, anon, authenticated;

create or replace function billing.perform_money_action(p_user uuid, p_action text, p_args jsonb, p_key text)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  u billing.usage_result;
  t billing.transfer_result;
  h billing.hold_result;
begin
  case p_action
  when 'credits.usage' then
    u := billing.charge_usage(p_user, p_args ->> 'model', (p_args ->> 'input_tokens')::bigint,
      (p_args ->> 'output_tokens')::bigint, p_key, p_args ->> 'correlation_id', p_args -> 'metadata');
    return billing.as_seen_by(p_user, (select x.from_account_id from billing.transfers x where x.id = u.transfer_id),
      jsonb_build_object('transfer_id', u.transfer_id::text, 'charged', trim_scale(u.charged)::text,
        'balance', trim_scale(u.balance)::text, 'available', trim_scale(u.available)::text,
        'rate_card_version', u.rate_card_version));
  when 'credits.holds' then
    h := billing.reserve_credits(p_user, (p_args ->> 'amount')::numeric, p_key,
      coalesce((p_args ->> 'ttl_seconds')::integer, 900), p_args ->> 'correlation_id', null);
  when 'credits.holds.capture' then
    h := billing.capture_hold(p_user, (p_args ->> 'hold_id')::uuid, (p_args ->> 'amount')::numeric, null);
  when 'credits.holds.release' then
    h := billing.release_hold(p_user, (p_args ->> 'hold_id')::uuid);
  when 'credits.grants' then
    t := billing.grant_credits((p_args ->> 'user_id')::uuid, (p_args ->> 'amount')::numeric,
      (p_args ->> 'kind')::billing.transfer_kind, p_key, null, null,
      jsonb_build_object('reason', p_args ->> 'reason', 'granted_by', p_user), p_args -> 'lot');
    return jsonb_build_object('transfer_id', t.transfer_id::text, 'amount', trim_scale(t.amount)::text,
      'balance', trim_scale(t.balance)::text,
      'lot_id', (select l.id::text from billing.lots l where l.grant_transfer_id = t.transfer_id));
  end case;
  return billing.as_seen_by(p_user, (select x.account_id from billing.holds x where x.id = h.hold_id), billing.hold_json(h));
end;
$function$;

-- ============================================================ holds give way to reversals
create function billing.fit_holds(p_account_id bigint, p_note jsonb)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
begin
  -- The caller holds the account lock. A dispute's own hold stays: it is what gives way last.
  select * into v_account from billing.accounts a where a.id = p_account_id;
  if v_account.held > greatest(v_account.balance, 0) then
    perform billing.shrink_holds(p_account_id, v_account.held - greatest(v_account.balance, 0), array['user', 'job'],
      p_note);
  end if;
end;
$$;
comment on function billing.fit_holds(bigint, jsonb) is
  'Internal: when an account''s holds reserve more than its balance (credits expired or taken back), its user and job holds give way, newest first, until they fit.';
revoke execute on function billing.fit_holds(bigint, jsonb) from public, anon, authenticated;

create or replace function billing.expire_due_lots(p_account_id bigint)
 RETURNS integer
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_account billing.accounts;
  v_lot record;
  v_count integer := 0;
begin
  select * into v_account from billing.accounts a where a.id = p_account_id for update;
  -- A disputed purchase's lots wait for the dispute: won, they expire; lost, they are reversed.
  for v_lot in
    select l.id, l.remaining, l.category from billing.lots l
    where l.account_id = p_account_id and l.open and not l.frozen and l.expires_at <= now()
    order by l.expires_at, l.id
  loop
    -- Keyed by what the lot held: a rerun finds the transfer, a later partial expiry gets its own.
    perform billing.post_user_transfer(coalesce(v_account.user_id, v_account.member_id), -1, 'reverse', v_lot.remaining,
      'expiry', 'expired', 'expiry:' || v_lot.id || ':' || trim_scale(v_lot.remaining), null, null,
      jsonb_build_object('lot_id', v_lot.id::text, 'category', v_lot.category), null, null,
      jsonb_build_object('first', jsonb_build_array(v_lot.id)), p_account_id);
    v_count := v_count + 1;
  end loop;
  update billing.accounts a
  set next_expiry = (select min(l.expires_at) from billing.lots l where l.account_id = a.id and l.open)
  where a.id = p_account_id returning * into v_account;
  -- Held credits expire too: holds that reserve more than is left give way, newest first.
  perform billing.fit_holds(p_account_id, jsonb_build_object('given_to_expiry', true));
  return v_count;
end;
$function$;

create or replace function billing.take_back_purchase(p_purchase billing.purchases, p_amount numeric, p_category text, p_kind billing.transfer_kind, p_key text, p_reference text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  v_wallet bigint := case when p_purchase.org_id is not null then billing.org_wallet_id(p_purchase.org_id) end;
  v_buyer bigint := coalesce(v_wallet, (select a.id from billing.accounts a where a.user_id = p_purchase.user_id));
  v_lots bigint[] := billing.purchase_lots(p_purchase.id, p_category);
  v_beyond numeric(38, 18);
  v_take numeric(38, 18);
  r record;
begin
  if p_amount <= 0 then
    return;
  end if;
  -- Every account involved, in id order (as everywhere), before anything moves.
  perform 1 from billing.accounts a
  where a.id = v_buyer or a.id in (select l.account_id from billing.lots l where l.id = any(v_lots) and l.open)
  order by a.id for update;
  -- The buyer's own lots of the purchase come first; what is beyond them comes from the lots its
  -- credits were moved into; the rest from the buyer (other credits, then debt).
  v_beyond := p_amount - coalesce((select sum(l.remaining) from billing.lots l
                                   where l.id = any(v_lots) and l.account_id = v_buyer), 0);
  for r in
    select l.account_id, coalesce(a.user_id, a.member_id) as owner, sum(l.remaining) as remaining
    from billing.lots l join billing.accounts a on a.id = l.account_id
    where l.id = any(v_lots) and l.open and l.account_id <> v_buyer
    group by l.account_id, a.user_id, a.member_id order by l.account_id
  loop
    exit when v_beyond <= 0;
    v_take := least(v_beyond, r.remaining);
    perform billing.reverse_credits(r.owner, v_take, p_kind, p_key || ':' || r.account_id, p_reference, null,
      billing.purchase_metadata(p_purchase), v_lots, r.account_id);
    v_beyond := v_beyond - v_take;
    p_amount := p_amount - v_take;
  end loop;
  if p_amount > 0 then
    perform billing.reverse_credits(case when v_wallet is null then p_purchase.user_id end, p_amount, p_kind, p_key,
      p_reference, null, billing.purchase_metadata(p_purchase), v_lots, v_wallet);
  end if;
  -- Credits taken back from under a hold: the hold gives way, as it does to expiry, so it never
  -- reserves more than the account has (a job's capture would fail and run again unbilled).
  perform billing.fit_holds(a.id, jsonb_build_object('given_to', p_kind))
  from billing.accounts a
  where a.id = v_buyer or a.id in (select l.account_id from billing.lots l where l.id = any(v_lots))
  order by a.id;
end;
$function$;

create or replace function billing.capture_hold(p_user uuid, p_hold_id uuid, p_amount numeric DEFAULT NULL::numeric, p_correlation_id text DEFAULT NULL::text)
 RETURNS billing.hold_result
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
declare
  v_hold billing.holds := billing.lock_hold(p_user, p_hold_id);
  v_capture numeric(38, 18);
  v_transfer billing.transfer_result;
  v_user uuid;
  v_unfrozen numeric(38, 18);
  v_pool boolean;
begin
  -- Credits that expired under the hold are gone before it is captured (the hold gave way).
  if (select a.next_expiry <= now() from billing.accounts a where a.id = v_hold.account_id) then
    perform billing.expire_due_lots(v_hold.account_id);
    select * into v_hold from billing.holds h where h.id = p_hold_id;
  end if;
  v_capture := coalesce(p_amount, v_hold.amount);
  if v_hold.status = 'captured' then
    if p_amount is not null and p_amount <> v_hold.captured_amount then
      perform billing.raise_error('HOLD_ALREADY_CAPTURED', jsonb_build_object('hold_id', p_hold_id,
        'captured', trim_scale(v_hold.captured_amount)::text));
    end if;
    return billing.hold_result_of(v_hold, true);
  end if;
  if v_hold.status <> 'active' or v_hold.expires_at <= now() then
    perform billing.raise_error(case when v_hold.status = 'released' then 'HOLD_RELEASED' else 'HOLD_EXPIRED' end,
      jsonb_build_object('hold_id', p_hold_id, 'expires_at', v_hold.expires_at));
  end if;
  perform billing.check_amount(v_capture);
  if v_capture > v_hold.amount then
    perform billing.raise_error('CAPTURE_EXCEEDS_HOLD', jsonb_build_object('held', trim_scale(v_hold.amount)::text,
      'requested', trim_scale(v_capture)::text));
  end if;

  -- A user's own capture never spends credits a dispute has frozen (a reversal of another
  -- purchase can take the balance below what is held). A job's capture is work already done.
  if p_user is not null then
    select a.balance - coalesce(sum(h.amount), 0), a.org_id is not null and a.member_id is null into v_unfrozen, v_pool
    from billing.accounts a
    left join billing.holds h on h.account_id = a.id and h.status = 'active' and h.purpose = 'dispute'
    where a.id = v_hold.account_id group by a.id;
    if v_unfrozen < v_capture then
      -- A member never reads a pool's balance, refused or not.
      perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_strip_nulls(jsonb_build_object(
        'required', trim_scale(v_capture)::text,
        'available', case when not v_pool then trim_scale(greatest(v_unfrozen, 0))::text end, 'frozen_by_dispute', true)));
    end if;
  end if;

  -- The hold stops counting first, so the capture spends the reserved credits.
  update billing.accounts a set held = a.held - v_hold.amount where a.id = v_hold.account_id returning a.user_id into v_user;
  v_transfer := billing.post_user_transfer(coalesce(v_user, v_hold.member_id), -1, 'capture', v_capture, 'hold_capture',
    'usage_revenue', 'hold:' || p_hold_id::text, coalesce(p_correlation_id, v_hold.correlation_id), null, null, null, p_hold_id,
    p_account_id => v_hold.account_id);
  update billing.holds h set status = 'captured', captured_amount = v_capture, capture_transfer_id = v_transfer.transfer_id,
    finished_at = now()
  where h.id = p_hold_id returning * into v_hold;
  perform billing.return_hold_cap_room(v_hold, v_hold.amount - v_capture);
  return billing.hold_result_of(v_hold, false);
end;
$function$;

-- ============================================================ nothing stranded in a closed allowance
create index accounts_allowances on billing.accounts (id) where member_id is not null;

create or replace function billing.sweep_ended_terms(p_limit integer DEFAULT 100)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
declare
  o record;
  a record;
  v_count integer := 0;
begin
  for o in
    select x.id, x.term_ends_at from billing.orgs x
    where x.term_ends_at <= now() and x.term_swept_at is null order by x.term_ends_at limit p_limit
    for update skip locked
  loop
    for a in select x.member_id from billing.accounts x where x.org_id = o.id and x.member_id is not null order by x.id loop
      perform billing.sweep_allowance(o.id, a.member_id, 'term-ended');
    end loop;
    update billing.orgs x set term_swept_at = now() where x.id = o.id;
    v_count := v_count + 1;
  end loop;
  -- A sweep leaves what is held (a job under way, a hold its member may still capture). Once
  -- such a hold ends in an allowance nobody spends from any more (its member removed or no
  -- longer a member, the organisation now a pool), what it gave back goes to the wallet too.
  for a in
    select x.org_id, x.member_id from billing.accounts x join billing.orgs g on g.id = x.org_id
    where x.member_id is not null and x.balance > 0
      and (x.balance > x.held or exists (select 1 from billing.holds h where h.account_id = x.id and h.status = 'active'
                                         and h.expires_at <= now()))
      and (g.funding <> 'allowance' or not exists (select 1 from billing.org_members m where m.org_id = x.org_id
                                                   and m.user_id = x.member_id and m.active and m.role = 'member'))
    order by x.id limit p_limit
  loop
    if billing.sweep_allowance(a.org_id, a.member_id, 'closed') > 0 then
      v_count := v_count + 1;
    end if;
  end loop;
  return v_count;
end;
$function$;
comment on function billing.sweep_ended_terms(integer) is
  'pg_cron: sweeps unspent allowances back to the wallet of each organisation whose term ended, and what holds gave back in allowances nobody spends from any more (member removed or promoted, organisation a pool). Idempotent.';

-- ============================================================ a removed member starts nothing more
create or replace FUNCTION billing.remove_member(p_user uuid, p_org uuid, p_member uuid)
 RETURNS jsonb
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
declare
  v_member billing.org_members;
  h record;
  j billing.jobs;
begin
  perform billing.require_org_role(p_org, p_user, true);
  perform 1 from billing.orgs o where o.id = p_org for no key update; -- membership changes: the org first
  perform 1 from billing.accounts a where a.user_id = p_member for update;
  select * into v_member from billing.org_members m where m.org_id = p_org and m.user_id = p_member for update;
  if not found or not v_member.active then
    perform billing.raise_error('MEMBER_NOT_FOUND', jsonb_build_object('user_id', p_member));
  end if;
  if v_member.role = 'owner' then
    perform billing.raise_error('ORG_FORBIDDEN', jsonb_build_object('rule', 'the owner cannot be removed'));
  end if;
  update billing.org_members m set active = false, removed_at = now() where m.org_id = p_org and m.user_id = p_member;
  delete from billing.org_admins x where x.org_id = p_org and x.user_id = p_member;
  if v_member.role = 'member' then
    update billing.accounts a set orgs = a.orgs - 1 where a.user_id = p_member;
  end if;
  -- Nothing they sent, and nothing sent to them, brings them (or anyone they chose) back.
  update billing.org_invitations i set status = 'revoked', answered_by = p_user, answered_at = now()
  where i.org_id = p_org and i.status = 'pending'
    and (i.invited_by = p_member or lower(i.email) = (select lower(u.email) from auth.users u where u.id = p_member));
  for h in
    select x.id from billing.holds x join billing.accounts a on a.id = x.account_id
    where a.org_id = p_org and x.member_id = p_member and x.status = 'active' and x.purpose = 'user'
  loop
    perform billing.release_hold(null, h.id);
  end loop;
  -- Their jobs the organisation pays for that no worker has started are cancelled, their holds
  -- released: once removed, nothing more starts on its credits. A job under way finishes.
  for j in
    select x.* from billing.jobs x
    join billing.holds y on y.id = x.hold_id join billing.accounts a on a.id = y.account_id
    where x.user_id = p_member and x.status = 'queued' and a.org_id = p_org
    order by x.id for update of x
  loop
    perform billing.release_job_hold(j);
    update billing.jobs x set status = 'cancelled', completed_at = now(), error = jsonb_build_object('code', 'MEMBER_REMOVED',
      'message', 'The organisation paying for this job removed you before it started.')
    where x.id = j.id;
  end loop;
  perform billing.sweep_allowance(p_org, p_member, 'removed');
  return jsonb_build_object('org_id', p_org, 'user_id', p_member, 'active', false);
end;
$function$;
comment on function billing.remove_member(uuid, uuid, uuid)
  is 'An owner or admin removes a member (never the owner): their org holds released and org-funded jobs not yet started cancelled, allowance swept back, and the pending invitations they sent or were sent revoked.';

-- ============================================================ disputes stop off-session charges
create function billing.turn_off_auto_recharge(p_user uuid, p_reason text, p_audit jsonb)
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
comment on function billing.turn_off_auto_recharge(uuid, text, jsonb) is
  'Internal: turns a user''s auto-recharge off for p_reason (audited); only their own PUT turns it on again. Returns whether it was on.';
revoke execute on function billing.turn_off_auto_recharge(uuid, text, jsonb) from public, anon, authenticated;

create function billing.stop_off_session_charges(p_user uuid, p_dispute_id text)
returns void
language plpgsql
set search_path = ''
as $$
begin
  perform billing.turn_off_auto_recharge(p_user, 'dispute', jsonb_build_object('dispute_id', p_dispute_id));
  -- Forgotten, so auto-recharge cannot be turned on again (NO_SAVED_CARD) until the student pays
  -- on-session and saves a card again; a queued recharge fails when claimed (claim_recharges).
  delete from billing.saved_cards c where c.user_id = p_user;
end;
$$;
comment on function billing.stop_off_session_charges(uuid, text) is
  'Internal: a dispute on one of p_user''s payments: auto-recharge off (reason dispute) and the saved card forgotten.';
revoke execute on function billing.stop_off_session_charges(uuid, text) from public, anon, authenticated;

create or replace function billing.record_recharge(p_recharge_id uuid, p_payment_intent text, p_failure_code text)
 RETURNS text
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
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
$function$;

create or replace function billing.sync_purchase(p_state jsonb)
 RETURNS text
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO ''
AS $function$
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
  v_buyer bigint;
  v_moved numeric(38, 18);
  v_elsewhere record;  -- an account the purchase's credits were moved to
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
    perform billing.take_back_purchase(p, v_target_c - p.credits_refund_reversed, 'paid', 'refund_reversal',
      'refund:' || p.id || ':' || v_refunded, v_charge);
    perform billing.take_back_purchase(p, v_target_b - p.bonus_refund_reversed, 'promotional', 'refund_reversal',
      'refund-bonus:' || p.id || ':' || v_refunded, v_charge);
    update billing.purchases x
    set amount_refunded_cents = v_refunded, credits_refund_reversed = greatest(v_target_c, x.credits_refund_reversed),
        bonus_refund_reversed = greatest(v_target_b, x.bonus_refund_reversed), updated_at = now()
    where x.id = p.id returning * into p;
  end if;

  -- 3. Disputes: open → hold what is left of the purchase, in every account its credits are in;
  -- won → release; lost → reverse it from wherever it is.
  if v_dispute is not null and coalesce(p.dispute_status, 'open') = 'open' then
    v_remaining := (p.credits - p.credits_refund_reversed) + (p.bonus_credits - p.bonus_refund_reversed);
    if v_dispute = 'open' then
      -- The disputed card is charged off-session no more: before the holds below lower what is
      -- available (which would queue a recharge), auto-recharge goes off and the card is forgotten.
      perform billing.stop_off_session_charges(p.user_id, p_state ->> 'dispute_id');
      v_buyer := coalesce(v_wallet, (select a.id from billing.accounts a where a.user_id = p.user_id));
      v_moved := 0;
      perform 1 from billing.accounts a
      where a.id = v_buyer or a.id in (select l.account_id from billing.lots l where l.purchase_id = p.id and l.open)
      order by a.id for update;
      -- In id order, as every lock is taken; the buyer's account holds the rest of the purchase.
      for v_elsewhere in
        select l.account_id, sum(l.remaining) as remaining from billing.lots l
        where l.purchase_id = p.id and l.open and l.account_id <> v_buyer group by l.account_id order by l.account_id
      loop
        perform billing.place_dispute_hold(v_elsewhere.account_id, v_elsewhere.remaining, p_state ->> 'dispute_id',
          'dispute:' || (p_state ->> 'dispute_id') || ':' || v_elsewhere.account_id);
        v_moved := v_moved + v_elsewhere.remaining;
      end loop;
      if p.dispute_hold_id is null and v_remaining > v_moved then
        p.dispute_hold_id := billing.place_dispute_hold(v_buyer, v_remaining - v_moved, p_state ->> 'dispute_id',
          'dispute:' || (p_state ->> 'dispute_id'));
      end if;
    else
      perform billing.release_hold(null, h.id) from billing.holds h
      where h.purpose = 'dispute' and h.correlation_id = p_state ->> 'dispute_id' and h.status = 'active'
      order by h.account_id;
    end if;
    -- While disputed, the purchase's own lots are spent last (only a job's hold can reach them).
    update billing.lots l set frozen = (v_dispute = 'open') where l.purchase_id = p.id and l.frozen <> (v_dispute = 'open');
    if v_dispute = 'lost' then
      perform billing.take_back_purchase(p, v_remaining, null, 'dispute_reversal', 'dispute:' || (p_state ->> 'dispute_id'),
        v_charge);
    end if;
    update billing.purchases x
    set dispute_id = p_state ->> 'dispute_id', dispute_status = v_dispute, dispute_hold_id = p.dispute_hold_id, updated_at = now()
    where x.id = p.id returning * into p;
  end if;
  return p.status;
end;
$function$;
