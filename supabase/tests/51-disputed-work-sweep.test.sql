-- Work past its TTL where a dispute holds credits (billing.work_waits_for_dispute): it keeps
-- counting, live and as of now, until pg_cron's billing.release_disputed_work_holds ends it; one
-- account whose sweep fails never keeps the others' work waiting, and is said.
begin;
select plan(11);
\ir helpers.psql

insert into auth.users (id) select ('d1d1d1d1-0000-4000-8000-00000000000' || n)::uuid from generate_series(1, 2) n;

create function pg_temp.u(n int) returns uuid language sql as $$ select ('d1d1d1d1-0000-4000-8000-00000000000' || n)::uuid $$;
create function pg_temp.acct(n int) returns bigint language sql as $$
  select a.id from billing.accounts a where a.user_id = pg_temp.u(n) and a.org_id is null
$$;
-- Stripe's state of user n's purchase (dispute dp_sweep_<n> open when asked).
create function pg_temp.state(n int, cents int, dispute text default null) returns jsonb language sql as $$
  select jsonb_build_object('session_id', 'cs_sweep_' || n, 'session_status', 'complete', 'payment_status', 'paid',
    'amount_total', cents, 'currency', 'usd', 'payment_intent', 'pi_sweep_' || n, 'payment_intent_status', 'succeeded',
    'charge_id', 'ch_sweep_' || n, 'amount_refunded', 0,
    'dispute_id', case when dispute is not null then 'dp_sweep_' || n end, 'dispute_status', dispute)
$$;
-- User n buys mini and queues a job holding 1,000; the purchase is disputed; the job's hold's hour passes.
create function pg_temp.disputed_with_job(n int) returns uuid language plpgsql as $$
declare
  v_purchase uuid := (billing.begin_checkout(pg_temp.u(n), 'mini', 'sweep-' || n)).purchase_id;
  v_cents int := (select p.price_cents from billing.purchases p where p.id = v_purchase);
  v_job uuid;
begin
  perform billing.attach_checkout_session(v_purchase, 'cs_sweep_' || n, 'https://checkout.example/' || n, now() + interval '1 hour');
  perform billing.sync_purchase(pg_temp.state(n, v_cents));
  v_job := (billing.enqueue_job(pg_temp.u(n), 'ai_completion', '{"model": "gpt-4o", "prompt": "one two", "max_tokens": 100}',
    'sweep-job-' || n, null, 1000)).id;
  perform billing.sync_purchase(pg_temp.state(n, v_cents, 'needs_response'));
  update billing.holds h set expires_at = now() - interval '1 second'
  where h.id = (select j.hold_id from billing.jobs j where j.id = v_job);
  return (select j.hold_id from billing.jobs j where j.id = v_job);
end;
$$;
create temp table job_hold (n int primary key, id uuid);
insert into job_hold select n, pg_temp.disputed_with_job(n) from generate_series(1, 2) n;
create function pg_temp.status(n int) returns text language sql as $$
  select h.status::text from billing.holds h where h.id = (select id from job_hold where job_hold.n = $1)
$$;
create function pg_temp.live_held(n int) returns numeric language sql as $$
  select coalesce(sum(h.amount), 0) from billing.holds h where h.account_id = pg_temp.acct(n) and h.status = 'active'
$$;

select ok(billing.work_waits_for_dispute(pg_temp.acct(1)), 'a dispute holds credits in the account: its work waits');
select billing.release_expired_holds(1000000) is not null as swept \gset
select is(pg_temp.status(1), 'active', 'the TTL sweep leaves a job''s hold past its TTL where a dispute holds credits');
select is((billing.balance_of(pg_temp.acct(1))).held, pg_temp.live_held(1), 'the live balance counts it');
select is((billing.balance_as_of(pg_temp.acct(1), now()) ->> 'held')::numeric, pg_temp.live_held(1),
  'the balance as of now counts it as the live one does');
select is(billing.expire_overdue_holds(pg_temp.acct(1)), 0, 'the spend path''s expiry leaves it too');

-- User 1's account fails in the sweep (here: its holds may not change); user 2's work ends all the same.
create function pg_temp.refuse() returns trigger language plpgsql as $$
begin
  raise exception 'refused for the test';
end;
$$;
create trigger refuse_u1 before update on billing.holds for each row
  when (old.account_id = pg_temp.acct(1)) execute function pg_temp.refuse();
select is(billing.release_disputed_work_holds(1000000), 1, 'the dispute sweep ends the one hold it can');
select is(pg_temp.status(2), 'expired', 'user 2''s job hold past its TTL ended');
select is(pg_temp.status(1), 'active', 'user 1''s, whose sweep failed, still waits');
select is((select a.details ->> 'account_id' from billing.alerts a
           where a.condition = 'disputed_work_sweep_failed' and a.resolved_at is null)::bigint,
  pg_temp.acct(1), 'the failure is said: an alert names the account');
drop trigger refuse_u1 on billing.holds;
select is(billing.release_disputed_work_holds(1000000), 1, 'the next run ends it');
select is(pg_temp.status(1), 'expired', 'user 1''s job hold past its TTL ended');

select * from finish();
rollback;
