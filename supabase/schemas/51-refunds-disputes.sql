-- Refunds and disputes of a credit purchase: what billing.sync_purchase (at the end of this
-- file, above the payment in 50-purchases.sql and the refunds and dispute here) does once the
-- purchase is paid. A refund takes back credits in proportion to what was refunded; a
-- dispute holds what is left of the purchase wherever its credits are (the buyer's account, the
-- organisation's wallet, a gift's escrow or redeemer), releases it when won, and takes it back
-- when lost. Taking back follows the purchase's lots; what expired is forgiven, what was spent
-- is debt.

-- ============================================================ functions

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
  -- Through the purchase's lots (wherever its credits were moved) to their expiry allocations
  -- (lot_allocations_expiry): a refund reads a handful of rows, never the allocations table.
  select coalesce((select sum(la.amount) from billing.lots l
                   join billing.lot_allocations la on la.lot_id = l.id and la.kind = 'expiry'
                   where l.purchase_id = p_purchase_id and (p_category is null or l.category = p_category)), 0)
    - (select case p_category when 'paid' then p.credits_expiry_forgiven when 'promotional' then p.bonus_expiry_forgiven
              else p.credits_expiry_forgiven + p.bonus_expiry_forgiven end
       from billing.purchases p where p.id = p_purchase_id)
$$;
comment on function billing.purchase_expiry_unforgiven(p_purchase_id uuid, p_category text) is 'Internal: how many of a purchase''s credits (of one category; both when null) expired and were not yet forgiven by a refund or a lost dispute.';
revoke execute on function billing.purchase_expiry_unforgiven(p_purchase_id uuid, p_category text) from public;

-- Whose purchase it is: the buyer's own account, or the school's wallet.
create or replace function billing.purchase_buyer(p_purchase_id uuid) returns bigint
language sql stable
set search_path = ''
as $$
  select a.id from billing.purchases p join billing.accounts a
    on (p.org_id is null and a.user_id = p.user_id and a.org_id is null) or (a.org_id = p.org_id and a.member_id is null)
  where p.id = p_purchase_id
$$;
comment on function billing.purchase_buyer(p_purchase_id uuid) is 'Internal: the account that bought a purchase: the student''s own, or the school''s wallet.';
revoke execute on function billing.purchase_buyer(p_purchase_id uuid) from public;

-- Refunds: Stripe reports the cumulative amount, so the reversal converges on
-- floor(credits × refunded / paid), for purchased and bonus credits alike. Paid is what the
-- charge took, tax included: a refund returns tax and price in proportion, so refunding the
-- whole charge takes back every credit, and half of it half of them.
create or replace function billing.sync_purchase_refunds(p billing.purchases, p_state jsonb) returns billing.purchases
language plpgsql
set search_path = ''
as $$
declare
  v_refunded integer := coalesce((p_state ->> 'amount_refunded')::integer, 0);
  v_target_c numeric(38, 18);
  v_target_b numeric(38, 18);
begin
  if v_refunded > p.amount_refunded_cents then
    -- The whole charge back is every credit, a fractional bonus's fraction included (floor
    -- would leave it with the buyer).
    v_target_c := case when v_refunded >= p.price_cents + p.tax_cents then p.credits
                       else floor(p.credits * v_refunded / (p.price_cents + p.tax_cents)) end;
    v_target_b := case when v_refunded >= p.price_cents + p.tax_cents then p.bonus_credits
                       else floor(p.bonus_credits * v_refunded / (p.price_cents + p.tax_cents)) end;
    -- Each reversal takes back its own lot first; what that lot no longer has expired (forgiven:
    -- it is breakage already) or was spent, and is owed like any debt (settled from whatever the
    -- account holds, or carried as debt).
    perform billing.take_back_purchase(p, v_target_c - p.credits_refund_reversed, 'paid', 'refund_reversal',
      'refund:' || p.id || ':' || v_refunded, p_state ->> 'charge_id');
    perform billing.take_back_purchase(p, v_target_b - p.bonus_refund_reversed, 'promotional', 'refund_reversal',
      'refund-bonus:' || p.id || ':' || v_refunded, p_state ->> 'charge_id');
    update billing.purchases x
    set amount_refunded_cents = v_refunded, credits_refund_reversed = greatest(v_target_c, x.credits_refund_reversed),
        bonus_refund_reversed = greatest(v_target_b, x.bonus_refund_reversed), updated_at = now()
    where x.id = p.id returning * into p;
  end if;
  return p;
end;
$$;
comment on function billing.sync_purchase_refunds(p billing.purchases, p_state jsonb) is 'Internal: a paid purchase''s credits taken back in proportion to what Stripe reports refunded so far; returns the purchase as it now is.';
revoke execute on function billing.sync_purchase_refunds(p billing.purchases, p_state jsonb) from public, anon, authenticated;

