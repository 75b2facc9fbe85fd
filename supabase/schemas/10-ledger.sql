-- The credit ledger: double-entry, append-only, exact decimals.
--
-- Money moves only through the SECURITY DEFINER functions below (EXECUTE for service_role
-- only). A transfer moves an amount from one account to another: it is the double entry (−amount
-- on from, +amount on to), so money is conserved by construction. Tracked accounts (users,
-- organisation wallets, allowances) carry a locked balance, a held amount and a version, and get
-- one entry per transfer that touches them, with balance_after and that version: their statement.
--
-- Platform accounts (purchases, usage_revenue, …) are the other side of every movement. They
-- are never locked or updated in place: serialising every debit in the system on one
-- usage_revenue row would cap throughput at one commit at a time. Their balance is derived from
-- the transfers (billing.platform_balances); they get no entries.
--
-- Debt: user accounts never go below zero through spending. Only reverse_credits (a refund or
-- dispute of credits already spent) may take a balance below zero; while it is negative every
-- debit and hold is refused (available < 0), and the next purchase pays the debt first simply
-- by adding to the negative balance.
--
-- One writer: billing.post_transfers alone inserts transfers, entries, lots and allocations and
-- changes balances, held amounts and versions (supabase/tests/10-ledger-one-writer.test.sql reads the
-- catalogue to prove it); every feature decides what moves and calls it. The functions callers
-- use are SECURITY DEFINER with an empty search_path and fully qualified names; EXECUTE is for
-- service_role only (the Edge Functions connect as the owner). Errors raise a stable token as the message with JSON detail; the
-- TypeScript side maps tokens to HTTP in one place (_shared/adapters/sql-errors.ts).
--
-- Concurrency: a user account row is locked (FOR UPDATE) before its balance is read, so
-- parallel debits serialise per account and can never overdraw. When a function needs an
-- account and one of its holds, it locks the account first, then the hold; no function locks
-- two user accounts, and if one ever must, it locks them in ascending id order. Idempotency
-- keys are checked again after the lock, so N parallel identical calls make one transfer.

-- ============================================================ types

create type billing.transfer_kind as enum (
  'purchase',          -- credits bought through Stripe Checkout
  'promo_grant',       -- bonus or promotional credits
  'adjustment',        -- a support correction by an admin
  'usage',             -- metered usage, priced from a rate card
  'debit',             -- a generic debit of a given amount
  'hold_capture',      -- the captured part of a hold
  'refund_reversal',   -- credits taken back after a Stripe refund
  'dispute_reversal',  -- credits taken back after a lost dispute
  'expiry',            -- credits that expired
  'allowance',         -- a wallet funds a member's allowance
  'allowance_sweep',   -- an allowance's rest returns to the wallet at the term's end
  'code_escrow',       -- an organisation's wallet sets credits aside for a sponsor code
  'code_redemption',   -- a gift or sponsor code's credits move to the account that redeemed it
  'code_return',       -- a revoked or expired sponsor code's credits return to the wallet
  'plan_grant',        -- a plan's included credits for a period (56-plans.sql)
  'plan_rollover',     -- plan credits carried into the next period (out of the old lot, into a new one)
  'void'               -- a charge given back by an admin: usage_revenue → the account that paid (45-corrections.sql)
);
comment on type billing.transfer_kind is 'Why money moved. Every transfer has exactly one.';

create type billing.balance as (
  balance numeric(38, 18),
  held numeric(38, 18),
  available numeric(38, 18)
);
comment on type billing.balance is 'A user account''s balance, its active holds, and what it may spend (balance − held).';

create type billing.transfer_result as (
  transfer_id bigint,
  amount numeric(38, 18),
  balance numeric(38, 18),
  held numeric(38, 18),
  available numeric(38, 18),
  replayed boolean
);
comment on type billing.transfer_result is 'What a money-moving function returns: the transfer and the account after it.';

create type billing.usage_result as (
  transfer_id bigint,
  charged numeric(38, 18),
  rate_card_version integer,
  balance numeric(38, 18),
  held numeric(38, 18),
  available numeric(38, 18),
  replayed boolean
);

-- What billing.price_usage answers. A named type, not OUT parameters: a function with OUT
-- parameters rebuilds its result's row type from its catalogue entry on every call, a
-- measurable share of pricing (bench/pricing.ts).
create type billing.usage_price as (
  rate_card_id bigint,
  rate_card_version integer,
  amount numeric
);
comment on type billing.usage_price is 'A usage event''s price: the rate card (id and version) and the amount in credits.';

create type billing.hold_result as (
  hold_id uuid,
  status text,
  amount numeric(38, 18),
  captured numeric(38, 18),
  released numeric(38, 18),
  transfer_id bigint,
  expires_at timestamptz,
  balance numeric(38, 18),
  held numeric(38, 18),
  available numeric(38, 18),
  replayed boolean
);

