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
  usd_per_million_cache_write numeric(38, 18),    -- null: a request that asks to write the cache is refused; a write reported anyway costs the input price
  usd_per_image numeric(38, 18),                  -- null: images are refused (UNPRICED_USAGE)
  usd_per_audio_second numeric(38, 18),           -- null: audio is refused (UNPRICED_USAGE)
  draft_id uuid,                                  -- the draft it was published from (null: a reference row)
  upstream text not null default 'openai',        -- the provider the gateway sends its calls to (docs/ai-gateway.md § Upstreams)
  kind text not null default 'chat',              -- what the model is: chat (answers text) or embedding (answers vectors); which APIs serve it (billing.model_kind_endpoints)
  -- Credits per unit of each kind, exact (the USD price × markup, / 1,000 per token, × 1,000 per
  -- image or second), the null defaults applied: what a charge multiplies its counts by, worked
  -- out once per card rather than on every charge (billing.price_usage). Trailing zeros are
  -- trimmed: the same value, fewer digits to multiply.
  credits_per_input_token numeric generated always as (trim_scale(usd_per_million_input * markup * 0.001)) stored,
  credits_per_cached_input_token numeric generated always as
    (trim_scale(coalesce(usd_per_million_cached_input, usd_per_million_input) * markup * 0.001)) stored,
  credits_per_output_token numeric generated always as (trim_scale(usd_per_million_output * markup * 0.001)) stored,
  credits_per_reasoning_token numeric generated always as
    (trim_scale(coalesce(usd_per_million_reasoning, usd_per_million_output) * markup * 0.001)) stored,
  credits_per_cache_write_token numeric generated always as (trim_scale(coalesce(usd_per_million_cache_write,
    usd_per_million_input) * markup * 0.001)) stored,
  credits_per_image numeric generated always as (trim_scale(usd_per_image * markup * 1000)) stored, -- null: refused
  credits_per_audio_second numeric generated always as (trim_scale(usd_per_audio_second * markup * 1000)) stored, -- null: refused
  usd_per_million_cache_write_1h numeric(38, 18), -- hour-long cache writes; null: a request that asks for one is refused; one reported anyway costs the input price
  credits_per_cache_write_1h_token numeric generated always as (trim_scale(coalesce(usd_per_million_cache_write_1h,
    usd_per_million_input) * markup * 0.001)) stored,
  constraint rate_cards_prices_in_range check (
    usd_per_million_input >= 0 and usd_per_million_input <= 1000000
    and usd_per_million_output >= 0 and usd_per_million_output <= 1000000
    and coalesce(usd_per_million_cached_input, 0) between 0 and 1000000
    and coalesce(usd_per_million_reasoning, 0) between 0 and 1000000
    and coalesce(usd_per_million_cache_write, 0) between 0 and 1000000
    and coalesce(usd_per_image, 0) between 0 and 1000000
    and coalesce(usd_per_audio_second, 0) between 0 and 1000000
    and coalesce(usd_per_million_cache_write_1h, 0) between 0 and 1000000),
  constraint rate_cards_markup_positive check (markup > 0),
  constraint rate_cards_upstream check (upstream ~ '^[a-z][a-z0-9-]{0,31}$'),
  constraint rate_cards_kind check (kind in ('chat', 'embedding')),
  constraint rate_cards_model_version unique (model, version),
  constraint rate_cards_draft unique (draft_id)
);
comment on table billing.rate_cards is 'Versioned prices per model. A new price is a new version with a later effective_from; rows are never edited.';
alter table billing.rate_cards enable row level security;
grant select on table billing.rate_cards to authenticated;
grant select on table billing.rate_cards to service_role;

create index rate_cards_current on billing.rate_cards (model, effective_from desc);

-- Other names a card answers to: an id a provider no longer serves, kept for the apps that
-- already call it. A call naming an alias is priced, recorded and sent to the provider as the
-- card's own model (billing.card_model, the one place a name becomes a card). An alias wins
-- over earlier cards of its own name: those stay as the record of what they charged, and no list
-- shows them. Written by migrations; nothing on the request path writes it.
create table billing.model_aliases (
  alias text primary key,
  model text not null,                  -- the card's model (a rate_cards.model that is no alias itself: billing.check_model_alias)
  created_at timestamptz not null default now(),
  constraint model_aliases_alias check (alias ~ '^[A-Za-z0-9._:-]{1,64}$'),
  constraint model_aliases_not_itself check (alias <> model)
);
comment on table billing.model_aliases is 'Other names of a rate card''s model: a call naming one is priced, recorded and sent upstream as the card''s model (billing.card_model); the alias''s own earlier cards are history, listed nowhere.';
alter table billing.model_aliases enable row level security;
revoke all on table billing.model_aliases from public, anon, authenticated;
-- Signed-in users read it through billing_api.rate_cards (security_invoker), which leaves aliases out.
grant select on table billing.model_aliases to authenticated;
grant select on table billing.model_aliases to service_role;

create index model_aliases_model on billing.model_aliases (model);

create table billing.rate_card_drafts (
  id uuid primary key default gen_random_uuid(),
  model text not null,
  usd_per_million_input numeric(38, 18) not null,
  usd_per_million_output numeric(38, 18) not null,
  markup numeric(10, 4) not null,
  usd_per_million_cached_input numeric(38, 18),   -- null: as on rate_cards (input price)
  usd_per_million_reasoning numeric(38, 18),      -- null: as on rate_cards (output price)
  usd_per_million_cache_write numeric(38, 18),    -- null: as on rate_cards (writes refused)
  usd_per_image numeric(38, 18),                  -- null: images refused
  usd_per_audio_second numeric(38, 18),           -- null: audio refused
  status text not null default 'draft',
  created_by uuid not null,                       -- the admin who drafted it
  created_at timestamptz not null default now(),
  rate_card_id bigint references billing.rate_cards (id), -- the version it became, once published
  upstream text not null default 'openai',        -- as on rate_cards
  kind text not null default 'chat',              -- as on rate_cards
  -- Credits per unit of each kind, as on rate_cards (what the dry run multiplies by).
  credits_per_input_token numeric generated always as (trim_scale(usd_per_million_input * markup * 0.001)) stored,
  credits_per_cached_input_token numeric generated always as
    (trim_scale(coalesce(usd_per_million_cached_input, usd_per_million_input) * markup * 0.001)) stored,
  credits_per_output_token numeric generated always as (trim_scale(usd_per_million_output * markup * 0.001)) stored,
  credits_per_reasoning_token numeric generated always as
    (trim_scale(coalesce(usd_per_million_reasoning, usd_per_million_output) * markup * 0.001)) stored,
  credits_per_cache_write_token numeric generated always as (trim_scale(coalesce(usd_per_million_cache_write,
    usd_per_million_input) * markup * 0.001)) stored,
  credits_per_image numeric generated always as (trim_scale(usd_per_image * markup * 1000)) stored,
  credits_per_audio_second numeric generated always as (trim_scale(usd_per_audio_second * markup * 1000)) stored,
  usd_per_million_cache_write_1h numeric(38, 18), -- null: as on rate_cards (hour-long writes refused)
  credits_per_cache_write_1h_token numeric generated always as (trim_scale(coalesce(usd_per_million_cache_write_1h,
    usd_per_million_input) * markup * 0.001)) stored,
  constraint rate_card_drafts_status check (status in ('draft', 'published', 'discarded')),
  constraint rate_card_drafts_published check ((status = 'published') = (rate_card_id is not null)),
  constraint rate_card_drafts_model check (model ~ '^[A-Za-z0-9._:-]{1,64}$'),
  constraint rate_card_drafts_upstream check (upstream ~ '^[a-z][a-z0-9-]{0,31}$'),
  constraint rate_card_drafts_kind check (kind in ('chat', 'embedding')),
  constraint rate_card_drafts_prices_in_range check (
    usd_per_million_input >= 0 and usd_per_million_input <= 1000000
    and usd_per_million_output >= 0 and usd_per_million_output <= 1000000
    and coalesce(usd_per_million_cached_input, 0) between 0 and 1000000
    and coalesce(usd_per_million_reasoning, 0) between 0 and 1000000
    and coalesce(usd_per_million_cache_write, 0) between 0 and 1000000
    and coalesce(usd_per_image, 0) between 0 and 1000000
    and coalesce(usd_per_audio_second, 0) between 0 and 1000000
    and coalesce(usd_per_million_cache_write_1h, 0) between 0 and 1000000),
  constraint rate_card_drafts_markup check (markup > 0)
);
comment on table billing.rate_card_drafts is 'Rate cards an admin is preparing: priced by the dry run, never by usage, until published as a new rate_cards version.';
alter table billing.rate_card_drafts enable row level security;

