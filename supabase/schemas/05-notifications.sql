-- The notification outbox: every e-mail and product webhook is a row written in the same
-- transaction as the fact it reports, then claimed and sent by the notify function; each
-- product-webhook attempt is logged in webhook_deliveries. Beside it, what any layer raises:
-- an operator alert (billing.set_alert, one open per condition) and a student's alert
-- (billing.queue_user_alert). The layer below every feature that sends one, the ledger's
-- writer included.

-- ============================================================ tables

create table billing.notification_outbox (
  id bigint generated always as identity primary key,
  template text not null,                         -- purchase_receipt | refund_notice | low_balance | alert
  user_id uuid,
  dedupe_key text not null unique,
  payload jsonb not null,                         -- ids and amounts only; the sender looks up the address
  status text not null default 'pending',
  attempts integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  last_error text,
  created_at timestamptz not null default now(),
  sent_at timestamptz,
  constraint notification_outbox_status check (status in ('pending', 'sent', 'failed'))
);
comment on table billing.notification_outbox is 'Notifications written in the same transaction as their cause; a separate sender delivers them.';
alter table billing.notification_outbox enable row level security;
grant select on table billing.notification_outbox to service_role;

create index notification_outbox_due on billing.notification_outbox (next_attempt_at) where status = 'pending';

create table billing.webhook_deliveries (
  id bigint generated always as identity primary key,
  outbox_id bigint not null references billing.notification_outbox (id),
  attempt integer not null,
  status integer,                                 -- the HTTP status, null when no answer
  error text,
  created_at timestamptz not null default now()
);
comment on table billing.webhook_deliveries is 'Every attempt to deliver a product webhook: what the product''s backend answered.';
alter table billing.webhook_deliveries enable row level security;
grant select on table billing.webhook_deliveries to service_role;

create index webhook_deliveries_outbox on billing.webhook_deliveries (outbox_id, id);

create table billing.alerts (
  id bigint generated always as identity primary key,
  condition text not null,                        -- stable key, e.g. webhook_failures
  severity text not null default 'page',
  summary text not null,
  details jsonb not null default '{}',
  status text not null default 'open',
  opened_at timestamptz not null default now(),
  last_seen_at timestamptz not null default now(),
  resolved_at timestamptz,
  constraint alerts_status check (status in ('open', 'resolved'))
);
comment on table billing.alerts is 'Operational alerts. At most one open alert per condition; it resolves when the condition clears.';
alter table billing.alerts enable row level security;
grant select on table billing.alerts to service_role;

create unique index alerts_one_open on billing.alerts (condition) where status = 'open';

-- ============================================================ functions

create or replace function billing.claim_outbox(p_limit integer default 20) returns setof billing.notification_outbox
language sql
security definer
set search_path = ''
as $$
  update billing.notification_outbox o
  set attempts = o.attempts + 1, next_attempt_at = now() + interval '2 minutes' -- a crashed sender's rows come back
  where o.id in (select x.id from billing.notification_outbox x where x.status = 'pending' and x.next_attempt_at <= now()
                 order by x.next_attempt_at limit p_limit for update skip locked)
  returning o.*
$$;
comment on function billing.claim_outbox(p_limit integer) is 'Claims due notifications for sending (SKIP LOCKED, so senders never share a row).';
revoke execute on function billing.claim_outbox(p_limit integer) from public;
grant execute on function billing.claim_outbox(p_limit integer) to service_role;

-- Just before a send: the sender's claim (p_attempt, the attempts its claim answered) renewed for
-- two minutes from now, or false when it lapsed and another sender claimed the row, or the row
-- was sent: a run slower than its claim (a slow mail provider, a long batch) then skips the row
-- instead of sending it a second time.
create or replace function billing.renew_outbox_claim(p_id bigint, p_attempt integer) returns boolean
language sql
security definer
set search_path = ''
as $$
  with renewed as (
    update billing.notification_outbox o set next_attempt_at = now() + interval '2 minutes'
    where o.id = p_id and o.status = 'pending' and o.attempts = p_attempt
    returning 1
  )
  select exists (select 1 from renewed)
$$;
comment on function billing.renew_outbox_claim(p_id bigint, p_attempt integer) is 'A sender''s claim on a notification renewed for two minutes before it sends; false when the claim lapsed to another sender or the row is no longer pending.';
revoke execute on function billing.renew_outbox_claim(p_id bigint, p_attempt integer) from public;
grant execute on function billing.renew_outbox_claim(p_id bigint, p_attempt integer) to service_role;

-- A sender's claim lapses after two minutes (claim_outbox), and a late sender may report after
-- the next one claimed the row again, or sent it: its failure then changes nothing (p_attempt,
-- the attempts its claim answered), and a sent row is never made pending again.
create or replace function billing.finish_outbox(p_id bigint, p_sent boolean, p_error text default null,
  p_max_attempts integer default 5, p_attempt integer default null)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_status text;
begin
  if p_sent then
    update billing.notification_outbox o set status = 'sent', sent_at = now(), last_error = null where o.id = p_id
    returning o.status into v_status;
  else
    update billing.notification_outbox o
    set last_error = left(p_error, 500),
        status = case when o.attempts >= p_max_attempts then 'failed' else 'pending' end,
        next_attempt_at = now() + make_interval(secs => least(3600, 5 * 2 ^ o.attempts)) -- 10 s, 20 s, 40 s …
    where o.id = p_id and o.status = 'pending' and (p_attempt is null or o.attempts = p_attempt)
    returning o.status into v_status;
    if not found then
      select o.status into v_status from billing.notification_outbox o where o.id = p_id;
    end if;
  end if;
  return v_status;