-- One movement for billing.post_transfers, the ledger's one writer. `lots` says how the tracked
-- sides' lots move; null for the usual: a debit draws from its lots in spending order, a credit
-- from a platform account opens a new lot, a credit from a tracked account (a move) arrives as
-- the lots its debit drew, each with its provenance. Otherwise, any of:
--   first       lot ids drawn before the spending order (a reversal takes its purchase's lots first)
--   return_to   [{lot_id, amount}]: the credit goes back into these lots (a void, a rollover's
--               credits brought back from breakage): negative allocations, no new lot
--   moved_from  the credit opens a lot with this lot's provenance and its share of the cost (a plan rollover)
--   category, priority, cost_cents, currency, purchase_id, expires_at: the new lot's, over the
--               defaults (billing.credit_expiry_policy; an adjustment never expires unless told)
create type billing.transfer_spec as (
  kind billing.transfer_kind,
  from_account_id bigint,
  to_account_id bigint,
  amount numeric,
  idempotency_key text,
  correlation_id text,
  reference text,
  metadata jsonb,
  rate_card_id bigint,
  hold_id uuid,
  member_id uuid,
  lots jsonb
);
comment on type billing.transfer_spec is 'A movement billing.post_transfers is asked to make (see the comment above it for lots).';

create type billing.held_change as (
  account_id bigint,
  delta numeric                                   -- + a hold placed or grown, − one captured, released, expired or shrunk
);
comment on type billing.held_change is 'A change of what an account''s holds reserve, made by billing.post_transfers.';

create type billing.posted_transfer as (
  transfer_id bigint,
  replayed boolean,                               -- a transfer with this key and kind was already written
  from_balance numeric(38, 18),                   -- the tracked sides' balances after it; null for a platform side or a replay
  to_balance numeric(38, 18)
);
comment on type billing.posted_transfer is 'What billing.post_transfers answers for each movement, in order.';

-- ============================================================ tables

create table billing.accounts (
  id bigint generated always as identity not null,
  user_id uuid,
  code text,
  balance numeric(38,18) default 0 not null,
  held numeric(38,18) default 0 not null,
  version bigint default 0 not null,
  caps integer default 0 not null,
  created_at timestamp with time zone default now() not null,
  low_balance_threshold numeric(38,18),
  low_balance_fired boolean default false not null,
  auto_recharge_below numeric(38,18),
  auto_recharge_armed boolean default true not null,
  org_id uuid,
  member_id uuid,
  orgs integer default 0 not null,
  next_expiry timestamp with time zone,
  code_id uuid,
  constraint accounts_held_not_negative check ((held >= (0)::numeric)),
  constraint accounts_low_balance_positive check (((low_balance_threshold is null) or (low_balance_threshold > (0)::numeric))),
  constraint accounts_member_of_org check (((member_id is null) or (org_id is not null))),
  constraint accounts_one_owner check ((num_nonnulls(user_id, code, org_id, code_id) = 1)),
  constraint accounts_platform_not_tracked check (((code is null) or ((balance = (0)::numeric) and (held = (0)::numeric) and (version = 0)))),
  constraint accounts_code_key unique (code),
  constraint accounts_pkey primary key (id),
  constraint accounts_user_id_key unique (user_id),
  constraint accounts_member_id_fkey foreign key (member_id) references auth.users(id),
  constraint accounts_user_id_fkey foreign key (user_id) references auth.users(id) on delete restrict
);
comment on table billing.accounts is 'One credit account per user (created on first use) plus platform accounts, the counterparties of every movement.';
comment on column billing.accounts.org_id is 'An organisation''s wallet (member_id null) or a member''s allowance account (member_id set).';
comment on column billing.accounts.code_id is 'A gift or sponsor code''s escrow: the credits it will give, tracked like a wallet until redeemed (billing.codes).';
comment on column billing.accounts.next_expiry is 'No later than the earliest expires_at of the account''s open lots (a lower bound, exact after each expiry run): spending expires due lots first when it has passed.';
alter table billing.accounts enable row level security;
grant select on table billing.accounts to authenticated;
grant select on table billing.accounts to service_role;

create unique index accounts_org_member on billing.accounts (org_id, member_id) nulls not distinct where org_id is not null;

create index accounts_allowances on billing.accounts (id) where member_id is not null;

create table billing.transfers (
  id bigint generated always as identity not null,
  kind billing.transfer_kind not null,
  from_account_id bigint not null,
  to_account_id bigint not null,
  amount numeric(38,18) not null,
  idempotency_key text not null,
  correlation_id text,
  reference text,
  rate_card_id bigint,
  hold_id uuid,
  metadata jsonb,
  created_at timestamp with time zone default now() not null,
  member_id uuid,
  constraint transfers_amount_positive check ((amount > (0)::numeric)),
  constraint transfers_distinct_accounts check ((from_account_id <> to_account_id)),
  constraint transfers_key_length check (((length(idempotency_key) >= 1) and (length(idempotency_key) <= 300))),
  constraint transfers_idempotency unique (idempotency_key, kind),
  constraint transfers_pkey primary key (id)
  -- No foreign keys to accounts: each would take a KEY SHARE lock on the platform account every
  -- transfer names, one row all writers share (a MultiXact per concurrent pair). Accounts are
  -- never deleted (accounts_never_deleted) and only the ledger's functions write transfers.
);
comment on table billing.transfers is 'Immutable. A movement of credits between two accounts; a correction is a new transfer.';
alter table billing.transfers enable row level security;
grant select on table billing.transfers to authenticated;
grant select on table billing.transfers to service_role;

-- The credit ledger is append-only and dated by insertion, so its heap is in created_at order:
-- a BRIN index finds a period's pages from a few kilobytes and costs writers next to nothing,
-- where a B-tree on a timestamp would put every insert on its rightmost page. autosummarize
-- keeps the unsummarised tail (which every BRIN scan reads) to the last few pages.
create index transfers_created_brin on billing.transfers using brin (created_at)
  with (pages_per_range = 32, autosummarize = on);

create index transfers_org_member on billing.transfers (member_id, created_at) where member_id is not null;

create table billing.entries (
  id bigint generated always as identity primary key,
  transfer_id bigint not null,                    -- no foreign key: written with its transfer, checked by the invariants
  account_id bigint not null,                     -- no foreign key: see transfers
  amount numeric(38, 18) not null,                -- signed: + credits the account, − debits it
  balance_after numeric(38, 18),                  -- user accounts only (see header)
  account_version bigint,                         -- user accounts only
  created_at timestamptz not null default now(),
  constraint entries_amount_nonzero check (amount <> 0),
  constraint entries_tracked_together check ((balance_after is null) = (account_version is null))
);
comment on table billing.entries is 'Immutable. One per tracked side of a transfer (user, organisation and allowance accounts), with the balance after it; platform accounts have none.';
alter table billing.entries enable row level security;
grant select on table billing.entries to authenticated;
grant select on table billing.entries to service_role;

-- User entries only: the platform side of every transfer would make this index's hottest page
-- a point of contention for all writers, and platform balances are summed, not paged.
create index entries_user_account on billing.entries (account_id, id desc) where balance_after is not null;

create index entries_transfer_id on billing.entries (transfer_id);

create index entries_created_brin on billing.entries using brin (created_at)
  with (pages_per_range = 32, autosummarize = on);

create table billing.holds (
  id uuid default gen_random_uuid() not null,
  account_id bigint not null,
  amount numeric(38,18) not null,
  status text default 'active'::text not null,
  purpose text default 'user'::text not null,
  captured_amount numeric(38,18),
  capture_transfer_id bigint,
  idempotency_key text not null,
  correlation_id text,
  metadata jsonb,
  expires_at timestamp with time zone not null,
  created_at timestamp with time zone default now() not null,
  finished_at timestamp with time zone,
  member_id uuid,
  constraint holds_amount_positive check ((amount > (0)::numeric)),
  constraint holds_captured_within check (((captured_amount is null) or ((captured_amount > (0)::numeric) and (captured_amount <= amount)))),
  constraint holds_finished check (((status = 'active'::text) = (finished_at is null))),
  constraint holds_purpose check ((purpose = any (array['user'::text, 'job'::text, 'ai'::text, 'dispute'::text]))),
  constraint holds_status check ((status = any (array['active'::text, 'captured'::text, 'released'::text, 'expired'::text]))),
  constraint holds_idempotency_key_key unique (idempotency_key),
  constraint holds_pkey primary key (id),
  constraint holds_account_id_fkey foreign key (account_id) references billing.accounts(id),
  constraint holds_capture_transfer_id_fkey foreign key (capture_transfer_id) references billing.transfers(id)
);
comment on table billing.holds is 'Two-phase spending: reserve → capture (all or part) or release. available = balance − active holds.';
alter table billing.holds enable row level security;
grant select on table billing.holds to authenticated;
grant select on table billing.holds to service_role;

create index holds_active_expiry on billing.holds (expires_at) where status = 'active';

create index holds_account on billing.holds (account_id, created_at desc);

-- ============================================================ functions

create or replace function billing.refuse_ledger_change() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  raise exception using errcode = 'P0001', message = 'LEDGER_IMMUTABLE',
    detail = json_build_object('table', tg_table_name, 'operation', tg_op)::text,
    hint = 'Ledger rows are never changed: record a correcting transfer instead.';
end;
$$;
comment on function billing.refuse_ledger_change() is 'Trigger: refuses UPDATE, DELETE and TRUNCATE on ledger tables, for every role including the owner.';
revoke execute on function billing.refuse_ledger_change() from public;

create or replace function billing.raise_error(p_token text, p_detail jsonb default '{}'::jsonb) returns void
language plpgsql
set search_path = ''
as $$
begin
  raise exception using errcode = 'P0001', message = p_token, detail = p_detail::text;
end;
$$;
comment on function billing.raise_error(p_token text, p_detail jsonb) is 'Raises a stable error token with structured detail.';
revoke execute on function billing.raise_error(p_token text, p_detail jsonb) from public;

create or replace function billing.check_amount(p_amount numeric) returns void
language plpgsql immutable
set search_path = ''
as $$
begin
  if p_amount is null or p_amount <= 0 or scale(p_amount) > 18 or p_amount >= 1e20 then
    perform billing.raise_error('INVALID_AMOUNT', jsonb_build_object('amount', p_amount::text,
      'rule', 'a positive decimal below 1e20 with at most 18 fractional digits'));
  end if;
end;
$$;
comment on function billing.check_amount(p_amount numeric) is 'Refuses amounts that are not positive, too large, or finer than 18 decimal places.';
revoke execute on function billing.check_amount(p_amount numeric) from public;

-- PL/pgSQL, not SQL, for this and the other helpers every money request calls: a SQL function
-- with a SET clause is never inlined, so each call would parse and plan its body again, where
-- PL/pgSQL keeps its plans for the session.
create or replace function billing.platform_account_id(p_code text) returns bigint
language plpgsql stable
set search_path = ''
as $$ begin return (select a.id from billing.accounts a where a.code = p_code); end $$;
comment on function billing.platform_account_id(p_code text) is 'The id of a platform account by its code.';
revoke execute on function billing.platform_account_id(p_code text) from public;

create or replace function billing.ensure_user_account(p_user uuid) returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_id bigint;
begin
  select a.id into v_id from billing.accounts a where a.user_id = p_user;
  if v_id is null then
    insert into billing.accounts (user_id) values (p_user) on conflict (user_id) do nothing returning id into v_id;
    if v_id is null then
      select a.id into v_id from billing.accounts a where a.user_id = p_user;
    end if;
  end if;
  return v_id;
end;
$$;
comment on function billing.ensure_user_account(p_user uuid) is 'The user''s account id, creating the account on first use.';
revoke execute on function billing.ensure_user_account(p_user uuid) from public;

create or replace function billing.expire_overdue_holds(p_account_id bigint) returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_count integer;
  v_total numeric(38, 18);
  v_caps integer;
  v_expired jsonb;
begin
  -- The account is locked first, as everywhere else, then its holds.
  select a.caps into v_caps from billing.accounts a where a.id = p_account_id for update;
  with expired as (
    update billing.holds h set status = 'expired', finished_at = now()
    where h.account_id = p_account_id and h.status = 'active' and h.expires_at <= now()
    returning h.amount, h.purpose, h.metadata ->> 'model' as model, h.created_at
  )
  select count(*), coalesce(sum(e.amount), 0),
         jsonb_agg(jsonb_build_object('amount', e.amount, 'model', e.model, 'at', e.created_at)) filter (where e.purpose <> 'dispute')
    into v_count, v_total, v_expired from expired e;
  if v_count > 0 then
    perform billing.post_transfers('{}', array[(p_account_id, -v_total)::billing.held_change]);
    perform billing.on_available_change(a) from billing.accounts a
    where a.id = p_account_id and (a.low_balance_threshold is not null or a.auto_recharge_below is not null);
    if v_caps > 0 then
      perform billing.return_cap_room(p_account_id, (x ->> 'amount')::numeric, x ->> 'model', (x ->> 'at')::timestamptz)
      from jsonb_array_elements(coalesce(v_expired, '[]')) x;
    end if;
  end if;
  return v_count;
end;
$$;
comment on function billing.expire_overdue_holds(p_account_id bigint) is 'Releases one account''s holds whose TTL has passed. Used by the spend path and the pg_cron sweep.';
revoke execute on function billing.expire_overdue_holds(p_account_id bigint) from public;

create or replace function billing.balance_of(p_account_id bigint)
returns billing.balance
language plpgsql
stable
set search_path = ''
as $$
declare
  v billing.balance;
begin
  -- As settle_account would leave it: overdue holds ended; once next_expiry has passed, due lots
  -- expired and the user's and jobs' holds given way until what is held fits in what is left (a
  -- dispute's hold stays whole, as fit_holds leaves it).
  select b.balance, b.held - b.given, b.balance - b.held + b.given
  from (select s.*, least(s.yielding, greatest(s.held - greatest(s.balance, 0), 0)) as given
        from (select a.balance - coalesce(x.due, 0) as balance, a.held - coalesce(o.overdue, 0) as held,
                coalesce(g.yielding, 0) as yielding
              from billing.accounts a
              left join lateral (
                select sum(h.amount) as overdue from billing.holds h
                where h.account_id = a.id and h.status = 'active' and h.expires_at <= now()
              ) o on a.held > 0
              left join lateral (
                select sum(l.remaining) as due from billing.lots l
                where l.account_id = a.id and l.open and not l.frozen and l.expires_at <= now()
              ) x on a.next_expiry <= now()
              left join lateral (
                select sum(h.amount) as yielding from billing.holds h
                where h.account_id = a.id and h.status = 'active' and h.expires_at > now() and h.purpose in ('user', 'job', 'ai')
              ) g on a.held > 0 and a.next_expiry <= now()
              where a.id = p_account_id) s) b
  into v;
  return v;
end
$$;
comment on function billing.balance_of(p_account_id bigint) is 'Balance, live held amount (holds past their TTL no longer count) and available.';
revoke execute on function billing.balance_of(p_account_id bigint) from public;
grant execute on function billing.balance_of(p_account_id bigint) to service_role;
grant execute on function billing.balance_of(p_account_id bigint) to authenticated;

create or replace function billing.debit_credits(
  p_user uuid,
  p_amount numeric,
  p_idempotency_key text,
  p_correlation_id text default null,
  p_reference text default null,
  p_metadata jsonb default null
) returns billing.transfer_result
language plpgsql
security definer
set search_path = ''
as $$
begin
  return billing.post_user_transfer(p_user, -1, 'spend', p_amount, 'debit', 'usage_revenue',
    p_idempotency_key, p_correlation_id, p_reference, p_metadata);
end
$$;
comment on function billing.debit_credits(p_user uuid, p_amount numeric, p_idempotency_key text, p_correlation_id text, p_reference text, p_metadata jsonb) is 'Spends a given amount. Refused with INSUFFICIENT_CREDITS when available < amount (including while in debt).';
revoke execute on function billing.debit_credits(p_user uuid, p_amount numeric, p_idempotency_key text, p_correlation_id text, p_reference text, p_metadata jsonb) from public;
grant execute on function billing.debit_credits(p_user uuid, p_amount numeric, p_idempotency_key text, p_correlation_id text, p_reference text, p_metadata jsonb) to service_role;

-- The price formula, the one place it is written: billing.price_usage (a single charge), the
-- usage batch and the rate-card dry run (billing.reprice_usage) all call it. Kinds are disjoint
-- (input excludes cached input, output excludes reasoning); each count times the card's credits
-- per unit of its kind (exact, worked out once per card: billing.rate_cards), summed, rounded once
-- to 18 places. A kind the card leaves null: cached input at the input price, reasoning at the
-- output price (the card's generated columns), images and audio unpriced: null when used, which
-- the callers refuse as UNPRICED_USAGE. Null counts of the optional kinds count as 0. Counts are
-- numeric so the dry run can price its summed counts.
create or replace function billing.usage_amount(p_input_tokens numeric, p_cached_input_tokens numeric,
  p_output_tokens numeric, p_reasoning_tokens numeric, p_images numeric, p_audio_seconds numeric,
  p_per_input numeric, p_per_cached_input numeric, p_per_output numeric, p_per_reasoning numeric,
  p_per_image numeric, p_per_audio_second numeric)
returns numeric
language plpgsql immutable
set search_path = ''
as $$
begin
  return round(p_input_tokens * p_per_input + coalesce(p_cached_input_tokens, 0) * p_per_cached_input
    + p_output_tokens * p_per_output + coalesce(p_reasoning_tokens, 0) * p_per_reasoning
    + case when coalesce(p_images, 0) = 0 then 0 else p_images * p_per_image end
    + case when coalesce(p_audio_seconds, 0) = 0 then 0 else p_audio_seconds * p_per_audio_second end, 18);
end
$$;
comment on function billing.usage_amount(p_input_tokens numeric, p_cached_input_tokens numeric, p_output_tokens numeric, p_reasoning_tokens numeric, p_images numeric, p_audio_seconds numeric, p_per_input numeric, p_per_cached_input numeric, p_per_output numeric, p_per_reasoning numeric, p_per_image numeric, p_per_audio_second numeric) is 'The price formula: usage counts by kind times a card''s credits per unit, rounded once to 18 places; null when a used kind is unpriced.';
revoke execute on function billing.usage_amount(p_input_tokens numeric, p_cached_input_tokens numeric, p_output_tokens numeric, p_reasoning_tokens numeric, p_images numeric, p_audio_seconds numeric, p_per_input numeric, p_per_cached_input numeric, p_per_output numeric, p_per_reasoning numeric, p_per_image numeric, p_per_audio_second numeric) from public;

-- The bounds every usage count must keep, one place for the single charge, the batch and the
-- dry run: input and output given, every count from 0 to 10^12 (an amount far past that would
-- overflow). Null optional counts count as 0.
create or replace function billing.usage_counts_valid(p_input_tokens bigint, p_output_tokens bigint,
  p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint)
returns boolean
language plpgsql immutable
set search_path = ''
as $$
begin
  return p_input_tokens is not null and p_output_tokens is not null
    and least(p_input_tokens, p_output_tokens, p_cached_input_tokens, p_reasoning_tokens, p_images, p_audio_seconds) >= 0
    and greatest(p_input_tokens, p_output_tokens, p_cached_input_tokens, p_reasoning_tokens, p_images, p_audio_seconds)
      <= 1000000000000;
end
$$;
comment on function billing.usage_counts_valid(p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) is 'Internal: whether usage counts are within bounds (input and output given, each from 0 to 10^12).';
revoke execute on function billing.usage_counts_valid(p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) from public;

-- One row, not a set: a caller assigns it (v := billing.quote_usage(…)) without a table
-- function's tuplestore. Every kind but input and output is optional (null counts as 0).
create or replace function billing.quote_usage(p_model text, p_input_tokens bigint, p_output_tokens bigint,
  p_cached_input_tokens bigint default 0, p_reasoning_tokens bigint default 0, p_images bigint default 0,
  p_audio_seconds bigint default 0)
returns billing.usage_price
language plpgsql stable
set search_path = ''
as $$
declare
  r billing.rate_cards;                           -- all nulls when the model has no card
begin
  select * into r
  from billing.rate_cards c
  where c.model = p_model and c.effective_from <= now()
  order by c.effective_from desc, c.version desc limit 1;
  if not billing.usage_counts_valid(p_input_tokens, p_output_tokens, p_cached_input_tokens, p_reasoning_tokens, p_images,
    p_audio_seconds) then
    return (r.id, r.version, null::numeric);
  end if;
  return (r.id, r.version, billing.usage_amount(p_input_tokens, p_cached_input_tokens, p_output_tokens, p_reasoning_tokens,
    p_images, p_audio_seconds, r.credits_per_input_token, r.credits_per_cached_input_token, r.credits_per_output_token,
    r.credits_per_reasoning_token, r.credits_per_image, r.credits_per_audio_second));
end;
$$;
comment on function billing.quote_usage(p_model text, p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) is 'Internal: usage by kind priced with the model''s current rate card, in credits; the amount is null when it cannot be priced (billing.price_usage says why).';
revoke execute on function billing.quote_usage(p_model text, p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) from public;

-- billing.quote_usage, or the refusal that says why it has no price.
create or replace function billing.price_usage(p_model text, p_input_tokens bigint, p_output_tokens bigint,
  p_cached_input_tokens bigint default 0, p_reasoning_tokens bigint default 0, p_images bigint default 0,
  p_audio_seconds bigint default 0)
returns billing.usage_price
language plpgsql stable
set search_path = ''
as $$
declare
  v billing.usage_price := billing.quote_usage(p_model, p_input_tokens, p_output_tokens, p_cached_input_tokens,
    p_reasoning_tokens, p_images, p_audio_seconds);
begin
  if v.amount is null then
    if not billing.usage_counts_valid(p_input_tokens, p_output_tokens, p_cached_input_tokens, p_reasoning_tokens, p_images,
      p_audio_seconds) then
      perform billing.raise_error('INVALID_TOKENS', jsonb_build_object('rule', 'integers from 0 to 10^12'));
    elsif v.rate_card_id is null then
      perform billing.raise_error('UNKNOWN_MODEL', '{}'); -- never the caller's text: DETAILs reach the Postgres log
    end if;
    perform billing.raise_error('UNPRICED_USAGE', jsonb_build_object('model', p_model,
      'kind', case when p_images > 0 and (select c.credits_per_image from billing.rate_cards c where c.id = v.rate_card_id) is null
        then 'images' else 'audio_seconds' end));
  end if;
  return v;
end;
$$;
comment on function billing.price_usage(p_model text, p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) is 'Prices usage by kind (tokens, images, audio seconds) with the model''s current rate card, in credits.';
revoke execute on function billing.price_usage(p_model text, p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) from public;
grant execute on function billing.price_usage(p_model text, p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) to service_role;

-- Metadata keys only the ledger writes: a correction or a report filters on them, so a caller's
-- metadata never carries them (the API refuses them; charge_usage drops them as well).
create or replace function billing.ledger_owned_keys() returns text[]
language plpgsql immutable
set search_path = ''
as $$
begin
  -- PL/pgSQL, not SQL: a SQL function with a SET clause is planned again on every call.
  return array['model', 'input_tokens', 'output_tokens', 'cached_input_tokens', 'reasoning_tokens', 'images',
    'audio_seconds', 'failed', 'failed_by', 'usage_source', 'ai_call_id', 'job_id', 'rate_card_version', 'reserved',
    'priced', 'unbilled', 'charged_at', 'request_hash', 'request_id', 'held_after'];
end
$$;
comment on function billing.ledger_owned_keys() is 'The usage metadata keys only the ledger writes (_shared/contract/credits.ts refuses the same list).';
revoke execute on function billing.ledger_owned_keys() from public;

-- What a usage charge records of what it paid for: the model and every kind (a dry run re-prices a
-- charge from them, a void and the summaries read them). One place for a single charge, the
-- usage path's common road and the batch.
create or replace function billing.usage_facts(p_model text, p_input_tokens bigint, p_output_tokens bigint,
  p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint)
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  return jsonb_build_object('model', p_model, 'input_tokens', p_input_tokens, 'output_tokens', p_output_tokens,
    'cached_input_tokens', coalesce(p_cached_input_tokens, 0), 'reasoning_tokens', coalesce(p_reasoning_tokens, 0),
    'images', coalesce(p_images, 0), 'audio_seconds', coalesce(p_audio_seconds, 0));
end
$$;
comment on function billing.usage_facts(p_model text, p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) is 'Internal: the model and usage counts by kind a usage charge records (null optional counts as 0).';
revoke execute on function billing.usage_facts(p_model text, p_input_tokens bigint, p_output_tokens bigint, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) from public;

create or replace function billing.charge_usage(
  p_user uuid,
  p_model text,
  p_input_tokens bigint,
  p_output_tokens bigint,
  p_idempotency_key text,
  p_correlation_id text default null,
  p_metadata jsonb default null,
  p_cached_input_tokens bigint default 0,
  p_reasoning_tokens bigint default 0,
  p_images bigint default 0,
  p_audio_seconds bigint default 0
) returns billing.usage_result
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_price record;
  v_result billing.transfer_result;
  v_bal billing.balance;
begin
  v_price := billing.price_usage(p_model, p_input_tokens, p_output_tokens, p_cached_input_tokens, p_reasoning_tokens,
    p_images, p_audio_seconds);
  if v_price.amount = 0 then
    -- Nothing to charge: no transfer is written.
    v_bal := billing.balance_of(billing.ensure_user_account(p_user));
    return (null, 0, v_price.rate_card_version, v_bal.balance, v_bal.held, v_bal.available, false)::billing.usage_result;
  end if;
  -- Every kind is recorded (the dry run re-prices a charge from them), over the caller's keys.
  v_result := billing.post_user_transfer(p_user, -1, 'spend', v_price.amount, 'usage', 'usage_revenue',
    p_idempotency_key, p_correlation_id, null,
    (coalesce(p_metadata, '{}'::jsonb) - billing.ledger_owned_keys()) || billing.usage_facts(p_model, p_input_tokens,
      p_output_tokens, p_cached_input_tokens, p_reasoning_tokens, p_images, p_audio_seconds),
    v_price.rate_card_id);
  return (v_result.transfer_id, v_result.amount, v_price.rate_card_version, v_result.balance, v_result.held,
          v_result.available, v_result.replayed)::billing.usage_result;
end;
$$;
comment on function billing.charge_usage(p_user uuid, p_model text, p_input_tokens bigint, p_output_tokens bigint, p_idempotency_key text, p_correlation_id text, p_metadata jsonb, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) is 'Prices model usage by kind from the rate card and debits it; the transfer records the rate card and every kind.';
revoke execute on function billing.charge_usage(p_user uuid, p_model text, p_input_tokens bigint, p_output_tokens bigint, p_idempotency_key text, p_correlation_id text, p_metadata jsonb, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) from public;
grant execute on function billing.charge_usage(p_user uuid, p_model text, p_input_tokens bigint, p_output_tokens bigint, p_idempotency_key text, p_correlation_id text, p_metadata jsonb, p_cached_input_tokens bigint, p_reasoning_tokens bigint, p_images bigint, p_audio_seconds bigint) to service_role;

create or replace function billing.hold_result_of(p_hold billing.holds, p_replayed boolean) returns billing.hold_result
language plpgsql stable
set search_path = ''
as $$
declare
  v_bal billing.balance := billing.balance_of(p_hold.account_id);
begin
  return (p_hold.id, p_hold.status, p_hold.amount, coalesce(p_hold.captured_amount, 0),
    case when p_hold.status = 'active' then 0 else p_hold.amount - coalesce(p_hold.captured_amount, 0) end,
    p_hold.capture_transfer_id, p_hold.expires_at, v_bal.balance, v_bal.held, v_bal.available, p_replayed)::billing.hold_result;
end;
$$;
revoke execute on function billing.hold_result_of(p_hold billing.holds, p_replayed boolean) from public;

create or replace function billing.reserve_hold(p_user uuid, p_amount numeric, p_idempotency_key text, p_ttl_seconds integer, p_purpose text, p_correlation_id text default null::text, p_metadata jsonb default null::jsonb)
returns billing.hold_result
language plpgsql
set search_path to ''
as $$
declare
  v_account billing.accounts;
  v_hold billing.holds;
begin
  perform billing.check_amount(p_amount);
  if p_ttl_seconds is null or p_ttl_seconds not between 1 and 86400 then
    perform billing.raise_error('INVALID_TTL', jsonb_build_object('rule', '1 to 86400 seconds'));
  end if;
  if p_idempotency_key is null or length(p_idempotency_key) not between 1 and 300 then
    perform billing.raise_error('IDEMPOTENCY_KEY_REQUIRED', jsonb_build_object('rule', '1 to 300 characters'));
  end if;
  select * into v_account from billing.accounts a where a.user_id = p_user for update;
  if not found then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount)::text, 'available', '0',
      'debt', false));
  end if;

  select * into v_hold from billing.holds h where h.idempotency_key = p_idempotency_key;
  if found then
    if (v_hold.account_id <> v_account.id and v_hold.member_id is distinct from p_user) or v_hold.amount <> p_amount
       or v_hold.purpose <> p_purpose then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', 'hold'));
    end if;
    return billing.hold_result_of(v_hold, true);
  end if;

  if v_account.orgs > 0 then
    v_account := billing.lock_spending_source(v_account, p_user, p_amount, p_metadata ->> 'model', p_idempotency_key, null);
  end if;
  if v_account.held > 0 or v_account.next_expiry <= now() then
    v_account := billing.settle_account(v_account.id);
  end if;
  if v_account.balance - v_account.held < p_amount then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object(
      'required', trim_scale(p_amount)::text, 'available', trim_scale(greatest(v_account.balance - v_account.held, 0))::text,
      'debt', v_account.balance < 0));
  end if;

  if v_account.caps > 0 and v_account.org_id is null then
    perform billing.charge_caps(v_account.id, p_amount, p_metadata ->> 'model');
  end if;
  v_hold := billing.place_hold(v_account.id, p_amount, p_idempotency_key, now() + make_interval(secs => p_ttl_seconds),
    p_purpose, p_correlation_id, p_metadata, case when v_account.org_id is not null then p_user end);
  return billing.hold_result_of(v_hold, false);