create table billing.rate_card_changes (
  id bigint generated always as identity primary key,
  draft_id uuid not null references billing.rate_card_drafts (id),
  action text not null,
  admin_id uuid not null,
  reason text not null,
  before jsonb,                                   -- the card in effect before (or the draft before discarding)
  after jsonb,                                    -- the draft, or the card it became
  created_at timestamptz not null default now(),
  constraint rate_card_changes_action check (action in ('drafted', 'published', 'discarded')),
  constraint rate_card_changes_reason check (length(reason) between 1 and 500)
);
comment on table billing.rate_card_changes is 'Audit of every rate-card change: who, why, and the card before and after. Append-only.';
alter table billing.rate_card_changes enable row level security;

create index rate_card_changes_recent on billing.rate_card_changes (id desc);

create table billing.credit_packages (
  id text primary key,                            -- stable slug: 'starter'
  name text not null,
  price_cents integer not null,
  currency text not null default 'usd',
  credits numeric(38, 18) not null,               -- purchased credits (1 USD = 1,000)
  bonus_credits numeric(38, 18) not null default 0, -- granted as a separate promo_grant transfer
  active boolean not null default true,           -- false: retired (no new purchase; history kept)
  sort_order integer not null default 0,
  version integer not null default 1,             -- the version on sale (credit_package_versions)
  stripe_price_id text,                           -- that version's Stripe Price; null: Checkout sends price_data
  constraint credit_packages_price_positive check (price_cents > 0),
  constraint credit_packages_credits_positive check (credits > 0 and bonus_credits >= 0),
  constraint credit_packages_currency check (currency ~ '^[a-z]{3}$'),
  constraint credit_packages_id check (id ~ '^[a-z0-9_-]{1,64}$'),
  constraint credit_packages_name check (length(name) between 1 and 80)
);
comment on table billing.credit_packages is 'What a student can buy: each package as its current version sells it. Bonus credits are a separate promo_grant so refunds can tell them apart. Changed only through the admin catalogue functions (58-catalog-admin.sql).';
alter table billing.credit_packages enable row level security;
grant select on table billing.credit_packages to authenticated;
grant select on table billing.credit_packages to service_role;

-- Every version a package was sold at. A purchase names the version it sold (purchases.package_version),
-- and its own columns copy that version's price and credits: a later change reaches neither an
-- open Checkout nor a paid purchase.
create table billing.credit_package_versions (
  package_id text not null references billing.credit_packages (id),
  version integer not null,
  name text not null,
  price_cents integer not null,
  currency text not null,
  credits numeric(38, 18) not null,
  bonus_credits numeric(38, 18) not null,
  stripe_price_id text,                           -- a one-time Stripe Price for exactly this price; null: price_data
  created_at timestamptz not null default now(),
  constraint credit_package_versions_pkey primary key (package_id, version),
  constraint credit_package_versions_price check (price_cents > 0),
  constraint credit_package_versions_credits check (credits > 0 and bonus_credits >= 0),
  constraint credit_package_versions_currency check (currency ~ '^[a-z]{3}$')
);
comment on table billing.credit_package_versions is 'Every version of every credit package, as sold (price, credits, bonus, Stripe Price). Append-only.';
alter table billing.credit_package_versions enable row level security;
grant select on table billing.credit_package_versions to service_role;

