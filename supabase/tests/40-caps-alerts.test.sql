-- Spend caps and alerts: a student's cap counts debits when they post and holds when they are
-- placed (what a released hold did not spend comes back), refuses what would pass it with its
-- numbers and moves nothing; only the student sets their own cap, with a real time zone; cap
-- alerts fire once per percent reached, the low-balance alert once per crossing, each as an
-- email and a product webhook.
begin;
select plan(18);
\ir helpers.psql

insert into auth.users (id) values ('40404040-0000-4000-8000-000000000001'), ('40404040-0000-4000-8000-000000000002');
create temp table k as select '40404040-0000-4000-8000-000000000001'::uuid as u, '40404040-0000-4000-8000-000000000002'::uuid as other;
select billing.grant_credits((select u from k), 100, 'promo_grant', 'caps-grant');
create function pg_temp.cap() returns jsonb language sql as $$ select billing.get_spend_caps((select u from k)) -> 0 $$;

-- ============================================================ who sets a cap

select is(pg_temp.err($$select billing.set_spend_cap((select u from k), 'day', 'UTC', null, 10, (select other from k), 'self')$$),
  'ADMIN_REQUIRED', 'only the student sets their own cap');
select is(pg_temp.err($$select billing.set_spend_cap((select u from k), 'day', 'Mars/Olympus', null, 10, (select u from k), 'self')$$),
  'INVALID_CAP', 'a cap''s time zone must be a real one');
select is(billing.set_spend_cap((select u from k), 'day', 'UTC', null, 10, (select u from k), 'self') -> 0 ->> 'cap', '10',
  'a student caps their day at 10 credits');

-- ============================================================ what counts

create temp table h as select (billing.reserve_credits((select u from k), 6, 'caps-hold')).hold_id as id;
select is(pg_temp.cap() ->> 'spent', '6', 'a hold counts when it is placed');
select is(pg_temp.err($$select pg_temp.spend((select u from k), 5, 'caps-debit-over')$$), 'SPEND_CAP_REACHED',
  'a charge that would pass the cap is refused');
select is(pg_temp.detail($$select pg_temp.spend((select u from k), 5, 'caps-debit-over')$$) - 'cap_id' - 'resets_at',
  '{"cap": "10", "spent": "6", "model": null, "period": "day", "required": "5", "time_zone": "UTC"}'::jsonb,
  'with the cap, what was spent and what it needed');
select is((select trim_scale(balance) from billing.accounts where user_id = (select u from k)), 100::numeric, 'and moves nothing');
select billing.release_hold((select u from k), (select id from h));
select is(pg_temp.cap() ->> 'spent', '0', 'what a released hold did not spend comes back to the period');
select is((pg_temp.spend((select u from k), 10, 'caps-debit-all')).charged, 10::numeric(38, 18), 'a charge up to the cap passes');
select is(array[pg_temp.cap() ->> 'spent', pg_temp.cap() ->> 'remaining'], array['10', '0'], 'and fills it');
select is(pg_temp.err($$select pg_temp.spend((select u from k), 0.000000000000000001, 'caps-debit-tiny')$$), 'SPEND_CAP_REACHED',
  'after which the smallest charge is refused');

-- ============================================================ alerts

select is(pg_temp.err($$select billing.set_cap_alerts((select u from k), 'day', null, array[33])$$), 'INVALID_ALERT',
  'a cap alert is at one of the listed percents');
select is(billing.set_cap_alerts((select u from k), 'day', null, array[100, 50]) -> 'caps' -> 0 -> 'fired', '[50, 100]'::jsonb,
  'alerts set on a cap already full fire at once, for each percent reached');
select is((select count(*)::int from billing.notification_outbox o where o.user_id = (select u from k) and o.payload ->> 'kind' = 'cap_used'), 2,
  'one email per percent');
select is((select count(*)::int from billing.notification_outbox o where o.user_id = (select u from k) and o.template = 'product_webhook'
           and o.payload -> 'data' ->> 'kind' = 'cap_used'), 2, 'and one product webhook per percent');
select is(billing.set_low_balance_alert((select u from k), 95) -> 'low_balance', '{"threshold": "95", "fired": true}'::jsonb,
  'a low-balance threshold above what is available fires at once');
select billing.grant_credits((select u from k), 10, 'promo_grant', 'caps-topup');
select is((select low_balance_fired from billing.accounts where user_id = (select u from k)), true,
  'a posting decides no alert itself');
select billing.run_account_watch();
select is((select low_balance_fired from billing.accounts where user_id = (select u from k)), false,
  'the tick sees a top-up back above the threshold and re-arms it');

select * from finish();
rollback;
