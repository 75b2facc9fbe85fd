-- Refunds and disputes (docs/credit-lots.md § Refunds, disputes and debt), for sync_purchase and plan
-- invoices (57-plan-credits.sql): a refund takes the lots' free credits at once, wherever they moved,
-- what a live hold reserved when it ends (lot_take_backs); the spent part is owed by the buyer, the
-- expired forgiven. Disputes freeze the lots; won, they thaw; lost, a refund.

create table billing.lot_take_backs (
  hold_id uuid not null,
  lot_id bigint not null references billing.lots (id),
  take_key text not null,                         -- the refund's or dispute's key; each transfer's key starts with it
  amount numeric(38, 18) not null,                -- of what the hold reserved of the lot
  kind billing.transfer_kind not null,            -- refund_reversal, dispute_reversal, or usage (a provider's bill past a hold)
  buyer_id bigint not null references billing.accounts (id),  -- who owes what the hold drew of it
  purchase_id uuid references billing.purchases (id),
  invoice_id text,                                -- a plan invoice's (billing.plan_grants), instead of a purchase
  reference text, correlation_id text, metadata jsonb,  -- the reversals', as the refund's or dispute's own
  -- A claim (billing.owe's) is what the buyer owes already; else what the refund takes of the lot.
  claim boolean not null default false,
  member_id uuid,                                 -- a usage claim on a school's account: the member whose call it was (the charge's user)
  constraint lot_take_backs_pkey primary key (hold_id, lot_id, take_key),
  constraint lot_take_backs_valid check (amount > 0 and kind in ('refund_reversal', 'dispute_reversal', 'usage')),
  constraint lot_take_backs_source check (case when kind = 'usage' then purchase_id is null and invoice_id is null and claim
                                               else (purchase_id is null) <> (invoice_id is null) end)
);
comment on table billing.lot_take_backs is 'What a refund or lost dispute still takes back of a lot a live hold reserved: taken when that hold ends (billing.hold_ended): what the hold returned of the lot from the lot, what it drew owed by the buyer.';
alter table billing.lot_take_backs enable row level security;
revoke all on table billing.lot_take_backs from public, anon, authenticated;

-- What live holds reserved, claimed for a refund's take-back or a debt (taken when each hold ends,
-- billing.hold_ended): up to p_amount of p_reserved (their hold_lots, in the caller's order), each
-- less what earlier take-backs claim of it, recorded as p_take says (its hold, lot and amount
-- filled in). Returns what was left unclaimed.
create or replace function billing.claim_reserved(p_reserved billing.hold_lots[], p_amount numeric,
  p_take billing.lot_take_backs) returns numeric
language plpgsql
set search_path = ''
as $$
declare
  x billing.hold_lots;
begin
  foreach x in array p_reserved loop
    exit when p_amount <= 0;
    p_take.hold_id := x.hold_id;
    p_take.lot_id := x.lot_id;
    p_take.amount := least(p_amount, x.amount - coalesce((select sum(t.amount) from billing.lot_take_backs t
                                                          where t.hold_id = x.hold_id and t.lot_id = x.lot_id), 0));
    continue when p_take.amount <= 0;
    insert into billing.lot_take_backs select p_take.*;
    p_amount := p_amount - p_take.amount;
  end loop;
  return greatest(p_amount, 0);
end;
$$;
comment on function billing.claim_reserved(p_reserved billing.hold_lots[], p_amount numeric, p_take billing.lot_take_backs) is 'Internal: claims up to p_amount of what live holds reserved (p_reserved, in order; less earlier claims) as take-backs shaped like p_take; returns what is left.';
revoke execute on function billing.claim_reserved(p_reserved billing.hold_lots[], p_amount numeric, p_take billing.lot_take_backs) from public;

-- The one debt (docs/credit-lots.md § Refunds, disputes and debt, rules 2 and 7): what an account
-- owes, a buyer what a refunded or lost purchase's (or plan invoice's) lots lack (a provider's bill
-- past a hold is charged by billing.charge_hold_at; here only a usage take-back written before that
-- rule still comes, from billing.hold_ended). Of a shortfall, what expired
-- left as breakage already is forgiven, once (`p_forgive`; a claim that could not take was owed
-- already). The rest is paid from the account's credits that may pay for `p_model` (null: credits
-- for any model): a reversal's frozen ones first (the disputed money itself, oldest first), then
-- free ones, an excess's frozen ones after them (no debt beside credits a won dispute thaws), then
-- what its live holds reserved of them is claimed (taken when each hold ends, billing.hold_ended:
-- no debt beside credits a hold returns); the rest is debt. One posting: a reversal, or a usage
-- charge no cap refuses (the writer's `owe`; its caps counted it when it was billed; `p_member`:
-- a member's call on a school's account, the charge's user). `p_lot`: a claim being paid, the lot its hold returned credits to (drawn
-- first). Under the account lock; the posting's transfer id (null: all claimed).
create or replace function billing.owe(p_account_id bigint, p_member uuid, p_amount numeric, p_model text,
  p_kind billing.transfer_kind, p_key text, p_reference text, p_correlation text, p_metadata jsonb, p_purchase_id uuid,
  p_invoice_id text, p_lot bigint default null, p_rate_card_id bigint default null, p_category text default null,
  p_forgive boolean default false)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_forgive numeric(38, 18) := 0;
  v_paid numeric(38, 18);
  v_left numeric(38, 18);
  v_take numeric(38, 18);
  v_first bigint[];