-- A job's or a gateway call's hold in an account the purchase's credits were moved to (a
-- redeemer's, a member's allowance), placed before the dispute froze them, may still capture from
-- those frozen lots (work under way): what it draws there becomes spent, the buyer's to owe. So
-- the buyer holds it, not that account: the least of the purchase's lots there and what its work
-- holds placed before the dispute opened exceed its other credits that surely pay for it (for any
-- model, not expiring, not frozen: credits for some models or that expire under the work are no
-- cover; a hold placed after is held beside the dispute and never reaches the frozen lots; work
-- that may draw several disputed purchases' lots here is counted once, older purchases first). (In
-- the buyer's own account such a hold already sits beside the dispute's, which holds the whole.)
create or replace function billing.dispute_work_in(p_purchase_id uuid, p_account_id bigint) returns numeric
language sql stable
set search_path = ''
as $$
  select least(
    (select coalesce(sum(l.remaining), 0) from billing.lots l
     where l.purchase_id = p_purchase_id and l.open and l.account_id = p_account_id),
    greatest((select coalesce(sum(h.amount), 0) from billing.holds h
              where h.account_id = p_account_id and h.status = 'active' and h.purpose in ('job', 'ai')
                and h.created_at < (select p.disputed_at from billing.purchases p where p.id = p_purchase_id))
             - (select coalesce(sum(f.remaining), 0) from billing.lots f
                where f.account_id = p_account_id and f.open and not f.frozen and f.applies_to is null
                  and f.expires_at is null and f.purchase_id is distinct from p_purchase_id)
             -- One work, several disputed purchases here: the older ones' lots take it first.
             - (select coalesce(sum(f.remaining), 0) from billing.lots f
                join billing.purchases o on o.id = f.purchase_id
                join billing.purchases p on p.id = p_purchase_id
                where f.account_id = p_account_id and f.open and f.frozen and o.dispute_status = 'open'
                  and (o.paid_at, o.id) < (p.paid_at, p.id)), 0))
$$;
comment on function billing.dispute_work_in(p_purchase_id uuid, p_account_id bigint) is 'Internal: what work under way (job and gateway holds) in an account a disputed purchase''s credits were moved to may still draw of them, frozen: the buyer''s dispute hold holds it, that account''s the rest of the lots.';
revoke execute on function billing.dispute_work_in(p_purchase_id uuid, p_account_id bigint) from public;

-- What work elsewhere may draw of a disputed purchase's frozen lots: billing.dispute_work_in summed
-- over every account but the buyer's holding its lots (only those below p_below when given: the
-- accounts before it, id order).
create or replace function billing.dispute_work_elsewhere(p_purchase_id uuid, p_buyer bigint, p_below bigint default null)
returns numeric
language sql stable
set search_path = ''
as $$
  select coalesce(sum(billing.dispute_work_in(p_purchase_id, a.account_id)), 0)
  from (select distinct l.account_id from billing.lots l
        where l.purchase_id = p_purchase_id and l.open and l.account_id <> p_buyer
          and (p_below is null or l.account_id < p_below)) a
$$;
comment on function billing.dispute_work_elsewhere(p_purchase_id uuid, p_buyer bigint, p_below bigint) is 'Internal: what work under way in the accounts a disputed purchase''s credits were moved to (all but the buyer''s; below p_below when given) may still draw of them (billing.dispute_work_in, summed).';
revoke execute on function billing.dispute_work_elsewhere(p_purchase_id uuid, p_buyer bigint, p_below bigint) from public;

-- What a loss would take from the buyer itself: what is left of the purchase beyond its lots in
-- other accounts and what expired of it (spent credits included: they are owed).
create or replace function billing.dispute_buyer_claim(p_purchase_id uuid, p_buyer bigint) returns numeric
language sql stable
set search_path = ''
as $$
  select (p.credits - p.credits_refund_reversed) + (p.bonus_credits - p.bonus_refund_reversed)
    - coalesce((select sum(l.remaining) from billing.lots l
                where l.purchase_id = p.id and l.open and l.account_id <> p_buyer), 0)
    - billing.purchase_expiry_unforgiven(p.id, null)
  from billing.purchases p where p.id = p_purchase_id
$$;
comment on function billing.dispute_buyer_claim(p_purchase_id uuid, p_buyer bigint) is 'Internal: what a lost dispute would take from the buyer''s own account: what is left of the purchase beyond its lots elsewhere and what expired of it.';
revoke execute on function billing.dispute_buyer_claim(p_purchase_id uuid, p_buyer bigint) from public;

-- What of the work in p_account_id (billing.dispute_work_in) the buyer's dispute hold does hold:
-- what its balance backs of it beyond its own claim, after every other dispute there has what it
-- holds or, for the buyer's other purchases, what a loss would take (however the holds were
-- placed, work elsewhere comes after the buyer's own claims), given to the accounts in id order. Only that much may that account's own dispute hold leave to
-- the work (a buyer whose balance cut its hold short, or later fell under it, holds less, and the
-- lots there stay held), and only that much may a loss leave there.
create or replace function billing.dispute_work_held(p_purchase_id uuid, p_dispute_id text, p_buyer bigint,
  p_account_id bigint) returns numeric
