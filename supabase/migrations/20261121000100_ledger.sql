-- The credit ledger: double-entry, append-only, exact decimals.
--
-- Money moves only through the SECURITY DEFINER functions below (EXECUTE for service_role
-- only). A transfer moves an amount from one account to another and writes two entries whose
-- amounts sum to zero, so Σ entries = 0 always. User accounts carry a locked balance, a held
-- amount and a version; every user entry records balance_after and that version.
--
-- Platform accounts (purchases, usage_revenue, …) are the other side of every movement. They
-- are never locked or updated in place: serialising every debit in the system on one
-- usage_revenue row would cap throughput at one commit at a time. Their balance is Σ of their
-- entries (billing.platform_balances), and their entries carry no balance_after/version.
--
-- Debt: user accounts never go below zero through spending. Only reverse_credits (a refund or
-- dispute of credits already spent) may take a balance below zero; while it is negative every
-- debit and hold is refused (available < 0), and the next purchase pays the debt first simply
-- by adding to the negative balance.

create schema if not exists billing;
comment on schema billing is 'Private: the credit ledger. Not exposed through the API; read through billing_api.';
revoke all on schema billing from public;

-- Deny by default: nothing in billing is executable by PUBLIC unless granted below.
alter default privileges in schema billing revoke execute on functions from public;

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
  'expiry'             -- credits that expired
);
comment on type billing.transfer_kind is 'Why money moved. Every transfer has exactly one.';

-- ============================================================ accounts

create table billing.accounts (
  id bigint generated always as identity primary key,
  user_id uuid unique references auth.users (id) on delete restrict,
  code text unique,                               -- platform accounts only: 'purchases', …
  balance numeric(38, 18) not null default 0,
  held numeric(38, 18) not null default 0,        -- Σ of this account's active holds
  version bigint not null default 0,              -- +1 per entry; entries record it
  caps integer not null default 0,                -- how many spend caps it has (0: no cap check at all)
  created_at timestamptz not null default now(),
  constraint accounts_user_xor_platform check ((user_id is null) <> (code is null)),
  constraint accounts_held_not_negative check (held >= 0),
  constraint accounts_platform_not_tracked check (code is null or (balance = 0 and held = 0 and version = 0))
);
comment on table billing.accounts is 'One credit account per user (created on first use) plus platform accounts, the counterparties of every movement.';

insert into billing.accounts (code) values
  ('purchases'), ('promotions'), ('adjustments'), ('usage_revenue'), ('refunds'), ('disputes'), ('expired');

-- ============================================================ transfers and entries

create table billing.transfers (
  id bigint generated always as identity primary key,
  kind billing.transfer_kind not null,
  from_account_id bigint not null references billing.accounts (id),
  to_account_id bigint not null references billing.accounts (id),
  amount numeric(38, 18) not null,
  idempotency_key text not null,
  correlation_id text,
  reference text,                                 -- e.g. a Stripe id
  rate_card_id bigint,                            -- usage: the rate-card version that priced it
  hold_id uuid,                                   -- hold_capture: the hold captured
  metadata jsonb,
  created_at timestamptz not null default now(),
  constraint transfers_amount_positive check (amount > 0),
  constraint transfers_distinct_accounts check (from_account_id <> to_account_id),
  constraint transfers_key_length check (length(idempotency_key) between 1 and 300),
  constraint transfers_idempotency unique (idempotency_key, kind)
);
comment on table billing.transfers is 'Immutable. A movement of credits between two accounts; a correction is a new transfer.';

create table billing.entries (
  id bigint generated always as identity primary key,
  transfer_id bigint not null references billing.transfers (id),
  account_id bigint not null references billing.accounts (id),
  amount numeric(38, 18) not null,                -- signed: + credits the account, − debits it
  balance_after numeric(38, 18),                  -- user accounts only (see header)
  account_version bigint,                         -- user accounts only
  created_at timestamptz not null default now(),
  constraint entries_amount_nonzero check (amount <> 0),
  constraint entries_tracked_together check ((balance_after is null) = (account_version is null))
);
comment on table billing.entries is 'Immutable. Two per transfer, summing to zero.';
-- User entries only: the platform side of every transfer would make this index's hottest page
-- a point of contention for all writers, and platform balances are summed, not paged.
create index entries_user_account on billing.entries (account_id, id desc) where balance_after is not null;
create index entries_transfer_id on billing.entries (transfer_id);

-- ============================================================ holds

create table billing.holds (
  id uuid primary key default gen_random_uuid(),
  account_id bigint not null references billing.accounts (id),
  amount numeric(38, 18) not null,
  status text not null default 'active',
  -- Who may finish it: 'user' (their own, through the API), 'job' (its job, through the worker or a
  -- cancel), 'dispute' (a Stripe dispute, through the webhook). User routes act on 'user' holds only.
  purpose text not null default 'user',
  captured_amount numeric(38, 18),
  capture_transfer_id bigint references billing.transfers (id),
  idempotency_key text not null unique,
  correlation_id text,
  metadata jsonb,
  expires_at timestamptz not null,
  created_at timestamptz not null default now(),
  finished_at timestamptz,
  constraint holds_amount_positive check (amount > 0),
  constraint holds_status check (status in ('active', 'captured', 'released', 'expired')),
  constraint holds_purpose check (purpose in ('user', 'job', 'dispute')),
  constraint holds_captured_within check (captured_amount is null or (captured_amount > 0 and captured_amount <= amount)),
  constraint holds_finished check ((status = 'active') = (finished_at is null))
);
comment on table billing.holds is 'Two-phase spending: reserve → capture (all or part) or release. available = balance − active holds.';
create index holds_active_expiry on billing.holds (expires_at) where status = 'active';
create index holds_account on billing.holds (account_id, created_at desc);