-- What each model costs the platform at each upstream, versioned like rate_cards (the same
-- kinds, in USD, no markup). Nothing on the money path reads it: a charge's provider cost is
-- derived from its token counts and the price, at the upstream of its model's card, in effect
-- when it was made (billing.provider_cost, 35-usage-summary.sql). ./scripts/prices compares
-- these rows with the pinned catalogue (@pydantic/genai-prices) and writes new versions.
create table billing.provider_prices (
  id bigint generated always as identity primary key,
  model text not null,
  version integer not null,
  usd_per_million_input numeric(38, 18) not null,
  usd_per_million_output numeric(38, 18) not null,
  usd_per_million_cached_input numeric(38, 18),   -- null: cached input costs the input price
  usd_per_million_reasoning numeric(38, 18),      -- null: reasoning costs the output price
  usd_per_million_cache_write numeric(38, 18),    -- null: cache writes cost the input price
  usd_per_image numeric(38, 18),                  -- null: images cost nothing
  usd_per_audio_second numeric(38, 18),           -- null: audio costs nothing
  effective_from timestamptz not null,
  created_at timestamptz not null default now(),
  constraint provider_prices_in_range check (
    usd_per_million_input >= 0 and usd_per_million_input <= 1000000
    and usd_per_million_output >= 0 and usd_per_million_output <= 1000000
    and coalesce(usd_per_million_cached_input, 0) between 0 and 1000000
    and coalesce(usd_per_million_reasoning, 0) between 0 and 1000000
    and coalesce(usd_per_million_cache_write, 0) between 0 and 1000000
    and coalesce(usd_per_image, 0) between 0 and 1000000
    and coalesce(usd_per_audio_second, 0) between 0 and 1000000),
  source_url text,                                -- where the price was read (the provider's public price list)
  source_checked_on date,                         -- the day it was read there
  usd_per_million_cache_write_1h numeric(38, 18), -- null: hour-long cache writes cost the input price
  constraint provider_prices_cache_write_1h_in_range check (coalesce(usd_per_million_cache_write_1h, 0) between 0 and 1000000),
  constraint provider_prices_model check (model ~ '^[A-Za-z0-9._:-]{1,64}$'),
  upstream text not null default 'openai',        -- who is paid for the call, as rate_cards.upstream names it
  constraint provider_prices_upstream check (upstream ~ '^[a-z][a-z0-9-]{0,31}$'),
  constraint provider_prices_model_upstream_version unique (model, upstream, version)
);
comment on table billing.provider_prices is 'Versioned provider prices per model and upstream (what a charge costs the platform). A new price is a new version with a later effective_from; rows are never edited.';
alter table billing.provider_prices enable row level security;
grant select on table billing.provider_prices to service_role;

create index provider_prices_current on billing.provider_prices (model, upstream, effective_from desc);

-- ============================================================ functions

-- A card (or draft) as the admin API shows it: prices as exact strings, nulls kept.
create or replace function billing.rate_card_json(p_model text, p_input numeric, p_cached_input numeric, p_output numeric,
  p_reasoning numeric, p_image numeric, p_audio_second numeric, p_markup numeric, p_cache_write numeric, p_upstream text,
  p_cache_write_1h numeric)
returns jsonb
language sql immutable
set search_path = ''
as $$
  select jsonb_build_object('model', p_model, 'usd_per_million_input', trim_scale(p_input)::text,
    'usd_per_million_cached_input', trim_scale(p_cached_input)::text, 'usd_per_million_output', trim_scale(p_output)::text,
    'usd_per_million_reasoning', trim_scale(p_reasoning)::text, 'usd_per_image', trim_scale(p_image)::text,
    'usd_per_audio_second', trim_scale(p_audio_second)::text, 'markup', trim_scale(p_markup)::text,
    'usd_per_million_cache_write', trim_scale(p_cache_write)::text, 'upstream', p_upstream,
    'usd_per_million_cache_write_1h', trim_scale(p_cache_write_1h)::text)
$$;
comment on function billing.rate_card_json(p_model text, p_input numeric, p_cached_input numeric, p_output numeric, p_reasoning numeric, p_image numeric, p_audio_second numeric, p_markup numeric, p_cache_write numeric, p_upstream text, p_cache_write_1h numeric) is 'Internal: a rate card''s prices as JSON (exact strings; null: the kind''s default, docs/pricing.md).';
revoke execute on function billing.rate_card_json(p_model text, p_input numeric, p_cached_input numeric, p_output numeric, p_reasoning numeric, p_image numeric, p_audio_second numeric, p_markup numeric, p_cache_write numeric, p_upstream text, p_cache_write_1h numeric) from public;

create or replace function billing.rate_card_row_json(r billing.rate_cards) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('id', r.id::text, 'version', r.version, 'effective_from', billing.json_time(r.effective_from))
    || billing.rate_card_json(r.model, r.usd_per_million_input, r.usd_per_million_cached_input, r.usd_per_million_output,
      r.usd_per_million_reasoning, r.usd_per_image, r.usd_per_audio_second, r.markup, r.usd_per_million_cache_write,
      r.upstream, r.usd_per_million_cache_write_1h) || jsonb_build_object('kind', r.kind)
$$;
comment on function billing.rate_card_row_json(r billing.rate_cards) is 'Internal: a published rate card as the admin API returns it.';
revoke execute on function billing.rate_card_row_json(r billing.rate_cards) from public;

-- The card of `p_model` in effect at `p_at` (other than `p_except`), as JSON; null when none.
create or replace function billing.rate_card_at(p_model text, p_at timestamptz, p_except bigint default null)
returns jsonb
language sql stable
set search_path = ''
as $$
  select billing.rate_card_row_json(r) from billing.rate_cards r
  where r.model = p_model and r.effective_from <= p_at and r.id is distinct from p_except
  order by r.effective_from desc, r.version desc limit 1
$$;
comment on function billing.rate_card_at(p_model text, p_at timestamp with time zone, p_except bigint) is 'Internal: the card of a model in effect at a time (other than p_except), as JSON; null when none.';
revoke execute on function billing.rate_card_at(p_model text, p_at timestamp with time zone, p_except bigint) from public;

create or replace function billing.rate_card_draft_json(d billing.rate_card_drafts) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('id', d.id, 'status', d.status, 'created_by', d.created_by,
      'created_at', billing.json_time(d.created_at), 'rate_card_id', d.rate_card_id::text)
    || billing.rate_card_json(d.model, d.usd_per_million_input, d.usd_per_million_cached_input, d.usd_per_million_output,
      d.usd_per_million_reasoning, d.usd_per_image, d.usd_per_audio_second, d.markup, d.usd_per_million_cache_write,
      d.upstream, d.usd_per_million_cache_write_1h) || jsonb_build_object('kind', d.kind)
$$;
comment on function billing.rate_card_draft_json(d billing.rate_card_drafts) is 'Internal: a draft as the admin API returns it.';
revoke execute on function billing.rate_card_draft_json(d billing.rate_card_drafts) from public;

-- POST /admin/rate-cards/drafts: an admin drafts a card for a model (new or priced already).
-- Nothing prices with it until it is published; the audit row names the card it would replace.
create or replace function billing.draft_rate_card(p_admin uuid, p_card jsonb, p_reason text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_draft billing.rate_card_drafts;
begin
  if p_reason is null or length(p_reason) not between 1 and 500 then
    perform billing.raise_error('INVALID_RATE_CARD', jsonb_build_object('field', 'reason', 'rule', '1 to 500 characters'));
  end if;
  if exists (select 1 from billing.model_aliases a where a.alias = p_card ->> 'model') then
    perform billing.raise_error('INVALID_RATE_CARD', jsonb_build_object('field', 'model',
      'rule', 'an alias is priced by its card: draft the card''s model (GET /ai/v1/models: aliases)'));
  end if;
  begin
    insert into billing.rate_card_drafts (model, usd_per_million_input, usd_per_million_cached_input, usd_per_million_output,
      usd_per_million_reasoning, usd_per_image, usd_per_audio_second, markup, created_by, usd_per_million_cache_write,
      upstream, usd_per_million_cache_write_1h, kind)
    values (p_card ->> 'model', (p_card ->> 'usd_per_million_input')::numeric,
      (p_card ->> 'usd_per_million_cached_input')::numeric, (p_card ->> 'usd_per_million_output')::numeric,
      (p_card ->> 'usd_per_million_reasoning')::numeric, (p_card ->> 'usd_per_image')::numeric,
      (p_card ->> 'usd_per_audio_second')::numeric, (p_card ->> 'markup')::numeric, p_admin,
      (p_card ->> 'usd_per_million_cache_write')::numeric, coalesce(p_card ->> 'upstream', 'openai'),
      (p_card ->> 'usd_per_million_cache_write_1h')::numeric, coalesce(p_card ->> 'kind', 'chat'))
    returning * into v_draft;
  exception when check_violation or not_null_violation or numeric_value_out_of_range or invalid_text_representation then
    perform billing.raise_error('INVALID_RATE_CARD', jsonb_build_object('rule',
      'a model name, prices from 0 to 1,000,000 USD, a positive markup, an upstream name (a-z, 0-9, -), a kind (chat, embedding)'));
  end;
  insert into billing.rate_card_changes (draft_id, action, admin_id, reason, before, after)
  values (v_draft.id, 'drafted', p_admin, p_reason, billing.rate_card_at(v_draft.model, now()),
    billing.rate_card_draft_json(v_draft));
  return billing.rate_card_draft_json(v_draft);
end;
$$;
comment on function billing.draft_rate_card(p_admin uuid, p_card jsonb, p_reason text) is 'Drafts a rate card (audited); it prices nothing until published.';
revoke execute on function billing.draft_rate_card(p_admin uuid, p_card jsonb, p_reason text) from public;
grant execute on function billing.draft_rate_card(p_admin uuid, p_card jsonb, p_reason text) to service_role;

create or replace function billing.lock_rate_card_draft(p_draft uuid) returns billing.rate_card_drafts
language plpgsql
set search_path = ''
as $$
declare
  v_draft billing.rate_card_drafts;
begin
  select * into v_draft from billing.rate_card_drafts d where d.id = p_draft for update;
  if not found then
    perform billing.raise_error('RATE_CARD_DRAFT_NOT_FOUND', jsonb_build_object('draft_id', p_draft));
  end if;
  return v_draft;
end;
$$;
comment on function billing.lock_rate_card_draft(p_draft uuid) is 'Internal: a draft, locked; RATE_CARD_DRAFT_NOT_FOUND when none.';
revoke execute on function billing.lock_rate_card_draft(p_draft uuid) from public;

-- POST /admin/rate-cards/drafts/:id/publish: the draft becomes the model's next version, in
-- effect from `p_effective_from` (now when null), never earlier than now: a price never
-- reaches back to usage already charged. Publishing a published draft answers the version it
-- made (replayed), whatever time is sent; a discarded draft cannot be published. A chat model's
-- card prices its answer: an output or reasoning price of 0 would give answers away (an
-- embedding model's card prices input only, and only the embeddings API serves it).
create or replace function billing.publish_rate_card(p_admin uuid, p_draft uuid, p_effective_from timestamptz, p_reason text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_draft billing.rate_card_drafts := billing.lock_rate_card_draft(p_draft);
  v_at timestamptz := coalesce(p_effective_from, now());
  v_card billing.rate_cards;
begin
  if v_draft.status = 'published' then
    select * into v_card from billing.rate_cards r where r.id = v_draft.rate_card_id;
    return jsonb_build_object('rate_card', billing.rate_card_at(v_card.model, v_card.effective_from)
      || jsonb_build_object('id', v_card.id::text, 'version', v_card.version), 'draft_id', p_draft, 'replayed', true);
  elsif v_draft.status <> 'draft' then
    perform billing.raise_error('RATE_CARD_DRAFT_CLOSED', jsonb_build_object('status', v_draft.status));
  end if;
  if p_reason is null or length(p_reason) not between 1 and 500 then
    perform billing.raise_error('INVALID_RATE_CARD', jsonb_build_object('field', 'reason', 'rule', '1 to 500 characters'));
  end if;
  if v_draft.kind = 'chat' and (v_draft.usd_per_million_output = 0 or v_draft.usd_per_million_reasoning = 0) then
    perform billing.raise_error('OUTPUT_PRICE_REQUIRED', jsonb_build_object('model', v_draft.model, 'kind', v_draft.kind,
      'rule', 'a chat model''s card prices output and reasoning above 0 (an embedding model''s card may price input only)'));
  end if;
  if v_at < now() or v_at > now() + interval '366 days' then
    perform billing.raise_error('INVALID_EFFECTIVE_FROM', jsonb_build_object('effective_from', v_at,
      'rule', 'from now to 366 days ahead: never in the past'));
  end if;
  -- One publisher per model at a time: the next version number is taken under this lock.
  perform pg_advisory_xact_lock(hashtextextended('billing.rate_cards:' || v_draft.model, 0));
  insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_cached_input, usd_per_million_output,
    usd_per_million_reasoning, usd_per_image, usd_per_audio_second, markup, effective_from, draft_id,
    usd_per_million_cache_write, upstream, usd_per_million_cache_write_1h, kind)
  select v_draft.model, coalesce(max(r.version), 0) + 1, v_draft.usd_per_million_input, v_draft.usd_per_million_cached_input,
    v_draft.usd_per_million_output, v_draft.usd_per_million_reasoning, v_draft.usd_per_image, v_draft.usd_per_audio_second,
    v_draft.markup, v_at, v_draft.id, v_draft.usd_per_million_cache_write, v_draft.upstream,
    v_draft.usd_per_million_cache_write_1h, v_draft.kind
  from billing.rate_cards r where r.model = v_draft.model
  returning * into v_card;
  update billing.rate_card_drafts d set status = 'published', rate_card_id = v_card.id where d.id = p_draft;
  insert into billing.rate_card_changes (draft_id, action, admin_id, reason, before, after)
  values (p_draft, 'published', p_admin, p_reason, billing.rate_card_at(v_card.model, v_at, v_card.id),
    billing.rate_card_row_json(v_card));
  return jsonb_build_object('rate_card', billing.rate_card_row_json(v_card), 'draft_id', p_draft, 'replayed', false);
end;
$$;
comment on function billing.publish_rate_card(p_admin uuid, p_draft uuid, p_effective_from timestamp with time zone, p_reason text) is 'Publishes a draft as the model''s next rate-card version from a time not in the past (audited); idempotent per draft. A chat card with an output or reasoning price of 0 is refused (OUTPUT_PRICE_REQUIRED).';
revoke execute on function billing.publish_rate_card(p_admin uuid, p_draft uuid, p_effective_from timestamp with time zone, p_reason text) from public;
grant execute on function billing.publish_rate_card(p_admin uuid, p_draft uuid, p_effective_from timestamp with time zone, p_reason text) to service_role;

-- POST /admin/rate-cards/drafts/:id/discard: a draft no one will publish (audited). Discarding
-- a discarded draft is a no-op; a published one is closed.
create or replace function billing.discard_rate_card_draft(p_admin uuid, p_draft uuid, p_reason text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_draft billing.rate_card_drafts := billing.lock_rate_card_draft(p_draft);
begin
  if v_draft.status = 'discarded' then
    return billing.rate_card_draft_json(v_draft);
  elsif v_draft.status <> 'draft' then
    perform billing.raise_error('RATE_CARD_DRAFT_CLOSED', jsonb_build_object('status', v_draft.status));
  end if;
  if p_reason is null or length(p_reason) not between 1 and 500 then
    perform billing.raise_error('INVALID_RATE_CARD', jsonb_build_object('field', 'reason', 'rule', '1 to 500 characters'));
  end if;
  update billing.rate_card_drafts d set status = 'discarded' where d.id = p_draft returning * into v_draft;
  insert into billing.rate_card_changes (draft_id, action, admin_id, reason, before, after)
  values (p_draft, 'discarded', p_admin, p_reason, billing.rate_card_draft_json(v_draft), null);
  return billing.rate_card_draft_json(v_draft);
end;
$$;
comment on function billing.discard_rate_card_draft(p_admin uuid, p_draft uuid, p_reason text) is 'Discards an open draft (audited); a discarded one again is a no-op.';
revoke execute on function billing.discard_rate_card_draft(p_admin uuid, p_draft uuid, p_reason text) from public;
grant execute on function billing.discard_rate_card_draft(p_admin uuid, p_draft uuid, p_reason text) to service_role;

-- GET /admin/rate-cards/drafts/:id/simulation: what the draft would have charged for every
-- usage charge of its model in [from, to), re-priced from the token counts the ledger recorded
-- (price_usage's formula, under the draft's prices), against what was charged. One read-only
-- statement, grouped: totals, per card version replaced, per organisation (null: students'
-- own accounts), the distribution of the change per student, the ten most affected, and the
-- margins before and after at the draft's upstream's provider price in effect now.
-- Moves no money. The formula is linear in the counts, so it runs once per (student,
-- organisation, card version) on their summed counts rather than once per charge: the same sum
-- exactly while prices have at most 14 fractional digits (no charge then needs rounding), and
-- within 10^-18 credits a charge otherwise. Charges a draft cannot price (images or audio it leaves unpriced) are
-- counted apart, not in the totals. Job captures are not re-priced (a job is charged from its
-- hold; its overage records no tokens).
-- The dry run's heavy part: the draft's model's usage charges in [from, to), grouped by the
-- transfers' own columns (hash aggregation, in parallel workers: RETURN QUERY may use them, a
-- SELECT … INTO never does), then priced once per cell on its summed counts. With the memory to
-- hash a year of cells, and no JIT (its compile time exceeds its gain here).
create or replace function billing.reprice_usage(p_draft uuid, p_from timestamptz, p_to timestamptz)
returns table (student uuid, org_id uuid, rate_card_id bigint, charges bigint, unpriced bigint, unpriced_before numeric,
  before numeric, after numeric, cost_usd numeric)
language plpgsql stable
set search_path = ''
set work_mem = '64MB'
set jit = off
as $$
declare
  r billing.rate_card_drafts;
  v_cards bigint[];
  p billing.provider_prices;
begin
  select * into r from billing.rate_card_drafts d where d.id = p_draft;
  v_cards := array(select c.id from billing.rate_cards c where c.model = r.model);
  p := billing.provider_price_at(r.model, r.upstream, now());
  return query
    with cells as materialized ( -- per paying account, member and card version replaced; then who they are
    select coalesce(g.member_id, a.user_id) as student, a.org_id, g.rate_card_id, sum(g.charges)::bigint as charges,
      coalesce(sum(g.charges) filter (where g.unpriced), 0)::bigint as unpriced,
      coalesce(sum(g.amount) filter (where g.unpriced), 0) as unpriced_before,
      coalesce(sum(g.amount) filter (where not g.unpriced), 0) as before,
      coalesce(sum(g.input_tokens) filter (where not g.unpriced), 0) as input_tokens,
      coalesce(sum(g.cached_input_tokens) filter (where not g.unpriced), 0) as cached_input_tokens,
      coalesce(sum(g.output_tokens) filter (where not g.unpriced), 0) as output_tokens,
      coalesce(sum(g.reasoning_tokens) filter (where not g.unpriced), 0) as reasoning_tokens,
      coalesce(sum(g.images) filter (where not g.unpriced), 0) as images,
      coalesce(sum(g.audio_seconds) filter (where not g.unpriced), 0) as audio_seconds,
      coalesce(sum(g.cache_write_tokens) filter (where not g.unpriced), 0) as cache_write_tokens,
      coalesce(sum(g.cache_write_1h_tokens) filter (where not g.unpriced), 0) as cache_write_1h_tokens
    from (
      -- Whether the draft can price a charge is a grouping key, not a FILTER on every sum: the
      -- per-row work is each JSON key read once (images and audio twice, when the draft leaves
      -- them unpriced: its price is tested first) and plain sums.
      select t.from_account_id, t.member_id, t.rate_card_id,
        (r.usd_per_image is null and coalesce((t.metadata ->> 'images')::bigint, 0) > 0)
          or (r.usd_per_audio_second is null and coalesce((t.metadata ->> 'audio_seconds')::bigint, 0) > 0) as unpriced,
        count(*) as charges, sum(t.amount) as amount,
        sum((t.metadata ->> 'input_tokens')::bigint) as input_tokens,
        sum((t.metadata ->> 'cached_input_tokens')::bigint) as cached_input_tokens,
        sum((t.metadata ->> 'output_tokens')::bigint) as output_tokens,
        sum((t.metadata ->> 'reasoning_tokens')::bigint) as reasoning_tokens,
        sum((t.metadata ->> 'images')::bigint) as images,
        sum((t.metadata ->> 'audio_seconds')::bigint) as audio_seconds,
        sum((t.metadata ->> 'cache_write_tokens')::bigint) as cache_write_tokens,
        sum((t.metadata ->> 'cache_write_1h_tokens')::bigint) as cache_write_1h_tokens
      from billing.transfers t
      where t.created_at >= p_from and t.created_at < p_to and t.kind = 'usage' and t.rate_card_id = any(v_cards)
        and t.metadata ? 'input_tokens'
      group by 1, 2, 3, 4) g
    join billing.accounts a on a.id = g.from_account_id
    group by a.id, g.member_id, g.rate_card_id
  ),
    priced as materialized ( -- the formula once per cell, on its summed counts
      select k.student, k.org_id, k.rate_card_id, k.charges, k.unpriced, k.unpriced_before, k.before,
        billing.usage_amount(k.input_tokens, k.cached_input_tokens, k.output_tokens, k.reasoning_tokens, k.images,
          k.audio_seconds, r.credits_per_input_token, r.credits_per_cached_input_token, r.credits_per_output_token,
          r.credits_per_reasoning_token, r.credits_per_image, r.credits_per_audio_second, k.cache_write_tokens,
          r.credits_per_cache_write_token, k.cache_write_1h_tokens, r.credits_per_cache_write_1h_token) as after,
        -- What the same counts cost at the draft's upstream's provider price in effect now (null:
        -- none): billing.provider_cost's formula (35-usage-summary.sql), on the cell's summed counts.
        case when p.id is not null then round((k.input_tokens * p.usd_per_million_input
            + k.cached_input_tokens * coalesce(p.usd_per_million_cached_input, p.usd_per_million_input)
            + k.output_tokens * p.usd_per_million_output
            + k.reasoning_tokens * coalesce(p.usd_per_million_reasoning, p.usd_per_million_output)
            + k.cache_write_tokens * coalesce(p.usd_per_million_cache_write, p.usd_per_million_input)
            + k.cache_write_1h_tokens * coalesce(p.usd_per_million_cache_write_1h, p.usd_per_million_input)) / 1000000
          + k.images * coalesce(p.usd_per_image, 0) + k.audio_seconds * coalesce(p.usd_per_audio_second, 0), 18)
        end as cost_usd
      from cells k
    )
    select x.student, x.org_id, x.rate_card_id, x.charges, x.unpriced, x.unpriced_before, x.before, x.after, x.cost_usd
    from priced x;
end;
$$;
comment on function billing.reprice_usage(p_draft uuid, p_from timestamp with time zone, p_to timestamp with time zone) is 'Internal: the dry run''s usage charges of a draft''s model in [from, to), per student, organisation and card version, before and under the draft, with their provider cost at the draft''s upstream now (null: no provider price).';
revoke execute on function billing.reprice_usage(p_draft uuid, p_from timestamp with time zone, p_to timestamp with time zone) from public;

create or replace function billing.simulate_rate_card(p_draft uuid, p_from timestamptz, p_to timestamptz) returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  r billing.rate_card_drafts;
  v_answer jsonb;
  v_price billing.provider_prices;
begin
  select * into r from billing.rate_card_drafts d where d.id = p_draft;
  if not found then
    perform billing.raise_error('RATE_CARD_DRAFT_NOT_FOUND', jsonb_build_object('draft_id', p_draft));
  end if;
  v_price := billing.provider_price_at(r.model, r.upstream, now());
  if p_from is null or p_to is null or p_from >= p_to or p_to - p_from > interval '366 days' then
    perform billing.raise_error('INVALID_RANGE', jsonb_build_object('field', 'from', 'rule', 'before to, at most 366 days'));
  end if;
  with priced as materialized (
    select * from billing.reprice_usage(p_draft, p_from, p_to)
  ),
    students as materialized (
      select c.student, sum(c.charges) as charges, sum(c.before) as before, sum(c.after) as after,
        sum(c.after) - sum(c.before) as change,
        case when sum(c.before) > 0 then (sum(c.after) - sum(c.before)) / sum(c.before) end as ratio
      from priced c group by c.student
    )
    select jsonb_build_object(
      'totals', (select jsonb_build_object('charges', coalesce(sum(c.charges), 0), 'students', count(distinct c.student),
          'organisations', count(distinct c.org_id), 'before', trim_scale(coalesce(sum(c.before), 0))::text,
          'after', trim_scale(coalesce(sum(c.after), 0))::text,
          'change', trim_scale(coalesce(sum(c.after) - sum(c.before), 0))::text,
          'change_percent', case when sum(c.before) > 0
            then trim_scale(round((sum(c.after) - sum(c.before)) * 100 / sum(c.before), 2))::text end,
          'unpriced_charges', coalesce(sum(c.unpriced), 0),
          'unpriced_before', trim_scale(coalesce(sum(c.unpriced_before), 0))::text) from priced c),
      'by_rate_card', coalesce((select jsonb_agg(jsonb_build_object('rate_card_id', g.rate_card_id::text, 'model', rc.model,
          'version', rc.version, 'charges', g.charges, 'before', trim_scale(g.before)::text,
          'after', trim_scale(g.after)::text, 'change', trim_scale(g.after - g.before)::text) order by rc.version)
        from (select c.rate_card_id, sum(c.charges) as charges, sum(c.before) as before, sum(c.after) as after
              from priced c group by c.rate_card_id) g
        join billing.rate_cards rc on rc.id = g.rate_card_id), '[]'),
      'by_organisation', coalesce((select jsonb_agg(jsonb_build_object('org_id', o.org_id, 'students', o.students,
          'charges', o.charges, 'before', trim_scale(o.before)::text, 'after', trim_scale(o.after)::text,
          'change', trim_scale(o.after - o.before)::text) order by abs(o.after - o.before) desc, o.org_id nulls first)
        from (select c.org_id, count(distinct c.student) as students, sum(c.charges) as charges, sum(c.before) as before, sum(c.after) as after
              from priced c group by c.org_id order by abs(sum(c.after) - sum(c.before)) desc, c.org_id nulls first limit 20) o),
        '[]'),
      'distribution', jsonb_build_object(
        'buckets', (select jsonb_agg(jsonb_build_object('bucket', b.label, 'students', coalesce(n.students, 0)) order by b.ord)
          from (values (1, 'down more than 50%'), (2, 'down 10% to 50%'), (3, 'down less than 10%'), (4, 'unchanged'),
                       (5, 'up less than 10%'), (6, 'up 10% to 50%'), (7, 'up more than 50%'), (8, 'new cost')) b(ord, label)
          left join (select case when s.change = 0 then 4 when s.ratio is null then 8
                        when s.ratio < -0.5 then 1 when s.ratio <= -0.1 then 2 when s.ratio < 0 then 3
                        when s.ratio < 0.1 then 5 when s.ratio <= 0.5 then 6 else 7 end as ord, count(*) as students
                      from students s group by 1) n on n.ord = b.ord),
        'change_percentiles', (select jsonb_build_object(
            'p10', trim_scale(percentile_disc(0.1) within group (order by s.change))::text,
            'p50', trim_scale(percentile_disc(0.5) within group (order by s.change))::text,
            'p90', trim_scale(percentile_disc(0.9) within group (order by s.change))::text,
            'p99', trim_scale(percentile_disc(0.99) within group (order by s.change))::text) from students s)),
      'most_affected', coalesce((select jsonb_agg(jsonb_build_object('user_id', m.student, 'charges', m.charges,
          'before', trim_scale(m.before)::text, 'after', trim_scale(m.after)::text, 'change', trim_scale(m.change)::text,
          'change_percent', trim_scale(round(m.ratio * 100, 2))::text) order by abs(m.change) desc, m.student)
        from (select * from students s order by abs(s.change) desc, s.student limit 10) m), '[]'),
      -- Margins before and after, both against what the same counts cost at the draft's upstream's
      -- provider price in effect now: cost, margin and percentage null (unknown) without one.
      'margins', (select jsonb_build_object(
          'provider_price', case when v_price.id is not null then billing.provider_price_json(v_price) end,
          'cost_usd', case when v_price.id is not null then trim_scale(m.cost)::text end,
          'before', jsonb_build_object('revenue_usd', trim_scale(m.before * 0.001)::text,
            'margin_usd', case when v_price.id is not null then trim_scale(m.before * 0.001 - m.cost)::text end,
            'margin_percent', case when v_price.id is not null and m.before <> 0
              then trim_scale(round((m.before * 0.001 - m.cost) * 100 / (m.before * 0.001), 2))::text end),
          'after', jsonb_build_object('revenue_usd', trim_scale(m.after * 0.001)::text,
            'margin_usd', case when v_price.id is not null then trim_scale(m.after * 0.001 - m.cost)::text end,
            'margin_percent', case when v_price.id is not null and m.after <> 0
              then trim_scale(round((m.after * 0.001 - m.cost) * 100 / (m.after * 0.001), 2))::text end))
        from (select coalesce(sum(c.before), 0) as before, coalesce(sum(c.after), 0) as after,
                coalesce(sum(c.cost_usd), 0) as cost from priced c) m))
  into v_answer;
  return jsonb_build_object('draft', billing.rate_card_draft_json(r), 'from', billing.json_time(p_from),
    'to', billing.json_time(p_to)) || v_answer;
end;
$$;
comment on function billing.simulate_rate_card(p_draft uuid, p_from timestamp with time zone, p_to timestamp with time zone) is 'The dry run: re-prices every usage charge of the draft''s model in [from, to) under the draft and reports the change (totals, per card version, organisation and student) and the margins before and after at the provider price in effect now. Moves no money.';
revoke execute on function billing.simulate_rate_card(p_draft uuid, p_from timestamp with time zone, p_to timestamp with time zone) from public;
grant execute on function billing.simulate_rate_card(p_draft uuid, p_from timestamp with time zone, p_to timestamp with time zone) to service_role;

-- GET /admin/rate-cards: every model's card in effect, those published to take effect later,
-- the open drafts, and the latest changes (who, why, before and after).
create or replace function billing.rate_cards_overview(p_changes integer default 50) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'current', coalesce((select jsonb_agg(billing.rate_card_row_json(r) order by r.model) from (
        select distinct on (c.model) c.* from billing.rate_cards c where c.effective_from <= now()
          and not exists (select 1 from billing.model_aliases a where a.alias = c.model)
        order by c.model, c.effective_from desc, c.version desc) r), '[]'),
    'scheduled', coalesce((select jsonb_agg(billing.rate_card_row_json(r) order by r.effective_from, r.model)
        from billing.rate_cards r where r.effective_from > now()), '[]'),
    'drafts', coalesce((select jsonb_agg(billing.rate_card_draft_json(d) order by d.created_at desc)
        from billing.rate_card_drafts d where d.status = 'draft'), '[]'),
    'changes', coalesce((select jsonb_agg(jsonb_build_object('id', c.id::text, 'draft_id', c.draft_id, 'action', c.action,
        'admin_id', c.admin_id, 'reason', c.reason, 'before', c.before, 'after', c.after,
        'at', billing.json_time(c.created_at)) order by c.id desc)
        from (select * from billing.rate_card_changes x order by x.id desc limit least(greatest(p_changes, 1), 200)) c), '[]'))
$$;
comment on function billing.rate_cards_overview(p_changes integer) is 'The rate cards in effect and scheduled, the open drafts and the latest audited changes.';
revoke execute on function billing.rate_cards_overview(p_changes integer) from public;
grant execute on function billing.rate_cards_overview(p_changes integer) to service_role;

-- A provider price as the catalogue command shows it: prices as exact strings, nulls kept.
create or replace function billing.provider_price_json(p billing.provider_prices) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('id', p.id::text, 'model', p.model, 'upstream', p.upstream, 'version', p.version,
    'effective_from', billing.json_time(p.effective_from),
    'usd_per_million_input', trim_scale(p.usd_per_million_input)::text,
    'usd_per_million_cached_input', trim_scale(p.usd_per_million_cached_input)::text,
    'usd_per_million_output', trim_scale(p.usd_per_million_output)::text,
    'usd_per_million_reasoning', trim_scale(p.usd_per_million_reasoning)::text,
    'usd_per_million_cache_write', trim_scale(p.usd_per_million_cache_write)::text,
    'usd_per_million_cache_write_1h', trim_scale(p.usd_per_million_cache_write_1h)::text,
    'usd_per_image', trim_scale(p.usd_per_image)::text, 'usd_per_audio_second', trim_scale(p.usd_per_audio_second)::text,
    'source_url', p.source_url, 'source_checked_on', p.source_checked_on)
$$;
comment on function billing.provider_price_json(p billing.provider_prices) is 'Internal: a provider price as JSON (exact strings; null: the kind''s default, docs/pricing.md).';
revoke execute on function billing.provider_price_json(p billing.provider_prices) from public;

-- The provider price of `p_model` at `p_upstream` in effect at `p_at`; null when none.
create or replace function billing.provider_price_at(p_model text, p_upstream text, p_at timestamptz)
returns billing.provider_prices
language sql stable
set search_path = ''
as $$
  select p from billing.provider_prices p
  where p.model = p_model and p.upstream = p_upstream and p.effective_from <= p_at
  order by p.effective_from desc, p.version desc limit 1
$$;
comment on function billing.provider_price_at(p_model text, p_upstream text, p_at timestamp with time zone) is 'Internal: the provider price of a model at an upstream in effect at a time; null when none.';
revoke execute on function billing.provider_price_at(p_model text, p_upstream text, p_at timestamp with time zone) from public;

-- ./scripts/prices: every routed model (its card in effect now: model, upstream, kind, prices
-- and markup) with the provider price at that upstream in effect now (null: none, so its cost
-- and margin are unknown), in model order.
create or replace function billing.provider_price_routes() returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('model', r.model, 'upstream', r.upstream, 'kind', r.kind,
      'rate_card', billing.rate_card_row_json(r),
      'provider_price', (select billing.provider_price_json(p) from billing.provider_prices p
        where p.model = r.model and p.upstream = r.upstream and p.effective_from <= now()
        order by p.effective_from desc, p.version desc limit 1)) order by r.model), '[]')
  from (select distinct on (c.model) c.* from billing.rate_cards c where c.effective_from <= now()
          and not exists (select 1 from billing.model_aliases a where a.alias = c.model)
        order by c.model, c.effective_from desc, c.version desc) r