begin
  if p_forgive and p_amount > 0 and p_invoice_id is not null then
    -- A plan's grant, read as rows (plans sit above this file): its lots and rollovers.
    select least(p_amount, billing.lots_expired(billing.lot_lineage(g.lot_id)) - g.expiry_forgiven) into v_forgive
    from billing.plan_grants g where g.invoice_id = p_invoice_id;
    update billing.plan_grants g set expiry_forgiven = g.expiry_forgiven + v_forgive
    where g.invoice_id = p_invoice_id and v_forgive > 0;
  elsif p_forgive and p_amount > 0 then
    v_forgive := least(p_amount, billing.purchase_expiry_unforgiven(p_purchase_id, p_category));
    v_paid := case p_category when 'paid' then v_forgive when 'promotional' then 0
                else least(v_forgive, billing.purchase_expiry_unforgiven(p_purchase_id, 'paid')) end;
    update billing.purchases x
    set credits_expiry_forgiven = x.credits_expiry_forgiven + v_paid,
        bonus_expiry_forgiven = x.bonus_expiry_forgiven + (v_forgive - v_paid)
    where x.id = p_purchase_id and v_forgive > 0;
  end if;
  p_amount := p_amount - greatest(coalesce(v_forgive, 0), 0);
  -- Never a lot past its expiry (it is the expiry's, whatever runs first: the writer skips it too).
  v_left := p_amount - coalesce((select sum(l.remaining - l.reserved) from billing.lots l
    where l.account_id = p_account_id and l.open and l.remaining > l.reserved and not coalesce(l.expires_at <= now(), false)
      and (l.applies_to is null or billing.lot_pays_for(l.applies_to, p_model))), 0);
  if v_left > 0 then
    v_take := v_left - billing.claim_reserved(array(
        select x from billing.hold_lots x join billing.holds h on h.id = x.hold_id and h.status = 'active'
        join billing.lots l on l.id = x.lot_id and (l.applies_to is null or billing.lot_pays_for(l.applies_to, p_model))
          and not coalesce(l.expires_at <= now(), false)
        where h.account_id = p_account_id order by l.spending_order, h.created_at, h.id),
      v_left, jsonb_populate_record(null::billing.lot_take_backs, jsonb_build_object('take_key', p_key, 'kind', p_kind,
        'buyer_id', p_account_id, 'purchase_id', p_purchase_id, 'invoice_id', p_invoice_id, 'reference', p_reference,
        'correlation_id', p_correlation, 'member_id', p_member, 'claim', true,
        'metadata', case when p_kind = 'usage' then coalesce(p_metadata, '{}'::jsonb) || jsonb_build_object('model', p_model)
                         else p_metadata end)));
    p_amount := p_amount - v_take;
  end if;
  if p_amount <= 0 then
    return null;
  end if;
  -- A reversal's shortfall takes the buyer's frozen credits first (the disputed money itself); an
  -- excess takes free credits first (frozen ones are not spent while they can be), then frozen.
  v_first := array_remove(array[p_lot], null) || array(select l.id from billing.lots l where l.account_id = p_account_id
    and p_kind <> 'usage' and l.open and l.frozen and l.remaining > l.reserved and l.applies_to is null
    and not coalesce(l.expires_at <= now(), false) order by l.id);
  -- Credits for some models: what is owed for a model is drawn from the lots that may pay for it.
  return billing.take_credits(a.id, p_kind, p_amount, p_key, p_correlation, case when p_kind <> 'usage' then p_reference end,
    p_metadata, case when p_kind = 'usage' then p_rate_card_id end,
    case when p_kind = 'usage' and a.org_id is not null then coalesce(p_member, a.member_id) end,
    jsonb_build_object('first', to_jsonb(v_first)) || case when p_kind = 'usage' then jsonb_build_object('owe', true)
      || case when a.restricted_lots then jsonb_build_object('for', p_model) else '{}' end else '{}' end)
  from billing.accounts a where a.id = p_account_id;
end;
$$;
comment on function billing.owe(p_account_id bigint, p_member uuid, p_amount numeric, p_model text, p_kind billing.transfer_kind, p_key text, p_reference text, p_correlation text, p_metadata jsonb, p_purchase_id uuid, p_invoice_id text, p_lot bigint, p_rate_card_id bigint, p_category text, p_forgive boolean) is 'Internal: what an account owes (a reversal''s shortfall, its expired part forgiven with p_forgive; or what a provider billed past a hold): its credits that may pay for p_model (a reversal frozen first, an excess free first), claims on its live holds'' reservations, then debt; the posting''s transfer id.';
revoke execute on function billing.owe(p_account_id bigint, p_member uuid, p_amount numeric, p_model text, p_kind billing.transfer_kind, p_key text, p_reference text, p_correlation text, p_metadata jsonb, p_purchase_id uuid, p_invoice_id text, p_lot bigint, p_rate_card_id bigint, p_category text, p_forgive boolean) from public;

-- The accounts the lots are in, locked in id order and settled (a hold past its TTL lapses, a
-- due lot expires); then, the buyer's first, the lots' free credits at once (a reversal in the
-- lot's own account, naming them), then what live holds reserved, pending.
create or replace function billing.take_back_lots(p_lots bigint[], p_buyer bigint, p_amount numeric,
  p_kind billing.transfer_kind, p_key text, p_reference text, p_correlation_id text, p_metadata jsonb,
  p_purchase_id uuid, p_invoice_id text) returns numeric
language plpgsql
set search_path = ''
as $$
declare
  r record;
  v_take numeric(38, 18);
begin
  for r in select distinct l.account_id from billing.lots l where l.id = any(p_lots) order by 1 loop
    perform billing.settled(a) from billing.accounts a where a.id = r.account_id for update;
  end loop;
  for r in
    select l.account_id, a.member_id as member, sum(l.remaining - l.reserved) as free,
      array_agg(l.id order by l.id) as lots
    from billing.lots l join billing.accounts a on a.id = l.account_id
    where l.id = any(p_lots) and l.open and l.remaining > l.reserved
    group by l.account_id, a.member_id order by l.account_id <> p_buyer, l.account_id
  loop
    exit when p_amount <= 0;
    v_take := least(p_amount, r.free);
    -- Another's account (a redeemer, a member) reads a refund of the credits it was given, never
    -- the buyer's dispute or charge.
    perform billing.take_credits(r.account_id, case when r.account_id = p_buyer then p_kind else 'refund_reversal' end,
      v_take, p_key || case when r.account_id = p_buyer then '' else ':' || r.account_id end, p_correlation_id,
      case when r.account_id = p_buyer then p_reference end, case when r.account_id = p_buyer then p_metadata end, null,
      r.member, jsonb_build_object('first', to_jsonb(r.lots)));
    p_amount := p_amount - v_take;
  end loop;
  -- What live holds reserved of the lots (and no earlier take-back claims), the hold's share.
  return billing.claim_reserved(array(
      select x from billing.hold_lots x join billing.holds h on h.id = x.hold_id and h.status = 'active'
      join billing.lots l on l.id = x.lot_id
      where x.lot_id = any(p_lots) order by l.account_id <> p_buyer, l.account_id, l.id, h.created_at, h.id),
    greatest(p_amount, 0), jsonb_populate_record(null::billing.lot_take_backs, jsonb_build_object('take_key', p_key,
      'kind', p_kind, 'buyer_id', p_buyer, 'purchase_id', p_purchase_id, 'invoice_id', p_invoice_id, 'reference', p_reference,
      'correlation_id', p_correlation_id, 'metadata', p_metadata, 'claim', false)));
end;
$$;
comment on function billing.take_back_lots(p_lots bigint[], p_buyer bigint, p_amount numeric, p_kind billing.transfer_kind, p_key text, p_reference text, p_correlation_id text, p_metadata jsonb, p_purchase_id uuid, p_invoice_id text) is 'Internal: takes back up to p_amount of the free credits of p_lots (the buyer''s first, then by account) and records what live holds reserved of them as pending (billing.lot_take_backs); returns what the lots lack.';
revoke execute on function billing.take_back_lots(p_lots bigint[], p_buyer bigint, p_amount numeric, p_kind billing.transfer_kind, p_key text, p_reference text, p_correlation_id text, p_metadata jsonb, p_purchase_id uuid, p_invoice_id text) from public;

-- Told by the tick (billing.take_back_claims) once a hold ended (captured, released, timed out,
-- shrunk to nothing; its claims hold released) or shrank (a lot it reserved expired or rolled
-- over), under its account lock: the
-- take-backs refunds left pending on it (on a live hold, those of the lots it gave up). Of what it
-- reserved of a lot (hold_lots; else what was claimed), what it returned is taken back, what its
-- capture drew or the lot's expiry took is owed by the buyer (forgiven if expired, but for a
-- claim, owed already); the buyer's lock is taken after.
create or replace function billing.hold_ended(p_hold_id uuid) returns boolean
language plpgsql
set search_path = ''
as $$
declare
  t billing.lot_take_backs;
  l billing.lots;
  v_returned numeric(38, 18);                     -- of the lot, what the hold returned and no claim took yet
  v_given jsonb := '{}'::jsonb;                   -- per lot, what earlier take-backs here took of it
  v_give numeric(38, 18);
  v_key text;
  v_posted boolean := false;
begin
  -- What the refunds take first, lot by lot, then the claims of what the account owed (as their
  -- keys came): a claim never takes what a refund's take-back waits on.
  for t in
    select x.* from billing.lot_take_backs x join billing.holds h on h.id = x.hold_id
    join billing.lots g on g.id = x.lot_id
    where x.hold_id = p_hold_id and (h.status <> 'active' or not g.open)
    order by x.claim, x.lot_id, x.take_key
  loop
    if l.id is distinct from t.lot_id then
      select * into l from billing.lots x where x.id = t.lot_id;
      -- A lot due before the hold ended is expired first (expire_due_lots orders the two): what
      -- the hold returns of it is expired, never free to pay a take-back. (A hold that ended
      -- before the lot fell due may be told after it: billing.expire_overdue_holds.)
      if l.open and l.expires_at <= now() and (select case when h.status = 'expired' or h.purpose = 'claims'
                                                               then l.expires_at < h.expires_at
                                                             else l.expires_at <= coalesce(h.finished_at, now()) end
                                                from billing.holds h where h.id = p_hold_id) then
        raise exception 'hold % ended before its due lot % expired', p_hold_id, l.id;
      end if;
      -- (None reserved, none returned: a lot it gave up to an expiry or a claims hold never had.)
      v_returned := coalesce((select x.amount from billing.hold_lots x where x.hold_id = p_hold_id and x.lot_id = l.id), 0)
        - coalesce((select sum(la.amount) from billing.lot_allocations la join billing.holds h
                    on h.capture_transfer_id = la.transfer_id where h.id = p_hold_id and la.lot_id = l.id), 0)
        - coalesce((v_given ->> l.id::text)::numeric, 0);    -- a lot met again (its claims after the refunds)
    end if;
    v_give := greatest(least(t.amount, v_returned, l.remaining - l.reserved), 0);
    v_returned := v_returned - v_give;
    v_given := jsonb_set(v_given, array[l.id::text], to_jsonb(coalesce((v_given ->> l.id::text)::numeric, 0) + v_give));
    l.remaining := l.remaining - v_give;
    v_posted := true;
    -- The postings' key: the refund's (or the excess's) own, then this step's, hashed: a claim
    -- owed again hops from hold to hold without its key growing past what the writer takes.
    v_key := split_part(t.take_key, ':held:', 1) || ':held:' || md5(t.take_key || ':' || p_hold_id || ':' || l.id);
    if t.kind = 'usage' then
      -- What a provider billed past another hold claimed here (billing.owe): charged now,
      -- from what this hold returned first; what it spent is owed again.
      perform billing.owe(t.buyer_id, t.member_id, t.amount, t.metadata ->> 'model', 'usage', v_key, null, t.correlation_id,
        t.metadata, null, null, case when v_give > 0 then l.id end);
      continue;
    end if;
    perform billing.take_credits(a.id, case when a.id = t.buyer_id then t.kind else 'refund_reversal' end, v_give, v_key,
      t.correlation_id, case when a.id = t.buyer_id then t.reference end, case when a.id = t.buyer_id then t.metadata end,
      null, a.member_id, jsonb_build_object('first', jsonb_build_array(l.id)))
    from billing.accounts a where a.id = l.account_id and v_give > 0;
    perform billing.owe(t.buyer_id, null, t.amount - v_give, null, t.kind, v_key || ':owed', t.reference, t.correlation_id,
      t.metadata, t.purchase_id, t.invoice_id, p_category => l.category, p_forgive => not t.claim);
  end loop;
  delete from billing.lot_take_backs x using billing.holds h, billing.lots g
  where x.hold_id = p_hold_id and h.id = x.hold_id and g.id = x.lot_id and (h.status <> 'active' or not g.open);
  return v_posted;
end;
$$;
comment on function billing.hold_ended(p_hold_id uuid) is 'Internal: called when a hold ends or gives way, under its account lock: the take-backs pending on it (billing.lot_take_backs; a live hold''s, on the lots it gave up): what it returned of each lot taken back from the lot, what it drew owed by the buyer (forgiven if expired, but a claim). True when it took or owed anything (balances moved).';
revoke execute on function billing.hold_ended(p_hold_id uuid) from public;

-- The tick's, never a settle's: what refunds claimed of held credits is taken back once the hold
-- that reserved them ended (its claims hold, billing.keep_claims; the ended hold itself when it
-- returned none of them) or the lot expired under it. The account is locked and settled first (a
-- due lot expires before a take-back reads it, but for what claims holds keep of it, the refunds'
-- since before it fell due); then its holds are told one at a time, in the order they ended, a
-- claims hold released just before (its cap room back), so what one hold owes never draws what
-- another returned for its own claims. Until then the claimed credits are reserved or were spent
-- by the hold: never free. Returns the holds told.
create or replace function billing.take_back_claims(p_account_id bigint) returns integer
language plpgsql
set search_path = ''
as $$
declare
  h billing.holds;
  v_count integer := 0;
begin
  perform billing.settled(a) from billing.accounts a where a.id = p_account_id for update;
  for h in
    select x.* from billing.holds x
    where x.account_id = p_account_id and exists (
      select 1 from billing.lot_take_backs t join billing.lots l on l.id = t.lot_id
      where t.hold_id = x.id and (x.status <> 'active' or x.purpose = 'claims' or not l.open))
    order by coalesce(x.finished_at, x.created_at), x.id
  loop
    if h.purpose = 'claims' and h.status = 'active' then
      perform billing.end_holds(array[h.id], 'released');
      perform billing.return_hold_cap_room(h, h.amount);
    end if;
    perform billing.hold_ended(h.id);
    v_count := v_count + 1;
  end loop;
  -- What a claims hold kept of a lot that fell due and no take-back took expires now.
  update billing.accounts a set next_expiry = (select min(l.expires_at) from billing.lots l
                                               where l.account_id = a.id and l.open)
  where a.id = p_account_id and v_count > 0;
  perform billing.settled(a) from billing.accounts a where a.id = p_account_id and v_count > 0;
  return v_count;
end;
$$;
comment on function billing.take_back_claims(p_account_id bigint) is 'Internal (the tick''s): takes back what refunds claimed of one account''s ended holds (a claims hold released first) and of lots that expired under live ones, hold by hold in the order they ended.';
revoke execute on function billing.take_back_claims(p_account_id bigint) from public;

-- pg_cron, each minute: the accounts with refunds' take-backs due (billing.take_back_claims).
create or replace function billing.take_back_due_claims(p_limit integer default 500) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint;
  v_total integer := 0;
  v_state text;
begin
  for v_account_id in
    select distinct h.account_id from billing.lot_take_backs t join billing.holds h on h.id = t.hold_id
    join billing.lots l on l.id = t.lot_id
    where h.status <> 'active' or h.purpose = 'claims' or not l.open
    order by 1 limit p_limit
  loop
    -- One account's failure never holds the others back: it runs again the next minute, its
    -- claimed credits held meanwhile. A deadlock with a refund or a sweep passes by itself;
    -- anything else would fail every minute, so someone is told.
    begin
      v_total := v_total + billing.take_back_claims(v_account_id);
    exception when others then
      get stacked diagnostics v_state = returned_sqlstate;
      raise warning 'take_back_claims(%) failed: %', v_account_id, v_state;
      if v_state not in ('40P01', '40001', '55P03') then
        perform billing.set_alert('take_back_failed', true, 'A refund''s take-back failed at the tick',
          jsonb_build_object('account_id', v_account_id, 'sqlstate', v_state));
      end if;
    end;
  end loop;
  return v_total;
end;
$$;
comment on function billing.take_back_due_claims(p_limit integer) is 'pg_cron: takes back what refunds claimed of ended holds (billing.take_back_claims), for at most p_limit accounts per run. Idempotent.';
revoke execute on function billing.take_back_due_claims(p_limit integer) from public, anon, authenticated;
grant execute on function billing.take_back_due_claims(p_limit integer) to service_role;

create or replace function billing.take_back_purchase(p_purchase billing.purchases, p_amount numeric, p_category text,
  p_kind billing.transfer_kind, p_key text, p_reference text) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_buyer bigint := billing.purchase_buyer(p_purchase.id);
  v_lots bigint[] := billing.purchase_lots(p_purchase.id, p_category);
begin
  if p_amount <= 0 then
    return;
  end if;
  -- Every account involved, in id order, until the list stands still (a move committed meanwhile).
  loop
    perform 1 from billing.accounts a
    where a.id = v_buyer or a.id in (select l.account_id from billing.lots l where l.id = any(v_lots) and l.open)
    order by a.id for update;
    exit when v_lots = billing.purchase_lots(p_purchase.id, p_category);
    v_lots := billing.purchase_lots(p_purchase.id, p_category);
  end loop;
  perform billing.owe(v_buyer, null, billing.take_back_lots(v_lots, v_buyer, p_amount, p_kind, p_key, p_reference, null,
      billing.purchase_metadata(p_purchase), p_purchase.id, null), null, p_kind, p_key || ':owed', p_reference, null,
    billing.purchase_metadata(p_purchase), p_purchase.id, null, p_category => p_category, p_forgive => true);
end;
$$;
comment on function billing.take_back_purchase(p_purchase billing.purchases, p_amount numeric, p_category text, p_kind billing.transfer_kind, p_key text, p_reference text) is 'Internal: reverses p_amount of a purchase''s credits: the free credits of its lots wherever they are at once, what live holds reserved of them when each hold ends; of what they lack, what expired is forgiven (recorded on the purchase), what was spent is owed by the buyer (credits for any model, then debt).';
revoke execute on function billing.take_back_purchase(p_purchase billing.purchases, p_amount numeric, p_category text, p_kind billing.transfer_kind, p_key text, p_reference text) from public;

create or replace function billing.stop_off_session_charges(p_user uuid, p_dispute_id text) returns void
language plpgsql
set search_path = ''
as $$
begin
  perform billing.turn_off_auto_recharge(p_user, 'dispute', jsonb_build_object('dispute_id', p_dispute_id));
  delete from billing.saved_cards c where c.user_id = p_user;  -- auto-recharge off until a card is saved again
end;
$$;
comment on function billing.stop_off_session_charges(p_user uuid, p_dispute_id text) is 'Internal: a dispute on one of p_user''s payments: auto-recharge off (reason dispute) and the saved card forgotten.';
revoke execute on function billing.stop_off_session_charges(p_user uuid, p_dispute_id text) from public;

-- fulfillCheckout, for every path that learns a purchase's state (webhooks, the success-page poll, the
-- recharge worker, an organisation's invoice): payment, refunds, dispute, as Stripe has them now.
create or replace function billing.sync_purchase(p_state jsonb) returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  p billing.purchases;
  v_refunded integer := coalesce((p_state ->> 'amount_refunded')::integer, 0);
  v_paid integer;
  v_target_c numeric(38, 18);
  v_target_b numeric(38, 18);
  v_dispute text := case
    when p_state ->> 'dispute_status' in ('won', 'warning_closed', 'prevented') then 'won'
    when p_state ->> 'dispute_status' = 'lost' then 'lost'
    when p_state ->> 'dispute_id' is not null then 'open' end;
begin
  -- By its Checkout session; an off-session recharge or an organisation's invoice by its id.
  if p_state ->> 'session_id' is not null then
    select * into p from billing.purchases x where x.stripe_session_id = p_state ->> 'session_id' for update;
  else
    select * into p from billing.purchases x
    where x.id = (p_state ->> 'purchase_id')::uuid and x.origin in ('auto_recharge', 'invoice') for update;
  end if;
  if not found then
    return 'unknown_purchase';
  end if;
  p := billing.sync_purchase_payment(p, p_state, case when p.org_id is null then p.user_id end,  -- the buyer's,
    case when p.org_id is not null then billing.org_wallet_id(p.org_id) end);                     -- or the wallet
  update billing.purchases x
  set stripe_payment_intent_id = coalesce(x.stripe_payment_intent_id, p_state ->> 'payment_intent'),
      stripe_charge_id = coalesce(x.stripe_charge_id, p_state ->> 'charge_id'),
      stripe_fee_cents = coalesce(x.stripe_fee_cents, (p_state ->> 'stripe_fee')::integer)
  where x.id = p.id returning * into p;
  if p.status <> 'paid' then
    return p.status;
  end if;

  -- Refunds: Stripe reports the cumulative amount: the reversal converges on floor(credits × refunded /
  -- paid), paid being what the charge took, tax included; each category apart (its own expiry).
  v_paid := p.price_cents + p.tax_cents;
  if v_refunded > p.amount_refunded_cents then
    -- (After a lost dispute, which took back the rest, nothing more.)
    v_target_c := case when p.dispute_status = 'lost' then p.credits_refund_reversed when v_refunded >= v_paid then p.credits
      else floor(p.credits * v_refunded / v_paid) end;
    v_target_b := case when p.dispute_status = 'lost' then p.bonus_refund_reversed when v_refunded >= v_paid
      then p.bonus_credits else floor(p.bonus_credits * v_refunded / v_paid) end;
    perform billing.take_back_purchase(p, v_target_c - p.credits_refund_reversed, 'paid', 'refund_reversal',
      'refund:' || p.id || ':' || v_refunded, p_state ->> 'charge_id');
    perform billing.take_back_purchase(p, v_target_b - p.bonus_refund_reversed, 'promotional', 'refund_reversal',
      'refund-bonus:' || p.id || ':' || v_refunded, p_state ->> 'charge_id');
    update billing.purchases x
    set amount_refunded_cents = v_refunded, credits_refund_reversed = greatest(v_target_c, x.credits_refund_reversed),
        bonus_refund_reversed = greatest(v_target_b, x.bonus_refund_reversed), updated_at = now()
    where x.id = p.id returning * into p;
  end if;

  -- Disputes: open → the lots freeze wherever they are (due lots expire first); won → thaw; lost → the
  -- rest taken back as a refund (a later refund takes nothing again, above).
  if v_dispute is not null and coalesce(p.dispute_status, 'open') = 'open' then
    if v_dispute = 'open' then
      -- The payer's off-session charges stop, unless a verified school answers for its purchase.
      perform billing.stop_off_session_charges(p.user_id, p_state ->> 'dispute_id') where not p.wallet_answers;
      perform billing.settled(x.a) from (select a from billing.accounts a where a.id in
        (select l.account_id from billing.lots l where l.purchase_id = p.id and l.open) order by a.id for update) x;
    elsif v_dispute = 'lost' then
      perform billing.take_back_purchase(p, (p.credits - p.credits_refund_reversed) + (p.bonus_credits - p.bonus_refund_reversed),
        null, 'dispute_reversal', 'dispute:' || (p_state ->> 'dispute_id'), p_state ->> 'charge_id');
    end if;
    perform billing.set_lots_frozen(p.id, v_dispute = 'open');
    update billing.purchases x
    set dispute_id = p_state ->> 'dispute_id', dispute_status = v_dispute, updated_at = now(),
        disputed_at = coalesce(x.disputed_at, now())
    where x.id = p.id returning * into p;
  end if;
  return p.status;
end;
$$;
comment on function billing.sync_purchase(p_state jsonb) is 'fulfillCheckout: converges a purchase on Stripe''s current state: paid → credits in the buyer''s account (or the organisation''s wallet); refunds → taken back in proportion; dispute open → its lots frozen wherever they are, won → thawed, lost → taken back as a refund. Safe to run any number of times, concurrently, in any order.';
revoke execute on function billing.sync_purchase(p_state jsonb) from public;
grant execute on function billing.sync_purchase(p_state jsonb) to service_role;