language plpgsql stable
set search_path = ''
as $$
begin
  -- PL/pgSQL: it reads plan grants as rows, defined above this file.
  return greatest(least(billing.dispute_work_in(p_purchase_id, p_account_id),
    least((select coalesce(sum(h.amount), 0) from billing.holds h
           where h.account_id = p_buyer and h.status = 'active' and h.purpose = 'dispute'
             and h.correlation_id = p_dispute_id),
          -- Only credits that surely stay back it: not expiring, for any model (a loss's
          -- reversal draws no others), and none while a plan invoice of the buyer is disputed
          -- (its claim is not a purchase's: its hold may stand short of it).
          case when exists (select 1 from billing.plan_grants g join billing.subscriptions x on x.id = g.subscription_id
                            join billing.accounts a on a.user_id = x.user_id and a.org_id is null
                            where a.id = p_buyer and g.dispute_status = 'open') then 0 else
          greatest((select a.balance from billing.accounts a where a.id = p_buyer)
                   - (select coalesce(sum(l.remaining), 0) from billing.lots l
                      where l.account_id = p_buyer and l.open and (l.expires_at is not null or l.applies_to is not null))
                   - coalesce((select sum(greatest(
                       (select coalesce(sum(h.amount), 0) from billing.holds h
                        where h.account_id = p_buyer and h.status = 'active' and h.purpose = 'dispute'
                          and h.correlation_id = o.dispute_id),
                       coalesce((select billing.dispute_buyer_claim(p.id, p_buyer) from billing.purchases p
                                 where p.dispute_id = o.dispute_id and p.dispute_status = 'open'), 0)))
                     from (select h.correlation_id as dispute_id from billing.holds h
                           where h.account_id = p_buyer and h.status = 'active' and h.purpose = 'dispute'
                           union
                           select p.dispute_id from billing.purchases p
                           where p.dispute_status = 'open' and billing.purchase_buyer(p.id) = p_buyer) o
                     where o.dispute_id <> p_dispute_id), 0), 0) end)
    - billing.dispute_buyer_claim(p_purchase_id, p_buyer)
    - billing.dispute_work_elsewhere(p_purchase_id, p_buyer, p_account_id)), 0);
end;
$$;
comment on function billing.dispute_work_held(p_purchase_id uuid, p_dispute_id text, p_buyer bigint, p_account_id bigint) is 'Internal: what of the work under way in an account holding a disputed purchase''s lots the buyer''s dispute hold holds (beyond its own claim, accounts in id order).';
revoke execute on function billing.dispute_work_held(p_purchase_id uuid, p_dispute_id text, p_buyer bigint, p_account_id bigint) from public;

-- Disputes: open → hold what is left of the purchase, in every account its credits are in;
-- won → release; lost → reverse it from wherever it is.
create or replace function billing.sync_purchase_dispute(p billing.purchases, p_state jsonb)
returns billing.purchases
language plpgsql
set search_path = ''
as $$
declare
  v_dispute text := case
    when p_state ->> 'dispute_status' in ('won', 'warning_closed', 'prevented') then 'won'
    when p_state ->> 'dispute_status' = 'lost' then 'lost'
    when p_state ->> 'dispute_id' is not null then 'open' end;
  v_remaining numeric(38, 18);
  v_buyer bigint;
  v_reached bigint[];  -- every account the dispute reaches
  v_account bigint;
  v_keep numeric(38, 18);
begin
  if v_dispute is not null and coalesce(p.dispute_status, 'open') = 'open' then
    v_remaining := (p.credits - p.credits_refund_reversed) + (p.bonus_credits - p.bonus_refund_reversed);
    if v_dispute = 'open' then
      -- The disputed card is charged off-session no more: before the holds below lower what is
      -- available (which would queue a recharge), auto-recharge goes off and the card is forgotten.
      perform billing.stop_off_session_charges(p.user_id, p_state ->> 'dispute_id');
    end if;
    -- Every account the dispute reaches (the buyer, those holding the purchase's lots or its
    -- holds), locked in id order before anything moves.
    v_buyer := billing.purchase_buyer(p.id);
    select array_agg(a.id order by a.id) into v_reached from billing.accounts a
    where a.id = v_buyer or a.id in (select l.account_id from billing.lots l where l.purchase_id = p.id and l.open)
       or a.id in (select h.account_id from billing.holds h
                   where h.purpose = 'dispute' and h.correlation_id = p_state ->> 'dispute_id');
    perform 1 from billing.accounts a where a.id = any(v_reached) order by a.id for update;
    if v_dispute = 'open' then
      -- Due lots expire before anything is frozen (frozen lots wait).
      perform billing.settle_account(x) from unnest(v_reached) x;
    else
      -- What the buyer held for work under way elsewhere: that work is paid from the lots there,
      -- which the loss leaves it (billing.take_back_purchase).
      select coalesce(sum(billing.dispute_work_held(p.id, p_state ->> 'dispute_id', v_buyer, a.account_id)), 0) into v_keep
      from (select distinct l.account_id from billing.lots l
            where l.purchase_id = p.id and l.open and l.account_id <> v_buyer) a;
      perform billing.release_hold(null, h.id) from billing.holds h
      where h.purpose = 'dispute' and h.correlation_id = p_state ->> 'dispute_id' and h.status = 'active'
      order by h.account_id;
    end if;
    -- While disputed, the purchase's own lots are spent last (only a job's hold can reach them).
    update billing.lots l set frozen = (v_dispute = 'open') where l.purchase_id = p.id and l.frozen <> (v_dispute = 'open');
    if v_dispute = 'lost' then
      perform billing.take_back_purchase(p, v_remaining, null, 'dispute_reversal', 'dispute:' || (p_state ->> 'dispute_id'),
        p_state ->> 'charge_id', v_keep);
    end if;
    update billing.purchases x
    set dispute_id = p_state ->> 'dispute_id', dispute_status = v_dispute, updated_at = now(),
        disputed_at = coalesce(x.disputed_at, now())
    where x.id = p.id returning * into p;
    -- Open: the dispute holds, wherever the purchase's credits are, what a loss would take back
    -- (billing.refreeze_disputes: the lots there; the buyer, the rest). Closed: what it held may
    -- have stood in for other disputes still open there.
    -- The buyer first: what the others leave to work there is what it holds (dispute_work_held).
    foreach v_account in array case when v_buyer is null then v_reached
                                    else v_buyer || array_remove(v_reached, v_buyer) end loop
      perform billing.refreeze_disputes(v_account, case when v_dispute = 'open' then p.dispute_id end);
    end loop;
    -- The buyer's balance and holds moved: what it holds for work elsewhere of its other disputes
    -- (billing.dispute_work_held) is refit wherever they reach.
    foreach v_account in array v_reached loop
      perform billing.refit_disputes_drawn(null, v_account);
    end loop;
  end if;
  return p;
