-- School wallets: organisations, invitations, allowances and their sweep, a capped pool, the
-- member's spending order, holds on the paying wallet, removal, RLS, and the ledger's invariants.
begin;
select plan(38);
\ir helpers.psql

insert into auth.users (id, email) values
  ('eeeeeeee-0000-4000-8000-000000000001', 'owner@school.test'),
  ('eeeeeeee-0000-4000-8000-000000000002', 'ada@school.test'),
  ('eeeeeeee-0000-4000-8000-000000000003', 'bo@school.test'),
  ('eeeeeeee-0000-4000-8000-000000000004', 'outsider@else.test'),
  ('eeeeeeee-0000-4000-8000-000000000005', 'other-owner@else.test');

create function pg_temp.avail(p_org uuid, p_member uuid) returns numeric language sql as $$
  select (billing.balance_of(a.id)).available from billing.accounts a where a.org_id = p_org and a.member_id is not distinct from p_member
$$;
create function pg_temp.own(p_user uuid) returns numeric language sql as $$
  select (billing.balance_of(a.id)).available from billing.accounts a where a.user_id = p_user
$$;
create temp table ids as
  select (billing.create_org('eeeeeeee-0000-4000-8000-000000000001', 'Lakeside School', 'allowance', true) ->> 'id')::uuid as org,
         (billing.create_org('eeeeeeee-0000-4000-8000-000000000005', 'Other Academy', 'pool', true) ->> 'id')::uuid as other;
grant select on ids to authenticated;

-- ============================================================ invitations

select billing.invite_member('eeeeeeee-0000-4000-8000-000000000001', (select org from ids), 'ada@school.test', 'member',
  'hash-ada', 86400);
select billing.invite_member('eeeeeeee-0000-4000-8000-000000000001', (select org from ids), 'bo@school.test', 'member',
  'hash-bo', 86400);
select billing.invite_member('eeeeeeee-0000-4000-8000-000000000001', (select org from ids), 'late@school.test', 'member',
  'hash-late', 86400);
update billing.org_invitations set expires_at = now() - interval '1 minute' where token_hash = 'hash-late';

select is(pg_temp.err($$select billing.answer_invitation('eeeeeeee-0000-4000-8000-000000000004', 'outsider@else.test', 'hash-ada', true)$$),
  'INVITATION_NOT_FOUND', 'an invitation answers only to the address it was sent to');
select is(billing.answer_invitation('eeeeeeee-0000-4000-8000-000000000002', 'ADA@school.test', 'hash-ada', true) ->> 'status',
  'accepted', 'the invited student accepts (the address compared without case)');
select is(billing.answer_invitation('eeeeeeee-0000-4000-8000-000000000002', 'ada@school.test', 'hash-ada', true) ->> 'status',
  'accepted', 'accepting again is a retry');
select is(pg_temp.err($$select billing.answer_invitation('eeeeeeee-0000-4000-8000-000000000002', 'ada@school.test', 'hash-ada', false)$$),
  'INVITATION_CLOSED', 'an answered invitation cannot be answered otherwise');
select is(pg_temp.err($$select billing.answer_invitation('eeeeeeee-0000-4000-8000-000000000004', 'late@school.test', 'hash-late', true)$$),
  'INVITATION_CLOSED', 'an expired invitation cannot be accepted');
select billing.answer_invitation('eeeeeeee-0000-4000-8000-000000000003', 'bo@school.test', 'hash-bo', true);
select is((select orgs from billing.accounts where user_id = 'eeeeeeee-0000-4000-8000-000000000002'), 1,
  'a funded membership is counted on the member''s own account');
select is(pg_temp.err($$select billing.invite_member('eeeeeeee-0000-4000-8000-000000000002', (select org from ids), 'x@y.test', 'member', 'h', 86400)$$),
  'ORG_FORBIDDEN', 'a member cannot invite');
select is(pg_temp.err($$select billing.get_org('eeeeeeee-0000-4000-8000-000000000005', (select org from ids))$$),
  'ORG_NOT_FOUND', 'an admin of another organisation does not see this one');
select is(pg_temp.err($$select billing.fund_allowances('eeeeeeee-0000-4000-8000-000000000005', (select org from ids), null, 1, 'k')$$),
  'ORG_NOT_FOUND', 'nor fund from it');