end;
$$;
comment on function billing.reserve_hold(p_user uuid, p_amount numeric, p_idempotency_key text, p_ttl_seconds integer, p_purpose text, p_correlation_id text, p_metadata jsonb) is 'Internal: reserves available credits as a hold of the given purpose (user or job), under the account lock.';
revoke execute on function billing.reserve_hold(p_user uuid, p_amount numeric, p_idempotency_key text, p_ttl_seconds integer, p_purpose text, p_correlation_id text, p_metadata jsonb) from public;

create or replace function billing.reserve_credits(
  p_user uuid,
  p_amount numeric,
  p_idempotency_key text,
  p_ttl_seconds integer default 900,
  p_correlation_id text default null,
  p_metadata jsonb default null
) returns billing.hold_result
language plpgsql
security definer
set search_path = ''
as $$
begin
  return billing.reserve_hold(p_user, p_amount, p_idempotency_key, p_ttl_seconds, 'user', p_correlation_id, p_metadata);
end
$$;
comment on function billing.reserve_credits(p_user uuid, p_amount numeric, p_idempotency_key text, p_ttl_seconds integer, p_correlation_id text, p_metadata jsonb) is 'Reserves credits for a while (default 15 min) as the user''s own hold: they stay in the balance but cannot be spent elsewhere.';
revoke execute on function billing.reserve_credits(p_user uuid, p_amount numeric, p_idempotency_key text, p_ttl_seconds integer, p_correlation_id text, p_metadata jsonb) from public;
grant execute on function billing.reserve_credits(p_user uuid, p_amount numeric, p_idempotency_key text, p_ttl_seconds integer, p_correlation_id text, p_metadata jsonb) to service_role;

create or replace function billing.lock_hold(p_user uuid, p_hold_id uuid) returns billing.holds
language plpgsql
set search_path = ''
as $$
declare
  v_account_id bigint;
  v_hold billing.holds;
begin
  select h.account_id into v_account_id from billing.holds h
  join billing.accounts a on a.id = h.account_id
  where h.id = p_hold_id and (p_user is null or a.user_id = p_user
    or (h.member_id = p_user and exists (select 1 from billing.org_members m
                                         where m.org_id = a.org_id and m.user_id = p_user and m.active)));
  if v_account_id is null then
    perform billing.raise_error('HOLD_NOT_FOUND', jsonb_build_object('hold_id', p_hold_id));
  end if;
  perform 1 from billing.accounts a where a.id = v_account_id for update;
  select * into v_hold from billing.holds h where h.id = p_hold_id for update;
  if p_user is not null and v_hold.purpose <> 'user' then
    perform billing.raise_error('HOLD_NOT_USER_MANAGED', jsonb_build_object('hold_id', p_hold_id, 'purpose', v_hold.purpose));
  end if;
  return v_hold;
