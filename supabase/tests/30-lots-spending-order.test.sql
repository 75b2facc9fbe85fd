-- The spending order never starts with an overdue lot: an account's due lots expire before it
-- spends, and the only lots that can be overdue (a disputed purchase's, frozen) are spent last.
begin;
select plan(4);
\ir helpers.psql

insert into auth.users (id) values ('abababab-0000-4000-8000-000000000001');

select billing.grant_credits('abababab-0000-4000-8000-000000000001', 50, 'promo_grant', 'order-frozen', null, null, null,
  jsonb_build_object('expires_at', now() + interval '1 hour'));
select billing.grant_credits('abababab-0000-4000-8000-000000000001', 50, 'adjustment', 'order-open');
-- A dispute froze the first lot, and its expiry has passed while the dispute is open.
update billing.lots l set frozen = true, expires_at = now() - interval '1 minute'
where l.grant_transfer_id = (select t.id from billing.transfers t where t.idempotency_key = 'order-frozen');
update billing.accounts a set next_expiry = now() - interval '1 minute'
where a.user_id = 'abababab-0000-4000-8000-000000000001';

select pg_temp.spend('abababab-0000-4000-8000-000000000001', 10, 'order-debit');
select is((select l.remaining from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id
           where t.idempotency_key = 'order-frozen'), 50::numeric, 'the frozen overdue lot is not drawn');
select is((select l.remaining from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id
           where t.idempotency_key = 'order-open'), 40::numeric, 'the open lot pays');
select is((select a.next_expiry from billing.accounts a where a.user_id = 'abababab-0000-4000-8000-000000000001')
          <= now(), true, 'next_expiry stays a lower bound while a frozen lot is overdue');
select is(billing.check_lots() -> 'expiry', '[]'::jsonb, 'and the invariant holds');

select * from finish();
rollback;