-- ============================================================ allowances

select billing.grant_org_credits((select org from ids), 1000, 'adjustment', 'org-grant-1', 'pilot', null);
select is(pg_temp.err($$select billing.fund_allowances('eeeeeeee-0000-4000-8000-000000000001', (select org from ids), null, 600, 'term-1')$$),
  'INSUFFICIENT_CREDITS', 'funding everyone is all or nothing: 2 × 600 does not fit in 1000');
select is(pg_temp.avail((select org from ids), null), 1000::numeric, 'and nothing moved');
select is(jsonb_array_length(billing.fund_allowances('eeeeeeee-0000-4000-8000-000000000001', (select org from ids), null, 300, 'term-1') -> 'funded'),
  2, 'every active member gets an allowance');
select billing.fund_allowances('eeeeeeee-0000-4000-8000-000000000001', (select org from ids), null, 300, 'term-1');
select is(pg_temp.avail((select org from ids), null), 400::numeric, 'a retry with the same key funds nobody twice');
select is((select l.cost_cents from billing.lots l join billing.accounts a on a.id = l.account_id
           where a.member_id = 'eeeeeeee-0000-4000-8000-000000000002'), 0::numeric,
  'the allowance lot carries the wallet''s cost basis (a free grant: 0)');
select is((select l.expires_at from billing.lots l join billing.accounts a on a.id = l.account_id
           where a.member_id = 'eeeeeeee-0000-4000-8000-000000000002'), null,
  'an allowance funded from credits that never expire never expires');

-- The member's spending order: the organisation first, then their own credits.
select billing.grant_credits('eeeeeeee-0000-4000-8000-000000000002', 50, 'purchase', 'ada-own');
select pg_temp.spend('eeeeeeee-0000-4000-8000-000000000002', 280, 'ada-debit-1');
select is(pg_temp.avail((select org from ids), 'eeeeeeee-0000-4000-8000-000000000002'), 20::numeric, 'spent from the allowance first');
select is((select member_id from billing.transfers where idempotency_key = 'ada-debit-1'),
  'eeeeeeee-0000-4000-8000-000000000002'::uuid, 'the transfer names the member');
select pg_temp.spend('eeeeeeee-0000-4000-8000-000000000002', 30, 'ada-debit-2');
select is(pg_temp.own('eeeeeeee-0000-4000-8000-000000000002'), 20::numeric, 'a charge the allowance cannot cover is paid from her own');
select pg_temp.spend('eeeeeeee-0000-4000-8000-000000000002', 30, 'ada-debit-2');
select is(pg_temp.own('eeeeeeee-0000-4000-8000-000000000002'), 20::numeric, 'a retry charges nothing again');
select is(pg_temp.detail($$select pg_temp.spend('eeeeeeee-0000-4000-8000-000000000002', 25, 'ada-debit-3')$$) -> 'wallets',
  jsonb_build_array(
    jsonb_build_object('wallet', 'organisation', 'org_id', (select org from ids), 'available', '20', 'short_by', '5',
      'reason', 'insufficient'),
    jsonb_build_object('wallet', 'personal', 'available', '20', 'short_by', '5', 'reason', 'insufficient')),
  'a 402 names each wallet and what it lacked');

-- A hold on the allowance, captured by the member.
select billing.reserve_credits('eeeeeeee-0000-4000-8000-000000000002', 15, 'ada-hold', 600, null, null);
select is((select member_id from billing.holds where idempotency_key = 'ada-hold'), 'eeeeeeee-0000-4000-8000-000000000002'::uuid,
  'a hold is placed on the paying wallet and kept by the member');
select is((billing.capture_hold('eeeeeeee-0000-4000-8000-000000000002',
  (select id from billing.holds where idempotency_key = 'ada-hold'), 10)).status, 'captured', 'the member captures it');
select is(pg_temp.avail((select org from ids), 'eeeeeeee-0000-4000-8000-000000000002'), 10::numeric, 'from the allowance');

-- ============================================================ the term ends: allowances sweep back

update billing.orgs set term_started_at = now() - interval '2 days', term_ends_at = now() - interval '1 second'
where id = (select org from ids);
select is(billing.sweep_ended_terms(), 1, 'the sweep finds the ended term');
select is(pg_temp.avail((select org from ids), null), 710::numeric, 'both members'' unspent allowances are back (400 + 10 + 300)');
select is(billing.sweep_ended_terms(), 0, 'a second run has nothing to do');