end;
$$;
revoke execute on function billing.lock_hold(p_user uuid, p_hold_id uuid) from public;

create or replace function billing.capture_hold(p_user uuid, p_hold_id uuid, p_amount numeric DEFAULT NULL::numeric, p_correlation_id text DEFAULT NULL::text,
  p_metadata jsonb DEFAULT NULL::jsonb)
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
  perform billing.post_transfers('{}', array[(v_hold.account_id, -v_hold.amount)::billing.held_change]);
  select a.user_id into v_user from billing.accounts a where a.id = v_hold.account_id;
  v_transfer := billing.post_user_transfer(coalesce(v_user, v_hold.member_id), -1, 'capture', v_capture, 'hold_capture',
    'usage_revenue', 'hold:' || p_hold_id::text, coalesce(p_correlation_id, v_hold.correlation_id), null, p_metadata, null, p_hold_id,
    p_account_id => v_hold.account_id);
  update billing.holds h set status = 'captured', captured_amount = v_capture, capture_transfer_id = v_transfer.transfer_id,
    finished_at = now()
  where h.id = p_hold_id returning * into v_hold;
  perform billing.return_hold_cap_room(v_hold, v_hold.amount - v_capture);
  return billing.hold_result_of(v_hold, false);
end;
$function$;
comment on function billing.capture_hold(p_user uuid, p_hold_id uuid, p_amount numeric, p_correlation_id text, p_metadata jsonb) is 'Spends all or part of an active hold and releases the rest; p_metadata (the gateway''s facts of a call, never a caller''s) goes on the capture. Capturing a captured hold again replays the result.';
revoke execute on function billing.capture_hold(p_user uuid, p_hold_id uuid, p_amount numeric, p_correlation_id text, p_metadata jsonb) from public;
grant execute on function billing.capture_hold(p_user uuid, p_hold_id uuid, p_amount numeric, p_correlation_id text, p_metadata jsonb) to service_role;

-- Ends a server's hold at a price worked out after the work (a job's usage, an AI call's): the
-- hold pays what it can and the rest of it is released; should the price pass the hold, the
-- excess is charged from what is available, never into debt, and what cannot be charged is
-- recorded (`unbilled`) on that transfer. The caller holds the account lock and has settled the
-- hold (an ended hold captures nothing). `p_capture_facts` go on the capture, `p_overage_facts`
-- on the excess; `p_key` is the excess's idempotency key, `p_correlation` both transfers'.
create or replace function billing.charge_hold_at(p_hold_id uuid, p_user uuid, p_amount numeric, p_rate_card_id bigint,
  p_key text, p_correlation text, p_capture_facts jsonb, p_overage_facts jsonb,
  out captured numeric, out overage numeric, out transfer_id bigint)
language plpgsql
set search_path = ''
as $$
declare
  v_hold billing.holds;
  v_available numeric;
  v_after billing.hold_result;
  v_excess billing.transfer_result;
begin
  select * into v_hold from billing.holds h where h.id = p_hold_id;
  captured := 0;
  overage := 0;
  if p_amount > 0 and v_hold.status = 'active' then
    captured := least(p_amount, v_hold.amount);
    v_after := billing.capture_hold(null, p_hold_id, captured, p_correlation, p_capture_facts);
    transfer_id := v_after.transfer_id;
    v_available := v_after.available;
  elsif v_hold.status = 'active' then
    perform billing.release_hold(null, p_hold_id);
  end if;
  if p_amount > captured then
    v_available := coalesce(v_available, (billing.balance_of(v_hold.account_id)).available);
    overage := least(p_amount - captured, greatest(v_available, 0));
    if overage > 0 then
      v_excess := billing.post_user_transfer(p_user, -1, 'capture', overage, 'usage', 'usage_revenue', p_key,
        p_correlation, null,
        p_overage_facts || jsonb_build_object('reserved', trim_scale(v_hold.amount)::text,
          'priced', trim_scale(p_amount)::text, 'unbilled', trim_scale(p_amount - captured - overage)::text),
        p_rate_card_id, p_account_id => v_hold.account_id);
      transfer_id := coalesce(transfer_id, v_excess.transfer_id);
    end if;
  end if;
end;
$$;
comment on function billing.charge_hold_at(p_hold_id uuid, p_user uuid, p_amount numeric, p_rate_card_id bigint, p_key text, p_correlation text, p_capture_facts jsonb, p_overage_facts jsonb, out captured numeric, out overage numeric, out transfer_id bigint) is 'Internal: ends a job''s or an AI call''s hold at a price worked out after the work: captured from the hold, any excess from what is available (never into debt), the rest released.';
revoke execute on function billing.charge_hold_at(p_hold_id uuid, p_user uuid, p_amount numeric, p_rate_card_id bigint, p_key text, p_correlation text, p_capture_facts jsonb, p_overage_facts jsonb, out captured numeric, out overage numeric, out transfer_id bigint) from public;

create or replace function billing.release_hold(p_user uuid, p_hold_id uuid) returns billing.hold_result
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_hold billing.holds := billing.lock_hold(p_user, p_hold_id);
begin
  if v_hold.status = 'captured' then
    perform billing.raise_error('HOLD_ALREADY_CAPTURED', jsonb_build_object('hold_id', p_hold_id, 'captured', v_hold.captured_amount::text));
  end if;
  if v_hold.status <> 'active' then
    return billing.hold_result_of(v_hold, true); -- released or expired: nothing left to release
  end if;
  perform billing.post_transfers('{}', array[(v_hold.account_id, -v_hold.amount)::billing.held_change]);
  update billing.holds h set status = 'released', finished_at = now() where h.id = p_hold_id returning * into v_hold;
  perform billing.return_hold_cap_room(v_hold, v_hold.amount);
  perform billing.on_available_change(a) from billing.accounts a
  where a.id = v_hold.account_id and (a.low_balance_threshold is not null or a.auto_recharge_below is not null);
  return billing.hold_result_of(v_hold, false);
end;
$$;
comment on function billing.release_hold(p_user uuid, p_hold_id uuid) is 'Releases an active hold in full. Releasing a released or expired hold is a no-op.';
revoke execute on function billing.release_hold(p_user uuid, p_hold_id uuid) from public;
grant execute on function billing.release_hold(p_user uuid, p_hold_id uuid) to service_role;

create or replace function billing.release_expired_holds(p_limit integer default 500) returns integer
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
    where h.status = 'active' and h.expires_at <= now()
    order by h.account_id limit p_limit
  loop
    v_total := v_total + billing.expire_overdue_holds(v_account_id);
  end loop;
  return v_total;
end;
$$;
comment on function billing.release_expired_holds(p_limit integer) is 'pg_cron: releases holds past their TTL, for at most p_limit accounts per run. Idempotent.';
revoke execute on function billing.release_expired_holds(p_limit integer) from public;
grant execute on function billing.release_expired_holds(p_limit integer) to service_role;

create or replace function billing.get_balance(p_user uuid)
returns table (balance numeric(38, 18), held numeric(38, 18), available numeric(38, 18),
               expiring_amount numeric(38, 18), expiring_at timestamptz)
language plpgsql stable
security definer
set search_path = ''
as $$
begin
  return query
  select coalesce(b.balance, 0), coalesce(b.held, 0), coalesce(b.available, 0), x.amount, x.expires_at
  from (select 1) one
  -- balance_of in FROM, not `(balance_of(…)).*`, which would run it once per column.
  left join lateral (select a.id, y.* from billing.accounts a cross join lateral billing.balance_of(a.id) y
                     where a.user_id = p_user) b on true
  -- The next expiry: the earliest date any open lot expires, and how much expires then.
  left join lateral (select l.expires_at, sum(l.remaining) as amount from billing.lots l
                     where l.account_id = b.id and l.open and l.expires_at is not null
                     group by l.expires_at order by l.expires_at limit 1) x on true;
end
$$;
comment on function billing.get_balance(p_user uuid) is 'A user''s balance, held and available, and the next expiry (amount, time); zeros when the user has no account yet.';
revoke execute on function billing.get_balance(p_user uuid) from public;
grant execute on function billing.get_balance(p_user uuid) to service_role;

create or replace function billing.get_ledger(
  p_user uuid, p_before_id bigint default null, p_limit integer default 50,
  p_from timestamptz default null, p_to timestamptz default null
) returns table (id bigint, created_at timestamptz, kind billing.transfer_kind, amount numeric,
                 balance_after numeric, correlation_id text, reference text, lots jsonb, paid_by_org uuid, model text)
language sql
stable
security definer
set search_path = ''
as $$
  select x.id, x.created_at, x.kind, x.amount, x.balance_after, x.correlation_id, x.reference, x.lots, x.paid_by_org,
    x.model
  from (
    select e.id, e.created_at, t.kind, e.amount, e.balance_after, t.correlation_id, t.reference,
      -- The lot a grant created, or the lots a debit drew from.
      coalesce(g.lots, x.lots, '[]') as lots, null::uuid as paid_by_org,
      -- What a charge paid for: the model the ledger recorded (usage, a gateway call, a job's hold).
      case when t.kind in ('usage', 'hold_capture') then coalesce(t.metadata ->> 'model',
        (select h.metadata ->> 'model' from billing.holds h where h.id = t.hold_id)) end as model
    from billing.accounts a
    join billing.entries e on e.account_id = a.id
    join billing.transfers t on t.id = e.transfer_id
    left join lateral (select jsonb_build_array(jsonb_build_object('lot_id', l.id::text, 'amount', trim_scale(l.amount)::text)) as lots
                       from billing.lots l where l.grant_transfer_id = t.id) g on e.amount > 0
    left join lateral (select jsonb_agg(jsonb_build_object('lot_id', la.lot_id::text, 'amount', trim_scale(la.amount)::text)
                                        order by la.lot_id) as lots
                       from billing.lot_allocations la where la.transfer_id = t.id) x on e.amount < 0
    where a.user_id = p_user
      and e.balance_after is not null -- always true for user entries; lets the partial index serve
      and (p_before_id is null or e.id < p_before_id)
      and (p_from is null or e.created_at >= p_from)
      and (p_to is null or e.created_at < p_to)
    union all
    -- Spending an organisation paid for the member (transfers_org_member serves member_id).
    select e.id, e.created_at, t.kind, e.amount, null, t.correlation_id, t.reference, '[]'::jsonb, a.org_id,
      case when t.kind in ('usage', 'hold_capture') then coalesce(t.metadata ->> 'model',
        (select h.metadata ->> 'model' from billing.holds h where h.id = t.hold_id)) end
    from billing.transfers t
    join billing.entries e on e.transfer_id = t.id and e.amount < 0
    join billing.accounts a on a.id = e.account_id and a.org_id is not null
    where t.member_id = p_user and t.kind in ('usage', 'debit', 'hold_capture')
      and (p_before_id is null or e.id < p_before_id)
      and (p_from is null or e.created_at >= p_from)
      and (p_to is null or e.created_at < p_to)
  ) x
  order by x.id desc
  limit least(greatest(p_limit, 1), 1000)
$$;
comment on function billing.get_ledger(uuid, bigint, integer, timestamptz, timestamptz)
  is 'A user''s entries in [p_from, p_to), newest first, keyset-paginated by entry id, each with the lots it created or drew from and, for a charge, the model it paid for; charges an organisation paid for the user are included with paid_by_org and no balance_after.';
revoke execute on function billing.get_ledger(uuid, bigint, integer, timestamptz, timestamptz) from public, anon, authenticated;
grant execute on function billing.get_ledger(uuid, bigint, integer, timestamptz, timestamptz) to service_role;

-- A batch event's ledger key: the caller's event id within its user's namespace (at most 300
-- characters: a long id is hashed, as billing.scoped_key does).
create or replace function billing.usage_event_key(p_user uuid, p_event_id text) returns text
language plpgsql immutable
set search_path = ''
as $$
begin
  return billing.scoped_key('usage-event:' || p_user::text || ':', p_event_id);
end
$$;
comment on function billing.usage_event_key(p_user uuid, p_event_id text) is 'Internal: the idempotency key of a batch usage event (user + event id): two users'' events never share one.';
revoke execute on function billing.usage_event_key(p_user uuid, p_event_id text) from public;

create or replace function billing.charge_usage_batch(p_events jsonb)
returns jsonb
language plpgsql
security definer
set search_path to ''
as $$
declare
  v_platform bigint := billing.platform_account_id('usage_revenue');
  v_count integer := jsonb_array_length(p_events);
  e record;
  v_user uuid;
  v_available numeric(38, 18);
  v_outcomes jsonb[] := array_fill(null::jsonb, array[v_count]);
  v_users uuid[];
  -- accepted events, in order: where their outcome goes, what they move, what was written
  a_ord integer[] := '{}'::integer[];
  a_account bigint[] := '{}'::bigint[];
  a_amount numeric[] := '{}'::numeric[];
  a_card bigint[] := '{}'::bigint[];
  a_posted billing.posted_transfer[];
  -- repeats within the batch, and their first occurrences
  d_ord integer[] := '{}'::integer[];
  d_first integer[] := '{}'::integer[];
  v_cap jsonb;
