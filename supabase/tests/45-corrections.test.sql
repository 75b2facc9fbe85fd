-- Corrections: a void gives a charge back into the lots it drew (an expired one expires again at
-- once), returns its cap room, nets in the usage summary, and is idempotent; a bulk run voids a
-- filter's charges in batches, once each.
begin;
select plan(28);

insert into auth.users (id, raw_app_meta_data) values
  ('c0c0c0c0-0000-4000-8000-000000000001', '{}'),
  ('c0c0c0c0-0000-4000-8000-000000000002', '{}'),
  ('c0c0c0c0-0000-4000-8000-0000000000ad', '{"role": "admin"}');

create temp table ids (name text primary key, id bigint);
grant all on ids to public;

-- A paid lot (10 dollars for 100 credits) and a promotional one that will expire.
select billing.grant_credits('c0c0c0c0-0000-4000-8000-000000000001', 100, 'purchase', 'corr-buy', null, null, null,
  jsonb_build_object('cost_cents', 1000));
select billing.grant_credits('c0c0c0c0-0000-4000-8000-000000000001', 50, 'promo_grant', 'corr-promo', null, null, null,
  jsonb_build_object('expires_at', now() + interval '1 hour'));
select billing.set_spend_cap('c0c0c0c0-0000-4000-8000-000000000001', 'day', 'UTC', null, 500,
  'c0c0c0c0-0000-4000-8000-000000000001', 'self');

-- 40 credits of gpt-4o: drawn from the promotional lot first (it expires).
insert into ids select 'charge1', (billing.charge_usage('c0c0c0c0-0000-4000-8000-000000000001', 'gpt-4o', 500, 500,
  'corr-use-1')).transfer_id;
select is((select s.spent from billing.spend_caps s join billing.accounts a on a.id = s.account_id
           where a.user_id = 'c0c0c0c0-0000-4000-8000-000000000001'), 40::numeric, 'the charge counted against the cap');

-- as an admin
select is((billing.void_charge('c0c0c0c0-0000-4000-8000-0000000000ad', (select id from ids where name = 'charge1'),
  'provider outage') ->> 'amount'), '40', 'a void gives back exactly the charge''s amount');
select is((billing.get_balance('c0c0c0c0-0000-4000-8000-000000000001')).balance, 150::numeric,
  'the balance is what it was before the charge');
select is((select l.remaining from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id
           where t.idempotency_key = 'corr-promo'), 50::numeric, 'the credits went back into the very lot the charge drew');
select is((select s.spent from billing.spend_caps s join billing.accounts a on a.id = s.account_id
           where a.user_id = 'c0c0c0c0-0000-4000-8000-000000000001'), 0::numeric, 'the cap room went back to today');
select is((billing.void_charge('c0c0c0c0-0000-4000-8000-0000000000ad', (select id from ids where name = 'charge1'),
  'provider outage') ->> 'replayed'), 'true', 'voiding again answers the first void');
select is((select count(*) from billing.transfers t where t.kind = 'void'
           and t.reference = (select id from ids where name = 'charge1')::text), 1::bigint, 'one void transfer per charge');
select is((select count(*) from billing.charge_voids v where v.charge_id = (select id from ids where name = 'charge1')
           and v.reason = 'provider outage' and v.voided_by = 'c0c0c0c0-0000-4000-8000-0000000000ad'), 1::bigint,
  'the void has its audit row: who and why');
select is((billing.usage_summary('c0c0c0c0-0000-4000-8000-000000000001', current_date, current_date + 1, 'day')
           -> 'totals' ->> 'credits'), '0', 'the usage summary nets the void against the charge');
select is((billing.usage_summary('c0c0c0c0-0000-4000-8000-000000000001', current_date, current_date + 1, 'day')
           -> 'totals' ->> 'requests'), '0', 'and its request');

-- Paid credits spent, then voided: revenue recognised, then reversed.
insert into ids select 'charge2', (billing.charge_usage('c0c0c0c0-0000-4000-8000-000000000001', 'gpt-4o', 1000, 1000,
  'corr-use-2')).transfer_id;  -- 80: 50 promotional, 30 paid
select billing.void_charge('c0c0c0c0-0000-4000-8000-0000000000ad', (select id from ids where name = 'charge2'), 'bad answer');
select is((select sum(l.cost_cents * la.amount / l.amount) from billing.lot_allocations la join billing.lots l on l.id = la.lot_id
           where la.transfer_id in (select t.id from billing.transfers t where t.kind = 'void'
                                    and t.reference = (select id from ids where name = 'charge2')::text)),
  -300::numeric, 'the void un-recognises the paid part at its cost basis (30 credits of 10 cents)');
select is(billing.check_lots() - 'deferred_revenue_cents',
  '{"lots": [], "accounts": [], "sub_accounts": [], "transfers": [], "expiry": []}'::jsonb, 'lots, allocations and balances agree');
select ok((select bool_and(v -> 'from_lots' = v -> 'from_flows') from jsonb_each(billing.check_lots() -> 'deferred_revenue_cents') x(k, v)),
  'deferred revenue is exact both ways');

-- A charge whose lot has expired since: its share comes back and expires at once.
insert into ids select 'charge3', (billing.charge_usage('c0c0c0c0-0000-4000-8000-000000000001', 'gpt-4o', 100, 100,
  'corr-use-3')).transfer_id;  -- 8, from the promotional lot
