-- The credit ledger: double-entry, append-only, exact decimals.
--
-- Money moves only through SECURITY DEFINER functions (EXECUTE for service_role only). A
-- transfer moves an amount from one account to another: it is the double entry (−amount on from,
-- +amount on to), so money is conserved by construction. Tracked accounts (users,
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
-- One writer: billing.post_transfers (11-ledger-writer.sql) alone writes these tables; every
-- feature decides what moves and calls it. The functions callers use are SECURITY DEFINER with
-- an empty search_path and fully qualified names; EXECUTE is for service_role only (the Edge
-- Functions connect as the owner). Errors raise a stable token as the message with JSON detail;
-- the TypeScript side maps tokens to HTTP in one place (_shared/adapters/sql-errors.ts).
--
-- The tables the writer keeps beside the accounts live here too: holds (pending transfers;
-- their functions in 12-holds.sql) and spend caps (checked under the account lock; 40-caps-alerts.sql).
-- Holds, usage pricing (13-usage-pricing.sql) and the usage batch (14-usage-batch.sql) build on
-- this core.

-- ============================================================ types

create type billing.transfer_kind as enum (
  'purchase',          -- credits bought through Stripe Checkout
  'promo_grant',       -- bonus or promotional credits
  'adjustment',        -- a support correction by an admin
  'usage',             -- metered usage, priced from a rate card
  'hold_capture',      -- the captured part of a hold
  'refund_reversal',   -- credits taken back after a Stripe refund
  'dispute_reversal',  -- credits taken back after a lost dispute
  'expiry',            -- credits that expired
  'allowance',         -- a wallet funds a member's allowance
  'allowance_sweep',   -- an allowance's rest returns to the wallet at the term's end
  'code_escrow',       -- an organisation's wallet sets credits aside for a sponsor code
  'code_redemption',   -- a gift or sponsor code's credits move to the account that redeemed it
  'code_return',       -- a revoked or expired sponsor code's credits return to the wallet
  'plan_grant',        -- a plan's included credits for a period (57-plan-credits.sql)
  'plan_rollover',     -- plan credits carried into the next period (out of the old lot, into a new one)
  'void'               -- a charge given back by an admin: usage_revenue → the account that paid (53-corrections.sql)
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
  restricted_lots boolean default false not null,
  -- Set while one of its lots is frozen (a disputed purchase's: billing.set_lots_frozen): what it
  -- may spend is then read from its lots' free credits, not balance − held.
  frozen_lots boolean default false not null,
  -- What it may spend is read from its lots (some pay for some models only, or are frozen), not
  -- from balance − held.
  reads_lots boolean generated always as ((restricted_lots or frozen_lots)) stored,
  -- Reporting (billing.active_tail): set by the writer to the start of the first transaction
  -- of its UTC day that wrote one of the account's entries; kept while that day lasts.
  active_from timestamp with time zone,
  next_hold_expiry timestamp with time zone,
  constraint accounts_held_not_negative check ((held >= (0)::numeric)),
  constraint accounts_low_balance_positive check (((low_balance_threshold is null) or (low_balance_threshold > (0)::numeric))),
  constraint accounts_member_of_org check (((member_id is null) or (org_id is not null))),
  constraint accounts_one_owner check ((num_nonnulls(user_id, code, org_id, code_id) = 1)),
  constraint accounts_platform_not_tracked check (((code is null) or ((balance = (0)::numeric) and (held = (0)::numeric) and (version = 0)))),
  constraint accounts_pkey primary key (id),
  constraint accounts_user_id_key unique (user_id),
  constraint accounts_member_id_fkey foreign key (member_id) references auth.users(id),
  constraint accounts_user_id_fkey foreign key (user_id) references auth.users(id) on delete restrict
);
comment on table billing.accounts is 'One credit account per user (created on first use) plus platform accounts, the counterparties of every movement.';
comment on column billing.accounts.org_id is 'An organisation''s wallet (member_id null) or a member''s allowance account (member_id set).';
comment on column billing.accounts.code_id is 'A gift or sponsor code''s escrow: the credits it will give, tracked like a wallet until redeemed (billing.codes).';
comment on column billing.accounts.restricted_lots is 'Set by the writer once a lot that pays only for some models arrives (never unset): the account then has sub-accounts (billing.sub_accounts), and its charges and holds draw only lots that may pay for their model (billing.free_credits reads what they may spend).';
comment on column billing.accounts.next_expiry is 'No later than the earliest expires_at of the account''s open lots (a lower bound, exact after each expiry run): spending expires due lots first when it has passed.';
comment on column billing.accounts.next_hold_expiry is 'No later than the earliest expires_at of the account''s active holds (a lower bound, set when a hold is placed, exact after each run that ends overdue holds, null once nothing is held): spending ends overdue holds first only when it has passed.';
alter table billing.accounts enable row level security;
grant select on table billing.accounts to authenticated;
grant select on table billing.accounts to service_role;

-- A platform account's code, unique. Partial on purpose: the writer finds a tracked side by
-- `id = … and code is null`, and a full index on code offered the planner a scan over every
-- user's null code (before the table's first ANALYZE it looked selective: each account write
-- then read every user account).
create unique index accounts_code_key on billing.accounts (code) where code is not null;
create unique index accounts_org_member on billing.accounts (org_id, member_id) nulls not distinct where org_id is not null;

create index accounts_allowances on billing.accounts (id) where member_id is not null;

-- Credits for some models, as accounts (docs/credit-lots.md): an account's credits under one list
-- of models (lots.applies_to) are its sub-account for that list, the part of its balance only
-- that list may spend. The account keeps the whole balance, and the ledger's entries are its
-- own (every reader of a balance reads the account); the writer keeps each sub-account from the
-- lots it moves, balance = Σ remaining of the account's lots under the list (billing.check_lots
-- proves it). What is left, the account's balance less its sub-accounts', is for any model, and
-- is where a debt shows: below zero.
create table billing.sub_accounts (
  id bigint generated always as identity not null,
  account_id bigint not null,
  applies_to text[] not null,
  balance numeric(38,18) default 0 not null,
  constraint sub_accounts_pkey primary key (id),
  constraint sub_accounts_one_per_list unique (account_id, applies_to),
  constraint sub_accounts_balance_not_negative check ((balance >= (0)::numeric)),
  constraint sub_accounts_account_id_fkey foreign key (account_id) references billing.accounts(id)
);
comment on table billing.sub_accounts is 'An account''s credits that pay only for one list of models (applies_to, sorted as on its lots); kept by the ledger''s writer.';
alter table billing.sub_accounts enable row level security;
grant select on table billing.sub_accounts to service_role;

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