begin
  if v_count > 1000 then
    perform billing.raise_error('BATCH_TOO_LARGE', jsonb_build_object('max', 1000, 'given', v_count));
  end if;

  -- One lock per account for the whole batch, in ascending id order (no deadlocks): the users'
  -- own accounts, then the organisation accounts that may pay for members (after, as everywhere).
  v_users := array(select distinct (x ->> 'user_id')::uuid from jsonb_array_elements(p_events) x);
  perform 1 from billing.accounts a where a.user_id = any(v_users) order by a.id for update;
  if exists (select 1 from billing.accounts a where a.user_id = any(v_users) and a.orgs > 0) then
    perform 1 from billing.accounts a
    join billing.org_members m on m.org_id = a.org_id and m.active and m.role = 'member'
      and (a.member_id is null or a.member_id = m.user_id)
    where m.user_id in (select u.user_id from billing.accounts u where u.user_id = any(v_users) and u.orgs > 0)
    order by a.id for update of a;
  end if;
  perform billing.settle_account(a.id) from billing.accounts a
  where a.user_id = any(v_users) and (a.held > 0 or a.next_expiry <= now());

  -- Greedy per user in event order: each event is applied if it still fits. Each is priced from
  -- its model's current rate card (null: a kind the card leaves unpriced), within the same bounds
  -- as price_usage (an event out of them is refused alone). Replays are found under the locks, so
  -- a concurrent batch with the same events has committed: an earlier batch already applied this
  -- event id for this user. Event ids are the caller's, one namespace per user
  -- (billing.usage_event_key): another user's event with the same id is another event, charged,
  -- and never told of the first. Within the batch, only the first occurrence of a user's id counts.
  for e in
    with ev as (
      select x.ord::integer as ord, x.ev ->> 'event_id' as event_id, (x.ev ->> 'user_id')::uuid as user_id,
        x.ev ->> 'model' as model, (x.ev ->> 'input_tokens')::bigint as input_tokens,
        (x.ev ->> 'output_tokens')::bigint as output_tokens, (x.ev ->> 'occurred_at')::timestamptz as occurred_at,
        x.ev ->> 'correlation_id' as correlation_id,
        coalesce((x.ev ->> 'cached_input_tokens')::bigint, 0) as cached_input_tokens,
        coalesce((x.ev ->> 'reasoning_tokens')::bigint, 0) as reasoning_tokens,
        coalesce((x.ev ->> 'images')::bigint, 0) as images, coalesce((x.ev ->> 'audio_seconds')::bigint, 0) as audio_seconds
      from jsonb_array_elements(p_events) with ordinality as x(ev, ord)
    ), checked as (
      select ev.*, not billing.usage_counts_valid(ev.input_tokens, ev.output_tokens, ev.cached_input_tokens,
        ev.reasoning_tokens, ev.images, ev.audio_seconds) as invalid
      from ev
    ), cards as (
      select distinct on (rc.model) rc.* from billing.rate_cards rc
      where rc.model in (select ev.model from ev) and rc.effective_from <= now()
      order by rc.model, rc.effective_from desc, rc.version desc
    )
    select b.*, case when b.invalid then 'INVALID_TOKENS' end as error, r.id as rate_card_id,
      case when not b.invalid then billing.usage_amount(b.input_tokens, b.cached_input_tokens, b.output_tokens,
        b.reasoning_tokens, b.images, b.audio_seconds, r.credits_per_input_token, r.credits_per_cached_input_token,
        r.credits_per_output_token, r.credits_per_reasoning_token, r.credits_per_image, r.credits_per_audio_second) end as amount,
      a.id as account_id, coalesce(a.orgs > 0, false) as member, a.balance as acct_balance, a.held as acct_held,
      a.caps as acct_caps, t.id as existing_transfer, t.amount as existing_amount,
      min(b.ord) over (partition by b.user_id, b.event_id) as first_ord
    from checked b
    left join cards r on r.model = b.model
    left join billing.accounts a on a.user_id = b.user_id
    -- Lateral: one index probe per event, never a join over the whole ledger.
    left join lateral (select x.id, x.amount from billing.transfers x
                       where x.idempotency_key = billing.usage_event_key(b.user_id, b.event_id) and x.kind = 'usage') t on true
    order by b.user_id, b.ord
  loop
    if v_user is distinct from e.user_id then
      v_user := e.user_id;
      v_available := coalesce(e.acct_balance - e.acct_held, 0);
    end if;
    if e.error is not null then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'invalid', 'error', e.error);
    elsif e.rate_card_id is null then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'invalid', 'error', 'UNKNOWN_MODEL');
    elsif e.amount is null then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'invalid', 'error', 'UNPRICED_USAGE');
    elsif e.existing_transfer is not null then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'duplicate',
        'transfer_id', e.existing_transfer::text, 'charged', trim_scale(e.existing_amount)::text);
    elsif e.ord <> e.first_ord then
      -- A repeat within the batch reports what its first occurrence did (sorted by user, then
      -- order, the first was handled already when both name the same user).
      v_outcomes[e.ord] := coalesce(v_outcomes[e.first_ord], '{}'::jsonb)
        || jsonb_build_object('event_id', e.event_id, 'status', 'duplicate');
      d_ord := d_ord || e.ord;
      d_first := d_first || e.first_ord;
    elsif e.amount = 0 then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'applied', 'charged', '0', 'transfer_id', null);
    elsif e.member then
      -- A member of funding organisations: the spending order picks the wallet (the same path as
      -- /credits/usage, under the locks taken above).
      v_outcomes[e.ord] := billing.charge_member_event(e.user_id, e.model, e.input_tokens, e.output_tokens, e.event_id,
        e.correlation_id, e.occurred_at, e.cached_input_tokens, e.reasoning_tokens, e.images, e.audio_seconds);
    elsif e.account_id is null or v_available < e.amount then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'insufficient',
        'required', trim_scale(e.amount)::text, 'available', trim_scale(greatest(coalesce(v_available, 0), 0))::text);
    else
      -- Over a cap: refused alone, like a short event (take_cap_room counted nothing then).
      v_cap := case when e.acct_caps > 0 then billing.take_cap_room(e.account_id, e.amount, e.model) end;
    end if;
    if v_cap is not null then
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'cap_reached', 'cap', v_cap);
      v_cap := null;
    elsif v_outcomes[e.ord] is null then
      v_available := v_available - e.amount;
      -- Scalars only: appending to an array copies it, so a batch's movements are built once, below.
      a_ord := a_ord || e.ord;
      a_account := a_account || e.account_id;
      a_amount := a_amount || e.amount;
      a_card := a_card || e.rate_card_id;
      v_outcomes[e.ord] := jsonb_build_object('event_id', e.event_id, 'status', 'applied',
        'charged', trim_scale(e.amount)::text);
    end if;
  end loop;

  -- Each account's accepted events draw from its lots in event order.
  if cardinality(a_ord) > 0 then
    a_posted := billing.post_transfers(array(
      select ('usage', x.account_id, v_platform, x.amount, billing.usage_event_key((v.ev ->> 'user_id')::uuid, v.ev ->> 'event_id'),
        v.ev ->> 'correlation_id', null, billing.usage_facts(v.ev ->> 'model', (v.ev ->> 'input_tokens')::bigint,
          (v.ev ->> 'output_tokens')::bigint, (v.ev ->> 'cached_input_tokens')::bigint, (v.ev ->> 'reasoning_tokens')::bigint,
          (v.ev ->> 'images')::bigint, (v.ev ->> 'audio_seconds')::bigint)
          || jsonb_build_object('occurred_at', (v.ev ->> 'occurred_at')::timestamptz, 'event_id', v.ev ->> 'event_id'),
        x.rate_card_id, null, null, null)::billing.transfer_spec
      from unnest(a_ord, a_account, a_amount, a_card) with ordinality x(ord, account_id, amount, rate_card_id, n)
      cross join lateral (select p_events -> (x.ord - 1) as ev) v
      order by x.n));
    for i in 1 .. cardinality(a_ord) loop
      v_outcomes[a_ord[i]] := v_outcomes[a_ord[i]] || jsonb_build_object('transfer_id', (a_posted[i]).transfer_id::text,
        'balance', trim_scale((a_posted[i]).from_balance)::text);
    end loop;
    -- A repeat names what its first occurrence wrote.
    for i in 1 .. coalesce(cardinality(d_ord), 0) loop
      v_outcomes[d_ord[i]] := v_outcomes[d_first[i]] || jsonb_build_object('event_id', v_outcomes[d_ord[i]] ->> 'event_id',
        'status', 'duplicate');
    end loop;
  end if;

  return to_jsonb(v_outcomes);
end;
$$;
comment on function billing.charge_usage_batch(p_events jsonb) is 'Prices and debits up to 1,000 usage events in one transaction; outcomes (applied, duplicate, insufficient, invalid) in input order.';
revoke execute on function billing.charge_usage_batch(p_events jsonb) from public;
grant execute on function billing.charge_usage_batch(p_events jsonb) to service_role;

-- The ledger's one writer (TigerBeetle's create_transfers): a batch of movements in, one result
-- per movement out, in order, and the changes of what holds reserve. Only this function inserts
-- transfers, entries, lots and lot allocations and changes balances, held amounts and versions (supabase/tests/10-ledger-one-writer.test.sql
-- reads the catalogue to prove it). Features decide what moves: callers lock the tracked
-- accounts first (ascending id order when there are several) and make every refusal a person
-- can meet (available credits, caps, holds, standing) before calling it. It checks what must hold
-- for every movement and raises LEDGER_INVARIANT, a server error, when a caller got it wrong:
-- amounts positive, below 1e20, at most 18 places, between two accounts; no tracked balance
-- below zero except through a refund or dispute reversal (debt); a return to lots of exactly the
-- amount; a lot's remaining never below zero (lots_remaining_within).
--
-- Each tracked side gets an entry with its balance and version after the movement, in batch
-- order. Debits draw from lots (spending order, `first` before it) before credits open or refill
-- lots; a credit that pays a debt the account is in records that part as settled, not remaining.
-- A movement whose (idempotency_key, kind) is already written is a replay: nothing is written
-- for it; another movement under the same key and kind is refused (IDEMPOTENCY_KEY_REUSED).
create or replace function billing.post_transfers(p_transfers billing.transfer_spec[],
  p_held billing.held_change[] default '{}'::billing.held_change[])
returns billing.posted_transfer[]
language plpgsql
set search_path = ''
set plan_cache_mode = 'force_generic_plan'
as $$
declare
  v_one billing.transfer_spec;
  v_id bigint;
  v_written billing.transfers;
  v_balance numeric;
  v_version bigint;
  v_versions bigint[];
  v_ids bigint[];
  v_new bigint[];
  v_existing bigint[];
  v_reused text;
  v_ord integer[];
  v_account bigint[];
  v_delta numeric[];
  v_after numeric[];
  v_first bigint[];
  v_drawn integer;
  c record;
  v_lot jsonb;
  v_settled numeric;
  v_category text;
  v_policy billing.credit_expiry_policy;