-- ============================================================ removal

update billing.lots set expires_at = now() + interval '10 days'
where account_id = (select id from billing.accounts where org_id = (select org from ids) and member_id is null);
select billing.fund_allowances('eeeeeeee-0000-4000-8000-000000000001', (select org from ids),
  'eeeeeeee-0000-4000-8000-000000000003', 100, 'bo-extra');
select is((select l.expires_at from billing.lots l join billing.transfers t on t.id = l.grant_transfer_id
           where t.idempotency_key like 'allowance:%:bo-extra:%'), now() + interval '10 days',
  'an allowance drawn from expiring credits expires with them');
select billing.remove_member('eeeeeeee-0000-4000-8000-000000000001', (select org from ids), 'eeeeeeee-0000-4000-8000-000000000003');
select is(pg_temp.avail((select org from ids), 'eeeeeeee-0000-4000-8000-000000000003'), 0::numeric,
  'a removed member''s allowance sweeps back at once');
select is(pg_temp.err($$select pg_temp.spend('eeeeeeee-0000-4000-8000-000000000003', 1, 'bo-after')$$),
  'INSUFFICIENT_CREDITS', 'and they no longer spend the organisation''s credits');

-- ============================================================ a pool with a cap per member

select billing.update_org('eeeeeeee-0000-4000-8000-000000000001', (select org from ids), '{"funding": "pool"}');
select is(pg_temp.avail((select org from ids), 'eeeeeeee-0000-4000-8000-000000000002'), 0::numeric,
  'switching to a pool sweeps the allowances back');
select billing.set_member_cap('eeeeeeee-0000-4000-8000-000000000001', (select org from ids),
  'eeeeeeee-0000-4000-8000-000000000002', 'day', 25);
select pg_temp.spend('eeeeeeee-0000-4000-8000-000000000002', 20, 'ada-pool-1');
select is((select from_account_id from billing.transfers where idempotency_key = 'ada-pool-1'),
  (select id from billing.accounts where org_id = (select org from ids) and member_id is null), 'the member spends from the wallet');
select pg_temp.spend('eeeeeeee-0000-4000-8000-000000000002', 10, 'ada-pool-2');
select is(pg_temp.own('eeeeeeee-0000-4000-8000-000000000002'), 10::numeric,
  'over her daily cap, the charge falls to her own credits');
select is(pg_temp.detail($$select pg_temp.spend('eeeeeeee-0000-4000-8000-000000000002', 12, 'ada-pool-3')$$) -> 'wallets' -> 0 -> 'cap' ->> 'cap',
  '25', 'and when neither can pay, the 402 shows the cap');

-- ============================================================ RLS and invariants

set local role authenticated;
set local request.jwt.claims = '{"sub": "eeeeeeee-0000-4000-8000-000000000002", "role": "authenticated"}';
select results_eq($$select user_id from billing.org_members$$,
  $$values ('eeeeeeee-0000-4000-8000-000000000002'::uuid)$$, 'a member sees only their own membership');
set local request.jwt.claims = '{"sub": "eeeeeeee-0000-4000-8000-000000000001", "role": "authenticated"}';
select is((select count(*) from billing.org_members)::int, 3, 'an org admin sees their organisation''s members');
set local request.jwt.claims = '{"sub": "eeeeeeee-0000-4000-8000-000000000004", "role": "authenticated"}';
select is((select count(*) from billing.org_members) + (select count(*) from billing.orgs), 0::bigint, 'an outsider sees nothing');
reset role;

select is((select (m ->> 'user_balance_total')::numeric + (m ->> 'org_balance_total')::numeric
                  + (m ->> 'code_balance_total')::numeric
                  + (select sum(v::numeric) from jsonb_each_text(m -> 'platform_balances') x(k, v))
           from (select billing.ops_metrics() as m) o), 0::numeric,
  'the liability in ops metrics counts organisations: users + organisations + codes + platform accounts = 0');
select is(billing.check_lots() -> 'accounts', '[]'::jsonb, 'every account''s lots add up to its balance, wallets and allowances included');

select * from finish();
rollback;
