-- Promo, gift and sponsor codes: credits a person redeems with a code someone else made.
--
--   promo:   an admin's code: each redemption grants `credits` as a promotional lot (expiring at
--            lot_expires_at, or lot_expires_after from the redemption), within a total budget,
--            a cap on redemptions, one per account, and a valid window.
--   gift:    bought through Checkout by one person (a purchase with gift = true) and redeemed by
--            another. Paid, the purchase's credits go into the code's escrow account (a paid lot
--            at the buyer's price, with its purchase) instead of the buyer's; redeemed, they move
--            to the redeemer with their provenance (billing.move_credits). A refund or dispute
--            of the purchase reaches them wherever they are (take_back_purchase follows the
--            purchase's lots): in the escrow, the code gives only what is left; once redeemed,
--            the redeemer's lots are taken back and what was spent is owed by the buyer. The
--            purchase's payment activates the code (billing.activate_gift_code, 50-purchases.sql).
--   sponsor: an organisation's owner or admin sets credits aside for one named student (a user
--            id, or an email address): they move from the wallet into the code's escrow at issue,
--            so the promise holds whatever the wallet spends next, and the organisation's own
--            refunds and disputes still reach them (moved lots keep their purchase). Revoked or
--            past its window, the escrow goes back to the wallet (76-sponsor-codes.sql).
--
-- No row holds a code: codes keep the SHA-256 of the normalised code (Crockford base32, ≥ 100
-- bits). A promo or sponsor code is random and shown once; a gift code is an HMAC of the code's
-- id with a secret only the functions hold, so the buyer can read it again and the email can
-- carry it (_shared/codes.ts). Every attempt is audited in code_attempts (a hash prefix, never
-- the code), and failed guesses are limited per user and per client address from that table.
--
-- Locks: a code's row first, then accounts in id order (move_credits). sync_purchase never
-- takes a code's row after accounts: it creates the escrow while it holds the purchase only.

-- ============================================================ tables

create table billing.codes (
  id uuid primary key default gen_random_uuid(),
  kind text not null,
  code_hash text not null,                           -- SHA-256 (hex) of the normalised code
  status text not null default 'active',
  credits numeric(38, 18) not null,                  -- per redemption (promo), or what the code gives
  budget numeric(38, 18),                            -- promo: Σ credits all redemptions may grant
  max_redemptions integer,                           -- promo: how many accounts may redeem it
  redeemed_count integer not null default 0,
  redeemed_credits numeric(38, 18) not null default 0,
  valid_from timestamptz not null default now(),
  valid_until timestamptz,
  lot_expires_at timestamptz,                        -- promo: the granted lot's expiry, or
  lot_expires_after interval,                        -- promo: its lifetime from the redemption
  purchase_id uuid unique references billing.purchases (id),
  org_id uuid references billing.orgs (id),
  for_user uuid references auth.users (id),          -- sponsor: the only student who may redeem it,
  for_email text,                                    -- or the address of that student
  request_key text,                                  -- the creating request's Idempotency-Key
  note text,
  created_by uuid not null references auth.users (id),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  applies_to text[],                                 -- the models its credits may pay for (null: any)
  constraint codes_kind check (kind in ('promo', 'gift', 'sponsor')),
  constraint codes_status check (status in ('pending', 'active', 'disabled', 'redeemed', 'revoked', 'void')),
  constraint codes_hash_shape check (code_hash ~ '^[0-9a-f]{64}$'),
  constraint codes_credits_positive check (credits > 0),
  constraint codes_budget_positive check (budget is null or budget > 0),
  constraint codes_cap_positive check (max_redemptions is null or max_redemptions > 0),
  constraint codes_within_cap check (max_redemptions is null or redeemed_count <= max_redemptions),
  constraint codes_within_budget check (budget is null or redeemed_credits <= budget),
  constraint codes_window check (valid_until is null or valid_until > valid_from),
  constraint codes_lot_expiry check (lot_expires_after is null or lot_expires_after > interval '0'),
  constraint codes_note_length check (note is null or length(note) <= 500),
  constraint codes_gift_shape check ((kind = 'gift') = (purchase_id is not null)),
  constraint codes_sponsor_shape check ((kind = 'sponsor') = (org_id is not null)
                                        and (kind <> 'sponsor' or num_nonnulls(for_user, for_email) = 1)),
  constraint codes_one_use check (kind = 'promo' or coalesce(max_redemptions, 1) = 1)
);
comment on table billing.codes is 'Promo, gift and sponsor codes: what each gives, to whom, within which limits. Only the code''s SHA-256 is kept.';
comment on column billing.codes.redeemed_credits is 'Σ credits redemptions granted or moved; the budget holds because redemptions update it under the code''s row lock.';
alter table billing.codes enable row level security;
grant select on table billing.codes to service_role;

create unique index codes_hash on billing.codes (code_hash);

-- One code per creator, kind and Idempotency-Key (an admin's promo codes and sponsor codes are separate routes).
create unique index codes_request on billing.codes (created_by, kind, request_key) where request_key is not null;

create index codes_org on billing.codes (org_id, created_at desc) where org_id is not null;

create index codes_kind_created on billing.codes (kind, created_at desc);

create index codes_sponsor_open on billing.codes (valid_until) where status = 'active' and kind = 'sponsor';

create table billing.code_redemptions (
  code_id uuid not null references billing.codes (id),
  user_id uuid not null references auth.users (id),
  credits numeric(38, 18) not null,
  transfer_id bigint not null,
  answer jsonb not null,                             -- what the redemption answered, for a repeat
  redeemed_at timestamptz not null default now(),
  primary key (code_id, user_id),
  constraint code_redemptions_credits_positive check (credits > 0)
);
comment on table billing.code_redemptions is 'Who redeemed which code, once per account: a repeat answers the first redemption.';
alter table billing.code_redemptions enable row level security;
grant select on table billing.code_redemptions to authenticated;
grant select on table billing.code_redemptions to service_role;

create index code_redemptions_user on billing.code_redemptions (user_id, redeemed_at desc);

create index code_redemptions_time on billing.code_redemptions (redeemed_at);

create table billing.code_attempts (
  id bigint generated always as identity primary key,
  user_id uuid not null,
  hash_prefix text not null,                         -- the first 12 hex digits of the code's SHA-256
  address_hash text,                                 -- a keyed hash of the client address (_shared/codes.ts)
  outcome text not null,                             -- 'redeemed', 'repeated' or the refusal's token
  code_id uuid,
  created_at timestamptz not null default now()
);
comment on table billing.code_attempts is 'Every redemption attempt: who, from where (hashed), which code (a hash prefix) and how it ended. Never the code.';
alter table billing.code_attempts enable row level security;
grant select on table billing.code_attempts to service_role;

create index code_attempts_failed_user on billing.code_attempts (user_id, created_at) where outcome = 'CODE_NOT_FOUND';

create index code_attempts_failed_address on billing.code_attempts (address_hash, created_at)
  where outcome = 'CODE_NOT_FOUND' and address_hash is not null;

create index code_attempts_created_brin on billing.code_attempts using brin (created_at);

-- ============================================================ functions

-- A code as its creator sees it (never its hash).
create or replace function billing.code_json(c billing.codes) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('id', c.id, 'kind', c.kind,
    'status', case when c.status = 'active' and c.valid_until <= now() then 'expired' else c.status end,
    'credits', trim_scale(c.credits)::text, 'budget', trim_scale(c.budget)::text, 'max_redemptions', c.max_redemptions,
    'redeemed_count', c.redeemed_count, 'redeemed_credits', trim_scale(c.redeemed_credits)::text,
    'valid_from', billing.json_time(c.valid_from), 'valid_until', billing.json_time(c.valid_until),
    'lot_expires_at', billing.json_time(c.lot_expires_at),
    'lot_expires_after_days', extract(epoch from c.lot_expires_after)::bigint / 86400,
    'org_id', c.org_id, 'for_user', c.for_user, 'for_email', c.for_email, 'purchase_id', c.purchase_id,
    'applies_to', to_jsonb(c.applies_to),
    'note', c.note, 'created_at', billing.json_time(c.created_at))
$$;
comment on function billing.code_json(c billing.codes) is 'Internal: a code as the API shows it to its creator.';
revoke execute on function billing.code_json(c billing.codes) from public;

create or replace function billing.create_promo_code(p_admin uuid, p_code_hash text, p_spec jsonb, p_key text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_code billing.codes;
begin
  select * into v_code from billing.codes c where c.created_by = p_admin and c.request_key = p_key and c.kind = 'promo';
  if found then
    -- The same key for another code is a mistake, not a retry.
    if v_code.credits <> (p_spec ->> 'credits')::numeric
       or v_code.budget is distinct from (p_spec ->> 'budget')::numeric
       or v_code.max_redemptions is distinct from (p_spec ->> 'max_redemptions')::integer
       or v_code.applies_to is distinct from billing.applies_to_of(p_spec) then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', 'promo code'));
    end if;
    return billing.code_json(v_code) || jsonb_build_object('replayed', true);
  end if;
  perform billing.check_amount((p_spec ->> 'credits')::numeric);
  if (p_spec ->> 'lot_expires_at')::timestamptz <= coalesce((p_spec ->> 'valid_until')::timestamptz, now()) then
    perform billing.raise_error('INVALID_CODE', jsonb_build_object('field', 'lot_expires_at', 'rule', 'after valid_until'));
  end if;
  if (p_spec ->> 'budget')::numeric < (p_spec ->> 'credits')::numeric then
    perform billing.raise_error('INVALID_CODE', jsonb_build_object('field', 'budget', 'rule', 'at least credits'));
  end if;
  insert into billing.codes (kind, code_hash, credits, budget, max_redemptions, valid_from, valid_until, lot_expires_at,
                             lot_expires_after, note, created_by, request_key, applies_to)
  values ('promo', p_code_hash, (p_spec ->> 'credits')::numeric, (p_spec ->> 'budget')::numeric,
          (p_spec ->> 'max_redemptions')::integer, coalesce((p_spec ->> 'valid_from')::timestamptz, now()),
          (p_spec ->> 'valid_until')::timestamptz, (p_spec ->> 'lot_expires_at')::timestamptz,
          make_interval(days => (p_spec ->> 'lot_expires_after_days')::integer), p_spec ->> 'note', p_admin, p_key,
          billing.applies_to_of(p_spec))
  returning * into v_code;
  return billing.code_json(v_code) || jsonb_build_object('replayed', false);
end;
$$;
comment on function billing.create_promo_code(p_admin uuid, p_code_hash text, p_spec jsonb, p_key text) is 'An admin creates a promo code (p_spec: credits, budget, max_redemptions, valid_from, valid_until, lot_expires_at or lot_expires_after_days, applies_to, note); the same p_key again answers the code it made.';
revoke execute on function billing.create_promo_code(p_admin uuid, p_code_hash text, p_spec jsonb, p_key text) from public, anon, authenticated;
grant execute on function billing.create_promo_code(p_admin uuid, p_code_hash text, p_spec jsonb, p_key text) to service_role;

create or replace function billing.list_promo_codes(p_after uuid, p_limit integer) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(jsonb_agg(billing.code_json(c) order by c.created_at desc, c.id desc), '[]')
  from (select * from billing.codes x
        where x.kind = 'promo'
          and (p_after is null or (x.created_at, x.id) < (select a.created_at, a.id from billing.codes a
                                                          where a.id = p_after and a.kind = 'promo'))
        order by x.created_at desc, x.id desc limit least(greatest(p_limit, 1), 101)) c
$$;
comment on function billing.list_promo_codes(p_after uuid, p_limit integer) is 'Promo codes, newest first, with how much of each was redeemed (admins); p_after is the last code of the previous page.';
revoke execute on function billing.list_promo_codes(p_after uuid, p_limit integer) from public, anon, authenticated;
grant execute on function billing.list_promo_codes(p_after uuid, p_limit integer) to service_role;

create or replace function billing.disable_promo_code(p_id uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_code billing.codes;
begin
  update billing.codes c set status = 'disabled', updated_at = now()
  where c.id = p_id and c.kind = 'promo' returning * into v_code;
  if not found then
    perform billing.raise_error('CODE_NOT_FOUND', '{}');
  end if;
  return billing.code_json(v_code);
end;
$$;
comment on function billing.disable_promo_code(p_id uuid) is 'An admin stops a promo code: later redemptions are CODE_NOT_REDEEMABLE; credits already granted stay.';
revoke execute on function billing.disable_promo_code(p_id uuid) from public, anon, authenticated;
grant execute on function billing.disable_promo_code(p_id uuid) to service_role;

-- A gift's code is made with its purchase (pending until paid), so its hash is known before
-- the payment that activates it.
create or replace function billing.begin_gift_checkout(p_user uuid, p_package_id text, p_request_key text, p_code_id uuid,
  p_code_hash text) returns billing.checkout
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
    if v_purchase.package_id <> p_package_id or not v_purchase.gift then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', 'gift checkout'));
    end if;
    return billing.checkout_of(v_purchase, false);
  end if;
  select * into v_package from billing.credit_packages k where k.id = p_package_id and k.active;
  if not found then
    perform billing.raise_error('PACKAGE_NOT_FOUND', '{}'); -- never the caller's text: DETAILs reach the Postgres log
  end if;
  insert into billing.purchases (user_id, package_id, request_key, price_cents, currency, credits, bonus_credits, gift,
                                 package_version)
  values (p_user, v_package.id, p_request_key, v_package.price_cents, v_package.currency, v_package.credits,
          v_package.bonus_credits, true, v_package.version)
  returning * into v_purchase;
  insert into billing.codes (id, kind, code_hash, status, credits, max_redemptions, purchase_id, created_by)
  values (p_code_id, 'gift', p_code_hash, 'pending', v_package.credits + v_package.bonus_credits, 1, v_purchase.id, p_user);
  return billing.checkout_of(v_purchase, false);
end;
$$;
comment on function billing.begin_gift_checkout(p_user uuid, p_package_id text, p_request_key text, p_code_id uuid, p_code_hash text) is 'A pending gift purchase and its pending code (p_code_hash: the SHA-256 of the code derived from p_code_id); the same request key again answers the same purchase.';
revoke execute on function billing.begin_gift_checkout(p_user uuid, p_package_id text, p_request_key text, p_code_id uuid, p_code_hash text) from public, anon, authenticated;
grant execute on function billing.begin_gift_checkout(p_user uuid, p_package_id text, p_request_key text, p_code_id uuid, p_code_hash text) to service_role;

-- The failed-guess count is read at the start of a redemption and a refusal is recorded after its
-- work rolled back (run_code_request): without a lock, requests in flight together all read the
-- same count. run_code_request takes these before the redemption, for the whole transaction, so
-- a caller's (and an address's) redemptions count and record one after another. User first.
create or replace function billing.lock_code_guesses(p_user uuid, p_address_hash text) returns void
language plpgsql
set search_path = ''
as $$
begin
  perform pg_advisory_xact_lock(hashtextextended('code-guesses:user:' || p_user, 0));
  if p_address_hash is not null then
    perform pg_advisory_xact_lock(hashtextextended('code-guesses:address:' || p_address_hash, 0));
  end if;
end;
$$;
comment on function billing.lock_code_guesses(p_user uuid, p_address_hash text) is 'Internal: serialises a user''s and a client address''s code redemptions until the transaction ends, so the failed-guess limits hold under concurrency.';
revoke execute on function billing.lock_code_guesses(p_user uuid, p_address_hash text) from public;

-- Whether an admin (`p_inviter`, not the owner) brought the student into `p_org` (their accepted
-- invitation), or invited the address (`p_email`) a code would name: what an admin could do for
-- a second account of their own under an unrelated address.
create or replace function billing.recruited_by(p_org uuid, p_inviter uuid, p_student uuid, p_email text) returns boolean
language sql stable
set search_path = ''
as $$
  -- The owner's own wallet is theirs to give: the rule is for admins acting for them.
  select not exists (select 1 from billing.org_members m where m.org_id = p_org and m.user_id = p_inviter
                     and m.role = 'owner' and m.active)
    and exists (select 1 from billing.org_invitations i
                 where i.org_id = p_org and i.invited_by = p_inviter
                   and ((p_student is not null and i.answered_by = p_student and i.status = 'accepted')
                        or (p_email is not null and billing.mailbox(i.email) = billing.mailbox(p_email))))
$$;
comment on function billing.recruited_by(p_org uuid, p_inviter uuid, p_student uuid, p_email text) is 'Internal: whether p_inviter, an admin who is not the owner, invited this student (accepted) or this address into the organisation.';
revoke execute on function billing.recruited_by(p_org uuid, p_inviter uuid, p_student uuid, p_email text) from public;

create or replace function billing.redeem_code(p_user uuid, p_code_hash text, p_address_hash text,
  p_address_limit integer default null) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_code billing.codes;
  v_prior billing.code_redemptions;
  v_scope text;
  v_failed integer;
  v_oldest timestamptz;
  v_limit integer;
  v_amount numeric(38, 18);
  v_escrow billing.accounts;
  v_own bigint;
  v_transfer bigint;
  v_lot_expiry timestamptz;
  v_bal billing.balance;
  v_answer jsonb;
begin
  -- Guessing stops here, counted from the audit (no Redis needed), before any code is looked up,
  -- under lock_code_guesses: run_code_request took it already, so that it also covers the refusal's
  -- record; taking it again is a no-op there and guards any other caller.
  perform billing.lock_code_guesses(p_user, p_address_hash);
  -- Many people may share an address (a school's network): its limit is the deployment's choice.
  foreach v_scope in array array['user', 'address'] loop
    continue when v_scope = 'address' and p_address_hash is null;
    select count(*), min(x.created_at) into v_failed, v_oldest from billing.code_attempts x
    where x.outcome = 'CODE_NOT_FOUND' and x.created_at > now() - interval '1 hour'
      and case v_scope when 'user' then x.user_id = p_user else x.address_hash = p_address_hash end;
    -- The failed guesses allowed per rolling hour before every attempt is refused.
    v_limit := coalesce(case v_scope when 'address' then p_address_limit end, case v_scope when 'user' then 10 else 30 end);
    if v_failed >= v_limit then
      perform billing.raise_error('CODE_ATTEMPTS_LIMIT', jsonb_build_object('scope', v_scope, 'window', '1 hour',
        'retry_at', billing.json_time(v_oldest + interval '1 hour')));
    end if;
  end loop;

  -- The code's row lock serialises its redemptions: cap, budget and one-per-account hold exactly.
  select * into v_code from billing.codes c where c.code_hash = p_code_hash for update;
  if not found then
    perform billing.raise_error('CODE_NOT_FOUND', '{}');
  end if;
  select * into v_prior from billing.code_redemptions r where r.code_id = v_code.id and r.user_id = p_user;
  if found then
    insert into billing.code_attempts (user_id, hash_prefix, address_hash, outcome, code_id)
    values (p_user, left(p_code_hash, 12), p_address_hash, 'repeated', v_code.id);
    return v_prior.answer;
  end if;
  -- Someone else's sponsor code does not exist for this caller. An address counts once its owner
  -- confirmed it: where a project lets people in before that, anyone could register it.
  if v_code.kind = 'sponsor' and v_code.for_user is distinct from p_user
     and not exists (select 1 from auth.users u where u.id = p_user and billing.ascii_lower(u.email) = v_code.for_email
                     and u.email_confirmed_at is not null) then
    perform billing.raise_error('CODE_NOT_FOUND', '{}');
  end if;
  if v_code.status <> 'active' then
    perform billing.raise_error('CODE_NOT_REDEEMABLE', jsonb_build_object('reason',
      case v_code.status when 'redeemed' then 'already redeemed' when 'pending' then 'not paid yet' else v_code.status end));
  elsif now() < v_code.valid_from then
    perform billing.raise_error('CODE_NOT_REDEEMABLE', jsonb_build_object('reason', 'not yet valid',
      'valid_from', billing.json_time(v_code.valid_from)));
  elsif v_code.valid_until <= now() then
    perform billing.raise_error('CODE_NOT_REDEEMABLE', jsonb_build_object('reason', 'expired'));
  end if;

  if v_code.kind = 'sponsor' then
    -- A code speaks for its issuer only while they are an owner or admin in good standing (as an
    -- invitation does); and it funds a student: an owner or admin spends their own credits, never
    -- the wallet's.
    if not billing.speaks_for_org(v_code.org_id, v_code.created_by) then
      perform billing.raise_error('CODE_NOT_REDEEMABLE', jsonb_build_object('reason', 'revoked'));
    elsif billing.is_org_admin(v_code.org_id, p_user) then
      perform billing.raise_error('CODE_NOT_REDEEMABLE', jsonb_build_object('reason', 'for students only'));
    elsif billing.same_person(v_code.created_by, p_user) or billing.recruited_by(v_code.org_id, v_code.created_by, p_user, null) then
      perform billing.raise_error('CODE_NOT_REDEEMABLE', jsonb_build_object('reason', 'not for its issuer'));
    elsif not billing.is_org_member(v_code.org_id, p_user) then
      -- Only a current member: an invitee joins first; someone removed no longer can.
      perform billing.raise_error('CODE_NOT_REDEEMABLE', jsonb_build_object('reason', 'members only'));
    end if;
  end if;
  v_own := billing.ensure_user_account(p_user);
  if v_code.kind = 'promo' then
    v_amount := v_code.credits;
    if v_code.redeemed_count >= v_code.max_redemptions or v_code.redeemed_credits + v_amount > v_code.budget then
      perform billing.raise_error('CODE_EXHAUSTED', '{}');
    end if;
    v_lot_expiry := coalesce(v_code.lot_expires_at, now() + v_code.lot_expires_after);
    if v_lot_expiry <= now() then
      perform billing.raise_error('CODE_NOT_REDEEMABLE', jsonb_build_object('reason', 'expired'));
    end if;
    v_transfer := (billing.post_user_transfer(p_user, 1, 'credit', v_amount, 'promo_grant', 'promotions',
      'code:' || v_code.id || ':' || p_user, null, null, jsonb_build_object('code_id', v_code.id), null,
      jsonb_strip_nulls(jsonb_build_object('category', 'promotional', 'expires_at', v_lot_expiry,
        'applies_to', to_jsonb(v_code.applies_to), 'origin', 'promo_code')))).transfer_id;
  else
    -- A gift or sponsor code gives what its escrow has: less after a refund; nothing while a
    -- dispute froze its credits (the dispute decides).
    perform 1 from billing.accounts a where a.id in (v_own, billing.code_escrow_id(v_code.id)) order by a.id for update;
    select * into v_escrow from billing.accounts a where a.id = billing.code_escrow_id(v_code.id);
    v_escrow := billing.settled(v_escrow);
    if v_escrow.held > 0 or v_escrow.frozen_lots then
      -- Not 'disputed': whoever redeems a gift need not learn that its buyer disputed the charge.
      perform billing.raise_error('CODE_NOT_REDEEMABLE', jsonb_build_object('reason', 'on hold'));
    elsif v_escrow.balance <= 0 then
      -- Emptied by its credits' expiry (billing.settled just ran it), or else by a refund.
      perform billing.raise_error('CODE_NOT_REDEEMABLE', jsonb_build_object('reason',
        case when exists (select 1 from billing.lots l where l.account_id = v_escrow.id and l.expires_at <= now())
             then 'expired' else 'refunded' end));
    end if;
    v_amount := v_escrow.balance;
    -- member_id names the student an organisation funded (sponsor codes), as for allowances.
    v_transfer := (billing.move_credits(v_escrow.id, v_own, v_amount, 'code_redemption', 'code:' || v_code.id,
      case when v_code.kind = 'sponsor' then p_user end,
      jsonb_build_object('code_id', v_code.id, 'kind', v_code.kind, 'org_id', v_code.org_id))).id;
  end if;

  update billing.codes c set redeemed_count = c.redeemed_count + 1, redeemed_credits = c.redeemed_credits + v_amount,
    status = case when c.kind = 'promo' then c.status else 'redeemed' end, updated_at = now()
  where c.id = v_code.id;
  v_bal := billing.balance_of(v_own);
  v_answer := jsonb_build_object('code_id', v_code.id, 'kind', v_code.kind, 'credits', trim_scale(v_amount)::text,
    'transfer_id', v_transfer::text, 'expires_at', billing.json_time(v_lot_expiry), 'org_id', v_code.org_id,
    'balance', trim_scale(v_bal.balance)::text, 'available', trim_scale(v_bal.available)::text,
    'redeemed_at', billing.json_time(now()));
  insert into billing.code_redemptions (code_id, user_id, credits, transfer_id, answer)
  values (v_code.id, p_user, v_amount, v_transfer, v_answer);
  insert into billing.code_attempts (user_id, hash_prefix, address_hash, outcome, code_id)
  values (p_user, left(p_code_hash, 12), p_address_hash, 'redeemed', v_code.id);
  return v_answer;
end;
$$;
comment on function billing.redeem_code(p_user uuid, p_code_hash text, p_address_hash text, p_address_limit integer) is 'Internal (POST /credits/codes/redeem through run_code_request): redeems a code for p_user under its row lock; the same user again answers the first redemption. p_address_limit: failed guesses an hour per address (default 30; a user''s are 10).';
revoke execute on function billing.redeem_code(p_user uuid, p_code_hash text, p_address_hash text, p_address_limit integer) from public;

-- A refused redemption rolls its work back; run_code_request records the attempt after that.
create or replace function billing.record_code_attempt(p_user uuid, p_args jsonb, p_outcome text) returns void
language sql
set search_path = ''
as $$
  insert into billing.code_attempts (user_id, hash_prefix, address_hash, outcome, code_id)
  select p_user, left(coalesce(p_args ->> 'code_hash', ''), 12), p_args ->> 'address_hash', p_outcome,
    (select c.id from billing.codes c where c.code_hash = p_args ->> 'code_hash'
       and (c.kind <> 'sponsor' or p_outcome <> 'CODE_NOT_FOUND'))
$$;
comment on function billing.record_code_attempt(p_user uuid, p_args jsonb, p_outcome text) is 'Internal: audits a refused redemption (a hash prefix, never the code).';
revoke execute on function billing.record_code_attempt(p_user uuid, p_args jsonb, p_outcome text) from public;

-- The audit is kept 180 days: long enough to look into a campaign's abuse, and the guess limits
-- read only its last hour.
create or replace function billing.delete_old_code_attempts(p_limit integer default 5000) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
begin
  delete from billing.code_attempts x
  where x.id = any (array(select y.id from billing.code_attempts y where y.created_at < now() - interval '180 days'
                          order by y.id limit p_limit));
  get diagnostics v_count = row_count;
  return v_count;
end;
$$;
comment on function billing.delete_old_code_attempts(p_limit integer) is 'pg_cron: deletes up to p_limit code attempts older than 180 days per run. Idempotent.';
revoke execute on function billing.delete_old_code_attempts(p_limit integer) from public, anon, authenticated;
grant execute on function billing.delete_old_code_attempts(p_limit integer) to service_role;

-- What codes did in each period [p_lo[i], p_hi[i]), for the reports, but for the promotional
-- credits spent (codes_report adds them from the rows; the reports from the roll-up's lots part).
-- The periods are in order and do not overlap (a report's series): each table is read once over
-- all of them, a row finding its period by binary search, not once per period.
create or replace function billing.codes_activity_over(p_lo timestamptz[], p_hi timestamptz[]) returns jsonb[]
language sql stable
set search_path = ''
as $$
  with b as (select x.n, x.lo, x.hi from unnest(p_lo, p_hi) with ordinality x(lo, hi, n)),
  redeemed as (
    select w.n, sum(r.credits) filter (where c.kind = 'promo') as promo_credits,
      count(*) filter (where c.kind = 'promo') as promo_redemptions, count(*) filter (where c.kind = 'gift') as gifts,
      sum(r.credits) filter (where c.kind = 'sponsor') as sponsor_credits
    from billing.code_redemptions r join billing.codes c on c.id = r.code_id
    cross join lateral (select width_bucket(r.redeemed_at, p_lo) as n) w
    where r.redeemed_at >= p_lo[1] and r.redeemed_at < p_hi[cardinality(p_hi)] and w.n > 0 and r.redeemed_at < p_hi[w.n]
    group by w.n
  ),
  gifts as (
    select w.n, count(*) as sales, sum(p.price_cents) as cents from billing.purchases p
    cross join lateral (select width_bucket(p.paid_at, p_lo) as n) w
    where p.gift and p.paid_at >= p_lo[1] and p.paid_at < p_hi[cardinality(p_hi)] and w.n > 0 and p.paid_at < p_hi[w.n]
    group by w.n
  ),
  issued as (
    select w.n, sum(c.credits) as credits from billing.codes c
    cross join lateral (select width_bucket(c.created_at, p_lo) as n) w
    where c.kind = 'sponsor' and c.created_at >= p_lo[1] and c.created_at < p_hi[cardinality(p_hi)] and w.n > 0
      and c.created_at < p_hi[w.n]
    group by w.n
  ),
  closed as (
    select w.n, count(*) as codes from billing.codes c
    cross join lateral (select width_bucket(c.updated_at, p_lo) as n) w
    where c.kind = 'sponsor' and c.status in ('revoked', 'void') and c.updated_at >= p_lo[1]
      and c.updated_at < p_hi[cardinality(p_hi)] and w.n > 0 and c.updated_at < p_hi[w.n]
    group by w.n
  )
  select coalesce(array_agg(jsonb_build_object(
      'promo_credits_granted', trim_scale(coalesce(r.promo_credits, 0))::text,
      'promo_redemptions', coalesce(r.promo_redemptions, 0),
      'gift_sales', coalesce(g.sales, 0),
      'gift_sales_cents', coalesce(g.cents, 0),
      'gifts_redeemed', coalesce(r.gifts, 0),
      'sponsor_credits_issued', trim_scale(coalesce(i.credits, 0))::text,
      'sponsor_credits_redeemed', trim_scale(coalesce(r.sponsor_credits, 0))::text,
      'sponsor_codes_closed', coalesce(k.codes, 0)) order by b.n), '{}')
  from b left join redeemed r on r.n = b.n left join gifts g on g.n = b.n left join issued i on i.n = b.n
  left join closed k on k.n = b.n
$$;
comment on function billing.codes_activity_over(p_lo timestamp with time zone[], p_hi timestamp with time zone[]) is 'Internal: codes_activity of each period [lo[i], hi[i]) (in order, not overlapping), each table read once.';
revoke execute on function billing.codes_activity_over(p_lo timestamp with time zone[], p_hi timestamp with time zone[]) from public;

-- What codes did in [p_from, p_to): the one period of codes_activity_over.
create or replace function billing.codes_activity(p_from timestamptz, p_to timestamptz) returns jsonb
language sql stable
set search_path = ''
as $$
  select (billing.codes_activity_over(array[p_from], array[p_to]))[1]
$$;
comment on function billing.codes_activity(p_from timestamptz, p_to timestamptz) is 'Internal: promo credits granted, gift sales, sponsor funding in [from, to) (codes_report less the promo credits used).';
revoke execute on function billing.codes_activity(p_from timestamptz, p_to timestamptz) from public;

-- What codes did in [p_from, p_to), from the rows: codes_activity and the promotional credits
-- their lots paid for.
create or replace function billing.codes_report(p_from timestamptz, p_to timestamptz) returns jsonb
language sql stable
set search_path = ''
as $$
  select billing.codes_activity(p_from, p_to) || jsonb_build_object('promo_credits_used',
    trim_scale(coalesce((select sum(a.amount) from billing.code_redemptions r
      join billing.codes c on c.id = r.code_id and c.kind = 'promo'
      join billing.lots l on l.grant_transfer_id = r.transfer_id and l.moved_from is null
      join billing.lot_allocations a on a.lot_id = l.id and a.kind in ('usage', 'hold_capture')
      where a.created_at >= p_from and a.created_at < p_to), 0))::text)
$$;
comment on function billing.codes_report(p_from timestamptz, p_to timestamptz) is 'Internal: promo credits granted and used, gift sales, sponsor funding in [from, to), from the rows.';
revoke execute on function billing.codes_report(p_from timestamptz, p_to timestamptz) from public;

-- What a gift's email needs: its code (made from the hash) goes to its buyer only.
create or replace function billing.get_gift_email(p_code uuid) returns table (code_hash text, credits numeric, email text)
language sql stable
security definer
set search_path = ''
as $$
  select c.code_hash, c.credits, u.email::text from billing.codes c join auth.users u on u.id = c.created_by
  where c.id = p_code and c.kind = 'gift' and c.status <> 'pending'
$$;
comment on function billing.get_gift_email(p_code uuid) is 'A paid gift''s code hash and credits, and its buyer''s address (the only recipient of its email); no row for anything else.';
revoke execute on function billing.get_gift_email(p_code uuid) from public;
grant execute on function billing.get_gift_email(p_code uuid) to service_role;

-- A gift purchase's code, as its buyer reads it.
create or replace function billing.get_purchase_gift(p_purchase uuid) returns table (id uuid, code_hash text, status text, credits numeric)
language sql stable
security definer
set search_path = ''
as $$
  select c.id, c.code_hash, c.status, c.credits from billing.codes c where c.purchase_id = p_purchase
$$;
comment on function billing.get_purchase_gift(p_purchase uuid) is 'The gift code a purchase made (its id, code hash, status and credits); no row for a purchase that is not a gift.';
revoke execute on function billing.get_purchase_gift(p_purchase uuid) from public;
grant execute on function billing.get_purchase_gift(p_purchase uuid) to service_role;

-- ============================================================ policies

create policy "Users can read their own redemptions" on billing.code_redemptions
  for select to authenticated using (user_id = (select auth.uid()));

-- ============================================================ references into this domain


alter table billing.accounts add constraint accounts_code_id_fkey foreign key (code_id) references billing.codes(id);

create unique index accounts_code_escrow on billing.accounts (code_id) where code_id is not null;