end;
$$;
comment on function billing.finish_outbox(p_id bigint, p_sent boolean, p_error text, p_max_attempts integer, p_attempt integer) is 'Marks a notification sent, or schedules its retry with backoff, failing it after the last attempt; a failure reported by a claim that lapsed (p_attempt no longer the row''s attempts) or after the row was sent changes nothing. Returns the row''s status.';
revoke execute on function billing.finish_outbox(p_id bigint, p_sent boolean, p_error text, p_max_attempts integer, p_attempt integer) from public;
grant execute on function billing.finish_outbox(p_id bigint, p_sent boolean, p_error text, p_max_attempts integer, p_attempt integer) to service_role;

create or replace function billing.enqueue_notification(p_template text, p_user uuid, p_dedupe_key text, p_payload jsonb) returns bigint
language sql
security definer
set search_path = ''
as $$
  with ins as (
    insert into billing.notification_outbox (template, user_id, dedupe_key, payload)
    values (p_template, p_user, p_dedupe_key, p_payload)
    on conflict (dedupe_key) do nothing returning id)
  select coalesce((select id from ins), (select o.id from billing.notification_outbox o where o.dedupe_key = p_dedupe_key))
$$;
comment on function billing.enqueue_notification(p_template text, p_user uuid, p_dedupe_key text, p_payload jsonb) is 'Adds a notification once per dedupe key.';
revoke execute on function billing.enqueue_notification(p_template text, p_user uuid, p_dedupe_key text, p_payload jsonb) from public;
grant execute on function billing.enqueue_notification(p_template text, p_user uuid, p_dedupe_key text, p_payload jsonb) to service_role;

create or replace function billing.log_webhook_delivery(p_outbox_id bigint, p_attempt integer, p_status integer, p_error text)
returns void
language sql
security definer
set search_path = ''
as $$
  insert into billing.webhook_deliveries (outbox_id, attempt, status, error) values (p_outbox_id, p_attempt, p_status, left(p_error, 500))
$$;
comment on function billing.log_webhook_delivery(p_outbox_id bigint, p_attempt integer, p_status integer, p_error text) is 'Records one product-webhook delivery attempt.';
revoke execute on function billing.log_webhook_delivery(p_outbox_id bigint, p_attempt integer, p_status integer, p_error text) from public;
grant execute on function billing.log_webhook_delivery(p_outbox_id bigint, p_attempt integer, p_status integer, p_error text) to service_role;

-- Opens (or refreshes) one alert per condition, or resolves it; writes an outbox row when it opens.
create or replace function billing.set_alert(p_condition text, p_firing boolean, p_summary text, p_details jsonb default '{}')
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_id bigint;
begin
  if p_firing then
    update billing.alerts a set last_seen_at = now(), details = p_details, summary = p_summary
    where a.condition = p_condition and a.status = 'open';
    if not found then
      insert into billing.alerts (condition, summary, details) values (p_condition, p_summary, p_details)
      on conflict (condition) where status = 'open' do nothing
      returning id into v_id;
      if v_id is not null then
        insert into billing.notification_outbox (template, dedupe_key, payload)
        values ('alert', 'alert:' || v_id, jsonb_build_object('alert_id', v_id, 'condition', p_condition, 'summary', p_summary));
      end if;
    end if;
  else
    update billing.alerts a set status = 'resolved', resolved_at = now() where a.condition = p_condition and a.status = 'open';
  end if;
end;
$$;
comment on function billing.set_alert(p_condition text, p_firing boolean, p_summary text, p_details jsonb) is 'Internal: opens, refreshes or resolves the one alert of a condition; queues its notification when it opens.';
revoke execute on function billing.set_alert(p_condition text, p_firing boolean, p_summary text, p_details jsonb) from public;

-- The posting transaction's start in microseconds: one alert per crossing, and a transaction
-- crosses a threshold at most once (the state it updates says it fired).
create or replace function billing.alert_time() returns text
language plpgsql stable
set search_path = ''
as $$ begin return (extract(epoch from now()) * 1000000)::bigint::text; end $$;
comment on function billing.alert_time() is 'Internal: the posting transaction''s start in microseconds, the key of a threshold crossing.';
revoke execute on function billing.alert_time() from public;

-- Queues one alert: the student's email and the product webhook, deduplicated by p_key.
create or replace function billing.queue_user_alert(p_user uuid, p_key text, p_payload jsonb) returns void
language sql
set search_path = ''
as $$
  insert into billing.notification_outbox (template, user_id, dedupe_key, payload) values
    ('balance_alert', p_user, 'alert-email:' || p_key, p_payload),
    ('product_webhook', p_user, 'alert-webhook:' || p_key,
     jsonb_build_object('type', 'billing.alert', 'id', p_key, 'user_id', p_user, 'data', p_payload))
  on conflict (dedupe_key) do nothing
$$;
comment on function billing.queue_user_alert(p_user uuid, p_key text, p_payload jsonb) is 'Internal: an alert''s email and product webhook, once per key.';
revoke execute on function billing.queue_user_alert(p_user uuid, p_key text, p_payload jsonb) from public;