begin
  -- What holds reserve (a hold is no transfer: it moves nothing until captured).
  if cardinality(p_held) > 0 then
    update billing.accounts a set held = a.held + d.delta
    from (select h.account_id, sum(h.delta) as delta from unnest(p_held) h group by h.account_id) d
    where a.id = d.account_id and a.code is null;
  end if;
  if cardinality(p_transfers) = 0 then
    return '{}'::billing.posted_transfer[];
  end if;

  -- A movement alone (nearly every call): its statements written for one row.
  if cardinality(p_transfers) = 1 then
    v_one := p_transfers[1];
    if (v_one.amount > 0 and scale(v_one.amount) <= 18 and v_one.amount < 1e20 and v_one.from_account_id <> v_one.to_account_id) is not true then
      perform billing.raise_error('LEDGER_INVARIANT',
        '{"rule": "a positive amount below 1e20 with at most 18 places, between two accounts"}');
    end if;
    insert into billing.transfers (kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id,
                                   reference, metadata, rate_card_id, hold_id, member_id)
    values (v_one.kind, v_one.from_account_id, v_one.to_account_id, v_one.amount, v_one.idempotency_key, v_one.correlation_id, v_one.reference,
            v_one.metadata, v_one.rate_card_id, v_one.hold_id, v_one.member_id)
    on conflict (idempotency_key, kind) do nothing
    returning id into v_id;
    if v_id is null then
      select * into v_written from billing.transfers x where x.idempotency_key = v_one.idempotency_key and x.kind = v_one.kind;
      if v_written.amount <> v_one.amount or v_written.from_account_id <> v_one.from_account_id
         or v_written.to_account_id <> v_one.to_account_id then
        perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', v_one.kind));
      end if;
      return array[(v_written.id, true, null, null)::billing.posted_transfer];
    end if;
    v_ids := array[v_id];
    v_new := v_ids;
    -- Each tracked side (a platform account is never updated: the filter finds no row).
    update billing.accounts a set balance = a.balance - v_one.amount, version = a.version + 1
    where a.id = v_one.from_account_id and a.code is null
    returning a.balance, a.version into v_balance, v_version;
    if found then
      v_ord := array[1]; v_account := array[v_one.from_account_id]; v_delta := array[-v_one.amount]; v_after := array[v_balance];
      v_versions := array[v_version];
    else
      v_ord := '{}'::integer[]; v_account := '{}'::bigint[]; v_delta := '{}'::numeric[]; v_after := '{}'::numeric[];
      v_versions := '{}'::bigint[];
    end if;
    update billing.accounts a set balance = a.balance + v_one.amount, version = a.version + 1
    where a.id = v_one.to_account_id and a.code is null
    returning a.balance, a.version into v_balance, v_version;
    if found then
      v_ord := v_ord || 1; v_account := v_account || v_one.to_account_id; v_delta := v_delta || v_one.amount;
      v_after := v_after || v_balance; v_versions := v_versions || v_version;
    end if;
    insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version)
    select v_id, e.account_id, e.delta, e.after, e.version
    from unnest(v_account, v_delta, v_after, v_versions) with ordinality e(account_id, delta, after, version, n)
    order by e.n;
  else
    if exists (select 1 from unnest(p_transfers) t
               where t.amount is null or t.amount <= 0 or scale(t.amount) > 18 or t.amount >= 1e20
                 or t.from_account_id is not distinct from t.to_account_id) then
      perform billing.raise_error('LEDGER_INVARIANT',
        '{"rule": "a positive amount below 1e20 with at most 18 places, between two accounts"}');
    end if;
    -- Ids in batch order, so transfer ids order the batch.
    v_ids := array(select nextval('billing.transfers_id_seq') from generate_subscripts(p_transfers, 1));
    with ins as (
      insert into billing.transfers (id, kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id,
                                     reference, metadata, rate_card_id, hold_id, member_id)
      overriding system value
      select v_ids[t.ord], t.kind, t.from_account_id, t.to_account_id, t.amount, t.idempotency_key, t.correlation_id,
        t.reference, t.metadata, t.rate_card_id, t.hold_id, t.member_id
      from unnest(p_transfers) with ordinality t(kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id, reference, metadata, rate_card_id, hold_id, member_id, lots, ord)
      order by t.ord
      on conflict (idempotency_key, kind) do nothing
      returning id
    )
    select array_agg(ins.id) into v_new from ins;

    if cardinality(v_new) is distinct from cardinality(p_transfers) then
      select array_agg(case when v_ids[t.ord] = any(coalesce(v_new, '{}')) then null else x.id end order by t.ord),
        min(t.kind::text) filter (where v_ids[t.ord] <> all(coalesce(v_new, '{}'))
          and (x.amount <> t.amount or x.from_account_id <> t.from_account_id or x.to_account_id <> t.to_account_id))
      into v_existing, v_reused
      from unnest(p_transfers) with ordinality t(kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id, reference, metadata, rate_card_id, hold_id, member_id, lots, ord)
      join billing.transfers x on x.idempotency_key = t.idempotency_key and x.kind = t.kind;
      if v_reused is not null then
        perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', v_reused));
      end if;
    end if;

    if v_new is not null then
      -- Balances and versions, then one entry per tracked side numbered back from them.
      with t as (
        select * from unnest(p_transfers) with ordinality t(kind, from_account_id, to_account_id, amount, idempotency_key, correlation_id, reference, metadata, rate_card_id, hold_id, member_id, lots, ord) where v_ids[t.ord] = any(v_new)
      ), legs as (
        select t.ord, t.from_account_id as account_id, -t.amount as delta from t
        union all
        select t.ord, t.to_account_id, t.amount from t
      ), u as (
        update billing.accounts a set balance = a.balance + d.delta, version = a.version + d.n
        from (select l.account_id, sum(l.delta) as delta, count(*) as n from legs l group by l.account_id) d
        where a.id = d.account_id and a.code is null
        returning a.id, a.balance, a.version
      ), e as (
        insert into billing.entries (transfer_id, account_id, amount, balance_after, account_version)
        select v_ids[l.ord], l.account_id, l.delta,
          u.balance - (sum(l.delta) over later - l.delta), u.version - (row_number() over later - 1)
        from legs l join u on u.id = l.account_id
        window later as (partition by l.account_id order by l.ord desc)
        order by l.ord, l.delta                     -- entry ids in batch order, as readers page them
        returning transfer_id, account_id, balance_after
      )
      select array_agg(l.ord order by l.ord, l.delta), array_agg(l.account_id order by l.ord, l.delta),
        array_agg(l.delta order by l.ord, l.delta), array_agg(e.balance_after order by l.ord, l.delta)
      into v_ord, v_account, v_delta, v_after
      from e join legs l on v_ids[l.ord] = e.transfer_id and l.account_id = e.account_id;
    end if;
  end if;

  if v_new is not null then
    for i in 1 .. cardinality(v_ord) loop
      if v_delta[i] < 0 and v_after[i] < 0 and (p_transfers[v_ord[i]]).kind not in ('refund_reversal', 'dispute_reversal') then
        perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "only a refund or dispute reversal may leave a balance below zero"}');
      end if;
    end loop;

    -- Debits draw from lots. The common one, alone and with nothing to draw first, in one
    -- statement: the first lot in spending order covers it.
    if cardinality(v_ord) = 1 and v_delta[1] < 0 and (p_transfers[v_ord[1]]).lots is null then
      with drawn as (
        update billing.lots l set remaining = l.remaining + v_delta[1]
        where l.id = (select x.id from billing.lots x where x.account_id = v_account[1] and x.open
                      order by x.frozen, x.priority, x.expires_at nulls last, x.granted_at, x.id
                      limit 1)
          and l.remaining >= -v_delta[1]
        returning l.id
      )
      insert into billing.lot_allocations (transfer_id, lot_id, kind, amount)
      select v_ids[v_ord[1]], drawn.id, (p_transfers[v_ord[1]]).kind, -v_delta[1] from drawn;
      get diagnostics v_drawn = row_count;
    end if;
    if v_drawn is distinct from 1 and 0 > any(v_delta) then
      v_first := array(select jsonb_array_elements_text(t.lots -> 'first')::bigint
                       from unnest(p_transfers) t where t.lots ? 'first');
      with d as (
        select x.ord, x.account_id, -x.delta as amount,
          sum(-x.delta) over (partition by x.account_id order by x.ord) as hi
        from unnest(v_ord, v_account, v_delta) x(ord, account_id, delta)
        where x.delta < 0
      ), l as (
        select l.id, l.account_id, l.remaining,
          sum(l.remaining) over (partition by l.account_id order by array_position(v_first, l.id) nulls last,
            l.frozen, l.priority, l.expires_at nulls last, l.granted_at, l.id) as hi
        from billing.lots l
        where l.account_id in (select d.account_id from d) and l.open
      ), a as (
        select d.ord, l.id as lot_id, least(d.hi, l.hi) - greatest(d.hi - d.amount, l.hi - l.remaining) as amount
        from d join l on l.account_id = d.account_id and l.hi - l.remaining < d.hi and d.hi - d.amount < l.hi
      ), ins as (
        insert into billing.lot_allocations (transfer_id, lot_id, kind, amount)
        select v_ids[a.ord], a.lot_id, (p_transfers[a.ord]).kind, a.amount from a
        returning lot_id, amount
      )
      update billing.lots x set remaining = x.remaining - s.total
      from (select ins.lot_id, sum(ins.amount) as total from ins group by ins.lot_id) s
      where x.id = s.lot_id;
    end if;

    -- Credits: into lots.
    if 0 < any(v_delta) then
      for c in
        select x.ord, x.account_id, x.delta as amount, x.after, p_transfers[x.ord] as t, y.ord is not null as moved
        from unnest(v_ord, v_account, v_delta, v_after) x(ord, account_id, delta, after)
        left join unnest(v_ord, v_delta) y(ord, delta) on y.ord = x.ord and y.delta < 0
        where x.delta > 0
        order by x.ord
      loop
        v_settled := least(c.amount, greatest(c.amount - c.after, 0));
        v_lot := coalesce((c.t).lots, '{}');
        if c.moved then
          -- Each source lot's part arrives as its own lot, as it was: purchase, category, priority,
          -- expiry, frozen, and its share of the cost basis; the first parts settle a debt.
          insert into billing.lots (account_id, grant_transfer_id, purchase_id, category, priority, cost_cents, currency,
                                    amount, debt_settled, remaining, frozen, expires_at, moved_from)
          select c.account_id, v_ids[c.ord], l.purchase_id, l.category, l.priority, l.cost_cents * p.amount / l.amount,
            l.currency, p.amount, p.settled, p.amount - p.settled, l.frozen, l.expires_at, l.id
          from (select x.lot_id, x.amount,
                  least(x.amount, greatest(v_settled - coalesce(sum(x.amount) over (order by x.lot_id
                    rows between unbounded preceding and 1 preceding), 0), 0)) as settled
                from billing.lot_allocations x where x.transfer_id = v_ids[c.ord]) p
          join billing.lots l on l.id = p.lot_id
          order by p.lot_id;
        elsif v_lot ? 'return_to' then
          -- Back into the lots it came from: negative allocations, as a void gives back.
          if (select sum((r ->> 'amount')::numeric) from jsonb_array_elements(v_lot -> 'return_to') r) <> c.amount then
            perform billing.raise_error('LEDGER_INVARIANT', '{"rule": "a return to lots is of exactly the amount"}');
          end if;
          with p as (
            select (r ->> 'lot_id')::bigint as lot_id, (r ->> 'amount')::numeric as amount,
              least((r ->> 'amount')::numeric, greatest(v_settled - coalesce(sum((r ->> 'amount')::numeric)
                over (order by (r ->> 'lot_id')::bigint rows between unbounded preceding and 1 preceding), 0), 0)) as settled
            from jsonb_array_elements(v_lot -> 'return_to') r
          ), ins as (
            insert into billing.lot_allocations (transfer_id, lot_id, kind, amount)
            select v_ids[c.ord], p.lot_id, (c.t).kind, -p.amount from p
          )
          update billing.lots l set remaining = l.remaining + p.amount - p.settled, debt_settled = l.debt_settled + p.settled
          from p where l.id = p.lot_id and l.account_id = c.account_id;
          continue;
        elsif v_lot ? 'moved_from' then
          insert into billing.lots (account_id, grant_transfer_id, purchase_id, category, priority, cost_cents, currency,
                                    amount, debt_settled, remaining, expires_at, moved_from)
          select c.account_id, v_ids[c.ord], l.purchase_id, l.category, l.priority, l.cost_cents * c.amount / l.amount,
            l.currency, c.amount, v_settled, c.amount - v_settled, (v_lot ->> 'expires_at')::timestamptz, l.id
          from billing.lots l where l.id = (v_lot ->> 'moved_from')::bigint;
        else
          v_category := coalesce(v_lot ->> 'category', case (c.t).kind when 'purchase' then 'paid' else 'promotional' end);
          select * into v_policy from billing.credit_expiry_policy p where p.category = v_category;
          if not found then
            perform billing.raise_error('INVALID_LOT', jsonb_build_object('field', 'category', 'rule', 'paid or promotional'));
          elsif v_category = 'promotional' and coalesce((v_lot ->> 'cost_cents')::numeric, 0) <> 0 then
            perform billing.raise_error('INVALID_LOT', jsonb_build_object('field', 'cost_cents', 'rule', 'promotional credits cost nothing'));
          elsif (v_lot ->> 'cost_cents')::numeric < 0 then
            perform billing.raise_error('INVALID_LOT', jsonb_build_object('field', 'cost_cents', 'rule', 'not negative'));
          elsif (v_lot ->> 'expires_at')::timestamptz <= now() then
            perform billing.raise_error('INVALID_LOT', jsonb_build_object('field', 'expires_at', 'rule', 'in the future'));
          elsif (v_lot ->> 'priority')::integer not between 0 and 1000 then
            perform billing.raise_error('INVALID_LOT', jsonb_build_object('field', 'priority', 'rule', '0 to 1000'));
          end if;
          insert into billing.lots (account_id, grant_transfer_id, purchase_id, category, priority, cost_cents, currency,
                                    amount, debt_settled, remaining, expires_at)
          values (c.account_id, v_ids[c.ord], (v_lot ->> 'purchase_id')::uuid, v_category,
            coalesce((v_lot ->> 'priority')::integer, v_policy.priority), coalesce((v_lot ->> 'cost_cents')::numeric, 0),
            coalesce(v_lot ->> 'currency', 'usd'), c.amount, v_settled, c.amount - v_settled,
            -- A support adjustment does not expire unless the admin says so: a correction that
            -- quietly vanishes would need correcting again.
            case when v_lot ? 'expires_at' then (v_lot ->> 'expires_at')::timestamptz
                 when (c.t).kind <> 'adjustment' then now() + v_policy.expires_after end);
        end if;
        update billing.accounts a
        set next_expiry = least(a.next_expiry, (select min(l.expires_at) from billing.lots l where l.grant_transfer_id = v_ids[c.ord]))
        where a.id = c.account_id
          and exists (select 1 from billing.lots l where l.grant_transfer_id = v_ids[c.ord] and l.expires_at is not null);
      end loop;
    end if;
  end if;

  if cardinality(p_transfers) = 1 then
    return array[(coalesce(v_existing[1], v_ids[1]), v_existing[1] is not null,
      case when v_delta[1] < 0 then v_after[1] when v_delta[2] < 0 then v_after[2] end,
      case when v_delta[1] > 0 then v_after[1] when v_delta[2] > 0 then v_after[2] end)::billing.posted_transfer];
  end if;
  -- Joined, not looked up per movement: a batch of a thousand would scan its legs a million times.
  return array(
    select row(coalesce(v_existing[o.n], v_ids[o.n]), v_existing[o.n] is not null, f.after, t.after)::billing.posted_transfer
    from generate_subscripts(p_transfers, 1) o(n)
    left join unnest(v_ord, v_delta, v_after) f(ord, delta, after) on f.ord = o.n and f.delta < 0
    left join unnest(v_ord, v_delta, v_after) t(ord, delta, after) on t.ord = o.n and t.delta > 0
    order by o.n);
