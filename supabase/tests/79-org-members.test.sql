-- Organisation members, roles and invitations: an invitation speaks for its inviter only
-- while they are an admin, accepting never lowers a role, one owner whom only a transfer moves,
-- removal revokes what the member sent and was sent, daily limits, and no token in the outbox.
begin;
select plan(24);
\ir helpers.psql

insert into auth.users (id, email) values
  ('ffffffff-0000-4000-8000-000000000001', 'owner@roles.test'),
  ('ffffffff-0000-4000-8000-000000000002', 'admin@roles.test'),
  ('ffffffff-0000-4000-8000-000000000003', 'ada@roles.test'),
  ('ffffffff-0000-4000-8000-000000000004', 'alt@roles.test'),
  ('ffffffff-0000-4000-8000-000000000005', 'spammer@roles.test');

create temp table ids as
  select (billing.create_org('ffffffff-0000-4000-8000-000000000001', 'Roles School', 'allowance', true) ->> 'id')::uuid as org;
create function pg_temp.role_of(p_user uuid) returns text language sql as $$
  select m.role from billing.org_members m, ids where m.org_id = ids.org and m.user_id = p_user and m.active
$$;

-- The owner invites an admin and a member; both accept.
select billing.invite_member('ffffffff-0000-4000-8000-000000000001', (select org from ids), 'admin@roles.test', 'admin', 'h-admin', 86400);
select billing.answer_invitation('ffffffff-0000-4000-8000-000000000002', 'admin@roles.test', 'h-admin', true);
select billing.invite_member('ffffffff-0000-4000-8000-000000000001', (select org from ids), 'ada@roles.test', 'member', 'h-ada', 86400);
select billing.answer_invitation('ffffffff-0000-4000-8000-000000000003', 'ada@roles.test', 'h-ada', true);

-- ============================================================ the outbox

select is((select payload from billing.notification_outbox o
           where o.dedupe_key = 'org-invitation:' || (select i.id from billing.org_invitations i where i.token_hash = 'h-ada')),
  jsonb_build_object('invitation_id', (select i.id from billing.org_invitations i where i.token_hash = 'h-ada')),
  'an invitation''s email is queued with the invitation''s id only: no link, no token');

-- ============================================================ accepting never lowers a role

select billing.invite_member('ffffffff-0000-4000-8000-000000000002', (select org from ids), 'owner@roles.test', 'member', 'h-demote-owner', 86400);
select is(billing.answer_invitation('ffffffff-0000-4000-8000-000000000001', 'owner@roles.test', 'h-demote-owner', true) ->> 'status',
  'accepted', 'the owner may accept a member invitation');
select is(pg_temp.role_of('ffffffff-0000-4000-8000-000000000001'), 'owner', 'and stays the owner');
select billing.invite_member('ffffffff-0000-4000-8000-000000000002', (select org from ids), 'admin@roles.test', 'member', 'h-demote-admin', 86400);
select billing.answer_invitation('ffffffff-0000-4000-8000-000000000002', 'admin@roles.test', 'h-demote-admin', true);
select is(pg_temp.role_of('ffffffff-0000-4000-8000-000000000002'), 'admin', 'an admin accepting a member invitation stays an admin');
select is(pg_temp.err($$select billing.remove_member('ffffffff-0000-4000-8000-000000000002', (select org from ids), 'ffffffff-0000-4000-8000-000000000001')$$),
  'ORG_FORBIDDEN', 'a co-admin cannot remove the owner');
select throws_ok($$insert into billing.org_members (org_id, user_id, role) select org, 'ffffffff-0000-4000-8000-000000000004', 'owner' from ids$$,
  '23505', null, 'an organisation has one active owner at most');

-- A member promoted by an admin invitation stops being funded: the allowance goes back.
select billing.grant_org_credits((select org from ids), 100, 'adjustment', 'roles-grant', 'pilot', null);
select billing.fund_allowances('ffffffff-0000-4000-8000-000000000001', (select org from ids), 'ffffffff-0000-4000-8000-000000000003', 30, 'roles-fund');
select billing.invite_member('ffffffff-0000-4000-8000-000000000001', (select org from ids), 'ada@roles.test', 'admin', 'h-promote-ada', 86400);
select billing.answer_invitation('ffffffff-0000-4000-8000-000000000003', 'ada@roles.test', 'h-promote-ada', true);
select is(pg_temp.role_of('ffffffff-0000-4000-8000-000000000003'), 'admin', 'an admin invitation promotes a member');
select is((select orgs from billing.accounts where user_id = 'ffffffff-0000-4000-8000-000000000003'), 0,
  'who is no longer counted as a funded member');
select is((select (billing.balance_of(a.id)).available from billing.accounts a, ids
           where a.org_id = ids.org and a.member_id is null), 100::numeric, 'and whose allowance went back to the wallet');

-- ============================================================ an invitation speaks for its inviter while they are an admin

select billing.invite_member('ffffffff-0000-4000-8000-000000000002', (select org from ids), 'alt@roles.test', 'admin', 'h-alt', 86400);
-- As a path that forgot to revoke would leave it: the inviter is no longer an admin.
update billing.org_members m set active = false, removed_at = now() from ids
where m.org_id = ids.org and m.user_id = 'ffffffff-0000-4000-8000-000000000002';
select is(pg_temp.detail($$select billing.answer_invitation('ffffffff-0000-4000-8000-000000000004', 'alt@roles.test', 'h-alt', true)$$),
  '{"status": "revoked"}'::jsonb, 'an invitation from someone who is no longer an admin cannot be accepted');