-- ============================================================ credit lots
-- Every credit that enters a user account arrives as a lot (one per granting transfer) that
-- knows its category, what it cost, its priority and its expiry. Debits draw from lots in
-- spending order (billing.draw_lots) and record what they drew in lot_allocations, so any
-- credit spent can be traced to the grant that paid for it. Invariant (per account):
-- Σ remaining = the balance when it is not negative, 0 in debt.

create table billing.lots (
  id bigint generated always as identity primary key,
  account_id bigint not null references billing.accounts (id),
  grant_transfer_id bigint not null unique references billing.transfers (id),
  purchase_id uuid,                                   -- the Checkout purchase it came with, if any
  category text not null,
  priority integer not null,                          -- lower is spent first
  cost_cents numeric(38, 18) not null default 0,      -- paid for the whole lot; cost basis = cost_cents / amount
  currency text not null default 'usd',
  amount numeric(38, 18) not null,                    -- as granted
  debt_settled numeric(38, 18) not null default 0,    -- the part that paid an existing debt on arrival
  remaining numeric(38, 18) not null,
  -- Indexes filter on this, never on remaining: an update that leaves an index's columns as they
  -- were is HOT (no new index entries), and a debit changes remaining only.
  open boolean generated always as (remaining > 0) stored,
  frozen boolean not null default false,              -- its purchase is disputed: spent last
  granted_at timestamptz not null default now(),
  expires_at timestamptz,
  warned_days integer[] not null default '{}',        -- expiry warnings already queued (30, 7)
  constraint lots_category check (category in ('paid', 'promotional')),
  constraint lots_amount_positive check (amount > 0),
  constraint lots_cost_not_negative check (cost_cents >= 0),
  constraint lots_promotional_free check (category = 'paid' or cost_cents = 0),
  constraint lots_remaining_within check (remaining >= 0 and remaining + debt_settled <= amount),
  constraint lots_debt_settled_within check (debt_settled >= 0)
) with (fillfactor = 50);                             -- room on the page for those HOT updates
comment on table billing.lots is 'Where each credit came from: one lot per grant, drawn down in spending order. remaining is maintained under the account lock.';
create index lots_open on billing.lots (account_id) where open;
create index lots_expiring on billing.lots (expires_at) where open and expires_at is not null;
create index lots_purchase on billing.lots (purchase_id) where purchase_id is not null;
create index lots_granted_brin on billing.lots using brin (granted_at);

create table billing.lot_allocations (
  transfer_id bigint not null references billing.transfers (id),
  lot_id bigint not null references billing.lots (id),
  kind billing.transfer_kind not null,                -- the transfer's, so reporting needs no join
  amount numeric(38, 18) not null,
  created_at timestamptz not null default now(),
  primary key (transfer_id, lot_id),
  constraint lot_allocations_amount_positive check (amount > 0)
);
comment on table billing.lot_allocations is 'Immutable. What each debiting transfer drew from each lot; Σ per transfer ≤ its amount (the rest, if any, became debt).';
create index lot_allocations_created_brin on billing.lot_allocations using brin (created_at);

-- How long a new lot lives, per category (null: no expiry). Paid credits do not expire by
-- default: some jurisdictions restrict expiring paid value (see docs/api.md, Credit lots).
create table billing.credit_expiry_policy (
  category text primary key,
  expires_after interval,
  priority integer not null,
  constraint credit_expiry_policy_category check (category in ('paid', 'promotional')),
  constraint credit_expiry_policy_positive check (expires_after is null or expires_after > interval '0')
);
comment on table billing.credit_expiry_policy is 'Defaults for new lots: lifetime and spending priority per category. An admin grant may override both.';
insert into billing.credit_expiry_policy (category, expires_after, priority) values
  ('promotional', interval '365 days', 10), ('paid', null, 20);

-- ============================================================ immutability

create function billing.refuse_ledger_change() returns trigger
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

create trigger transfers_immutable before update or delete on billing.transfers
  for each row execute function billing.refuse_ledger_change();
create trigger transfers_no_truncate before truncate on billing.transfers
  for each statement execute function billing.refuse_ledger_change();
create trigger entries_immutable before update or delete on billing.entries
  for each row execute function billing.refuse_ledger_change();
create trigger entries_no_truncate before truncate on billing.entries
  for each statement execute function billing.refuse_ledger_change();
create trigger lot_allocations_immutable before update or delete on billing.lot_allocations
  for each row execute function billing.refuse_ledger_change();
create trigger lot_allocations_no_truncate before truncate on billing.lot_allocations
  for each statement execute function billing.refuse_ledger_change();

-- ============================================================ privileges and RLS

revoke all on all tables in schema billing from public, anon, authenticated, service_role;
alter table billing.accounts enable row level security;
alter table billing.transfers enable row level security;
alter table billing.entries enable row level security;
alter table billing.holds enable row level security;
alter table billing.lots enable row level security;
alter table billing.lot_allocations enable row level security;
alter table billing.credit_expiry_policy enable row level security;

-- Reads for signed-in users go through billing_api's security_invoker views; these grants and
-- policies are what those views run under.
grant usage on schema billing to authenticated, service_role;
grant select on billing.accounts, billing.transfers, billing.entries, billing.holds, billing.lots, billing.lot_allocations
  to authenticated, service_role;
grant select on billing.credit_expiry_policy to service_role;

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
create policy "Users can read their own lots" on billing.lots
  for select to authenticated using (account_id in (select a.id from billing.accounts a where a.user_id = (select auth.uid())));
create policy "Users can read allocations of their own lots" on billing.lot_allocations
  for select to authenticated using (lot_id in (select l.id from billing.lots l where l.account_id in
    (select a.id from billing.accounts a where a.user_id = (select auth.uid()))));