end;
$$;
comment on function billing.sync_purchase_dispute(p billing.purchases, p_state jsonb) is 'Internal: a paid purchase''s dispute as Stripe reports it: open → what is left of it held wherever its credits are; won → released; lost → taken back. Returns the purchase as it now is.';
revoke execute on function billing.sync_purchase_dispute(p billing.purchases, p_state jsonb) from public, anon, authenticated;

create or replace function billing.take_back_purchase(p_purchase billing.purchases, p_amount numeric, p_category text, p_kind billing.transfer_kind, p_key text, p_reference text, p_keep numeric default 0) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_buyer bigint := billing.purchase_buyer(p_purchase.id);
  v_wallet bigint := case when p_purchase.org_id is not null then v_buyer end;
  v_lots bigint[] := billing.purchase_lots(p_purchase.id, p_category);
  v_beyond numeric(38, 18);
  v_take numeric(38, 18);
  v_kept numeric(38, 18);
  v_forgive numeric(38, 18);
  v_paid numeric(38, 18);
  v_accounts bigint[];                            -- every account involved, and its balance before
  v_before numeric[];
  r record;
begin
  if p_amount <= 0 then
    return;
  end if;
  -- Every account involved, in id order (as everywhere), before anything moves. A move of the
  -- purchase's credits that committed while we waited (a gift redeemed, an allowance funded)
  -- made lots we had not seen: lock their accounts too, until the list stands still.
  loop
    select array_agg(x.id), array_agg(x.balance) into v_accounts, v_before
    from (select a.id, a.balance from billing.accounts a
          where a.id = v_buyer or a.id in (select l.account_id from billing.lots l where l.id = any(v_lots) and l.open)
          order by a.id for update) x;
    exit when v_lots = billing.purchase_lots(p_purchase.id, p_category);
    v_lots := billing.purchase_lots(p_purchase.id, p_category);
  end loop;
  -- The buyer's own lots of the purchase come first; what is beyond them comes from the lots its
  -- credits were moved into, but for p_keep (a lost dispute: what the buyer held for work under
  -- way there, billing.dispute_work_in), left there for that work to draw; the rest from the
  -- buyer: other credits for any model (the writer's reversal draws no credits someone gave for
  -- some models only), then debt.
  v_beyond := p_amount - coalesce((select sum(l.remaining) from billing.lots l
                                   where l.id = any(v_lots) and l.account_id = v_buyer), 0);
  for r in
    select l.account_id, coalesce(a.user_id, a.member_id) as owner, sum(l.remaining) as remaining
    from billing.lots l join billing.accounts a on a.id = l.account_id
    where l.id = any(v_lots) and l.open and l.account_id <> v_buyer
    group by l.account_id, a.user_id, a.member_id order by l.account_id
  loop
    exit when v_beyond <= 0;
    v_kept := least(p_keep, v_beyond, r.remaining, billing.dispute_work_in(p_purchase.id, r.account_id));
    p_keep := p_keep - v_kept;
    v_take := least(v_beyond, r.remaining) - v_kept;
    perform billing.reverse_credits(r.owner, v_take, p_kind, p_key || ':' || r.account_id, p_reference, null,
      billing.purchase_metadata(p_purchase), v_lots, r.account_id) where v_take > 0;
    -- What is kept there is the buyer's to pay, as spent (never forgiven as expired).
    v_beyond := v_beyond - v_take - v_kept;
    p_amount := p_amount - v_take;
  end loop;
  -- What the purchase's lots lack (v_beyond) left them by expiry or by spending. Expired credits
  -- already left the account as breakage: they are forgiven, not taken a second time from other
  -- credits or as debt; only what was spent is owed. Expired before spent, so a refund ends the
  -- same whether the expiry ran before it or after (a due lot not yet swept is taken back).
  if v_beyond > 0 then
    v_forgive := least(v_beyond, billing.purchase_expiry_unforgiven(p_purchase.id, p_category));
    if v_forgive > 0 then
      v_paid := case p_category when 'paid' then v_forgive when 'promotional' then 0
                  else least(v_forgive, billing.purchase_expiry_unforgiven(p_purchase.id, 'paid')) end;
      update billing.purchases x
      set credits_expiry_forgiven = x.credits_expiry_forgiven + v_paid,
          bonus_expiry_forgiven = x.bonus_expiry_forgiven + (v_forgive - v_paid)
      where x.id = p_purchase.id;
      p_amount := p_amount - v_forgive;
    end if;
  end if;
  if p_amount > 0 then
    perform billing.reverse_credits(case when v_wallet is null then p_purchase.user_id end, p_amount, p_kind, p_key,
      p_reference, null, billing.purchase_metadata(p_purchase), v_lots, v_wallet);
  end if;
  -- Credits taken back from under a hold: the hold gives way, as it does to expiry, so it never
  -- reserves more than the account has (a job's capture would fail and run again unbilled), by
  -- at most what this took from the account: a job's or a call's hold that an open dispute left
  -- above the balance keeps the rest (a refund of 10 gives away 10 of it, never all of it).
  perform billing.fit_holds(a.id, jsonb_build_object('given_to', p_kind), greatest(b.before - a.balance, 0))
  from billing.accounts a join unnest(v_accounts, v_before) b(id, before) on b.id = a.id
  order by a.id;
end;
$$;
comment on function billing.take_back_purchase(p_purchase billing.purchases, p_amount numeric, p_category text, p_kind billing.transfer_kind, p_key text, p_reference text, p_keep numeric) is 'Internal: reverses p_amount of a purchase''s credits: its lots in the buyer''s account, then in every account they were moved to (but for p_keep, left to work under way there and owed by the buyer); of the rest, what expired is forgiven (recorded on the purchase), what was spent comes from the buyer''s other credits for any model (never credits for some models only) or is debt.';
revoke execute on function billing.take_back_purchase(p_purchase billing.purchases, p_amount numeric, p_category text, p_kind billing.transfer_kind, p_key text, p_reference text, p_keep numeric) from public;

create or replace function billing.refreeze_disputes(p_account_id bigint, p_dispute_id text default null,
  p_exact boolean default false)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
  d record;
  v_room numeric(38, 18);
  v_grow numeric(38, 18);
  v_short numeric(38, 18);
  v_hold uuid;
begin
  -- The caller holds the account lock (after another dispute closed here, or as a plan's dispute
  -- opens: p_dispute_id, that one only). A buyer's dispute hold covers what is left of its
  -- purchase, spent credits included, so it may have held the lots of a purchase disputed after
  -- it, which then held less than its own. Every dispute still open here gets what it would hold
  -- if it opened now: as the buyer, what is left of the purchase beyond its lots elsewhere and
  -- what expired of it, and what work elsewhere may draw of those (billing.dispute_work_in);
  -- elsewhere, its lots here less that. A plan invoice's dispute (its subscriber's own
  -- account; plans sit above this file, so its grant is read here as rows) holds in two parts:
  -- what is left in the grant's lots (covered by their lists), then what the grant spent (only
  -- credits for anything may pay it: billing.take_back_plan_credits). Older payments first, as
  -- far as the balance not already frozen goes. p_exact (after a transfer drew from or gave back
  -- to frozen lots: billing.refit_disputes_drawn) also shrinks a part's own hold to what it would
  -- hold now, first: credits a plan's grant got back are no longer spent, a hold the balance cut
  -- short holds its purchase, not more, and a lot elsewhere holds what is left in it.
  select * into v_account from billing.accounts a where a.id = p_account_id;
  for d in
    select * from (
    select x.dispute_id, x.key, x.covers, x.since, x.tie, x.spent,
      x.target - coalesce((select sum(h.amount) from billing.holds h
                           where h.account_id = p_account_id and h.status = 'active' and h.purpose = 'dispute'
                             and h.correlation_id = x.dispute_id
                             and (x.spent is null or (right(h.idempotency_key, 6) = ':spent') = x.spent)), 0) as missing
    from (
      select p.dispute_id, null::boolean as spent,
        'dispute:' || p.dispute_id || case when b.buyer then '' else ':' || p_account_id end as key,
        billing.purchase_lots(p.id, null) as covers, p.paid_at as since, p.id::text as tie,
        case when b.buyer
          then billing.dispute_buyer_claim(p.id, p_account_id)
               + billing.dispute_work_elsewhere(p.id, p_account_id)
          else coalesce((select sum(l.remaining) from billing.lots l
                         where l.purchase_id = p.id and l.open and l.account_id = p_account_id), 0)
               - billing.dispute_work_held(p.id, p.dispute_id, billing.purchase_buyer(p.id), p_account_id)
        end as target
      from billing.purchases p
      cross join lateral (select coalesce((p.org_id is null and p.user_id = v_account.user_id)
                                          or (p.org_id = v_account.org_id and v_account.member_id is null), false) as buyer) b
      where p.dispute_status = 'open' and (p_dispute_id is null or p.dispute_id = p_dispute_id)
        and (p.id in (select l.purchase_id from billing.lots l where l.account_id = p_account_id and l.open and l.frozen)
             or (p.org_id is null and p.user_id = v_account.user_id)
             or (p.org_id = v_account.org_id and v_account.member_id is null))
      union all
      select g.dispute_id, k.spent, 'dispute:' || g.dispute_id || case when k.spent then ':spent' else '' end,
        case when not k.spent then ll.lots end, g.granted_at, g.invoice_id,
        case when k.spent then g.credits - g.credits_reversed - (billing.lots_expired(ll.lots) - g.expiry_forgiven) - ll.left
             else ll.left end
      from billing.plan_grants g
      join billing.subscriptions s on s.id = g.subscription_id
      cross join lateral (select y.lots, coalesce((select sum(l.remaining) from billing.lots l
                                                   where l.id = any(y.lots) and l.open), 0) as left
                          from (select billing.lot_lineage(g.lot_id) as lots) y) ll
      cross join (values (false), (true)) k(spent)
      where g.dispute_status = 'open' and (p_dispute_id is null or g.dispute_id = p_dispute_id)
        and s.user_id = v_account.user_id and v_account.org_id is null
    ) x) y
    -- What shrinks first, so that what it frees may be held by what grows.
    order by p_exact and y.missing < 0 desc, y.since, y.tie, y.spent nulls first
  loop
    if p_exact and d.missing < 0 then
      select h.id into v_hold from billing.holds h where h.idempotency_key = d.key and h.status = 'active';
      if found then
        perform billing.post_transfers('{}', array[('resize', v_hold, greatest(d.missing, -(select h.amount
          from billing.holds h where h.id = v_hold)), null, null, null, null, null, null, null, null, null, null)::billing.hold_step]);
      end if;
    end if;
    continue when d.missing <= 0;
    select * into v_account from billing.accounts a where a.id = p_account_id;
    select greatest(v_account.balance - coalesce(sum(h.amount), 0), 0) into v_room from billing.holds h
    where h.account_id = p_account_id and h.status = 'active' and h.purpose = 'dispute';
    v_grow := least(d.missing, v_room);
    continue when v_grow <= 0;
    -- A student's own holds give way, as when a dispute opens; a job's is work under way.
    v_short := v_grow - greatest(v_account.balance - v_account.held, 0);
    if v_short > 0 then
      perform billing.shrink_holds(p_account_id, v_short, array['user'], jsonb_build_object('given_to_dispute', d.dispute_id));
    end if;
    select h.id into v_hold from billing.holds h where h.idempotency_key = d.key and h.status = 'active';
    if found then
      perform billing.post_transfers('{}', array[('resize', v_hold, v_grow, null, null, null, null, null, null, null, null,
        null, null)::billing.hold_step]);
    else
      v_hold := (billing.place_hold(p_account_id, v_grow, d.key, 'infinity', 'dispute', d.dispute_id)).id;
      perform billing.cover_dispute_hold(v_hold, d.covers) where d.covers is not null;
    end if;
  end loop;
