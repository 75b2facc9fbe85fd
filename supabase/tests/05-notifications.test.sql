-- The notification outbox: a notification is written once per dedupe key, claimed by one sender
-- at a time, retried with backoff after a failure and failed after the last attempt, marked sent
-- once delivered; product-webhook attempts are logged, errors cut to 500 characters. Only
-- service_role reaches it.
begin;
select plan(20);
\ir helpers.psql

-- Rows left by earlier runs are not due here: what is claimed below is this file's.
update billing.notification_outbox set next_attempt_at = now() + interval '1 day' where status = 'pending';

-- ============================================================ once per dedupe key

create temp table n as
  select billing.enqueue_notification('alert', null, 'pgtap-notify-1', '{"amount": "1"}') as id;
select is(billing.enqueue_notification('alert', null, 'pgtap-notify-1', '{"amount": "2"}'), (select id from n),
  'a second notification under the same dedupe key answers the first');
select is((select payload from billing.notification_outbox where dedupe_key = 'pgtap-notify-1'), '{"amount": "1"}'::jsonb,
  'and changes nothing of it');

-- ============================================================ claimed, retried, failed

select is((select array_agg(c.id) from billing.claim_outbox(10) c), array[(select id from n)],
  'a due notification is claimed');
select is((select attempts from billing.notification_outbox where id = (select id from n)), 1, 'its attempt is counted');
select is((select next_attempt_at from billing.notification_outbox where id = (select id from n)), now() + interval '2 minutes',
  'and it comes back in 2 minutes if its sender dies');
select is((select count(*)::int from billing.claim_outbox(10)), 0, 'a claimed notification is not claimed again meanwhile');

select is(billing.finish_outbox((select id from n), false, repeat('x', 600)), 'pending', 'a failed send stays pending');
select is((select length(last_error) from billing.notification_outbox where id = (select id from n)), 500,
  'its error is kept cut to 500 characters');
select is((select next_attempt_at from billing.notification_outbox where id = (select id from n)), now() + interval '10 seconds',
  'its retry waits 10 s after the first attempt, doubling after each');
update billing.notification_outbox set attempts = 5 where id = (select id from n);
select is(billing.finish_outbox((select id from n), false, 'smtp down'), 'failed', 'a send that fails at the last attempt fails the notification');

create temp table m as select billing.enqueue_notification('alert', null, 'pgtap-notify-2', '{}') as id;
select is(billing.finish_outbox((select id from m), true), 'sent', 'a delivered notification is sent');
select ok((select sent_at is not null and last_error is null from billing.notification_outbox where id = (select id from m)),
  'with the time it was sent');

-- ============================================================ a claim renewed before each send

create temp table r as select billing.enqueue_notification('alert', null, 'pgtap-notify-3', '{}') as id;
select billing.claim_outbox(10);
select ok(billing.renew_outbox_claim((select id from r), 1), 'a sender renews its own claim before sending');
-- Its run outlasted the claim: the row came due again and another sender claimed it.
update billing.notification_outbox set next_attempt_at = now() - interval '1 second' where id = (select id from r);
select billing.claim_outbox(10);
select ok(not billing.renew_outbox_claim((select id from r), 1), 'the first sender''s lapsed claim is not renewed: it skips the row');
select ok(billing.renew_outbox_claim((select id from r), 2), 'the second sender''s is');
select billing.finish_outbox((select id from r), true);
select ok(not billing.renew_outbox_claim((select id from r), 2), 'a sent row is never claimed for sending again');

-- ============================================================ webhook deliveries

select billing.log_webhook_delivery((select id from m), 1, null, repeat('e', 600));
select is((select array[attempt, length(error)] from billing.webhook_deliveries where outbox_id = (select id from m)), array[1, 500],
  'a webhook attempt is logged with its error cut to 500 characters');

-- ============================================================ who may

set local role authenticated;
select is(pg_temp.err($$select count(*) from billing.notification_outbox$$), 'permission denied for table notification_outbox',
  'authenticated cannot read the outbox');
select is(pg_temp.err($$select billing.claim_outbox(1)$$), 'permission denied for function claim_outbox',
  'nor claim from it');
reset role;
set local role anon;
select is(pg_temp.err($$select billing.enqueue_notification('alert', null, 'x', '{}')$$), 'permission denied for schema billing',
  'anon cannot write to it');
reset role;

select * from finish();
rollback;