end;
$$;
comment on function billing.post_transfers(p_transfers billing.transfer_spec[], p_held billing.held_change[]) is 'Internal: the ledger''s one writer. Writes a batch of movements (transfers, entries, balances, versions, lots, allocations) and changes of held amounts under the caller''s account locks; one result per movement, replays answered.';
revoke execute on function billing.post_transfers(p_transfers billing.transfer_spec[], p_held billing.held_change[]) from public;

create or replace function billing.move_credits(p_from bigint, p_to bigint, p_amount numeric, p_kind billing.transfer_kind,
                                                p_key text, p_member uuid, p_metadata jsonb default null)
returns billing.transfers
language plpgsql
set search_path = ''
as $$
declare
  v_from billing.accounts;
  v_transfer billing.transfers;
  v_posted billing.posted_transfer[];
begin
  perform billing.check_amount(p_amount);
  perform 1 from billing.accounts a where a.id in (p_from, p_to) order by a.id for update;
  select * into v_transfer from billing.transfers t where t.idempotency_key = p_key and t.kind = p_kind;
  if found then
    if v_transfer.amount <> p_amount or v_transfer.from_account_id <> p_from or v_transfer.to_account_id <> p_to then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', p_kind));
    end if;
    return v_transfer;
  end if;
  select * into v_from from billing.accounts a where a.id = p_from;
  if v_from.held > 0 or v_from.next_expiry <= now() then
    v_from := billing.settle_account(p_from);
  end if;
  if v_from.balance - v_from.held < p_amount then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount)::text,
      'available', trim_scale(greatest(v_from.balance - v_from.held, 0))::text, 'debt', v_from.balance < 0,
      'wallet', 'organisation'));
  end if;

  -- The lots drawn arrive on the receiving side as they were (billing.post_transfers).
  v_posted := billing.post_transfers(array[(p_kind, p_from, p_to, p_amount, p_key, null, null, p_metadata, null, null,
    p_member, null)::billing.transfer_spec]);
  select * into v_transfer from billing.transfers t where t.id = (v_posted[1]).transfer_id;
  return v_transfer;
end;
$$;
comment on function billing.move_credits(p_from bigint, p_to bigint, p_amount numeric, p_kind billing.transfer_kind, p_key text, p_member uuid, p_metadata jsonb) is 'Internal: a transfer between two tracked accounts (wallet ↔ allowance), the lots drawn mirrored on the receiving side.';
revoke execute on function billing.move_credits(p_from bigint, p_to bigint, p_amount numeric, p_kind billing.transfer_kind, p_key text, p_member uuid, p_metadata jsonb) from public;

create or replace function billing.lock_spending_source(p_own billing.accounts, p_user uuid, p_amount numeric, p_model text, p_key text, p_kind billing.transfer_kind)
returns billing.accounts
language plpgsql
set search_path to ''
as $$
declare
  v_existing billing.transfers;
  v_sources record;
  v_account billing.accounts;
  v_available numeric(38, 18);
  v_cap jsonb;
  v_wallets jsonb := '[]'::jsonb;
  v_best numeric(38, 18) := 0;
  v_pool boolean;
begin
  if p_kind is not null then
    select * into v_existing from billing.transfers t where t.idempotency_key = p_key and t.kind = p_kind;
    if found and v_existing.member_id = p_user then
      select * into v_account from billing.accounts a where a.id = v_existing.from_account_id for update;
      return v_account;
    elsif found then
      return p_own;
    end if;
  end if;

  -- Organisations that pay first (0), the member's own account (1), those that pay after (2);
  -- by when the member joined. A member without an allowance account yet has nothing there.
  select array_agg(s.account_id order by s.rank, s.joined_at) as accounts, array_agg(s.org_id order by s.rank, s.joined_at) as orgs
  into v_sources
  from (
    select o.id as org_id, case when o.org_pays_first then 0 else 2 end as rank, m.joined_at,
      case when o.funding = 'allowance'
        then (select a.id from billing.accounts a where a.org_id = o.id and a.member_id = p_user)
        else (select a.id from billing.accounts a where a.org_id = o.id and a.member_id is null)
      end as account_id
    from billing.org_members m join billing.orgs o on o.id = m.org_id
    where m.user_id = p_user and m.active and m.role = 'member'
    union all
    select null, 1, null, p_own.id
  ) s where s.account_id is not null;
  perform 1 from billing.accounts a where a.id = any(v_sources.accounts) and a.id <> p_own.id order by a.id for update;

  for i in 1 .. array_length(v_sources.accounts, 1) loop
    select * into v_account from billing.accounts a where a.id = v_sources.accounts[i];
    if v_account.held > 0 or v_account.next_expiry <= now() then
      v_account := billing.settle_account(v_account.id);
    end if;
    v_available := greatest(v_account.balance - v_account.held, 0);
    if v_available >= p_amount then
      if v_account.org_id is null then
        return v_account;                                 -- the member's own caps: the caller's, as for anyone
      end if;
      v_cap := case when v_account.caps > 0 then billing.take_cap_room(v_account.id, p_amount, p_model, p_user) end;
      if v_cap is null then
        return v_account;
      end if;
    end if;
    -- A member sees what they may spend: their own account, their allowance, their cap's room;
    -- never the balance of a pool the whole organisation shares.
    v_pool := v_account.org_id is not null and v_account.member_id is null;
    v_best := greatest(v_best, case when v_cap is null and not v_pool then v_available else 0 end);
    v_wallets := v_wallets || jsonb_strip_nulls(jsonb_build_object(
      'wallet', case when v_account.org_id is null then 'personal' else 'organisation' end,
      'org_id', v_sources.orgs[i],
      'available', case when not v_pool then trim_scale(v_available)::text end,
      'short_by', case when not v_pool then trim_scale(greatest(p_amount - v_available, 0))::text end,
      'reason', case when v_cap is not null then 'cap' else 'insufficient' end, 'cap', v_cap));
    v_cap := null;
  end loop;
  perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount)::text,
    'available', trim_scale(v_best)::text, 'debt', p_own.balance < 0, 'wallets', v_wallets));
  return null;                                      -- not reached: raise_error raised
end;
$$;
comment on function billing.lock_spending_source(p_own billing.accounts, p_user uuid, p_amount numeric, p_model text, p_key text, p_kind billing.transfer_kind) is 'Internal: the account (own, allowance or pooled wallet) that pays a member''s charge, locked; caps on a pooled wallet counted.';
revoke execute on function billing.lock_spending_source(p_own billing.accounts, p_user uuid, p_amount numeric, p_model text, p_key text, p_kind billing.transfer_kind) from public;

create or replace function billing.post_user_transfer(p_user uuid, p_direction integer, p_mode text, p_amount numeric, p_kind billing.transfer_kind, p_platform_code text, p_idempotency_key text, p_correlation_id text default null::text, p_reference text default null::text, p_metadata jsonb default null::jsonb, p_rate_card_id bigint default null::bigint, p_hold_id uuid default null::uuid, p_lot jsonb default null::jsonb, p_account_id bigint default null::bigint)
returns billing.transfer_result
language plpgsql
set search_path to ''
as $$
declare
  v_account billing.accounts;
  v_account_id bigint;
  v_platform_id bigint := billing.platform_account_id(p_platform_code);
  v_existing billing.transfers;
  v_transfer_id bigint;
  v_bal billing.balance;
  v_posted billing.posted_transfer;
  v_member uuid;
begin
  perform billing.check_amount(p_amount);
  if p_idempotency_key is null or length(p_idempotency_key) not between 1 and 300 then
    perform billing.raise_error('IDEMPOTENCY_KEY_REQUIRED', jsonb_build_object('rule', '1 to 300 characters'));
  end if;

  -- Find and lock the account in one statement; create it first only when it must exist.
  if p_account_id is not null then
    select * into v_account from billing.accounts a where a.id = p_account_id for update;
  else
    select * into v_account from billing.accounts a where a.user_id = p_user for update;
  end if;
  if not found then
    if p_direction < 0 and p_mode <> 'reverse' then
      perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object('required', trim_scale(p_amount)::text, 'available', '0',
        'debt', false));
    end if;
    perform billing.ensure_user_account(p_user);
    select * into v_account from billing.accounts a where a.user_id = p_user for update;
  end if;
  -- A member of organisations that fund them: the wallet that pays (orgs = 0 skips it all).
  if v_account.orgs > 0 and p_mode = 'spend' and p_account_id is null then
    v_account := billing.lock_spending_source(v_account, p_user, p_amount, p_metadata ->> 'model', p_idempotency_key, p_kind);
  end if;
  v_account_id := v_account.id;
  v_member := case when v_account.org_id is not null then p_user end;

  -- A replay finds the transfer written before: a concurrent call with the same key has
  -- committed by now (its account lock was ours to wait for).
  select * into v_existing from billing.transfers t where t.idempotency_key = p_idempotency_key and t.kind = p_kind;
  if found then
    if v_existing.amount <> p_amount
      or (p_direction > 0 and v_existing.to_account_id <> v_account_id)
      or (p_direction < 0 and v_existing.from_account_id <> v_account_id) then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('kind', p_kind));
    end if;
    v_bal := billing.balance_of(v_account_id);
    return (v_existing.id, v_existing.amount, v_bal.balance, v_bal.held, v_bal.available, true)::billing.transfer_result;
  end if;

  if p_mode = 'spend' then
    if v_account.held > 0 or v_account.next_expiry <= now() then
      v_account := billing.settle_account(v_account_id);
    end if;
    if v_account.balance - v_account.held < p_amount then
      perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object(
        'required', trim_scale(p_amount)::text, 'available', trim_scale(greatest(v_account.balance - v_account.held, 0))::text,
        'debt', v_account.balance < 0));
    end if;
    if v_account.caps > 0 and v_account.org_id is null then  -- a pooled wallet's were counted choosing it
      perform billing.charge_caps(v_account_id, p_amount, p_metadata ->> 'model');
    end if;
  elsif p_mode = 'capture' and v_account.balance < p_amount then
    perform billing.raise_error('INSUFFICIENT_CREDITS', jsonb_build_object(
      'required', trim_scale(p_amount)::text, 'available', trim_scale(greatest(v_account.balance, 0))::text, 'debt', v_account.balance < 0));
  end if;

  v_posted := (billing.post_transfers(array[(p_kind,
    case when p_direction > 0 then v_platform_id else v_account_id end,
    case when p_direction > 0 then v_account_id else v_platform_id end,
    p_amount, p_idempotency_key, p_correlation_id, p_reference, p_metadata, p_rate_card_id, p_hold_id, v_member,
    p_lot)::billing.transfer_spec]))[1];
  v_account.balance := coalesce(v_posted.from_balance, v_posted.to_balance);
  v_account.version := v_account.version + 1;
  v_transfer_id := v_posted.transfer_id;

  -- Auto-recharge follows spending: a refund, dispute or expiry never charges the card by itself
  -- (a student refunded would be charged again at once); the low-balance alert still tells them.
  if p_mode = 'reverse' then
    if v_account.low_balance_threshold is not null then
      perform billing.check_low_balance(v_account);
    end if;
  elsif v_account.low_balance_threshold is not null or v_account.auto_recharge_below is not null then
    perform billing.on_available_change(v_account);
  end if;

  -- Overdue holds and due lots were settled above when spending; otherwise held is as locked.
  if v_account.held > 0 then
    v_bal := billing.balance_of(v_account_id);
    return (v_transfer_id, p_amount, v_bal.balance, v_bal.held, v_bal.available, false)::billing.transfer_result;
  end if;
  return (v_transfer_id, p_amount, v_account.balance, 0, v_account.balance, false)::billing.transfer_result;