-- Members' spending of a school's credits: by member (their ledger and usage), and by time
-- (billing.org_revenue, once per period of a report). Only spending kinds: a school's onboarding
-- funds an allowance per member, and a report's every period scanned those moves too.
create index transfers_org_member on billing.transfers (member_id, created_at)
  where member_id is not null and kind in ('usage', 'hold_capture', 'void');
create index transfers_org_spending on billing.transfers (created_at)
  where member_id is not null and kind in ('usage', 'hold_capture', 'void');

-- What the credit transfers moved, per second, summed as the writer writes them: read for the
-- part of today the roll-up has not reached (billing.ledger_parts), so a report right after a
-- burst of writes reads a few hundred rows, not the burst's. Keyed by the writing backend too: a
-- backend runs one transaction at a time, so no two writers ever wait on one row. The roll-up
-- deletes what it has passed.
create table billing.ledger_tail (
  at timestamptz not null,                        -- the second the writing transaction started (its rows' created_at)
  backend integer not null,                       -- pg_backend_pid() of the writer
  kind billing.transfer_kind not null,
  rate_card_id bigint,
  amount numeric(38, 18) not null,                -- Σ transfers' amounts
  events bigint not null,                         -- how many transfers
  credit_change numeric(38, 18) not null,         -- Σ their tracked (user) entries: how much the liability moved
  constraint ledger_tail_key unique nulls not distinct (at, backend, kind, rate_card_id)
) with (fillfactor = 70);
comment on table billing.ledger_tail is 'Internal: credit transfers summed per second, backend, kind and rate card by the writer, for the part of today not rolled up yet.';
alter table billing.ledger_tail enable row level security;

-- What the credit transfers drew from lots (and gave back to them), and the lots they granted,
-- summed as ledger_tail is: the lots part of the same reports (billing.ledger_parts), by the lots'
-- currency, category and origin and the transfer's kind; of credits given back, the part that paid
-- a debt is its own kind ('debt_settled_by_return'); lots granted are 'granted' (net of the debt
-- they settled on arrival) and moved lots that paid a debt on arrival 'debt_settled_by_move'.
-- Cost bases (cents) as the allocations and lots keep them.
create table billing.lots_tail (
  at timestamptz not null,
  backend integer not null,
  currency text not null,
  category text not null,
  kind text not null,                             -- a transfer kind, 'debt_settled_by_return', 'granted' or 'debt_settled_by_move'
  origin text,                                    -- the lots' (billing.lots.origin)
  credits numeric(38, 18) not null,
  cents numeric not null,
  constraint lots_tail_key unique nulls not distinct (at, backend, currency, category, kind, origin)
) with (fillfactor = 70);
comment on table billing.lots_tail is 'Internal: what credit transfers drew from lots and the lots they granted, summed per second, backend, currency, category, kind and origin by the writer, for the part of today not rolled up yet.';
alter table billing.lots_tail enable row level security;

-- The accounts whose first entry of their UTC day was written in a second, as the writer writes
-- them (when accounts.active_from moves to the day): today's active accounts not rolled up yet
-- (billing.ledger_parts), read in the order they were written, not from the accounts.
create table billing.active_tail (
  at timestamptz not null,                        -- the second the writing transaction started
  account_id bigint not null,
  primary key (at, account_id)
);
comment on table billing.active_tail is 'Internal: accounts first active in their UTC day, per second, kept by the writer for the part of today not rolled up yet.';
alter table billing.active_tail enable row level security;

-- Since when billing.ledger_tail, billing.lots_tail and billing.active_tail are kept
-- (one row, moved by a migration that adds another tail): a part of the day that starts earlier
-- is read from the rows.
create table billing.ledger_tail_kept (
  since timestamptz primary key
);
comment on table billing.ledger_tail_kept is 'Internal: the instant from which billing.ledger_tail, lots_tail and active_tail are complete.';
alter table billing.ledger_tail_kept enable row level security;
-- A database built from the baseline keeps every tail from its first instant.
insert into billing.ledger_tail_kept (since) values (clock_timestamp());

create table billing.entries (
  id bigint generated always as identity primary key,
  transfer_id bigint not null,                    -- no foreign key: written with its transfer, checked by the invariants
  account_id bigint not null,                     -- no foreign key: see transfers
  amount numeric(38, 18) not null,                -- signed: + credits the account, − debits it
  balance_after numeric(38, 18),                  -- user accounts only (see header)
  account_version bigint,                         -- user accounts only
  created_at timestamptz not null default now(),
  -- When the row was written (created_at is its transaction's start): per account, entries are
  -- written under the account's lock, so in id order; how long after its start a transaction
  -- wrote is what bounds an as-of read (36-balance-history.sql).
  inserted_at timestamptz not null default clock_timestamp(),
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

-- As-of reads (billing.balance_as_of, billing.lots_remaining_as_of): a user account's entries by
-- the instant they are dated, and the few written more than 10 seconds after their transaction
-- started (a batch job's, a long transaction's), which an as-of read looks up apart.
create index entries_user_account_created on billing.entries (account_id, created_at) where balance_after is not null;

create index entries_user_account_late on billing.entries (account_id, id)
  where balance_after is not null and inserted_at - created_at > interval '10 seconds';

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
  constraint holds_purpose check ((purpose = any (array['user'::text, 'job'::text, 'ai'::text, 'claims'::text]))),
  constraint holds_status check ((status = any (array['active'::text, 'captured'::text, 'released'::text, 'expired'::text]))),
  constraint holds_idempotency_key_key unique (idempotency_key),
  constraint holds_pkey primary key (id)
  -- No foreign keys, as transfers have none: each checked the account or the capture's transfer
  -- with a KEY SHARE row lock (a heap write and WAL) on every hold and capture. Accounts and
  -- transfers are never deleted, only the writer writes holds, and the invariants check both.
);
comment on table billing.holds is 'Two-phase spending: reserve → capture (all or part) or release. available = balance − active holds.';
alter table billing.holds enable row level security;
grant select on table billing.holds to authenticated;
grant select on table billing.holds to service_role;

-- What each active hold reserved of which lot (issue #77: a hold reserves free credits of the lots
-- that may pay for its model, in spending order; billing.pick_lots, 11-ledger-writer.sql). Per
-- lot, Σ amount over active holds = lots.reserved (billing.check_lots). No foreign keys, as
-- holds and lot_allocations have none: only the writer writes it, under the account lock.
create table billing.hold_lots (
  hold_id uuid not null,
  lot_id bigint not null,
  amount numeric(38,18) not null,
  constraint hold_lots_amount_positive check ((amount > (0)::numeric)),
  constraint hold_lots_pkey primary key (hold_id, lot_id)
);
comment on table billing.hold_lots is 'What each hold reserved of each lot; per lot, Σ over active holds = lots.reserved. Written only by the ledger''s writer.';
alter table billing.hold_lots enable row level security;

create index hold_lots_lot on billing.hold_lots (lot_id);

create index holds_active_expiry on billing.holds (expires_at) where status = 'active';

create index holds_account on billing.holds (account_id, created_at desc);

-- An account's live holds (what it holds, what is overdue, a dispute's freeze): read on every
-- hold, capture and balance, so found among the few active ones, not the account's whole history.
create index holds_active_account on billing.holds (account_id) where status = 'active';

create table billing.spend_caps (
  id bigint generated always as identity not null,
  account_id bigint not null,
  period text not null,
  time_zone text default 'UTC'::text not null,
  model text,
  amount numeric(38,18) not null,
  period_start timestamp with time zone,
  spent numeric(38,18) default 0 not null,
  set_by uuid,
  created_at timestamp with time zone default now() not null,
  updated_at timestamp with time zone default now() not null,
  alert_percents integer[] default '{}'::integer[] not null,
  alerts_fired integer[] default '{}'::integer[] not null,
  alerts_period timestamp with time zone,
  member_id uuid,
  owner text default 'self'::text not null,
  constraint spend_caps_alert_percents check ((alert_percents <@ array[1, 2, 3, 4, 5, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 95, 100])),
  constraint spend_caps_amount_positive check ((amount > (0)::numeric)),
  constraint spend_caps_owner check ((owner = any (array['self'::text, 'admin'::text, 'organisation'::text]))),
  constraint spend_caps_period check ((period = any (array['day'::text, 'week'::text, 'month'::text, 'term'::text]))),
  constraint spend_caps_spent_not_negative check ((spent >= (0)::numeric)),
  constraint spend_caps_term_for_members check (((period <> 'term'::text) or (member_id is not null))),
  constraint spend_caps_one_per_scope unique nulls not distinct (account_id, member_id, period, model, owner),
  constraint spend_caps_pkey primary key (id),
  constraint spend_caps_account_id_fkey foreign key (account_id) references billing.accounts(id),
  constraint spend_caps_member_id_fkey foreign key (member_id) references auth.users(id)
);
comment on table billing.spend_caps is 'Per-account spending limits per period (day, week, month; in a time zone), overall or per model, with the current period''s spending.';
comment on column billing.spend_caps.owner is 'Who may change the cap: self (the student), admin (a platform admin), organisation (its admins, for a member).';
alter table billing.spend_caps enable row level security;
grant select on table billing.spend_caps to authenticated;
grant select on table billing.spend_caps to service_role;

-- ============================================================ functions

-- Why a user may not move credits now, or null: {token, detail}: gone, banned, or (when asked)
-- no longer an admin. Read on every money path and organisation action, whatever the token says
-- (a verified token is remembered until it expires: _shared/http/auth.ts). An answer, not an
-- error: a money request's values are written into its one-round-trip statement
-- (_shared/adapters/sql-literal.ts) and Postgres logs the text of a statement that fails, so
-- run_money_request answers a refusal as a row and the caller's request never reaches the log.
create or replace function billing.standing_refusal(p_user uuid, p_admin boolean default false) returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  v_role text;
begin
  select coalesce(u.raw_app_meta_data ->> 'role', '') into v_role
  from auth.users u
  where u.id = p_user and u.deleted_at is null and (u.banned_until is null or u.banned_until <= now());
  if not found then
    return jsonb_build_object('token', 'USER_NOT_ACTIVE',
      'detail', jsonb_build_object('rule', 'the user must exist and not be deleted or banned'));
  end if;
  -- A buyer whose payment (a purchase they paid, a gift code's or an organisation's included,
  -- unless its verified organisation answers for it, or a plan invoice) is disputed is suspended
  -- until the dispute closes (docs/credit-lots.md § Refunds, disputes and debt). A redeemer or
  -- member of what the buyer paid for is never named here. The tables are 50-purchases.sql's and
  -- 56-plans.sql's; 60-dispute-suspension.sql indexes them.
  if exists (select 1 from billing.purchases p
             where p.user_id = p_user and p.dispute_status = 'open' and not p.wallet_answers)
     or exists (select 1 from billing.subscriptions s join billing.plan_grants g on g.subscription_id = s.id
                where s.user_id = p_user and g.dispute_status = 'open') then
    return jsonb_build_object('token', 'ACCOUNT_DISPUTED',
      'detail', jsonb_build_object('rule', 'a payment of yours is disputed: credits cannot be used or moved until the dispute closes'));
  end if;
  if p_admin and v_role <> 'admin' then
    return jsonb_build_object('token', 'ADMIN_REQUIRED', 'detail', jsonb_build_object('rule', 'app_metadata.role must be admin now'));
  end if;
  return null;
end;
$$;
comment on function billing.standing_refusal(p_user uuid, p_admin boolean) is 'Internal: USER_NOT_ACTIVE unless the user exists, is not deleted and not banned; ACCOUNT_DISPUTED while a purchase or plan invoice the user paid has an open dispute (not one a verified organisation''s wallet answers for: purchases.wallet_answers); ADMIN_REQUIRED unless (when asked) they are an admin now; else null.';
revoke execute on function billing.standing_refusal(p_user uuid, p_admin boolean) from public;

create or replace function billing.assert_user_standing(p_user uuid, p_admin boolean default false) returns void
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_refusal jsonb := billing.standing_refusal(p_user, p_admin);
begin
  if v_refusal is not null then
    perform billing.raise_error(v_refusal ->> 'token', v_refusal -> 'detail');
  end if;
end;
$$;
comment on function billing.assert_user_standing(p_user uuid, p_admin boolean) is 'USER_NOT_ACTIVE unless the user exists, is not deleted and not banned; ADMIN_REQUIRED unless (when asked) they are an admin now.';
revoke execute on function billing.assert_user_standing(p_user uuid, p_admin boolean) from public;
grant execute on function billing.assert_user_standing(p_user uuid, p_admin boolean) to service_role;

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

-- Addresses are compared with ASCII-only case folding: lower() also folds look-alikes (U+212A
-- KELVIN SIGN to 'k', U+0130 to 'i'), so an account registered under one would match another's.
create or replace function billing.ascii_lower(p_text text) returns text
language sql immutable strict parallel safe
set search_path = ''
as $$ select translate(p_text, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz') $$;
comment on function billing.ascii_lower(p_text text) is 'Internal: p_text with A-Z lower-cased and every other character as it is (how sponsor codes compare addresses).';
revoke execute on function billing.ascii_lower(p_text text) from public;

-- Every Idempotency-Key the API takes (1–255 printable characters, docs/api.md) works on every
-- money route. The keys a route derives from it for the ledger ('http:<user>:<action>:<key>',
-- 'allowance:<key>:<member>') may pass the 300 characters transfers_key_length allows: a
-- derived key is the key itself when it fits, else with the key replaced by its SHA-256.
-- `p_scope || p_key` when that fits in 300 characters, else `p_scope || 'sha256:' || hex`.
create or replace function billing.scoped_key(p_scope text, p_key text) returns text
language plpgsql immutable
set search_path = ''
as $$
begin
  -- A key that itself reads 'sha256:…' is hashed too: used as it is, it could name the same
  -- ledger key as the hash of another, longer key.
  return case when length(p_scope || p_key) <= 300 and p_key not like 'sha256:%' then p_scope || p_key
    else p_scope || 'sha256:' || encode(sha256(convert_to(p_key, 'UTF8')), 'hex') end;
end
$$;
comment on function billing.scoped_key(p_scope text, p_key text) is 'Internal: a ledger idempotency key derived from a request''s key under p_scope, at most 300 characters (the key''s SHA-256 when the whole would not fit, or when the key itself reads sha256:…).';
revoke execute on function billing.scoped_key(p_scope text, p_key text) from public;

create or replace function billing.json_time(p_at timestamptz) returns text
language plpgsql immutable
set search_path = ''
as $$ begin return to_char(p_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'); end $$;
comment on function billing.json_time(p_at timestamp with time zone) is 'A time as the API writes it (JavaScript''s toISOString).';
revoke execute on function billing.json_time(p_at timestamp with time zone) from public;

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

create or replace function billing.org_wallet_id(p_org uuid) returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_id bigint;
begin
  select a.id into v_id from billing.accounts a where a.org_id = p_org and a.member_id is null;
  if v_id is null then
    insert into billing.accounts (org_id) values (p_org) on conflict do nothing returning id into v_id;
    if v_id is null then
      select a.id into v_id from billing.accounts a where a.org_id = p_org and a.member_id is null;
    end if;
  end if;
  return v_id;
end;
$$;
comment on function billing.org_wallet_id(p_org uuid) is 'Internal: the organisation''s wallet account, created on first use.';
revoke execute on function billing.org_wallet_id(p_org uuid) from public;

-- A gift or sponsor code's escrow account, created on first use.
create or replace function billing.code_escrow_id(p_code uuid) returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_id bigint;
begin
  select a.id into v_id from billing.accounts a where a.code_id = p_code;
  if v_id is null then
    insert into billing.accounts (code_id) values (p_code) on conflict do nothing returning id into v_id;
    if v_id is null then
      select a.id into v_id from billing.accounts a where a.code_id = p_code;
    end if;
  end if;
  return v_id;
end;
$$;
comment on function billing.code_escrow_id(p_code uuid) is 'Internal: the account holding a gift or sponsor code''s credits until it is redeemed.';
revoke execute on function billing.code_escrow_id(p_code uuid) from public;

create or replace function billing.balance_of(p_account_id bigint)
returns billing.balance
language plpgsql
stable
set search_path = ''
as $$
declare
  a billing.accounts;
  v_overdue numeric := 0;
  v_due numeric := 0;
  v_given numeric := 0;
  v_claimed numeric := 0;                         -- of overdue holds, what their claims hold will keep
  v_kept numeric := 0;                            -- of due lots, what claims holds keep (never expires)
  v_frozen numeric := 0;
  v_debt numeric;
begin
  select * into a from billing.accounts x where x.id = p_account_id;
  if not found then
    return null;
  end if;
  -- As billing.settled would leave it: overdue holds ended; once next_expiry has passed, due lots
  -- expired (reserved or frozen, whole) and the live holds that reserved them shrunk by their
  -- part. Each sum is read only when it can be non-zero: nearly every account has nothing held or
  -- due, and is answered from its row. (A claims hold is held until the tick takes its claims
  -- back, billing.take_back_claims: no settle ends it.)
  if a.next_hold_expiry <= now() then
    v_overdue := coalesce((select sum(h.amount) from billing.holds h where h.account_id = a.id and h.status = 'active'
                           and h.expires_at <= now() and h.purpose <> 'claims'), 0);
    -- What refunds claimed of an overdue hold's lots stays held, in a claims hold, when it ends
    -- (billing.keep_claims; before a lot due after it expires), and so never expires.
    select coalesce(sum(least(c.amount, hl.amount)), 0),
           coalesce(sum(least(c.amount, hl.amount)) filter (where l.expires_at <= now()), 0)
      into v_claimed, v_kept
    from (select t.hold_id, t.lot_id, sum(t.amount) as amount from billing.lot_take_backs t
          join billing.holds h on h.id = t.hold_id and h.status = 'active' and h.purpose <> 'claims'
            and h.expires_at <= now()
          where h.account_id = a.id group by 1, 2) c
    join billing.holds h on h.id = c.hold_id
    join billing.hold_lots hl on hl.hold_id = c.hold_id and hl.lot_id = c.lot_id
    join billing.lots l on l.id = c.lot_id and l.open and not coalesce(l.expires_at < h.expires_at, false);
    v_overdue := v_overdue - v_claimed;
  end if;
  if a.next_expiry <= now() then
    v_due := coalesce((select sum(l.remaining) from billing.lots l
                       where l.account_id = a.id and l.open and l.expires_at <= now()), 0);
    if a.held > 0 then
      -- What claims holds keep of due lots does not expire (billing.expire_due_lots): still held.
      select coalesce(sum(hl.amount) filter (where h.purpose <> 'claims' and h.expires_at > now()), 0),
             v_kept + coalesce(sum(hl.amount) filter (where h.purpose = 'claims'), 0)
        into v_given, v_kept
      from billing.hold_lots hl
      join billing.holds h on h.id = hl.hold_id and h.status = 'active'
      join billing.lots l on l.id = hl.lot_id and l.open and l.expires_at <= now()
      where h.account_id = a.id;
      v_due := v_due - v_kept;
    end if;
  end if;
  -- A frozen lot's free credits are in the balance but cannot be spent until its dispute ends;
  -- what overdue holds reserved of it is back in them. A debt beside them (the balance below what
  -- open lots hold) waits in front of them, not of the free credits: what may be spent is Σ free,
  -- at most balance − held, as the writer answers.
  if a.frozen_lots then
    select coalesce(sum(l.remaining - l.reserved) filter (where l.frozen), 0)
        + case when v_overdue > 0 then coalesce((select sum(hl.amount) from billing.hold_lots hl
            join billing.holds h on h.id = hl.hold_id and h.status = 'active' and h.expires_at <= now()
              and h.purpose <> 'claims'
            join billing.lots x on x.id = hl.lot_id and x.open and x.frozen
              and not coalesce(a.next_expiry <= now() and x.expires_at <= now(), false)
            where h.account_id = a.id), 0) else 0 end,
      coalesce(sum(l.remaining), 0) - (a.balance - v_due)
    into v_frozen, v_debt
    from billing.lots l
    where l.account_id = a.id and l.open and not coalesce(a.next_expiry <= now() and l.expires_at <= now(), false);
    v_frozen := v_frozen - least(greatest(v_debt, 0), v_frozen);
  end if;
  return (a.balance - v_due, a.held - v_overdue - v_given,
    a.balance - v_due - a.held + v_overdue + v_given - v_frozen)::billing.balance;
end
$$;
comment on function billing.balance_of(p_account_id bigint) is 'Balance, live held amount (holds past their TTL no longer count) and available.';
revoke execute on function billing.balance_of(p_account_id bigint) from public;
grant execute on function billing.balance_of(p_account_id bigint) to service_role;
grant execute on function billing.balance_of(p_account_id bigint) to authenticated;

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

create policy "Users can read their own caps" on billing.spend_caps
  for select to authenticated using (account_id in (select a.id from billing.accounts a where a.user_id = (select auth.uid())));

-- ============================================================ reference rows





insert into billing.accounts (code) values
  ('purchases'), ('promotions'), ('adjustments'), ('usage_revenue'), ('refunds'), ('disputes'), ('expired');
