-- Stripe events: every verified webhook event is recorded once by id (billing.stripe_events)
-- and applied in the same transaction by billing.process_stripe_event, which hands the state
-- re-fetched from Stripe to the domain it describes: a credit purchase (50-purchases.sql), a
-- plan's subscription or charge (56-plans.sql), a provider's account, payment or payout
-- (65-providers.sql), an organisation's invoice (72-org-invoices.sql): the layer above them all.
-- A failure is recorded after its transaction rolled back, so Stripe's retry applies it again.

-- ============================================================ tables

create table billing.stripe_events (
  id text primary key,                            -- Stripe's event id
  type text not null,
  api_created timestamptz not null,
  livemode boolean not null,
  object_id text,
  status text not null,                           -- processed | ignored | failed
  attempts integer not null default 1,
  last_error text,
  received_at timestamptz not null default now(),
  processed_at timestamptz,
  constraint stripe_events_status check (status in ('processed', 'ignored', 'failed'))
);
comment on table billing.stripe_events is 'Every verified Stripe event, once by id: type, timing, outcome. No customer data.';
alter table billing.stripe_events enable row level security;
grant select on table billing.stripe_events to service_role;

create index stripe_events_type_time on billing.stripe_events (type, api_created);

create index stripe_events_received on billing.stripe_events (received_at);

create index stripe_events_processed on billing.stripe_events (processed_at) where processed_at is not null;

-- Each rolled-up day's currency check (billing.revenue_rollup_is_current) looks for webhooks of
-- the day finished on a later day. Such events are rare, so this partial index is tiny; keyed by
-- the UTC day it counts on, it is the only index that can answer, and the planner (which cannot
-- know how few rows the predicate keeps) does not fall back to reading the day's events through
-- stripe_events_received (bench/README.md, reporting).
create index stripe_events_finished_late_day on billing.stripe_events (((received_at at time zone 'UTC')::date), processed_at)
  where (processed_at at time zone 'UTC')::date > (received_at at time zone 'UTC')::date;

-- ============================================================ functions

-- A cheap pre-check before re-fetching from Stripe (the entry point, process_stripe_event, is below).
create or replace function billing.stripe_event_done(p_event_id text) returns boolean
language sql stable
security definer
set search_path = ''
as $$ select exists (select 1 from billing.stripe_events e where e.id = p_event_id and e.status <> 'failed') $$;
comment on function billing.stripe_event_done(p_event_id text) is 'Whether an event was already processed or ignored (a cheap pre-check before re-fetching from Stripe).';
revoke execute on function billing.stripe_event_done(p_event_id text) from public;
grant execute on function billing.stripe_event_done(p_event_id text) to service_role;

create or replace function billing.record_stripe_event_failure(
  p_event_id text, p_type text, p_created timestamptz, p_livemode boolean, p_object_id text, p_error text
) returns void
language sql
security definer
set search_path = ''
as $$
  insert into billing.stripe_events as e (id, type, api_created, livemode, object_id, status, last_error)
  values (p_event_id, p_type, p_created, p_livemode, p_object_id, 'failed', left(p_error, 500))
  on conflict (id) do update set last_error = left(p_error, 500), attempts = e.attempts + 1
    where e.status = 'failed'
$$;
comment on function billing.record_stripe_event_failure(p_event_id text, p_type text, p_created timestamp with time zone, p_livemode boolean, p_object_id text, p_error text) is 'Records that processing an event failed (after its transaction rolled back), so failures are visible and alertable.';
revoke execute on function billing.record_stripe_event_failure(p_event_id text, p_type text, p_created timestamp with time zone, p_livemode boolean, p_object_id text, p_error text) from public;
grant execute on function billing.record_stripe_event_failure(p_event_id text, p_type text, p_created timestamp with time zone, p_livemode boolean, p_object_id text, p_error text) to service_role;

create or replace function billing.finish_stripe_event(p_event_id text) returns void
language sql
security definer
set search_path = ''
as $$
  update billing.stripe_events e set status = 'processed', last_error = null where e.id = p_event_id and e.status = 'failed'
$$;
comment on function billing.finish_stripe_event(p_event_id text) is 'Marks an event done whose work ended outside the database (a stale plan invoice''s refund at Stripe).';
revoke execute on function billing.finish_stripe_event(p_event_id text) from public;
grant execute on function billing.finish_stripe_event(p_event_id text) to service_role;

-- ============================================================ functions

-- The Stripe event log's entry point: records a verified event once by id and applies the
-- state re-fetched from Stripe in the same transaction. The state says what it describes
-- (kind); a checkout state goes to the provider payment or the credit purchase of its session.
create or replace function billing.process_stripe_event(
  p_event_id text,
  p_type text,
  p_created timestamptz,
  p_livemode boolean,
  p_object_id text,
  p_state jsonb
) returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_outcome text;
begin
  -- Claims the event; a concurrent delivery of the same id waits here for the first.
  insert into billing.stripe_events as e (id, type, api_created, livemode, object_id, status)
  values (p_event_id, p_type, p_created, p_livemode, p_object_id, 'failed')
  on conflict (id) do update set attempts = e.attempts + 1
    where e.status = 'failed';
  if not found then
    return 'duplicate';
  end if;
  if p_state is null then
    update billing.stripe_events e set status = 'ignored', processed_at = now(), last_error = null where e.id = p_event_id;
    return 'ignored';
  end if;
  perform set_config('billing.event_time', p_created::text, true); -- money postings are dated by the event
  v_outcome := case p_state ->> 'kind'
    when 'account' then billing.sync_provider_account(p_state)
    when 'payout' then billing.sync_provider_payout(p_state)
    when 'subscription' then billing.sync_subscription(p_state)
    when 'plan_charge' then billing.sync_plan_charge(p_state)
    when 'org_invoice' then billing.sync_org_invoice(p_state)
    else case when exists (select 1 from billing.provider_payments x where x.stripe_session_id = p_state ->> 'session_id')
      then billing.sync_provider_payment(p_state) else billing.sync_purchase(p_state) end
  end;
  -- A stale plan invoice is done once the caller has refunded it (billing.finish_stripe_event):
  -- until then the event stays 'failed', so Stripe's retry brings the refund back.
  update billing.stripe_events e
  set status = case when v_outcome = 'plan_invoice_stale' then 'failed' else 'processed' end, processed_at = now(),
      last_error = case when v_outcome = 'plan_invoice_stale' then 'PLAN_REFUND_PENDING' end
  where e.id = p_event_id;
  return v_outcome;
end;
$$;
comment on function billing.process_stripe_event(p_event_id text, p_type text, p_created timestamp with time zone, p_livemode boolean, p_object_id text, p_state jsonb) is 'Records a verified Stripe event once by id and applies it, in one transaction; a duplicate is reported, not applied.';
revoke execute on function billing.process_stripe_event(p_event_id text, p_type text, p_created timestamp with time zone, p_livemode boolean, p_object_id text, p_state jsonb) from public;
grant execute on function billing.process_stripe_event(p_event_id text, p_type text, p_created timestamp with time zone, p_livemode boolean, p_object_id text, p_state jsonb) to service_role;