end;
$$;
comment on function billing.refreeze_disputes(p_account_id bigint, p_dispute_id text, p_exact boolean) is 'Internal: tops up the holds of the disputes open in an account (or only p_dispute_id''s) to what each would hold if it opened now (p_exact: shrinks a part''s own hold to it too): a purchase''s, or a plan invoice''s in two parts (its lots, then what it spent); older payments first; the student''s own holds give way.';
revoke execute on function billing.refreeze_disputes(p_account_id bigint, p_dispute_id text, p_exact boolean) from public;

-- A transfer that drew from lots a dispute froze (a capture of work under way) or gave back to
-- them (a void) moves what the dispute claims between the accounts it reaches: drawn in a
-- redeemer's or member's account, what is spent there is the buyer's to hold; given back, the
-- lot there holds it again. Work that ends in such an account (p_account_id: a job's or a call's
-- hold captured or released) no longer needs the buyer to hold what it might have drawn
-- (billing.dispute_work_in). Every such dispute's holds, in every account it reaches (its
-- buyer's, those holding its lots or its holds), become what they would be if it opened now
-- (billing.refreeze_disputes, exact). Locks: those accounts in id order; the caller holds the
-- transfer's (taking a lower one after it can deadlock, which Postgres breaks by failing one
-- side: a retry's business, nothing half done).
create or replace function billing.refit_disputes_drawn(p_transfer_id bigint, p_account_id bigint default null)
returns void
language plpgsql
set search_path = ''
as $$
declare
  d record;
  v_accounts bigint[];
  v_account bigint;
  v_buyer bigint;
  v_reached bigint[] := '{}'::bigint[];  -- every account a refit reached
