-- A transfer built to pgledger's published design (github.com/pgr0ss/pgledger: its README and
-- blog posts), the baseline `./scripts/bench ledger` measures the SQL debit against: accounts
-- with a balance and a version; a transfer locks both accounts in id order (no deadlocks),
-- refuses to overdraw, updates each balance and version, and writes the transfer and one entry
-- per account with the balance before and after. Written here from that description, not
-- copied. As in its current releases: time-ordered UUIDv7 ids made in SQL, a currency on each
-- account that both sides must share, and flags that allow a negative or positive balance.
-- Its own schema, made afresh each run.
drop schema if exists pgledger_bench cascade;
create schema pgledger_bench;

-- A UUIDv7 from the clock (48 bits of milliseconds, the version nibble, random bits).
create or replace function pgledger_bench.new_id() returns uuid language sql volatile as $$
  select encode(overlay(uuid_send(gen_random_uuid()) placing
      substring(int8send((extract(epoch from clock_timestamp()) * 1000)::bigint) from 3) from 1 for 6), 'hex')::uuid
$$;

create table pgledger_bench.accounts (
  id uuid primary key default pgledger_bench.new_id(),
  n integer unique not null,
  currency text not null default 'USD',
  balance numeric not null default 0,
  version bigint not null default 0,
  allow_negative_balance boolean not null default false,
  allow_positive_balance boolean not null default true,
  updated_at timestamptz not null default now()
);
create table pgledger_bench.transfers (
  id uuid primary key default pgledger_bench.new_id(),
  from_account_id uuid not null references pgledger_bench.accounts (id),
  to_account_id uuid not null references pgledger_bench.accounts (id),
  amount numeric not null check (amount > 0),
  created_at timestamptz not null default now(),
  check (from_account_id <> to_account_id)
);
create index on pgledger_bench.transfers (from_account_id);
create index on pgledger_bench.transfers (to_account_id);
create table pgledger_bench.entries (
  id uuid primary key default pgledger_bench.new_id(),
  account_id uuid not null references pgledger_bench.accounts (id),
  transfer_id uuid not null references pgledger_bench.transfers (id),
  amount numeric not null,
  account_previous_balance numeric not null,
  account_current_balance numeric not null,
  account_version bigint not null,
  created_at timestamptz not null default now()
);
create index on pgledger_bench.entries (account_id);
create index on pgledger_bench.entries (transfer_id);

-- `n` accounts of 1e9, the earlier run's rows gone.
create or replace function pgledger_bench.reset(n integer) returns void language sql as $$
  truncate pgledger_bench.entries, pgledger_bench.transfers, pgledger_bench.accounts;
  insert into pgledger_bench.accounts (n, balance) select g, 1e9 from generate_series(1, n) g;
$$;

-- Accounts by number (1..n), as the benchmark picks them.
create or replace function pgledger_bench.transfer(p_from integer, p_to integer, p_amount numeric)
returns uuid language plpgsql as $$
declare
  v_from pgledger_bench.accounts;
  v_to pgledger_bench.accounts;
  v_transfer uuid;
begin
  select * into v_from from pgledger_bench.accounts a where a.n = p_from;
  select * into v_to from pgledger_bench.accounts a where a.n = p_to;
  if v_from.currency <> v_to.currency then
    raise exception 'currencies differ: % and %', v_from.currency, v_to.currency;
  end if;
  -- Both rows locked in id order, whichever side pays.
  perform 1 from pgledger_bench.accounts a where a.id in (v_from.id, v_to.id) order by a.id for update;
  update pgledger_bench.accounts a set balance = a.balance - p_amount, version = a.version + 1, updated_at = now()
  where a.id = v_from.id returning a.* into v_from;
  if v_from.balance < 0 and not v_from.allow_negative_balance then
    raise exception 'account % cannot go negative', v_from.id;
  end if;
  update pgledger_bench.accounts a set balance = a.balance + p_amount, version = a.version + 1, updated_at = now()
  where a.id = v_to.id returning a.* into v_to;
  if v_to.balance > 0 and not v_to.allow_positive_balance then
    raise exception 'account % cannot go positive', v_to.id;
  end if;
  insert into pgledger_bench.transfers (from_account_id, to_account_id, amount) values (v_from.id, v_to.id, p_amount)
  returning id into v_transfer;
  insert into pgledger_bench.entries (account_id, transfer_id, amount, account_previous_balance, account_current_balance, account_version)
  values (v_from.id, v_transfer, -p_amount, v_from.balance + p_amount, v_from.balance, v_from.version),
         (v_to.id, v_transfer, p_amount, v_to.balance - p_amount, v_to.balance, v_to.version);
  return v_transfer;
end;
$$;
