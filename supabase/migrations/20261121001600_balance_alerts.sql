-- Balance and cap alerts. Each fires once per crossing and re-arms when cleared; the state is
-- on the rows the posting transaction already holds locked (the account; the cap's period), so
-- an alert is decided in the same transaction as the money movement that crosses it, and an
-- account with no alerts pays nothing (a null threshold, an empty list of percents).
-- Delivery is through the outbox: an email to the student and, for the product's own backend,
-- a `product_webhook` row the dispatcher POSTs signed to PRODUCT_WEBHOOK_URL, with retries and
-- a delivery log (billing.webhook_deliveries).

alter table billing.accounts
  add column low_balance_threshold numeric(38, 18),  -- alert when available falls below it; null: no alert
  add column low_balance_fired boolean not null default false,
  add constraint accounts_low_balance_positive check (low_balance_threshold is null or low_balance_threshold > 0);

alter table billing.spend_caps
  add column alert_percents integer[] not null default '{}',  -- e.g. {50,80,100}
  add column alerts_fired integer[] not null default '{}',    -- of those, fired in alerts_period
  add column alerts_period timestamptz,
  add constraint spend_caps_alert_percents check (alert_percents <@ array[1, 2, 3, 4, 5, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 95, 100]);

create table billing.webhook_deliveries (
  id bigint generated always as identity primary key,
  outbox_id bigint not null references billing.notification_outbox (id),
  attempt integer not null,
  status integer,                                 -- the HTTP status, null when no answer
  error text,
  created_at timestamptz not null default now()
);
comment on table billing.webhook_deliveries is 'Every attempt to deliver a product webhook: what the product''s backend answered.';
create index webhook_deliveries_outbox on billing.webhook_deliveries (outbox_id, id);
revoke all on billing.webhook_deliveries from public, anon, authenticated, service_role;
alter table billing.webhook_deliveries enable row level security;
grant select on billing.webhook_deliveries to service_role;

-- ============================================================ firing

-- The posting transaction's start in microseconds: one alert per crossing, and a transaction
-- crosses a threshold at most once (the state it updates says it fired).
create function billing.alert_time() returns text
language sql stable
set search_path = ''
as $$ select (extract(epoch from now()) * 1000000)::bigint::text $$;

-- Queues one alert: the student's email and the product webhook, deduplicated by p_key.
create function billing.queue_user_alert(p_user uuid, p_key text, p_payload jsonb) returns void
language sql
set search_path = ''
as $$
  insert into billing.notification_outbox (template, user_id, dedupe_key, payload) values
    ('balance_alert', p_user, 'alert-email:' || p_key, p_payload),
    ('product_webhook', p_user, 'alert-webhook:' || p_key,
     jsonb_build_object('type', 'billing.alert', 'id', p_key, 'user_id', p_user, 'data', p_payload))
  on conflict (dedupe_key) do nothing
$$;
comment on function billing.queue_user_alert(uuid, text, jsonb) is 'Internal: an alert''s email and product webhook, once per key.';

-- The low-balance alert of a locked account, after its balance or held amount moved: fires on
-- the way down through the threshold, re-arms on the way back up.
create function billing.check_low_balance(a billing.accounts) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_available numeric(38, 18) := a.balance - a.held;
begin
  if a.low_balance_threshold is null then
    return;
  end if;
  if v_available < a.low_balance_threshold and not a.low_balance_fired then
    update billing.accounts x set low_balance_fired = true where x.id = a.id;
    perform billing.queue_user_alert(a.user_id, 'low-balance:' || a.id || ':' || billing.alert_time(),
      jsonb_build_object('kind', 'balance_below', 'threshold', trim_scale(a.low_balance_threshold)::text,
        'available', trim_scale(v_available)::text));
  elsif v_available >= a.low_balance_threshold and a.low_balance_fired then
    update billing.accounts x set low_balance_fired = false where x.id = a.id;
  end if;
end;
$$;
comment on function billing.check_low_balance(billing.accounts) is 'Internal: fires (once per crossing) or re-arms the low-balance alert of a locked account.';

-- A cap's percent alerts, after its period's spending moved (p_cap is the row as updated): each
-- percent fires once per period when reached, and re-arms when spending falls back below it
-- (a hold released) or a new period starts. No statement runs unless something changes.
create function billing.cap_alerts_after(p_cap billing.spend_caps) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_starts timestamptz := date_trunc(p_cap.period, now() at time zone p_cap.time_zone) at time zone p_cap.time_zone;
  v_spent numeric(38, 18) := case when p_cap.period_start = v_starts then p_cap.spent else 0 end;
  v_fired integer[] := case when p_cap.alerts_period = v_starts then p_cap.alerts_fired else '{}' end;
  v_reached integer[] := '{}';
  v_pct integer;
  v_user uuid;
begin
  -- Plain expressions, no query: this runs on every capped debit of an account with cap alerts.
  foreach v_pct in array p_cap.alert_percents loop
    if v_spent * 100 >= p_cap.amount * v_pct then
      v_reached := v_reached || v_pct;
    end if;
  end loop;
  if v_reached = v_fired and p_cap.alerts_period = v_starts then
    return;
  end if;
  update billing.spend_caps x set alerts_fired = v_reached, alerts_period = v_starts where x.id = p_cap.id;
  if exists (select 1 from unnest(v_reached) pct where not pct = any (v_fired)) then
    select a.user_id into v_user from billing.accounts a where a.id = p_cap.account_id;
    -- Keyed by the transaction's time too: a percent re-armed and reached again fires again.
    perform billing.queue_user_alert(v_user, 'cap:' || p_cap.id || ':' || pct || ':' || billing.alert_time(),
      jsonb_build_object('kind', 'cap_used', 'percent', pct, 'period', p_cap.period, 'model', p_cap.model,
        'cap', trim_scale(p_cap.amount)::text, 'spent', trim_scale(v_spent)::text))
    from unnest(v_reached) pct where not pct = any (v_fired);
  end if;
end;
$$;
comment on function billing.cap_alerts_after(billing.spend_caps) is 'Internal: fires (once per period and crossing) or re-arms the percent alerts of a cap whose spending moved.';

-- ============================================================ settings

-- p_threshold null turns the low-balance alert off. Takes the account lock; evaluates at once,
-- so turning it on when already below fires it.
create function billing.set_low_balance_alert(p_user uuid, p_threshold numeric) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint := billing.ensure_user_account(p_user);
begin
  if p_threshold is not null then
    perform billing.check_amount(p_threshold);
  end if;
  perform 1 from billing.accounts a where a.id = v_account_id for update;
  update billing.accounts a set low_balance_threshold = p_threshold, low_balance_fired = false where a.id = v_account_id;
  perform billing.check_low_balance(a) from billing.accounts a where a.id = v_account_id;
  return billing.get_alerts(p_user);
end;
$$;
comment on function billing.set_low_balance_alert(uuid, numeric) is 'Sets (or, null, clears) the user''s low-balance alert; fires at once if already below.';

create function billing.set_cap_alerts(p_user uuid, p_period text, p_model text, p_percents integer[]) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id bigint := billing.ensure_user_account(p_user);
begin
  perform 1 from billing.accounts a where a.id = v_account_id for update;
  begin
    update billing.spend_caps c set alert_percents = coalesce(array(select distinct x from unnest(p_percents) x order by x), '{}'),
      alerts_fired = '{}', alerts_period = null
    where c.account_id = v_account_id and c.period = p_period and c.model is not distinct from p_model;
  exception when check_violation then
    perform billing.raise_error('INVALID_ALERT', jsonb_build_object('field', 'percents',
      'rule', '1, 2, 3, 4, 5, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 95 or 100'));
  end;
  if not found then
    perform billing.raise_error('CAP_NOT_FOUND', jsonb_build_object('period', p_period, 'model', p_model));
  end if;
  perform billing.cap_alerts_after(c) from billing.spend_caps c
  where c.account_id = v_account_id and c.period = p_period and c.model is not distinct from p_model;
  return billing.get_alerts(p_user);
end;
$$;
comment on function billing.set_cap_alerts(uuid, text, text, integer[]) is 'Sets the percent alerts of one of the user''s caps; fires at once what is already reached.';

create function billing.get_alerts(p_user uuid) returns jsonb
language sql stable
security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'low_balance', (select case when a.low_balance_threshold is not null then jsonb_build_object(
        'threshold', trim_scale(a.low_balance_threshold)::text, 'fired', a.low_balance_fired) end
      from billing.accounts a where a.user_id = p_user),
    'caps', coalesce((select jsonb_agg(jsonb_build_object('period', c.period, 'model', c.model, 'percents', to_jsonb(c.alert_percents),
        'fired', to_jsonb(case when c.alerts_period = p.starts then c.alerts_fired else '{}' end)) order by c.period, c.model nulls first)
      from billing.accounts a join billing.spend_caps c on c.account_id = a.id
      cross join lateral billing.cap_period(c.period, c.time_zone, now()) p
      where a.user_id = p_user and c.alert_percents <> '{}'), '[]'::jsonb))
$$;
comment on function billing.get_alerts(uuid) is 'A user''s alerts: the low-balance threshold and each cap''s percents, with what has fired.';

create function billing.log_webhook_delivery(p_outbox_id bigint, p_attempt integer, p_status integer, p_error text)
returns void
language sql
security definer
set search_path = ''
as $$
  insert into billing.webhook_deliveries (outbox_id, attempt, status, error) values (p_outbox_id, p_attempt, p_status, left(p_error, 500))
$$;
comment on function billing.log_webhook_delivery(bigint, integer, integer, text) is 'Records one product-webhook delivery attempt.';

revoke execute on all functions in schema billing from public, anon, authenticated;
grant execute on function billing.balance_of(bigint) to authenticated, service_role;
grant execute on function
  billing.set_low_balance_alert(uuid, numeric),
  billing.set_cap_alerts(uuid, text, text, integer[]),
  billing.get_alerts(uuid),
  billing.log_webhook_delivery(bigint, integer, integer, text)
to service_role;