begin
  -- Nearly every transfer drew no frozen lot, nearly every account holds none: a lookup on each key.
  if not exists (select 1 from billing.lot_allocations la join billing.lots l on l.id = la.lot_id
                 where la.transfer_id = p_transfer_id and l.frozen)
     and not exists (select 1 from billing.lots l where l.account_id = p_account_id and l.open and l.frozen)
     and not exists (select 1 from billing.holds h where h.account_id = p_account_id and h.status = 'active'
                     and h.purpose = 'dispute') then
    return;
  end if;
  for d in
    select x.dispute_id, x.purchase_id, x.account_id from (
      select p.dispute_id, p.id as purchase_id, null::bigint as account_id, p.paid_at as since, p.id::text as tie
      from billing.purchases p
      where p.dispute_status = 'open' and p.id in (
        select l.purchase_id from billing.lot_allocations la join billing.lots l on l.id = la.lot_id
        where la.transfer_id = p_transfer_id and l.frozen
        union all
        select l.purchase_id from billing.lots l where l.account_id = p_account_id and l.open and l.frozen
        union all
        select x.id from billing.purchases x where x.dispute_id in (
          select h.correlation_id from billing.holds h
          where h.account_id = p_account_id and h.status = 'active' and h.purpose = 'dispute'))
      union
      -- A plan's grant is read here as rows (plans sit above this file); its lots stay in its account.
      select g.dispute_id, null, l.account_id, g.granted_at, g.invoice_id
      from billing.lot_allocations la
      join billing.lots l on l.id = la.lot_id
      join billing.plan_lots pl on pl.lot_id = l.id
      join billing.plan_grants g on g.subscription_id = pl.subscription_id and g.dispute_status = 'open'
                                and l.id = any(billing.lot_lineage(g.lot_id))
      where la.transfer_id = p_transfer_id and l.frozen) x
    order by x.since, x.tie
  loop
    select array_agg(distinct r.id order by r.id) into v_accounts from (
      select d.account_id as id where d.account_id is not null
      union all
      select l.account_id from billing.lots l where l.purchase_id = d.purchase_id and l.open
      union all
      select h.account_id from billing.holds h
      where h.purpose = 'dispute' and h.status = 'active' and h.correlation_id = d.dispute_id
      union all
      select billing.purchase_buyer(d.purchase_id) where d.purchase_id is not null) r;
    perform 1 from billing.accounts a where a.id = any(v_accounts) order by a.id for update;
    -- The buyer first: what the others leave to work there is what it holds (dispute_work_held).
    v_buyer := billing.purchase_buyer(d.purchase_id);
    foreach v_account in array case when v_buyer is null then v_accounts
                                    else v_buyer || array_remove(v_accounts, v_buyer) end loop
      perform billing.refreeze_disputes(v_account, d.dispute_id, true);
    end loop;
    v_reached := v_reached || v_accounts;
  end loop;
  -- What a refit freed (a hold shrunk to what it now claims) may be held by the other disputes
  -- open there that the balance cut short, as when a dispute closes.
  foreach v_account in array coalesce(array(select distinct x from unnest(v_reached) x order by x), '{}') loop
    perform billing.refreeze_disputes(v_account);
  end loop;