$$;
comment on function billing.provider_price_routes() is 'Every routed model (its card in effect) with its provider price at the card''s upstream in effect now (null: none).';
revoke execute on function billing.provider_price_routes() from public, anon, authenticated;
grant execute on function billing.provider_price_routes() to service_role;

-- ./scripts/prices --write: each price given ({model, upstream, usd_per_million_input, …,
-- source_url, source_checked_on}) becomes the next version of its model at its upstream, in
-- effect from now, unless the version in effect now has the same prices (then nothing is
-- written: running it again writes nothing). Versions are numbered per model and upstream
-- under a lock, as rate cards are. Answers one row a price: {model, upstream, version, written}.
create or replace function billing.record_provider_prices(p_prices jsonb) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_price jsonb;
  v_new billing.provider_prices;
  v_now billing.provider_prices;
  v_out jsonb := '[]'::jsonb;
begin
  if jsonb_typeof(p_prices) is distinct from 'array' then
    perform billing.raise_error('INVALID_PROVIDER_PRICE', jsonb_build_object('rule', 'an array of prices'));
  end if;
  for v_price in select * from jsonb_array_elements(p_prices) loop
    begin
      v_new := jsonb_populate_record(null::billing.provider_prices, v_price - 'id' - 'version' - 'effective_from'
        - 'created_at');
    exception when invalid_text_representation or numeric_value_out_of_range or datetime_field_overflow
      or invalid_datetime_format then
      perform billing.raise_error('INVALID_PROVIDER_PRICE', jsonb_build_object('price', v_price,
        'rule', 'prices from 0 to 1,000,000 USD as numbers or strings'));
    end;
    perform pg_advisory_xact_lock(hashtextextended('billing.provider_prices:' || coalesce(v_new.model, '') || ':'
      || coalesce(v_new.upstream, ''), 0));
    v_now := billing.provider_price_at(v_new.model, v_new.upstream, now());
    if v_now.id is not null and (v_now.usd_per_million_input, v_now.usd_per_million_cached_input,
        v_now.usd_per_million_output, v_now.usd_per_million_reasoning, v_now.usd_per_million_cache_write,
        v_now.usd_per_million_cache_write_1h, v_now.usd_per_image, v_now.usd_per_audio_second)
      is not distinct from (v_new.usd_per_million_input, v_new.usd_per_million_cached_input,
        v_new.usd_per_million_output, v_new.usd_per_million_reasoning, v_new.usd_per_million_cache_write,
        v_new.usd_per_million_cache_write_1h, v_new.usd_per_image, v_new.usd_per_audio_second) then
      v_out := v_out || jsonb_build_object('model', v_now.model, 'upstream', v_now.upstream, 'version', v_now.version,
        'written', false);
      continue;
    end if;
    begin
      insert into billing.provider_prices (model, upstream, version, usd_per_million_input, usd_per_million_cached_input,
        usd_per_million_output, usd_per_million_reasoning, usd_per_million_cache_write, usd_per_million_cache_write_1h,
        usd_per_image, usd_per_audio_second, effective_from, source_url, source_checked_on)
      select v_new.model, v_new.upstream, coalesce(max(p.version), 0) + 1, v_new.usd_per_million_input,
        v_new.usd_per_million_cached_input, v_new.usd_per_million_output, v_new.usd_per_million_reasoning,
        v_new.usd_per_million_cache_write, v_new.usd_per_million_cache_write_1h, v_new.usd_per_image,
        v_new.usd_per_audio_second, now(), v_new.source_url, coalesce(v_new.source_checked_on, current_date)
      from billing.provider_prices p where p.model = v_new.model and p.upstream = v_new.upstream
      returning * into v_new;
    exception when check_violation or not_null_violation then
      perform billing.raise_error('INVALID_PROVIDER_PRICE', jsonb_build_object('price', v_price,
        'rule', 'a model name, an upstream name (a-z, 0-9, -), input and output prices from 0 to 1,000,000 USD'));
    end;
    v_out := v_out || jsonb_build_object('model', v_new.model, 'upstream', v_new.upstream, 'version', v_new.version,
      'written', true);
  end loop;
  return v_out;