select is(pg_temp.role_of('ffffffff-0000-4000-8000-000000000004'), null, 'and its address is not a member');
update billing.org_members m set active = true, removed_at = null from ids
where m.org_id = ids.org and m.user_id = 'ffffffff-0000-4000-8000-000000000002';

-- ============================================================ removal revokes what they sent and were sent

select billing.invite_member('ffffffff-0000-4000-8000-000000000002', (select org from ids), 'admin@roles.test', 'admin', 'h-self', 86400);
select billing.remove_member('ffffffff-0000-4000-8000-000000000001', (select org from ids), 'ffffffff-0000-4000-8000-000000000002');
select is((select array_agg(status order by token_hash) from billing.org_invitations where token_hash in ('h-alt', 'h-self')),
  array['revoked', 'revoked'], 'removing an admin revokes the pending invitations they sent, to themselves or anyone');
select is(pg_temp.err($$select billing.answer_invitation('ffffffff-0000-4000-8000-000000000002', 'admin@roles.test', 'h-self', true)$$),
  'INVITATION_CLOSED', 'so the removed admin cannot come back');
select billing.invite_member('ffffffff-0000-4000-8000-000000000001', (select org from ids), 'alt@roles.test', 'member', 'h-alt-2', 86400);
select billing.answer_invitation('ffffffff-0000-4000-8000-000000000004', 'alt@roles.test', 'h-alt-2', true);
select billing.invite_member('ffffffff-0000-4000-8000-000000000001', (select org from ids), 'alt@roles.test', 'admin', 'h-alt-3', 86400);
select billing.remove_member('ffffffff-0000-4000-8000-000000000003', (select org from ids), 'ffffffff-0000-4000-8000-000000000004');
select is((select status from billing.org_invitations where token_hash = 'h-alt-3'), 'revoked',
  'removing a member revokes the pending invitations sent to their address');

-- ============================================================ ownership moves only by transfer

select is(pg_temp.err($$select billing.transfer_org_owner('ffffffff-0000-4000-8000-000000000003', (select org from ids), 'ffffffff-0000-4000-8000-000000000003')$$),
  'ORG_FORBIDDEN', 'an admin cannot make themselves the owner');
select is(pg_temp.err($$select billing.transfer_org_owner('ffffffff-0000-4000-8000-000000000001', (select org from ids), 'ffffffff-0000-4000-8000-000000000004')$$),
  'MEMBER_NOT_FOUND', 'ownership goes to an active member only');
select is(billing.transfer_org_owner('ffffffff-0000-4000-8000-000000000001', (select org from ids), 'ffffffff-0000-4000-8000-000000000003')
  ->> 'previous_owner_role', 'admin', 'the owner hands ownership over');
select is(array[pg_temp.role_of('ffffffff-0000-4000-8000-000000000003'), pg_temp.role_of('ffffffff-0000-4000-8000-000000000001')],
  array['owner', 'admin'], 'the new owner is the owner, the old one an admin');
select is((select count(*)::int from billing.org_admins x, ids where x.org_id = ids.org), 2, 'both manage the organisation');

-- ============================================================ daily limits

select billing.create_org('ffffffff-0000-4000-8000-000000000005', 'Spam ' || n, 'pool', true) from generate_series(1, 2) n;
select billing.invite_member('ffffffff-0000-4000-8000-000000000005', o.id, 'victim-' || n || '@spam.test', 'member', 'h-spam-' || n, 86400)
from generate_series(1, 20) n, lateral (select o.id from billing.orgs o where o.name = 'Spam ' || (n % 2 + 1)) o;
select is(pg_temp.err($$select billing.invite_member('ffffffff-0000-4000-8000-000000000005', (select id from billing.orgs where name = 'Spam 1'), 'one-more@spam.test', 'member', 'h-spam-21', 86400)$$),
  'INVITATION_LIMIT', 'the 21st invitation of an inviter in a day is refused, across their organisations');
select is(pg_temp.detail($$select billing.invite_member('ffffffff-0000-4000-8000-000000000005', (select id from billing.orgs where name = 'Spam 2'), 'one-more@spam.test', 'member', 'h-spam-21', 86400)$$) - 'retry_at',
  '{"scope": "inviter", "limit": 20, "window": "24 hours"}'::jsonb, 'saying which limit and when it frees up');
update billing.org_invitations set created_at = now() - interval '25 hours' where token_hash = 'h-spam-1';
select is(billing.invite_member('ffffffff-0000-4000-8000-000000000005', (select id from billing.orgs where name = 'Spam 1'), 'one-more@spam.test', 'member', 'h-spam-21', 86400) ->> 'status',
  'pending', 'an invitation older than a day no longer counts');

-- ============================================================ as authenticated

set local role authenticated;
select ok(not has_function_privilege('billing.transfer_org_owner(uuid, uuid, uuid)', 'execute'),
  'a signed-in user cannot call transfer_org_owner directly');
select ok(not has_function_privilege('billing.revoke_invitation(uuid, uuid, uuid)', 'execute')
       and not has_function_privilege('billing.list_org_invitations(uuid, uuid, uuid, integer)', 'execute'),
  'nor list or revoke invitations');
reset role;

select * from finish();
rollback;
