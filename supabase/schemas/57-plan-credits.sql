-- Plan credits: what a plan's invoices grant and take back. invoice.paid grants a period's
-- included credits once per invoice (grant_plan_invoice: a renewal, the first invoice, an
-- upgrade's proration); at a renewal the ending period's plan credits roll over, capped by the
-- plan's rule, or expire as breakage (roll_over_plan_credits, end_plan_lot); a refund or a
-- dispute of a plan's charge takes them back (sync_plan_charge, take_back_plan_credits). The
-- subscription's tables live in 56-plans.sql; its Stripe state is synced here, above the grants
-- it makes (sync_subscription, at the end).

-- ============================================================ functions

create or replace function billing.plan_rollover_grace() returns interval
language sql immutable
set search_path = ''
as $$
  -- Stripe charges a renewal about an hour after the period ends and retries a failed one for
  -- days (Smart Retries): a renewal paid later than this rolls nothing over.
  select interval '3 days'
$$;
comment on function billing.plan_rollover_grace() is 'Internal: how long after a period''s end its renewal may be paid and still roll its credits over.';
revoke execute on function billing.plan_rollover_grace() from public;

create or replace function billing.end_plan_lot(p_account_id bigint, p_lot_id bigint, p_category text, p_roll numeric,
  p_expire numeric, p_sub_id uuid, p_new_end timestamptz, p_key text) returns void
language plpgsql
set search_path = ''
set plan_cache_mode to 'force_generic_plan'
as $$
declare
  v_posted billing.posted_transfer[];
  v_parts jsonb;
  v_kept numeric(38, 18) := coalesce((select sum(hl.amount) from billing.hold_lots hl join billing.holds h
                                      on h.id = hl.hold_id and h.status = 'active' and h.purpose = 'claims'
                                      where hl.lot_id = p_lot_id), 0);
begin
  -- Generic plans (plan_cache_mode, here and in the renewal's other functions): these statements
  -- cost more to plan than to run, and custom plans are made for a connection's first five calls.
  -- A rollover out of the lot and into a new one, then the expiry of the rest (expire_due_lots'
  -- key: a sweep that comes later finds nothing more to expire). A renewal is the only caller, under the
  -- account lock, once per invoice (plan_grants).
  -- What a claims hold keeps of it stays for the tick (billing.take_back_claims): the refunds'
  -- since before the period ended. It neither expires nor rolls: the caller ends the lot's
  -- remaining, the kept part among what it would expire, and that part stays.
  if not exists (select 1 from billing.lots l where l.id = p_lot_id and l.remaining >= p_roll + p_expire)
     or p_expire < v_kept then
    perform billing.raise_error('INTERNAL_ERROR', jsonb_build_object('plan_lot', p_lot_id::text));
  end if;
  p_expire := p_expire - v_kept;
  -- What live holds reserved of the lot: the writer carries what rolls over into the new lot and
  -- shrinks them by the rest (billing.shed_reservations); then billing.holds_gave_way.
  v_parts := (select coalesce(jsonb_agg(jsonb_build_object('hold_id', hl.hold_id, 'amount', hl.amount)), '[]')
              from billing.hold_lots hl join billing.holds h on h.id = hl.hold_id and h.status = 'active'
                and h.purpose <> 'claims'
              where hl.lot_id = p_lot_id);
  v_posted := billing.post_transfers(array(
    select (m.kind, m.from_id, m.to_id, m.amount, m.key, m.correlation, null, m.metadata, null, null, null, m.lots)::billing.transfer_spec
    from (values
      (1, 'plan_rollover'::billing.transfer_kind, p_account_id, billing.platform_account_id('plans'), p_roll,
       p_key || ':out:' || p_lot_id, p_sub_id::text, jsonb_build_object('lot_id', p_lot_id::text),
       jsonb_build_object('first', jsonb_build_array(p_lot_id))),
      (2, 'plan_rollover', billing.platform_account_id('plans'), p_account_id, p_roll,
       p_key || ':in:' || p_lot_id, p_sub_id::text, jsonb_build_object('lot_id', p_lot_id::text),
       jsonb_build_object('moved_from', p_lot_id, 'expires_at', p_new_end)),
      (3, 'expiry', p_account_id, billing.platform_account_id('expired'), p_expire,
       billing.expiry_key(p_lot_id, p_expire), null, jsonb_build_object('lot_id', p_lot_id::text, 'category', p_category),
       jsonb_build_object('first', jsonb_build_array(p_lot_id)))
    ) m (n, kind, from_id, to_id, amount, key, correlation, metadata, lots)
    where m.amount > 0
    order by m.n));
  if p_expire > 0 then
    update billing.lots l set expires_at = least(l.expires_at, now()) where l.id = p_lot_id;
  end if;
  if p_roll > 0 then
    insert into billing.plan_lots (lot_id, subscription_id, period_end)
    select l.id, p_sub_id, p_new_end from billing.lots l where l.grant_transfer_id = (v_posted[2]).transfer_id;
  end if;
  if v_parts <> '[]' then
    perform billing.holds_gave_way((
      select jsonb_agg(jsonb_build_object('hold_id', x.hold_id, 'given', x.amount - coalesce((
        select sum(hl.amount) from billing.hold_lots hl join billing.lots nl on nl.id = hl.lot_id and nl.moved_from = p_lot_id
        where hl.hold_id = x.hold_id), 0)))
      from jsonb_to_recordset(v_parts) x(hold_id uuid, amount numeric)));
  end if;
end;
$$;
comment on function billing.end_plan_lot(p_account_id bigint, p_lot_id bigint, p_category text, p_roll numeric, p_expire numeric, p_sub_id uuid, p_new_end timestamptz, p_key text) is 'Internal: at a renewal, moves p_roll of a plan lot into a new lot of the next period (plan_rollover out and in; moved_from keeps its provenance) and expires p_expire of it now but what claims holds keep of it (left for the tick), under the caller''s account lock.';
revoke execute on function billing.end_plan_lot(p_account_id bigint, p_lot_id bigint, p_category text, p_roll numeric, p_expire numeric, p_sub_id uuid, p_new_end timestamptz, p_key text) from public;

create or replace function billing.expire_plan_lots(p_sub_id uuid, p_account_id bigint, p_period_end timestamptz,
  p_expired boolean) returns void
language plpgsql
set search_path = ''
set plan_cache_mode to 'force_generic_plan'
as $$
declare
  v_account billing.accounts;
  v_any boolean := p_expired;
  l record;
begin
  -- What the rollover pass left of a plan's lots of the ending period (and of any older one
  -- still open) ends now, a frozen (disputed) lot too: it expires when due like any lot, and a
  -- lost dispute forgives what expired.
  for l in
    update billing.lots x set expires_at = least(x.expires_at, now())
    from billing.plan_lots pl
    where pl.lot_id = x.id and pl.subscription_id = p_sub_id and pl.period_end <= p_period_end and x.open
    returning x.id, x.remaining, x.category
  loop
    -- Read again: a claim owed again as an earlier lot ended may have drawn this one.
    select x.remaining into l.remaining from billing.lots x where x.id = l.id;
    continue when l.remaining <= 0;
    perform billing.end_plan_lot(p_account_id, l.id, l.category, 0, l.remaining, p_sub_id, null, null);
    v_any := true;
  end loop;
  update billing.accounts a
  set next_expiry = (select min(x.expires_at) from billing.lots x where x.account_id = a.id and x.open)
  where a.id = p_account_id returning * into v_account;
  -- As an expiry through post_user_transfer: the tick's low-balance alert is told.
  if v_any and v_account.low_balance_threshold is not null then
    perform billing.watch_account(v_account.id, v_account.balance - v_account.held, null);
  end if;
  -- Reserved credits expired too (the holds that reserved them shrank with the expiry: the
  -- writer's). Then other lots of the account past their expiry (the sweep had not reached them).
  if v_account.next_expiry <= now() then
    perform billing.expire_due_lots(p_account_id);
  end if;
end;
$$;
comment on function billing.expire_plan_lots(p_sub_id uuid, p_account_id bigint, p_period_end timestamptz, p_expired boolean) is 'Internal: at a renewal, after the rollover pass, expires what is left of a plan''s lots of the ending period (and older) now and makes next_expiry exact; p_expired: the pass expired some already.';
revoke execute on function billing.expire_plan_lots(p_sub_id uuid, p_account_id bigint, p_period_end timestamptz, p_expired boolean) from public;

create or replace function billing.roll_over_plan_credits(p_sub billing.subscriptions, p_account_id bigint, p_plan billing.plans,
  p_period_end timestamptz, p_new_end timestamptz, p_key text) returns numeric
language plpgsql
set search_path = ''
set plan_cache_mode to 'force_generic_plan'
as $$
declare
  v_cap numeric(38, 18) := case p_plan.rollover when 'up_to_credits' then p_plan.rollover_limit
    when 'up_to_share' then floor(p_plan.credits * p_plan.rollover_limit) else 0 end;
  v_left numeric(38, 18) := v_cap;
  v_take numeric(38, 18);
  v_total numeric(38, 18) := 0;
  v_settled numeric(38, 18);
  v_back billing.posted_transfer[];
  l record;
  v_expired boolean := false;
begin
  perform 1 from billing.accounts a where a.id = p_account_id for update;
  -- The ending period's plan lots (its grant and what rolled into it), soonest-spent first. What
  -- rolls is what each had left at its end, whenever the renewal is paid within the grace window
  -- after it (Stripe charges a renewal about an hour after the period ends; a failed one is retried
  -- for days): still open when the sweep has not reached it (nothing can be spent from a lot past
  -- its expiry), or what the sweep expired. Never a frozen (disputed) lot: its credits cannot move.
  -- Nor what a claims hold keeps of it (kept): a refund's since before the period ended, left in
  -- the lot for the tick (billing.take_back_claims), which the sweep did not expire either.
  for l in
    select x.*, coalesce((select sum(a.amount) from billing.lot_allocations a
                          where a.lot_id = x.id and a.kind = 'expiry'), 0) as expired,
      coalesce((select sum(hl.amount) from billing.hold_lots hl join billing.holds h
                on h.id = hl.hold_id and h.status = 'active' and h.purpose = 'claims'
                where hl.lot_id = x.id), 0) as kept
    from billing.plan_lots pl join billing.lots x on x.id = pl.lot_id
    where pl.subscription_id = p_sub.id and pl.period_end = p_period_end and not x.frozen
      and x.account_id = p_account_id and x.expires_at > now() - billing.plan_rollover_grace()
    order by x.id
  loop
    -- Not what a refund or dispute of the grant already forgave as expired, nor after a lost
    -- dispute (it took the rest); a refund or a won dispute before the sweep leaves the rest to roll.
    if v_left > 0 and l.remaining <= l.kept and l.expired > 0 and not exists (select 1 from billing.plan_grants g
        where g.subscription_id = p_sub.id and (g.expiry_forgiven > 0 or g.dispute_status = 'lost')
          and l.id = any(billing.lot_lineage(g.lot_id))) then
      -- The sweep was first: the share that rolls comes back from breakage into the lot it
      -- expired from (a negative expiry allocation, as a void gives back: breakage revenue and
      -- deferred revenue stay exact), then moves on like the rest.
      v_take := least(l.expired, v_left);
      v_back := billing.post_transfers(array[('expiry', billing.platform_account_id('expired'), p_account_id, v_take,
        p_key || ':unexpire:' || l.id, p_sub.id::text, null,
        jsonb_build_object('lot_id', l.id::text, 'category', l.category, 'rolled_over', true), null, null, null,
        jsonb_build_object('return_to', jsonb_build_array(jsonb_build_object('lot_id', l.id, 'amount', v_take)))
      )::billing.transfer_spec]);
      continue when (v_back[1]).replayed;
      -- What of it paid a debt (the writer's rule: only credits for any model do).
      select x.remaining into l.remaining from billing.lots x where x.id = l.id;
      select a.debt_settled into v_settled from billing.lot_allocations a
      where a.transfer_id = (v_back[1]).transfer_id and a.lot_id = l.id;
      -- What paid the debt rolled over too: it counts against the cap (or each expired lot of
      -- the period would pay up to a whole cap of debt out of breakage).
      v_left := v_left - v_settled;
      v_total := v_total + v_settled;
    end if;
    -- In the same pass, what does not roll over ends with its period (now, at the latest: the
    -- renewal says the period is over). Read again: the unexpiry above may have paid a debt.
    select x.remaining into l.remaining from billing.lots x where x.id = l.id;
    v_take := least(l.remaining - l.kept, greatest(v_left, 0));
    continue when l.remaining <= 0;
    perform billing.end_plan_lot(p_account_id, l.id, l.category, v_take, l.remaining - v_take, p_sub.id, p_new_end, p_key);
    v_expired := v_expired or l.remaining - l.kept > v_take;
    v_left := v_left - v_take;
    v_total := v_total + v_take;
  end loop;
  perform billing.expire_plan_lots(p_sub.id, p_account_id, p_period_end, v_expired);
  return v_total;
end;
$$;
comment on function billing.roll_over_plan_credits(p_sub billing.subscriptions, p_account_id bigint, p_plan billing.plans, p_period_end timestamptz, p_new_end timestamptz, p_key text) is 'Internal: at a renewal paid within the grace window after the period''s end, moves what the plan''s rollover rule allows of what the ending period''s plan lots had left at their end (back from breakage if the sweep expired it) into lots expiring at the new period''s end; the rest expires now.';
revoke execute on function billing.roll_over_plan_credits(p_sub billing.subscriptions, p_account_id bigint, p_plan billing.plans, p_period_end timestamptz, p_new_end timestamptz, p_key text) from public;

-- The plan a paid invoice billed, checked against what it paid: an upgrade's is the plan its
-- charged line's price belongs to (what was bought, whatever the metadata says: the metadata of a
-- declined or pending update is not it); other invoices' is the subscription metadata Stripe
-- snapshots onto them. A period's own invoice: its subtotal is the plan's price and it was paid
-- with the tax on top.
create or replace function billing.plan_of_invoice(p_sub billing.subscriptions, p_invoice jsonb) returns billing.plans
language plpgsql
stable
set search_path = ''
as $$
declare
  v_plan billing.plans;
  v_plan_id text := coalesce(p_invoice ->> 'plan_id', p_sub.plan_id);
  v_tax integer := coalesce((p_invoice ->> 'tax')::integer, 0);
  v_amount integer := (p_invoice ->> 'amount_paid')::integer - v_tax;
begin
  if jsonb_typeof(p_invoice -> 'price') = 'object' then
    select coalesce(max(p.id) filter (where p.id = v_plan_id), case when count(*) = 1 then max(p.id) end, v_plan_id)
    into v_plan_id
    from billing.plans p
    where p.stripe_price_id = p_invoice -> 'price' ->> 'id'
       or (p.stripe_price_id is null and p.price_cents = (p_invoice -> 'price' ->> 'unit_amount')::integer
           and p.currency = lower(p_invoice -> 'price' ->> 'currency')
           and p.billing_interval = p_invoice -> 'price' ->> 'interval');
  end if;
  select * into v_plan from billing.plans p where p.id = v_plan_id;
  if not found then
    perform billing.raise_error('PLAN_NOT_FOUND', jsonb_build_object('plan_id', p_invoice ->> 'plan_id'));
  end if;
  if lower(p_invoice ->> 'currency') <> v_plan.currency or v_tax < 0 or v_amount < 0
     or (p_invoice ->> 'billing_reason' in ('subscription_create', 'subscription_cycle')
         and (v_amount <> v_plan.price_cents or coalesce((p_invoice ->> 'subtotal')::integer, v_amount) <> v_plan.price_cents)) then
    perform billing.raise_error('PAYMENT_AMOUNT_MISMATCH', jsonb_build_object('invoice', p_invoice ->> 'id',
      'expected_cents', v_plan.price_cents, 'paid_cents', p_invoice ->> 'amount_paid', 'tax_cents', v_tax,
      'currency', p_invoice ->> 'currency'));
  end if;
  return v_plan;
end;
$$;
comment on function billing.plan_of_invoice(p_sub billing.subscriptions, p_invoice jsonb) is 'Internal: the plan a paid invoice billed (its charged price''s, else the subscription''s metadata), refused with PAYMENT_AMOUNT_MISMATCH when the invoice paid something else.';
revoke execute on function billing.plan_of_invoice(p_sub billing.subscriptions, p_invoice jsonb) from public, anon, authenticated;

-- What a newly recorded paid invoice (p_grant) grants, from what the subscription's other invoices
-- granted, in one read: whether a later period was granted; what this period already got (the
-- first invoice, or an earlier upgrade), of it what the period's own invoices got, and the largest
-- plan among them; whether this period already had a renewal invoice; and the last period granted
-- before this one. stale: a period that is over, or older than one already granted (a late,
-- reordered invoice), gets nothing: its credits would expire at once or reopen a period the
-- student has left. roll_from: the period a renewal rolls over from (once per period: a second
-- renewal invoice for it, voided and reissued, rolls nothing again).
create or replace function billing.plan_invoice_credits(p_sub billing.subscriptions, p_plan billing.plans,
  p_grant billing.plan_grants, out stale boolean, out credits numeric, out roll_from timestamptz)
language plpgsql
set search_path = ''
as $$
declare
  v_old billing.plans;
  v_had numeric(38, 18);
  v_base_had numeric(38, 18);
  v_top numeric(38, 18);
  v_prev timestamptz;
  v_later boolean;
  v_cycled boolean;
begin
  select coalesce(bool_or(g.period_end > p_grant.period_end and g.credits > 0), false),
         coalesce(sum(g.credits) filter (where g.period_end = p_grant.period_end), 0),
         coalesce(sum(g.credits) filter (where g.period_end = p_grant.period_end
                                         and g.billing_reason in ('subscription_create', 'subscription_cycle')), 0),
         greatest(coalesce(max(p.credits) filter (where g.period_end = p_grant.period_end and g.credits > 0), 0), p_plan.credits),
         coalesce(bool_or(g.period_end = p_grant.period_end and g.billing_reason = 'subscription_cycle'), false),
         max(g.period_end) filter (where g.period_end < p_grant.period_end and g.credits > 0)
  into v_later, v_had, v_base_had, v_top, v_cycled, v_prev
  from billing.plan_grants g join billing.plans p on p.id = g.plan_id
  where g.subscription_id = p_sub.id and g.invoice_id <> p_grant.invoice_id;
  stale := p_grant.period_end <= now() or v_later;
  if stale then
    return;
  end if;
  credits := greatest(p_plan.credits - v_had, 0);
  if p_grant.billing_reason in ('subscription_create', 'subscription_cycle') then
    -- The period's own invoice grants its plan less what another such invoice of the period got;
    -- an upgrade paid before it (its webhooks late) granted only the difference, so together
    -- they reach, and never pass, the larger plan's credits.
    credits := greatest(least(p_plan.credits - v_base_had, v_top - v_had), 0);
  else
    -- An upgrade's proration invoice buys the difference for what is left of the period, so it
    -- grants that share of it: (new − old credits) × paid ÷ (new − old price), rounded down,
    -- never more than the difference. The old plan is the last one a paid invoice granted
    -- (this period's, or the last period's when this one's renewal is unpaid: the difference,
    -- never the whole plan, for a prorated charge).
    select * into v_old from billing.plans p where p.id = (
      select g.plan_id from billing.plan_grants g
      where g.subscription_id = p_sub.id and g.invoice_id <> p_grant.invoice_id and g.credits > 0
        and g.period_end <= p_grant.period_end
      order by g.period_end desc, g.granted_at desc limit 1);
    if not found or p_plan.price_cents <= v_old.price_cents or p_plan.credits <= v_old.credits then
      credits := 0;
    else
      credits := least(credits, p_plan.credits - v_old.credits,
        trunc((p_plan.credits - v_old.credits) * p_grant.amount_cents / (p_plan.price_cents - v_old.price_cents), 18));
    end if;
  end if;
  if p_grant.billing_reason = 'subscription_cycle' and not v_cycled then
    roll_from := v_prev;
  end if;
end;
$$;
comment on function billing.plan_invoice_credits(p_sub billing.subscriptions, p_plan billing.plans, p_grant billing.plan_grants, out stale boolean, out credits numeric, out roll_from timestamp with time zone) is 'Internal: the credits a newly recorded paid plan invoice grants (its period''s plan less what the period got; an upgrade''s paid share of the difference), whether it is stale, and the period a renewal rolls over from.';
revoke execute on function billing.plan_invoice_credits(p_sub billing.subscriptions, p_plan billing.plans, p_grant billing.plan_grants, out stale boolean, out credits numeric, out roll_from timestamp with time zone) from public, anon, authenticated;

-- invoice.paid for a plan (sync_subscription, under the subscription's lock): records the invoice
-- once, posts its money, and grants what it buys (billing.plan_invoice_credits) as a paid lot
-- expiring at the period's end, after rolling the previous period over at a renewal.
create or replace function billing.grant_plan_invoice(p_sub billing.subscriptions, p_invoice jsonb) returns text
language plpgsql
set search_path = ''
as $$
declare
  v_plan billing.plans := billing.plan_of_invoice(p_sub, p_invoice);
  v_grant billing.plan_grants;
  v_end timestamptz := to_timestamp((p_invoice ->> 'period_end')::bigint);
  -- Paid = subtotal + Stripe Tax; the subtotal is what the plan costs, the tax is owed.
  v_tax integer := coalesce((p_invoice ->> 'tax')::integer, 0);
  v_amount integer := (p_invoice ->> 'amount_paid')::integer - v_tax;
  v_account bigint := billing.ensure_user_account(p_sub.user_id);
  v_give record;
  v_credits numeric(38, 18);
  v_rolled numeric(38, 18) := 0;
  v_transfer bigint;
  v_lot bigint;
begin
  -- Once per invoice, under the subscription's lock (the caller's): retries and replays stop here.
  insert into billing.plan_grants (invoice_id, subscription_id, plan_id, billing_reason, period_start, period_end,
                                   amount_cents, currency, tax_cents)
  values (p_invoice ->> 'id', p_sub.id, v_plan.id, p_invoice ->> 'billing_reason',
          to_timestamp((p_invoice ->> 'period_start')::bigint), v_end, v_amount, v_plan.currency, v_tax)
  on conflict (invoice_id) do nothing
  returning * into v_grant;
  if not found then
    -- A stale invoice (billing.plan_invoice_credits) not refunded yet says so again: the caller's refund did not finish
    -- (it crashed, or Stripe did not answer), and Stripe's retry of the event is its next chance.
    if exists (select 1 from billing.plan_grants g
               where g.invoice_id = p_invoice ->> 'id' and g.credits = 0 and g.amount_cents + g.tax_cents > 0
                 and g.amount_refunded_cents = 0
                 and (g.period_end <= now() or exists (select 1 from billing.plan_grants l where l.subscription_id = p_sub.id
                                                       and l.period_end > g.period_end and l.credits > 0))) then
      return 'plan_invoice_stale';
    end if;
    return 'plan_invoice_already_granted';
  end if;
  -- The money came in, whatever it grants: a stale invoice's refund nets it out.
  perform billing.post_money('credit_purchase', 'plan-invoice:' || v_grant.invoice_id, v_plan.currency, null, null,
    p_invoice ->> 'id', jsonb_build_array(billing.money_entry('payers', -(v_amount + v_tax)),
      billing.money_entry('b2c_revenue', v_amount), billing.money_entry('tax_payable', v_tax)))
  where v_amount + v_tax > 0;
  -- A stale invoice grants nothing: the caller refunds it; its event stays unfinished until then
  -- (process_stripe_event), so a crash or a Stripe outage is retried, and the plan_refund_due
  -- alert names one that never is.
  v_give := billing.plan_invoice_credits(p_sub, v_plan, v_grant);
  if v_give.stale then
    return 'plan_invoice_stale';
  end if;
  v_credits := v_give.credits;
  if v_give.roll_from is not null then
    v_rolled := billing.roll_over_plan_credits(p_sub, v_account, v_plan, v_give.roll_from, v_end,
      'plan-rollover:' || v_grant.invoice_id);
  end if;
  if v_credits > 0 then
    -- Paid credits whose cost is what this invoice charged: deferred revenue until spent or expired.
    -- Spent before package credits (priority 5 < 20): they expire at the period's end.
    v_transfer := (billing.post_user_transfer(null, 1, 'credit', v_credits, 'plan_grant', 'plans', 'plan:' || v_grant.invoice_id,
      p_sub.id::text, p_invoice ->> 'id', jsonb_build_object('plan_id', v_plan.id, 'subscription_id', p_sub.id), null,
      jsonb_build_object('category', 'paid', 'cost_cents', v_amount, 'currency', v_plan.currency, 'priority', 5,
        'expires_at', v_end, 'origin', 'plan') || jsonb_strip_nulls(jsonb_build_object('applies_to', to_jsonb(v_plan.applies_to))),
      v_account)).transfer_id;
    insert into billing.plan_lots (lot_id, subscription_id, period_end)
    select l.id, p_sub.id, v_end from billing.lots l where l.grant_transfer_id = v_transfer and l.moved_from is null
    returning lot_id into v_lot;
  end if;
  update billing.plan_grants g set credits = v_credits, lot_id = v_lot, rolled_over = v_rolled
  where g.invoice_id = v_grant.invoice_id;
  return 'plan_credits_granted';
end;
$$;
comment on function billing.grant_plan_invoice(p_sub billing.subscriptions, p_invoice jsonb) is 'Internal: grants a paid plan invoice''s credits once (the plan''s allowance for its period, less what the period already got), rolling the previous period over at a renewal.';
revoke execute on function billing.grant_plan_invoice(p_sub billing.subscriptions, p_invoice jsonb) from public;

create or replace function billing.take_back_plan_credits(p_grant billing.plan_grants, p_user uuid, p_amount numeric,
  p_kind billing.transfer_kind, p_key text) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_account bigint := billing.ensure_user_account(p_user);
  v_meta jsonb := jsonb_build_object('plan_id', p_grant.plan_id, 'invoice_id', p_grant.invoice_id);
begin
  if p_amount <= 0 then
    return;
  end if;
  -- The lots after the lock: a renewal that held it may have rolled the grant into a new one.
  -- They stay in the subscriber's account, the buyer: as for a package (take_back_purchase),
  -- their free credits at once, what holds reserved when each ends; of what they lack, what
  -- expired is forgiven, what was spent is owed (other credits for any model, then debt).
  perform 1 from billing.accounts a where a.id = v_account for update;
  perform billing.owe(v_account, null, billing.take_back_lots(billing.lot_lineage(p_grant.lot_id), v_account, p_amount,
      p_kind, p_key, p_grant.stripe_charge_id, p_grant.subscription_id::text, v_meta, null, p_grant.invoice_id), null,
    p_kind, p_key || ':owed', p_grant.stripe_charge_id, p_grant.subscription_id::text, v_meta, null, p_grant.invoice_id,
    p_forgive => true);
end;
$$;
comment on function billing.take_back_plan_credits(p_grant billing.plan_grants, p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_key text) is 'Internal: reverses p_amount of a plan grant''s credits: its lots'' (rollovers included) free credits at once, what holds reserved of them when each ends; of what they lack, what expired is forgiven, what was spent is owed.';
revoke execute on function billing.take_back_plan_credits(p_grant billing.plan_grants, p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_key text) from public;

create or replace function billing.sync_plan_charge(p_state jsonb) returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  g billing.plan_grants;
  v_user uuid;
  v_account bigint;
  v_refunded integer := coalesce((p_state ->> 'amount_refunded')::integer, 0);
  v_dispute text := case
    when p_state ->> 'dispute_status' in ('won', 'warning_closed', 'prevented') then 'won'
    when p_state ->> 'dispute_status' = 'lost' then 'lost'
    when p_state ->> 'dispute_id' is not null then 'open' end;
  v_target numeric(38, 18);
  v_lots bigint[];
  v_total integer;
  v_tax_back integer;
begin
  select * into g from billing.plan_grants x where x.invoice_id = p_state ->> 'invoice_id' for update;
  if not found then
    -- One of our plans' invoices whose invoice.paid is not applied yet (the events reordered):
    -- failing makes Stripe retry, so the refund or dispute reaches the credits once they exist.
    -- A refused plan's invoices never grant (their refunds are ours); other invoices are not ours.
    if exists (select 1 from billing.subscriptions s where s.refused_at is null
               and (s.stripe_subscription_id = p_state ->> 'subscription_id' or s.id::text = p_state ->> 'plan_subscription_id')) then
      perform billing.raise_error('PLAN_INVOICE_PENDING', jsonb_build_object('invoice_id', p_state ->> 'invoice_id'));
    end if;
    return 'unknown_plan_invoice';
  end if;
  select s.user_id into v_user from billing.subscriptions s where s.id = g.subscription_id;
  v_account := billing.ensure_user_account(v_user);
  update billing.plan_grants x set stripe_charge_id = coalesce(x.stripe_charge_id, p_state ->> 'charge_id')
  where x.invoice_id = g.invoice_id returning * into g;
  -- Refunds: the cumulative amount, so the reversal converges on floor(credits × refunded / paid),
  -- paid being what the charge took, tax included (a refund returns tax and price in proportion).
  v_total := g.amount_cents + g.tax_cents;
  if v_refunded > g.amount_refunded_cents and v_total > 0 then
    -- The whole charge back is every credit (an upgrade's prorated grant has a fraction).
    v_target := case when v_refunded >= v_total then g.credits else floor(g.credits * v_refunded / v_total) end;
    v_tax_back := billing.tax_refunded_cents(g.tax_cents, v_total, v_refunded)
      - billing.tax_refunded_cents(g.tax_cents, v_total, g.amount_refunded_cents);
    perform billing.take_back_plan_credits(g, v_user, v_target - g.credits_reversed, 'refund_reversal',
      'plan-refund:' || g.invoice_id || ':' || v_refunded);
    perform billing.post_money('credit_refund', 'plan-refund:' || g.invoice_id || ':' || v_refunded, g.currency, null, null,
      g.stripe_charge_id, jsonb_build_array(
        billing.money_entry('b2c_revenue', -((v_refunded - g.amount_refunded_cents) - v_tax_back)),
        billing.money_entry('tax_payable', -v_tax_back), billing.money_entry('payers', v_refunded - g.amount_refunded_cents)));
    update billing.plan_grants x set amount_refunded_cents = v_refunded, credits_reversed = greatest(v_target, x.credits_reversed)
    where x.invoice_id = g.invoice_id returning * into g;
  end if;
  -- Disputes: open → the grant's lots (rollovers included) freeze; won → they thaw; lost → what
  -- is left of the grant is taken back as a refund is (dispute_reversal).
  if v_dispute is not null and coalesce(g.dispute_status, 'open') = 'open' then
    -- The lots after the lock: read before it, a renewal holding it would roll the credits into
    -- a lot the dispute does not freeze.
    perform 1 from billing.accounts a where a.id = v_account for update;
    v_lots := billing.lot_lineage(g.lot_id);
    if v_dispute = 'open' then
      perform billing.stop_off_session_charges(v_user, p_state ->> 'dispute_id');
      perform billing.settled(a) from billing.accounts a where a.id = v_account;  -- due lots expire before they freeze
    elsif v_dispute = 'lost' then
      perform billing.take_back_plan_credits(g, v_user, g.credits - g.credits_reversed, 'dispute_reversal',
        'plan-dispute:' || (p_state ->> 'dispute_id'));
      v_tax_back := g.tax_cents - billing.tax_refunded_cents(g.tax_cents, v_total, g.amount_refunded_cents);
      perform billing.post_money('credit_dispute_lost', 'plan-dispute:' || g.invoice_id, g.currency, null, null,
        p_state ->> 'dispute_id', jsonb_build_array(
          billing.money_entry('b2c_revenue', -(v_total - g.amount_refunded_cents - v_tax_back)),
          billing.money_entry('tax_payable', -v_tax_back), billing.money_entry('payers', v_total - g.amount_refunded_cents)))
      where v_total > g.amount_refunded_cents;
      update billing.plan_grants x set credits_reversed = x.credits where x.invoice_id = g.invoice_id;
    end if;
    perform billing.set_lots_frozen(v_lots, v_dispute = 'open');
    update billing.plan_grants x set dispute_id = p_state ->> 'dispute_id', dispute_status = v_dispute
    where x.invoice_id = g.invoice_id;
  end if;
  return 'plan_charge_synced';
end;
$$;
comment on function billing.sync_plan_charge(p_state jsonb) is 'Converges a plan invoice''s charge on Stripe: refunds take back floor(credits × refunded / paid); a dispute freezes the grant''s lots (rollovers included), won thaws them, lost takes the rest back as a refund.';
revoke execute on function billing.sync_plan_charge(p_state jsonb) from public;
grant execute on function billing.sync_plan_charge(p_state jsonb) to service_role;

-- The largest plan the current period was already paid for: a change back to it charges nothing.
create or replace function billing.get_period_plan_credits(p_subscription uuid) returns table (credits numeric)
language sql stable
security definer
set search_path = ''
as $$
  select p.credits from billing.plan_grants g
  join billing.subscriptions s on s.id = g.subscription_id join billing.plans p on p.id = g.plan_id
  where s.id = p_subscription and g.period_end = s.current_period_end and g.credits > 0
  order by p.credits desc limit 1
$$;
comment on function billing.get_period_plan_credits(p_subscription uuid) is 'The largest plan a paid invoice granted a subscription''s current period (its credits); no row when none did.';
revoke execute on function billing.get_period_plan_credits(p_subscription uuid) from public;
grant execute on function billing.get_period_plan_credits(p_subscription uuid) to service_role;

create or replace function billing.sync_subscription(p_state jsonb) returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_s jsonb := p_state -> 'subscription';
  v_inv jsonb := p_state -> 'invoice';
  v_sub billing.subscriptions;
  v_outcome text := 'subscription_synced';
begin
  -- By Stripe's id, or (the first event about it) by ours, in the metadata we gave Checkout (only
  -- we can set it). One statement: a concurrent first event, re-checked after the lock, still
  -- finds the row by the Stripe id the other one recorded.
  select * into v_sub from billing.subscriptions s
  where s.stripe_subscription_id = v_s ->> 'id'
     or (s.id::text = v_s -> 'metadata' ->> 'subscription_id' and s.user_id::text = v_s -> 'metadata' ->> 'user_id'
         and s.stripe_subscription_id is null)
  for update;
  if not found then
    return 'unknown_subscription';
  end if;
  -- A second plan paid while another is live (two Checkouts raced): recorded, never honoured;
  -- the caller cancels it at Stripe and refunds its invoices.
  if v_sub.refused_at is null and v_s ->> 'status' in ('active', 'past_due', 'trialing', 'unpaid', 'paused')
     and exists (select 1 from billing.subscriptions o where o.user_id = v_sub.user_id and o.id <> v_sub.id
                 and o.refused_at is null and o.status in ('active', 'past_due', 'trialing', 'unpaid', 'paused')) then
    v_sub.refused_at := now();
  end if;
  update billing.subscriptions s
  set stripe_subscription_id = v_s ->> 'id', stripe_customer_id = v_s ->> 'customer', status = v_s ->> 'status',
      refused_at = v_sub.refused_at,
      plan_id = coalesce((select p.id from billing.plans p where p.id = v_s -> 'metadata' ->> 'plan_id'), s.plan_id),
      current_period_start = to_timestamp((v_s ->> 'current_period_start')::bigint),
      current_period_end = to_timestamp((v_s ->> 'current_period_end')::bigint),
      cancel_at_period_end = (v_s ->> 'cancel_at_period_end')::boolean, updated_at = now()
  where s.id = v_sub.id
  returning * into v_sub;
  if v_sub.refused_at is not null then
    return 'plan_subscription_refused';
  end if;
  if v_inv is null then
    return v_outcome;
  end if;
  if v_inv ->> 'status' = 'paid' then
    v_outcome := billing.grant_plan_invoice(v_sub, v_inv);
  elsif v_inv ->> 'status' = 'open' and (v_inv ->> 'attempted')::boolean then
    -- A failed renewal grants nothing; the student is told to update their card (the link is
    -- the billing page's, which opens Stripe's portal: a Stripe URL never goes in an email).
    insert into billing.notification_outbox (template, user_id, dedupe_key, payload)
    values ('plan_payment_failed', v_sub.user_id, 'plan-payment-failed:' || (v_inv ->> 'id'), jsonb_build_object(
      'plan_id', v_sub.plan_id, 'invoice_id', v_inv ->> 'id', 'amount_cents', (v_inv ->> 'amount_due')::integer,
      'currency', v_inv ->> 'currency', 'period_end', billing.json_time(v_sub.current_period_end)))
    on conflict (dedupe_key) do nothing;
    v_outcome := 'plan_payment_failed';
  else
    v_outcome := 'plan_invoice_' || coalesce(v_inv ->> 'status', 'unknown');
  end if;
  return v_outcome;
end;
$$;
comment on function billing.sync_subscription(p_state jsonb) is 'Converges a plan on Stripe''s current subscription (status, period, plan, cancellation) and applies its invoice: paid → credits once, failed → an email. Safe in any order, any number of times.';
revoke execute on function billing.sync_subscription(p_state jsonb) from public;
grant execute on function billing.sync_subscription(p_state jsonb) to service_role;