end;
$$;
comment on function billing.post_user_transfer(p_user uuid, p_direction integer, p_mode text, p_amount numeric, p_kind billing.transfer_kind, p_platform_code text, p_idempotency_key text, p_correlation_id text, p_reference text, p_metadata jsonb, p_rate_card_id bigint, p_hold_id uuid, p_lot jsonb, p_account_id bigint) is 'Internal: moves credits between a user''s account (or, for a member, the organisation wallet that pays; or p_account_id) and a platform account, under the account lock.';
revoke execute on function billing.post_user_transfer(p_user uuid, p_direction integer, p_mode text, p_amount numeric, p_kind billing.transfer_kind, p_platform_code text, p_idempotency_key text, p_correlation_id text, p_reference text, p_metadata jsonb, p_rate_card_id bigint, p_hold_id uuid, p_lot jsonb, p_account_id bigint) from public;

create or replace function billing.place_hold(
  p_account_id bigint,
  p_amount numeric,
  p_idempotency_key text,
  p_expires_at timestamptz,
  p_purpose text,
  p_correlation_id text default null,
  p_metadata jsonb default null,
  p_member uuid default null
) returns billing.holds
language plpgsql
set search_path = ''
as $$
declare
  v_hold billing.holds;
begin
  -- The caller holds the account lock and has checked what may be held.
  insert into billing.holds (account_id, amount, idempotency_key, correlation_id, metadata, expires_at, purpose, member_id)
  values (p_account_id, p_amount, p_idempotency_key, p_correlation_id, p_metadata, p_expires_at, p_purpose, p_member)
  returning * into v_hold;
  perform billing.post_transfers('{}', array[(p_account_id, p_amount)::billing.held_change]);
  perform billing.on_available_change(a) from billing.accounts a
  where a.id = p_account_id and (a.low_balance_threshold is not null or a.auto_recharge_below is not null);
  return v_hold;
end;
$$;
revoke execute on function billing.place_hold(p_account_id bigint, p_amount numeric, p_idempotency_key text, p_expires_at timestamp with time zone, p_purpose text, p_correlation_id text, p_metadata jsonb, p_member uuid) from public;

create or replace function billing.grant_credits(
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
comment on function billing.grant_credits(p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_idempotency_key text, p_reference text, p_correlation_id text, p_metadata jsonb, p_lot jsonb, p_account_id bigint) is 'Adds credits to a user (or the account p_account_id) as a new lot (p_lot: the lot''s options, see billing.transfer_spec): a purchase, a promotion, or a support adjustment. Idempotent by (key, kind).';
revoke execute on function billing.grant_credits(p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_idempotency_key text, p_reference text, p_correlation_id text, p_metadata jsonb, p_lot jsonb, p_account_id bigint) from public;
grant execute on function billing.grant_credits(p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_idempotency_key text, p_reference text, p_correlation_id text, p_metadata jsonb, p_lot jsonb, p_account_id bigint) to service_role;

create or replace function billing.reverse_credits(
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
comment on function billing.reverse_credits(p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_idempotency_key text, p_reference text, p_correlation_id text, p_metadata jsonb, p_first_lots bigint[], p_account_id bigint) is 'Takes credits back after a refund, a lost dispute or an expiry, from p_first_lots first. The only path that may make a balance negative (debt).';
revoke execute on function billing.reverse_credits(p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_idempotency_key text, p_reference text, p_correlation_id text, p_metadata jsonb, p_first_lots bigint[], p_account_id bigint) from public;
grant execute on function billing.reverse_credits(p_user uuid, p_amount numeric, p_kind billing.transfer_kind, p_idempotency_key text, p_reference text, p_correlation_id text, p_metadata jsonb, p_first_lots bigint[], p_account_id bigint) to service_role;

create or replace function billing.shrink_holds(p_account_id bigint, p_short numeric, p_purposes text[], p_note jsonb)
returns numeric
language plpgsql
set search_path = ''
as $$
declare
  h billing.holds;
  v_take numeric(38, 18);
  v_left numeric(38, 18) := p_short;
begin
  -- The caller holds the account lock. The newest holds give way first.
  for h in
    select * from billing.holds x
    where x.account_id = p_account_id and x.status = 'active' and x.purpose = any(p_purposes)
    order by x.created_at desc, x.id
    for update
  loop
    exit when v_left <= 0;
    v_take := least(h.amount, v_left);
    update billing.holds x
    set amount = x.amount - case when v_take < x.amount then v_take else 0 end,
        status = case when v_take < x.amount then x.status else 'released' end,
        finished_at = case when v_take < x.amount then null else now() end,
        metadata = coalesce(x.metadata, '{}'::jsonb) || p_note || jsonb_build_object('given_amount', trim_scale(v_take)::text)
    where x.id = h.id;
    perform billing.post_transfers('{}', array[(p_account_id, -v_take)::billing.held_change]);
    perform billing.return_hold_cap_room(h, v_take);
    v_left := v_left - v_take;
  end loop;
  return p_short - v_left;
end;
$$;
comment on function billing.shrink_holds(p_account_id bigint, p_short numeric, p_purposes text[], p_note jsonb) is 'Internal: takes p_short from the account''s active holds of the given purposes, newest first (cap room given back); returns what it took.';
revoke execute on function billing.shrink_holds(p_account_id bigint, p_short numeric, p_purposes text[], p_note jsonb) from public;

create or replace function billing.settle_account(p_account_id bigint)
returns billing.accounts
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
begin
  select * into v_account from billing.accounts a where a.id = p_account_id for update;
  if v_account.held > 0 then
    perform billing.expire_overdue_holds(p_account_id);
  end if;
  if v_account.next_expiry <= now() then
    perform billing.expire_due_lots(p_account_id);
  end if;
  select * into v_account from billing.accounts a where a.id = p_account_id;
  return v_account;
end;
$$;
comment on function billing.settle_account(p_account_id bigint) is 'Internal: locks the account, ends its overdue holds and expires its due lots; returns it as it now is. Every path that spends, holds or moves credits calls it when held > 0 or next_expiry has passed.';
revoke execute on function billing.settle_account(p_account_id bigint) from public;

create or replace function billing.place_dispute_hold(p_account_id bigint, p_amount numeric, p_dispute_id text, p_key text)
returns uuid
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts := billing.settle_account(p_account_id);
  v_freeze numeric(38, 18);
  v_short numeric(38, 18);
  v_existing uuid;
begin
  if v_account.id is null then
    return null;
  end if;
  select h.id into v_existing from billing.holds h where h.idempotency_key = p_key;
  if found then
    return v_existing;
  end if;
  -- What is left of the balance once earlier disputes have frozen theirs.
  select least(p_amount, greatest(v_account.balance - coalesce(sum(h.amount), 0), 0)) into v_freeze
  from billing.holds h where h.account_id = v_account.id and h.status = 'active' and h.purpose = 'dispute';
  if v_freeze <= 0 then
    return null;
  end if;
  -- A student's own holds give way; a job's is work under way.
  v_short := v_freeze - greatest(v_account.balance - v_account.held, 0);
  if v_short > 0 then
    perform billing.shrink_holds(v_account.id, v_short, array['user'], jsonb_build_object('given_to_dispute', p_dispute_id));
  end if;
  return (billing.place_hold(v_account.id, v_freeze, p_key, 'infinity', 'dispute', p_dispute_id)).id;
end;
$$;
comment on function billing.place_dispute_hold(p_account_id bigint, p_amount numeric, p_dispute_id text, p_key text) is 'Internal: freezes up to p_amount of the account for a dispute (the student''s own holds give way); idempotent by p_key.';
revoke execute on function billing.place_dispute_hold(p_account_id bigint, p_amount numeric, p_dispute_id text, p_key text) from public;

-- p_taken: what the balance just lost (credits expired or taken back), when the caller knows it.
-- Holds give way by at most that much: a job's or an AI call's hold that a dispute left above the
-- balance (work under way, place_dispute_hold) is not given away by an unrelated expiry.
create or replace function billing.fit_holds(p_account_id bigint, p_note jsonb, p_taken numeric default null)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_account billing.accounts;
  v_short numeric;
begin
  -- The caller holds the account lock. A dispute's own hold stays: it is what gives way last.
  select * into v_account from billing.accounts a where a.id = p_account_id;
  v_short := least(v_account.held - greatest(v_account.balance, 0), coalesce(p_taken, v_account.held));
  if v_short > 0 then
    perform billing.shrink_holds(p_account_id, v_short, array['user', 'job', 'ai'], p_note);
  end if;
end;
$$;
comment on function billing.fit_holds(p_account_id bigint, p_note jsonb, p_taken numeric) is 'Internal: when an account''s holds reserve more than its balance (credits expired or taken back), its user, job and gateway holds give way, newest first, until they fit, by at most p_taken (what the balance just lost) when given.';
revoke execute on function billing.fit_holds(p_account_id bigint, p_note jsonb, p_taken numeric) from public;

-- ============================================================ views

-- For operators: platform accounts' balances, derived from the transfers (they keep no balance
-- and get no entries). Each transfer is −amount on its from side and +amount on its to side.
create or replace view billing.platform_balances with (security_invoker = true) as
  select a.code, coalesce(s.balance, 0)::numeric(38, 18) as balance, coalesce(s.transfers, 0) as transfers
  from billing.accounts a
  left join (select x.account_id, sum(x.amount) as balance, count(*) as transfers
             from billing.transfers t
             cross join lateral (values (t.from_account_id, -t.amount), (t.to_account_id, t.amount)) x(account_id, amount)
             where x.account_id in (select p.id from billing.accounts p where p.code is not null)
             group by x.account_id) s on s.account_id = a.id
  where a.code is not null;
comment on view billing.platform_balances is 'Each platform account''s balance: Σ of the transfers to it minus Σ of those from it.';
grant select on table billing.platform_balances to service_role;

-- ============================================================ triggers

create trigger transfers_immutable before update or delete on billing.transfers
  for each row execute function billing.refuse_ledger_change();

create trigger transfers_no_truncate before truncate on billing.transfers
  for each statement execute function billing.refuse_ledger_change();

-- Transfers and entries name accounts without foreign keys (see transfers): an account, once
-- made, stays.
create trigger accounts_never_deleted before delete on billing.accounts
  for each row execute function billing.refuse_ledger_change();

create trigger accounts_no_truncate before truncate on billing.accounts
  for each statement execute function billing.refuse_ledger_change();

create trigger entries_immutable before update or delete on billing.entries
  for each row execute function billing.refuse_ledger_change();

create trigger entries_no_truncate before truncate on billing.entries
  for each statement execute function billing.refuse_ledger_change();

-- ============================================================ policies

create policy "Users can read their own account" on billing.accounts
  for select to authenticated using (user_id = (select auth.uid()));

create policy "Users can read entries of their own account" on billing.entries
  for select to authenticated using (account_id in (select a.id from billing.accounts a where a.user_id = (select auth.uid())));

create policy "Users can read transfers touching their own account" on billing.transfers
  for select to authenticated using (
    from_account_id in (select a.id from billing.accounts a where a.user_id = (select auth.uid()))
    or to_account_id in (select a.id from billing.accounts a where a.user_id = (select auth.uid()))
  );

create policy "Users can read their own holds" on billing.holds
  for select to authenticated using (account_id in (select a.id from billing.accounts a where a.user_id = (select auth.uid())));

-- ============================================================ reference rows

insert into billing.accounts (code) values
  ('purchases'), ('promotions'), ('adjustments'), ('usage_revenue'), ('refunds'), ('disputes'), ('expired');