end;
$$;
comment on function billing.refit_disputes_drawn(p_transfer_id bigint, p_account_id bigint) is 'Internal: after a transfer drew from (or gave back to) lots an open dispute froze, or work under way in an account holding such lots ended (p_account_id), that dispute holds, in every account it reaches, what it would if it opened now (the student''s own holds give way).';
revoke execute on function billing.refit_disputes_drawn(p_transfer_id bigint, p_account_id bigint) from public;

-- Work that ends in an account (a job's hold released or captured) refits the disputes whose
-- frozen lots or holds are there (billing.refit_disputes_drawn), which locks every account they
-- reach: the buyer's may come before this one in id order. Taken first, in id order, with this
-- account, two students' accounts ending work at once cannot deadlock (a dispute opening at the
-- same moment still may: a statement's retry). Nearly every account holds no frozen lot and no
-- dispute hold: two index lookups, then its own lock.
create or replace function billing.lock_dispute_reach(p_account_id bigint) returns void
language plpgsql
set search_path = ''
as $$
begin
  if not exists (select 1 from billing.lots l where l.account_id = p_account_id and l.open and l.frozen)
     and not exists (select 1 from billing.holds h
                     where h.account_id = p_account_id and h.status = 'active' and h.purpose = 'dispute') then
    perform 1 from billing.accounts a where a.id = p_account_id for update;
    return;
  end if;
  perform 1 from billing.accounts a
  where a.id = any(array(
    with d as (select p.id, p.dispute_id from billing.purchases p
               where p.dispute_status = 'open'
                 and (p.id in (select l.purchase_id from billing.lots l
                               where l.account_id = p_account_id and l.open and l.frozen)
                      or p.dispute_id in (select h.correlation_id from billing.holds h
                                          where h.account_id = p_account_id and h.status = 'active'
                                            and h.purpose = 'dispute')))
    select p_account_id
    union all
    select billing.purchase_buyer(d.id) from d
    union all
    select l.account_id from billing.lots l join d on l.purchase_id = d.id where l.open
    union all
    select h.account_id from billing.holds h join d on h.correlation_id = d.dispute_id
    where h.purpose = 'dispute' and h.status = 'active'))
  order by a.id for update;
end;
$$;
comment on function billing.lock_dispute_reach(p_account_id bigint) is 'Internal: locks an account and, before it in id order, every account the open disputes with frozen lots or holds there reach (what billing.refit_disputes_drawn will lock).';
revoke execute on function billing.lock_dispute_reach(p_account_id bigint) from public;

-- pg_cron, every minute: work under way past its TTL where a dispute holds credits
-- (billing.work_waits_for_dispute) ends here, and the disputes there are refit at once: what the
-- dispute's hold stood lowered for is held again before anything else may spend it. One account
-- at a time: one that meets a lock conflict waits for the next run; one that fails never stops
-- the others (their work would wait with it), is tried again each run, and is said.
create or replace function billing.release_disputed_work_holds(p_limit integer default 500) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint;
  v_total integer := 0;
begin
  for v_account_id in
    select distinct h.account_id from billing.holds h
    where h.status = 'active' and h.expires_at <= now() and h.purpose in ('job', 'ai')
      and billing.work_waits_for_dispute(h.account_id)
    order by h.account_id limit p_limit
  loop
    begin
      v_total := v_total + billing.expire_overdue_holds(v_account_id, true);
      perform billing.refit_disputes_drawn(null, v_account_id);
    exception
      when deadlock_detected or lock_not_available then
        null;
      when others then
        perform billing.set_alert('disputed_work_sweep_failed', true,
          'Work past its TTL in an account a dispute reaches could not be ended',
          jsonb_build_object('account_id', v_account_id, 'error', sqlerrm));
    end;
  end loop;
  return v_total;
end;
$$;
comment on function billing.release_disputed_work_holds(p_limit integer) is 'pg_cron: ends job and gateway holds past their TTL in accounts where a dispute holds credits, refitting those disputes; returns how many holds ended.';
revoke execute on function billing.release_disputed_work_holds(p_limit integer) from public;
grant execute on function billing.release_disputed_work_holds(p_limit integer) to service_role;

create or replace function billing.stop_off_session_charges(p_user uuid, p_dispute_id text)
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
comment on function billing.stop_off_session_charges(p_user uuid, p_dispute_id text) is 'Internal: a dispute on one of p_user''s payments: auto-recharge off (reason dispute) and the saved card forgotten.';
revoke execute on function billing.stop_off_session_charges(p_user uuid, p_dispute_id text) from public;

-- fulfillCheckout, for every path that learns a purchase's state (webhooks, the success-page
-- poll, the recharge worker, an organisation's paid invoice): finds the purchase, then brings
-- its payment, refunds and dispute in line with the state re-fetched from Stripe, in that order.
create or replace function billing.sync_purchase(p_state jsonb) returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  p billing.purchases;
  v_user uuid;        -- whose account the credits are in: the buyer's,
  v_wallet bigint;    -- or, for an organisation's purchase, its wallet
begin
  -- A Checkout purchase by its session; an off-session recharge or a paid organisation invoice
  -- (no session) by its purchase id.
  if p_state ->> 'session_id' is not null then
    select * into p from billing.purchases x where x.stripe_session_id = p_state ->> 'session_id' for update;
  else
    select * into p from billing.purchases x
    where x.id = (p_state ->> 'purchase_id')::uuid and x.origin in ('auto_recharge', 'invoice') for update;
  end if;
  if not found then
    return 'unknown_purchase';
  end if;
  if p.org_id is not null then
    v_wallet := billing.org_wallet_id(p.org_id);
  else
    v_user := p.user_id;
  end if;

  p := billing.sync_purchase_payment(p, p_state, v_user, v_wallet);
  update billing.purchases x
  set stripe_payment_intent_id = coalesce(x.stripe_payment_intent_id, p_state ->> 'payment_intent'),
      stripe_charge_id = coalesce(x.stripe_charge_id, p_state ->> 'charge_id'),
      stripe_fee_cents = coalesce(x.stripe_fee_cents, (p_state ->> 'stripe_fee')::integer)
  where x.id = p.id returning * into p;
  if p.status <> 'paid' then
    return p.status;
  end if;
  p := billing.sync_purchase_refunds(p, p_state);
  p := billing.sync_purchase_dispute(p, p_state);
  return p.status;
end;
$$;
comment on function billing.sync_purchase(p_state jsonb) is 'fulfillCheckout: converges a purchase on Stripe''s current state (credits in the buyer''s account, or the organisation''s wallet). Safe to run any number of times, concurrently, in any order.';
revoke execute on function billing.sync_purchase(p_state jsonb) from public;
grant execute on function billing.sync_purchase(p_state jsonb) to service_role;