end;
$$;
comment on function billing.record_provider_prices(p_prices jsonb) is 'Writes each given provider price as the next version of its model at its upstream, from now, unless the one in effect has the same prices; answers {model, upstream, version, written} per price.';
revoke execute on function billing.record_provider_prices(p_prices jsonb) from public, anon, authenticated;
grant execute on function billing.record_provider_prices(p_prices jsonb) to service_role;

-- The packages on sale.
create or replace function billing.list_credit_packages() returns table (id text, name text, price_cents integer, currency text, credits numeric, bonus_credits numeric)
language sql stable
security definer
set search_path = ''
as $$
  select p.id, p.name, p.price_cents, p.currency, p.credits, p.bonus_credits
  from billing.credit_packages p where p.active order by p.sort_order
$$;
comment on function billing.list_credit_packages() is 'The credit packages on sale, in display order (GET /checkout/packages, and a checkout''s price for the velocity check).';
revoke execute on function billing.list_credit_packages() from public;
grant execute on function billing.list_credit_packages() to service_role;

-- ============================================================ triggers

-- An alias names a card's model (rate_cards.model is not unique, so no foreign key), never
-- another alias, and is no name another alias names: one step from any name to its card.
create or replace function billing.check_model_alias() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if not exists (select 1 from billing.rate_cards r where r.model = new.model)
     or exists (select 1 from billing.model_aliases a where a.alias = new.model or a.model = new.alias) then
    perform billing.raise_error('UNKNOWN_MODEL', jsonb_build_object('rule',
      'an alias names a rate card''s model, not another alias, and no alias names it'));
  end if;
  return new;
