-- The notification outbox: every e-mail and product webhook is a row written in the same
-- transaction as the fact it reports, then claimed and sent by the notify function; each
-- product-webhook attempt is logged in webhook_deliveries.

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

create or replace function billing.finish_outbox(p_id bigint, p_sent boolean, p_error text default null, p_max_attempts integer default 5)
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row billing.notification_outbox;
begin
  if p_sent then
    update billing.notification_outbox o set status = 'sent', sent_at = now(), last_error = null where o.id = p_id returning * into v_row;
  else
    update billing.notification_outbox o
    set last_error = left(p_error, 500),
        status = case when o.attempts >= p_max_attempts then 'failed' else 'pending' end,
        next_attempt_at = now() + make_interval(secs => least(3600, 5 * 2 ^ o.attempts)) -- 10 s, 20 s, 40 s …
    where o.id = p_id returning * into v_row;
  end if;
  return v_row.status;
end;
$$;
comment on function billing.finish_outbox(p_id bigint, p_sent boolean, p_error text, p_max_attempts integer) is 'Marks a notification sent, or schedules its retry with backoff, failing it after the last attempt.';
revoke execute on function billing.finish_outbox(p_id bigint, p_sent boolean, p_error text, p_max_attempts integer) from public;
grant execute on function billing.finish_outbox(p_id bigint, p_sent boolean, p_error text, p_max_attempts integer) to service_role;

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