update billing.lots l set expires_at = now() - interval '1 minute'
where l.grant_transfer_id = (select t.id from billing.transfers t where t.idempotency_key = 'corr-promo');
update billing.accounts a set next_expiry = now() - interval '1 minute'
where a.user_id = 'c0c0c0c0-0000-4000-8000-000000000001';
select billing.expire_lots(10);
select is((billing.get_balance('c0c0c0c0-0000-4000-8000-000000000001')).balance, 100::numeric,
  'the promotional lot expired (42 left of it)');
select is((billing.void_charge('c0c0c0c0-0000-4000-8000-0000000000ad', (select id from ids where name = 'charge3'),
  'late') -> 'lots' -> 0 ->> 'expired'), 'true', 'the expired lot''s share is reported expired');
select is((billing.get_balance('c0c0c0c0-0000-4000-8000-000000000001')).balance, 100::numeric,
  'nothing expired comes back to life');
select is((select l.remaining from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id
           where t.idempotency_key = 'corr-promo'), 0::numeric, 'the expired lot stays empty');
select is(billing.check_lots() - 'deferred_revenue_cents',
  '{"lots": [], "accounts": [], "sub_accounts": [], "transfers": [], "expiry": []}'::jsonb, 'and the lots still agree');

-- as a student, or with a bad request
select throws_ok($$select billing.void_charge('c0c0c0c0-0000-4000-8000-000000000001', 1, 'mine')$$, 'P0001',
  'ADMIN_REQUIRED', 'a student cannot void');
select throws_ok(format('select billing.void_charge(%L, %s, %L)', 'c0c0c0c0-0000-4000-8000-0000000000ad',
  (select id from ids where name = 'charge1'), '   '), 'P0001', 'INVALID_CORRECTION', 'a reason is required');
select throws_ok(format('select billing.void_charge(%L, %s, %L)', 'c0c0c0c0-0000-4000-8000-0000000000ad',
  (select t.id from billing.transfers t where t.idempotency_key = 'corr-buy' and t.kind = 'purchase'), 'x'), 'P0001',
  'CHARGE_NOT_FOUND', 'a purchase is not a charge');

-- Bulk: two users' charges of a model of this test's own (one flagged failed) and a gpt-4o-mini one.
insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from)
values ('pgtap-outage', 1, 5, 15, 4, '2026-01-01');
select billing.grant_credits('c0c0c0c0-0000-4000-8000-000000000002', 100, 'promo_grant', 'corr-promo-2');
select billing.charge_usage('c0c0c0c0-0000-4000-8000-000000000002', 'pgtap-outage', 100, 100, 'corr-bulk-1');
-- The flagged one: a gateway call whose provider reported usage, then failed (only the gateway
-- records a failure; a caller's "failed" is dropped, as the next charge shows).
select billing.finish_ai_call((billing.begin_ai_call('c0c0c0c0-0000-4000-8000-000000000002', 'pgtap-outage', 100, 100,
  'corr-bulk-2', 'h', 600) ->> 'call_id')::uuid, '{"input_tokens": 100, "output_tokens": 100}', 'provider', null, true);
select billing.charge_usage('c0c0c0c0-0000-4000-8000-000000000002', 'pgtap-outage', 1, 0, 'corr-bulk-5', null, '{"failed": true}');
select billing.charge_usage('c0c0c0c0-0000-4000-8000-000000000002', 'gpt-4o-mini', 10000, 10000, 'corr-bulk-3');
select billing.charge_usage('c0c0c0c0-0000-4000-8000-000000000001', 'pgtap-outage', 100, 100, 'corr-bulk-4');
select is((billing.preview_correction('c0c0c0c0-0000-4000-8000-0000000000ad', 'pgtap-outage', now() - interval '1 hour',
  clock_timestamp(), true) ->> 'charges'), '1', 'the preview of failed charges counts the gateway''s recorded failure only');
select is((billing.preview_correction('c0c0c0c0-0000-4000-8000-0000000000ad', 'pgtap-outage', now() - interval '1 hour',
  clock_timestamp(), false) - 'top_users' - 'from' - 'to'),
  '{"model": "pgtap-outage", "failed_only": false, "charges": 4, "credits": "24.02", "users": 2, "orgs": 0, "already_voided": 0}'::jsonb,
  'the preview says how many, how much and who, and what was voided already');
insert into ids select 'run', 0;
select is((billing.start_correction_run('c0c0c0c0-0000-4000-8000-0000000000ad', 'run-1', 'pgtap-outage', now() - interval '1 hour',
  clock_timestamp(), false, 'outage') ->> 'status'), 'running', 'a run starts');
select is((select (billing.process_correction_run(r.id, 2) ->> 'voided')
           from billing.correction_runs r where r.idempotency_key = 'run-1'), '2', 'a batch voids at most its size');
select is((select (billing.process_correction_run(r.id, 2) ->> 'voided')
           from billing.correction_runs r where r.idempotency_key = 'run-1'), '4', 'the next batch resumes where it stopped');
select is((select count(*) from billing.charge_voids v join billing.correction_runs r on r.id = v.run_id
           where r.idempotency_key = 'run-1'), 4::bigint, 'each matching charge voided once');
select is((billing.start_correction_run('c0c0c0c0-0000-4000-8000-0000000000ad', 'run-1', 'pgtap-outage',
  (select r.from_at from billing.correction_runs r where r.idempotency_key = 'run-1'),
  (select r.to_at from billing.correction_runs r where r.idempotency_key = 'run-1'), false, 'outage') ->> 'replayed'),
  'true', 'the same key answers the run it started');

select * from finish();
rollback;