end;
$$;
comment on function billing.check_model_alias() is 'Trigger: an alias names a rate card''s model, never another alias.';
revoke execute on function billing.check_model_alias() from public;

create trigger model_aliases_name_a_card before insert or update on billing.model_aliases
  for each row execute function billing.check_model_alias();

create trigger rate_cards_immutable before update or delete on billing.rate_cards
  for each row execute function billing.refuse_ledger_change();

create trigger rate_card_changes_immutable before update or delete on billing.rate_card_changes
  for each row execute function billing.refuse_ledger_change();

create trigger credit_package_versions_immutable before update or delete on billing.credit_package_versions
  for each row execute function billing.refuse_ledger_change();

create trigger provider_prices_immutable before update or delete on billing.provider_prices
  for each row execute function billing.refuse_ledger_change();

-- ============================================================ policies

create policy "Signed-in users can read rate cards" on billing.rate_cards
  for select to authenticated using (true);

create policy "Signed-in users can read active packages" on billing.credit_packages
  for select to authenticated using (active);

create policy "Signed-in users can read model aliases" on billing.model_aliases
  for select to authenticated using (true);

-- ============================================================ reference rows

insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from,
  usd_per_million_cache_write, upstream, kind) values
  ('gpt-4o', 1, 5, 15, 4, '2026-01-01', null, 'openai', 'chat'),
  ('gpt-4o-mini', 1, 0.15, 0.60, 4, '2026-01-01', null, 'openai', 'chat'),
  -- An embedding model: input only (its answer is vectors, billed as nothing), served by the embeddings API only.
  ('text-embedding-3-small', 1, 0.02, 0, 4, '2026-01-01', null, 'openai', 'embedding');

