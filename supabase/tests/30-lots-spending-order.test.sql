-- The spending order never starts with an overdue lot: an account's due lots expire before it
-- spends, frozen ones too (a lot expires whole when due, frozen or not), and a frozen lot is never
-- drawn, wherever it stands in the spending order (docs/credit-lots.md § Spending order 3, 7).
begin;
select plan(4);
\ir helpers.psql

insert into auth.users (id) values ('abababab-0000-4000-8000-000000000001');

select billing.grant_credits('abababab-0000-4000-8000-000000000001', 50, 'promo_grant', 'order-frozen', null, null, null,
  jsonb_build_object('expires_at', now() + interval '1 hour'));
select billing.grant_credits('abababab-0000-4000-8000-000000000001', 20, 'promo_grant', 'order-frozen-first', null, null, null,
  jsonb_build_object('priority', 0));
select billing.grant_credits('abababab-0000-4000-8000-000000000001', 50, 'adjustment', 'order-open');
-- A dispute froze two lots (one first in spending order), and the first one's expiry has passed.
update billing.lots l set frozen = true
where l.grant_transfer_id in (select t.id from billing.transfers t where t.idempotency_key in ('order-frozen', 'order-frozen-first'));
update billing.lots l set expires_at = now() - interval '1 minute'
where l.grant_transfer_id = (select t.id from billing.transfers t where t.idempotency_key = 'order-frozen');
update billing.accounts a set next_expiry = now() - interval '1 minute', frozen_lots = true
where a.user_id = 'abababab-0000-4000-8000-000000000001';

select pg_temp.spend('abababab-0000-4000-8000-000000000001', 10, 'order-debit');
select is((select l.remaining from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id
           where t.idempotency_key = 'order-frozen'), 0::numeric, 'a frozen lot expires when due like any other');
select is((select l.remaining from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id
           where t.idempotency_key = 'order-frozen-first'), 20::numeric, 'a frozen lot first in spending order is not drawn');
select is((select l.remaining from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id
           where t.idempotency_key = 'order-open'), 40::numeric, 'the open lot pays');
select is(billing.check_lots() - 'deferred_revenue_cents',
  '{"lots": [], "expiry": [], "accounts": [], "transfers": [], "sub_accounts": []}'::jsonb, 'and the invariants hold');

select * from finish();
rollback;
