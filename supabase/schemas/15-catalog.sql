-- ============================================================ tables

-- What credits cost and what they sell for: versioned rate cards and credit packages.
-- 1 USD = 1,000 credits.
create table billing.rate_cards (
  id bigint generated always as identity primary key,
  model text not null,
  version integer not null,
  usd_per_million_input numeric(38, 18) not null,
  usd_per_million_output numeric(38, 18) not null,
  markup numeric(10, 4) not null,                 -- multiplier on the provider's price
  effective_from timestamptz not null,
  created_at timestamptz not null default now(),
  usd_per_million_cached_input numeric(38, 18),   -- null: cached input is charged at the input price
  usd_per_million_reasoning numeric(38, 18),      -- null: reasoning is charged at the output price
  usd_per_image numeric(38, 18),                  -- null: images are refused (UNPRICED_USAGE)
  usd_per_audio_second numeric(38, 18),           -- null: audio is refused (UNPRICED_USAGE)
  draft_id uuid,                                  -- the draft it was published from (null: a reference row)
  constraint rate_cards_prices_in_range check (
    usd_per_million_input >= 0 and usd_per_million_input <= 1000000
    and usd_per_million_output >= 0 and usd_per_million_output <= 1000000
    and coalesce(usd_per_million_cached_input, 0) between 0 and 1000000
    and coalesce(usd_per_million_reasoning, 0) between 0 and 1000000
    and coalesce(usd_per_image, 0) between 0 and 1000000
    and coalesce(usd_per_audio_second, 0) between 0 and 1000000),
  constraint rate_cards_markup_positive check (markup > 0),
  constraint rate_cards_model_version unique (model, version),
  constraint rate_cards_draft unique (draft_id)
);
comment on table billing.rate_cards is 'Versioned prices per model. A new price is a new version with a later effective_from; rows are never edited.';
alter table billing.rate_cards enable row level security;
grant select on table billing.rate_cards to authenticated;
grant select on table billing.rate_cards to service_role;

create index rate_cards_current on billing.rate_cards (model, effective_from desc);

create table billing.credit_packages (
  id text primary key,                            -- stable slug: 'starter'
  name text not null,
  price_cents integer not null,
  currency text not null default 'usd',
  credits numeric(38, 18) not null,               -- purchased credits (1 USD = 1,000)
  bonus_credits numeric(38, 18) not null default 0, -- granted as a separate promo_grant transfer
  active boolean not null default true,
  sort_order integer not null default 0,
  constraint credit_packages_price_positive check (price_cents > 0),
  constraint credit_packages_credits_positive check (credits > 0 and bonus_credits >= 0),
  constraint credit_packages_currency check (currency ~ '^[a-z]{3}$')
);
comment on table billing.credit_packages is 'What a student can buy. Bonus credits are a separate promo_grant so refunds can tell them apart.';
alter table billing.credit_packages enable row level security;
grant select on table billing.credit_packages to authenticated;
grant select on table billing.credit_packages to service_role;

-- ============================================================ triggers

create trigger rate_cards_immutable before update or delete on billing.rate_cards
  for each row execute function billing.refuse_ledger_change();

-- ============================================================ policies

create policy "Signed-in users can read rate cards" on billing.rate_cards
  for select to authenticated using (true);

create policy "Signed-in users can read active packages" on billing.credit_packages
  for select to authenticated using (active);

-- ============================================================ reference rows

insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from) values
  ('gpt-4o', 1, 5, 15, 4, '2026-01-01'),
  ('gpt-4o-mini', 1, 0.15, 0.60, 4, '2026-01-01'),
  ('claude-3-5-haiku', 1, 0.80, 4, 4, '2026-01-01');

insert into billing.credit_packages (id, name, price_cents, credits, bonus_credits, sort_order) values
  ('mini', 'Mini', 500, 5000, 0, 1),
  ('starter', 'Starter', 999, 9990, 0, 2),
  ('plus', 'Plus', 2499, 24990, 1249.5, 3),     -- +5%
  ('pro', 'Pro', 4999, 49990, 4999, 4),         -- +10%
  ('max', 'Max', 9999, 99990, 19998, 5);