-- Caching in the providers' proportions of the input price (each a new version: rows are never
-- edited), so a cache read always costs the student less than the input it replaces: OpenAI's
-- cached input at half the input price for these models; Anthropic's cache read at 0.1×, its
-- 5-minute write at 1.25× and its hour-long write at 2×. Each reference card's model is an id
-- its provider's pinned SDK lists (openai's ChatModel and EmbeddingModel, Anthropic's Model).
insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from,
  usd_per_million_cached_input, usd_per_million_cache_write, usd_per_million_cache_write_1h, upstream) values
  ('gpt-4o', 2, 5, 15, 4, '2026-01-01', 2.50, null, null, 'openai'),
  ('gpt-4o-mini', 2, 0.15, 0.60, 4, '2026-01-01', 0.075, null, null, 'openai'),
  ('claude-haiku-4-5', 1, 1, 5, 4, '2026-01-01', 0.10, 1.25, 2.00, 'anthropic');

-- claude-3-5-haiku, an id Anthropic no longer serves, is Claude Haiku 4.5's card for the apps
-- that already call it.
insert into billing.model_aliases (alias, model) values ('claude-3-5-haiku', 'claude-haiku-4-5');

-- What the default rate card's models cost at their providers: each provider's public list price
-- per million tokens (standard tier; cached input is the provider's cached or cache-hit rate), from
-- the page named beside it, as read on the day beside it. They cost from the rate cards' first day,
-- so every charge of these models has a cost. docs/deploy.md § Provider prices says how to keep
-- them current: a new version with its own effective_from, never an edit.
insert into billing.provider_prices (model, upstream, version, usd_per_million_input, usd_per_million_cached_input,
  usd_per_million_output, usd_per_million_cache_write, effective_from, source_url, source_checked_on) values
  ('gpt-4o', 'openai', 1, 2.50, 1.25, 10.00, null, '2026-01-01', 'https://platform.openai.com/docs/pricing', '2026-11-24'),
  ('gpt-4o-mini', 'openai', 1, 0.15, 0.075, 0.60, null, '2026-01-01', 'https://platform.openai.com/docs/pricing', '2026-11-24'),
  ('text-embedding-3-small', 'openai', 1, 0.02, null, 0, null, '2026-01-01', 'https://platform.openai.com/docs/pricing',
   '2026-11-24');
-- Anthropic's cache reads (0.1× input), 5-minute writes (1.25×) and hour-long writes (2×).
insert into billing.provider_prices (model, upstream, version, usd_per_million_input, usd_per_million_cached_input,
  usd_per_million_output, usd_per_million_cache_write, usd_per_million_cache_write_1h, effective_from, source_url,
  source_checked_on) values
  ('claude-haiku-4-5', 'anthropic', 1, 1.00, 0.10, 5.00, 1.25, 2.00, '2026-01-01',
   'https://docs.anthropic.com/en/docs/about-claude/pricing', '2026-11-27');

insert into billing.credit_packages (id, name, price_cents, credits, bonus_credits, sort_order) values
  ('mini', 'Mini', 500, 5000, 0, 1),
  ('starter', 'Starter', 999, 9990, 0, 2),
  ('plus', 'Plus', 2499, 24990, 1249.5, 3),     -- +5%
  ('pro', 'Pro', 4999, 49990, 4999, 4),         -- +10%
  ('max', 'Max', 9999, 99990, 19998, 5);

insert into billing.credit_package_versions (package_id, version, name, price_cents, currency, credits, bonus_credits)
select k.id, k.version, k.name, k.price_cents, k.currency, k.credits, k.bonus_credits from billing.credit_packages k;

