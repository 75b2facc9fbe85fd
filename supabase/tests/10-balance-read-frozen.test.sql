-- What /credits/balance answers before the sweep (billing.balance_of, as billing.settled would
-- leave the account) is what the sweep leaves, when a dispute froze credits: what an overdue hold
-- reserved of a frozen lot goes back to it, never to what may be spent; and available is Σ free
-- credits, never below nothing while the balance is not.
begin;
select plan(4);
\ir helpers.psql

insert into auth.users (id) values ('b0b0b0b0-0000-4000-8000-000000000001');
select billing.grant_credits('b0b0b0b0-0000-4000-8000-000000000001', 10, 'adjustment', 'brf-grant');
select billing.reserve_credits('b0b0b0b0-0000-4000-8000-000000000001', 4, 'brf-hold');
create function pg_temp.acct() returns bigint language sql as $$
  select a.id from billing.accounts a where a.user_id = 'b0b0b0b0-0000-4000-8000-000000000001'
$$;
create function pg_temp.read() returns jsonb language sql as $$
  select jsonb_build_array(trim_scale(b.balance), trim_scale(b.held), trim_scale(b.available))
  from billing.balance_of(pg_temp.acct()) b
$$;
-- A dispute freezes the lot; the hold, placed before, keeps its reservation.
select billing.set_lots_frozen(array(select l.id from billing.lots l where l.account_id = pg_temp.acct()), true);
select is(pg_temp.read(), '[10, 4, 0]'::jsonb, 'frozen: nothing to spend, the hold still held');

-- The hold's TTL passes; nothing has swept it yet.
update billing.holds h set expires_at = now() - interval '1 second' where h.account_id = pg_temp.acct();
update billing.accounts a set next_hold_expiry = now() - interval '1 second' where a.id = pg_temp.acct();
create temp table before_sweep as select pg_temp.read() as r;
select is((select r from before_sweep), '[10, 0, 0]'::jsonb,
  'read before the sweep: the overdue hold no longer counts, and what it reserved is frozen again');
select billing.settled(a) from billing.accounts a where a.id = pg_temp.acct() for update;
select is(pg_temp.read(), (select r from before_sweep), 'the sweep leaves what the read said');
select is((select h.status from billing.holds h where h.account_id = pg_temp.acct()), 'expired', 'and the hold expired');

select * from finish();
rollback;
