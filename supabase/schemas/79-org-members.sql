-- Organisation members: who belongs to an organisation and with what role (owner, admin,
-- member), and how they join: an owner or admin invites an address (a token link sent by mail,
-- stored hashed), the invitee accepts or declines it signed in with that address.
--
-- A membership change reaches every feature an organisation funds, so this file sits above them
-- all and calls down to each: removing a member releases their holds (12-holds.sql), cancels
-- their queued jobs (63-jobs.sql), sweeps what is left of their allowance back to the wallet
-- (70-orgs.sql) and voids the sponsor codes they issued or are named in (76-sponsor-codes.sql);
-- a change of role sweeps the allowance or voids those codes too. Nothing below calls in here.

-- ============================================================ tables

create table billing.org_invitations (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references billing.orgs (id),
  email text not null,
  role text not null,
  token_hash text not null unique,                   -- SHA-256 of the emailed token; the token is never stored
  status text not null default 'pending',
  invited_by uuid not null references auth.users (id),
  answered_by uuid references auth.users (id),
  expires_at timestamptz not null,
  created_at timestamptz not null default now(),
  answered_at timestamptz,
  constraint org_invitations_role check (role in ('admin', 'member')),
  constraint org_invitations_status check (status in ('pending', 'accepted', 'declined', 'expired', 'revoked'))
);
comment on table billing.org_invitations is 'An invitation by email to join an organisation; answered once with its token.';
alter table billing.org_invitations enable row level security;
grant select on table billing.org_invitations to authenticated;
grant select on table billing.org_invitations to service_role;

create unique index org_invitations_one_pending on billing.org_invitations (org_id, lower(email)) where status = 'pending';

-- Organisation invitations and roles:
--
-- * Removing a member revokes the pending invitations they sent and those sent to their address,
--   and accepting re-checks that the inviter is still an owner or admin: a removed admin no
--   longer comes back through an invitation of their own (to themselves or a second account).
-- * Accepting never lowers a role; there is exactly one active owner, and ownership moves only
--   by billing.transfer_org_owner.
-- * Invitations are limited per inviter and per organisation per rolling day, counted from
--   billing.org_invitations (revoked ones included, so revoke-and-resend gains nothing).
-- * No row keeps an invitation token: the caller gives the invitation's id, whose token is an
--   HMAC of the id with a secret only the functions hold (see _shared/domain/invitations.ts); the
--   database keeps its SHA-256, and the outbox only the invitation's id.
-- * Admins list and revoke their organisation's invitations.
-- One token answers one invitation; accepting looks it up by its hash.
create unique index org_invitations_token on billing.org_invitations (token_hash);

-- The daily limits count by organisation and by inviter; the admin's list pages by organisation.
create index org_invitations_org_created on billing.org_invitations (org_id, created_at);

create index org_invitations_inviter_created on billing.org_invitations (invited_by, created_at);

-- ============================================================ functions

create or replace function billing.answer_invitation(p_user uuid, p_email text, p_token_hash text, p_accept boolean)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_invitation billing.org_invitations;
  v_current text;
  v_answer text := case when p_accept then 'accepted' else 'declined' end;
begin
  -- Joining changes who may spend a school's credits: not by a user banned or deleted since their
  -- token was issued (as every organisation action: require_org_role).
  perform billing.assert_user_standing(p_user);
  -- Membership changes of one organisation take its row first (accept, remove, transfer), so a
  -- removal racing an acceptance waits instead of deadlocking.
  perform 1 from billing.orgs o
  where o.id = (select i.org_id from billing.org_invitations i where i.token_hash = p_token_hash) for no key update;
  select * into v_invitation from billing.org_invitations i where i.token_hash = p_token_hash for update;
  if not found or lower(v_invitation.email) <> lower(coalesce(p_email, '')) then
    perform billing.raise_error('INVITATION_NOT_FOUND', '{}');
  end if;
  if v_invitation.status = 'pending' and v_invitation.expires_at <= now() then
    update billing.org_invitations i set status = 'expired', answered_at = now() where i.id = v_invitation.id;
    v_invitation.status := 'expired';
  end if;
  if v_invitation.status <> 'pending' then
    -- The same answer again is a retry; anything else is too late.
    if v_invitation.answered_by = p_user and v_invitation.status = v_answer then
      return jsonb_build_object('org_id', v_invitation.org_id, 'status', v_invitation.status);
    end if;
    perform billing.raise_error('INVITATION_CLOSED', jsonb_build_object('status', v_invitation.status));
  end if;
  -- An invitation speaks for its inviter: only while they are still an owner or admin in good standing.
  if p_accept and not billing.speaks_for_org(v_invitation.org_id, v_invitation.invited_by) then
    perform billing.raise_error('INVITATION_CLOSED', jsonb_build_object('status', 'revoked'));
  end if;
  update billing.org_invitations i set status = v_answer,
    answered_by = p_user, answered_at = now()
  where i.id = v_invitation.id returning * into v_invitation;
  if p_accept then
    perform billing.ensure_user_account(p_user);
    perform 1 from billing.accounts a where a.user_id = p_user for update;
    select m.role into v_current from billing.org_members m
    where m.org_id = v_invitation.org_id and m.user_id = p_user and m.active for update;
    -- Accepting never lowers a role: an owner or admin invited as a member stays what they are.
    if billing.org_role_rank(v_invitation.role) > billing.org_role_rank(v_current) then
      perform billing.set_member_role(v_invitation.org_id, p_user, v_invitation.role);
    end if;
  end if;
  return jsonb_build_object('org_id', v_invitation.org_id, 'status', v_invitation.status);
end;
$$;
comment on function billing.answer_invitation(p_user uuid, p_email text, p_token_hash text, p_accept boolean) is 'The invited address accepts or declines, once; accepting needs the inviter to be an owner or admin still, and never lowers the accepting member''s role.';
revoke execute on function billing.answer_invitation(p_user uuid, p_email text, p_token_hash text, p_accept boolean) from public;
grant execute on function billing.answer_invitation(p_user uuid, p_email text, p_token_hash text, p_accept boolean) to service_role;

create or replace function billing.list_org_members(p_user uuid, p_org uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform billing.require_org_role(p_org, p_user, true);
  return coalesce((
    select jsonb_agg(jsonb_build_object('user_id', m.user_id, 'email', u.email, 'role', m.role, 'active', m.active,
      'joined_at', billing.json_time(m.joined_at), 'removed_at', billing.json_time(m.removed_at),
      'allowance', case when a.id is not null then billing.wallet_json(a.id) end) order by m.joined_at, m.user_id)
    from billing.org_members m join auth.users u on u.id = m.user_id
    left join billing.accounts a on a.org_id = m.org_id and a.member_id = m.user_id
    where m.org_id = p_org), '[]');
end;
$$;
comment on function billing.list_org_members(p_user uuid, p_org uuid) is 'An organisation''s members (active and removed) with their role and allowance, for its owner or admins.';
revoke execute on function billing.list_org_members(p_user uuid, p_org uuid) from public;
grant execute on function billing.list_org_members(p_user uuid, p_org uuid) to service_role;

create or replace function billing.remove_member(p_user uuid, p_org uuid, p_member uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_member billing.org_members;
  h record;
  j billing.jobs;
begin
  perform billing.require_org_role(p_org, p_user, true);
  perform 1 from billing.orgs o where o.id = p_org for no key update; -- membership changes: the org first
  perform 1 from billing.accounts a where a.user_id = p_member for update;
  select * into v_member from billing.org_members m where m.org_id = p_org and m.user_id = p_member for update;
  if not found or not v_member.active then
    perform billing.raise_error('MEMBER_NOT_FOUND', jsonb_build_object('user_id', p_member));
  end if;
  if v_member.role = 'owner' then
    perform billing.raise_error('ORG_FORBIDDEN', jsonb_build_object('rule', 'the owner cannot be removed'));
  end if;
  update billing.org_members m set active = false, removed_at = now() where m.org_id = p_org and m.user_id = p_member;
  delete from billing.org_admins x where x.org_id = p_org and x.user_id = p_member;
  if v_member.role = 'member' then
    update billing.accounts a set orgs = a.orgs - 1 where a.user_id = p_member;
  end if;
  -- Nothing they sent, and nothing sent to them, brings them (or anyone they chose) back.
  update billing.org_invitations i set status = 'revoked', answered_by = p_user, answered_at = now()
  where i.org_id = p_org and i.status = 'pending'
    and (i.invited_by = p_member or lower(i.email) = (select lower(u.email) from auth.users u where u.id = p_member));
  -- Their holds end under the school accounts' locks, taken as a capture takes them (the
  -- account, then the hold): a capture that committed first is not released after it.
  perform 1 from billing.accounts a
  where a.id in (select x.account_id from billing.holds x join billing.accounts y on y.id = x.account_id
                 where y.org_id = p_org and x.member_id = p_member and x.status = 'active' and x.purpose = 'user')
  order by a.id for update;
  for h in
    select x.id from billing.holds x join billing.accounts a on a.id = x.account_id
    where a.org_id = p_org and x.member_id = p_member and x.status = 'active' and x.purpose = 'user'
  loop
    perform billing.release_hold(null, h.id);
  end loop;
  -- Their jobs the organisation pays for that no worker has started are cancelled, their holds
  -- released: once removed, nothing more starts on its credits. A job under way finishes.
  for j in
    select x.* from billing.jobs x
    join billing.holds y on y.id = x.hold_id join billing.accounts a on a.id = y.account_id
    where x.user_id = p_member and x.status = 'queued' and a.org_id = p_org
    order by x.id for update of x
  loop
    perform billing.release_job_hold(j);
    update billing.jobs x set status = 'cancelled', completed_at = now(), error = jsonb_build_object('code', 'MEMBER_REMOVED',
      'message', 'The organisation paying for this job removed you before it started.')
    where x.id = j.id;
  end loop;
  -- Their batches it pays for are cancelled at the provider by the next minute's sync (it takes
  -- them first): lines done by then are work under way, the rest returns.
  update billing.ai_batches b set cancel_requested = true
  from billing.ai_calls c
  where c.id = b.call_id and b.user_id = p_member and c.org_id = p_org and b.status in ('submitting', 'in_progress');
  perform billing.sweep_allowance(p_org, p_member, 'removed');
  -- Sponsor codes they issued (an admin's) or that name them, unredeemed, give their escrow back:
  -- nothing the organisation set aside leaves for or by someone no longer in it.
  perform billing.void_sponsor_codes_of(p_org, p_member, true, true);
  return jsonb_build_object('org_id', p_org, 'user_id', p_member, 'active', false);
end;
$$;
comment on function billing.remove_member(p_user uuid, p_org uuid, p_member uuid) is 'An owner or admin removes a member (never the owner): their org holds released, org-funded jobs not yet started cancelled and org-funded AI batches marked to be cancelled, allowance swept back, the unredeemed sponsor codes they issued or are named in voided (escrow back to the wallet), and the pending invitations they sent or were sent revoked.';
revoke execute on function billing.remove_member(p_user uuid, p_org uuid, p_member uuid) from public;
grant execute on function billing.remove_member(p_user uuid, p_org uuid, p_member uuid) to service_role;

-- Roles by rank: accepting an invitation keeps the higher of the current and the invited one.
create or replace function billing.org_role_rank(p_role text) returns integer
language sql immutable
set search_path = ''
as $$
  select case p_role when 'owner' then 3 when 'admin' then 2 when 'member' then 1 else 0 end
$$;
comment on function billing.org_role_rank(p_role text) is 'Internal: owner 3, admin 2, member 1 (0 for none).';
revoke execute on function billing.org_role_rank(p_role text) from public;

create or replace function billing.set_member_role(p_org uuid, p_user uuid, p_role text) returns void
language plpgsql
set search_path = ''
as $$
declare
  v_was_member boolean;
begin
  select m.active and m.role = 'member' into v_was_member from billing.org_members m
  where m.org_id = p_org and m.user_id = p_user for update;
  v_was_member := coalesce(v_was_member, false);
  insert into billing.org_members (org_id, user_id, role) values (p_org, p_user, p_role)
  on conflict (org_id, user_id) do update set role = excluded.role, active = true, removed_at = null,
    joined_at = case when billing.org_members.active then billing.org_members.joined_at else now() end;
  if p_role = 'member' then
    delete from billing.org_admins x where x.org_id = p_org and x.user_id = p_user;
  else
    insert into billing.org_admins (org_id, user_id) values (p_org, p_user) on conflict do nothing;
  end if;
  if v_was_member <> (p_role = 'member') then
    update billing.accounts a set orgs = a.orgs + case when v_was_member then -1 else 1 end where a.user_id = p_user;
  end if;
  -- An owner or admin spends their own credits: an allowance they had as a member goes back, and
  -- so do sponsor codes naming them. Someone no longer an owner or admin speaks for no code.
  if v_was_member and p_role <> 'member' then
    perform billing.sweep_allowance(p_org, p_user, 'promoted');
    perform billing.void_sponsor_codes_of(p_org, p_user, false, true);
  elsif not v_was_member and p_role = 'member' then
    perform billing.void_sponsor_codes_of(p_org, p_user, true, false);
  end if;
end;
$$;
comment on function billing.set_member_role(p_org uuid, p_user uuid, p_role text) is 'Internal: makes p_user an active member of p_org as p_role, keeping org_admins, the count of funded memberships and the allowance in step. The caller decides the role (and holds the user''s own account lock).';
revoke execute on function billing.set_member_role(p_org uuid, p_user uuid, p_role text) from public;

create or replace function billing.invite_member(p_user uuid, p_org uuid, p_email text, p_role text, p_token_hash text,
  p_ttl_seconds integer, p_id uuid default gen_random_uuid()) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_limit constant jsonb := '{"inviter": 20, "organisation": 50}'::jsonb;
  v_org billing.orgs := billing.require_org_role(p_org, p_user, true);
  v_invitation billing.org_invitations;
  v_scope text;
  v_count integer;
  v_oldest timestamptz;
begin
  if p_ttl_seconds not between 3600 and 30 * 86400 then
    perform billing.raise_error('INVALID_ORG', jsonb_build_object('field', 'ttl_seconds', 'rule', '1 hour to 30 days'));
  end if;
  -- Counted under a lock per inviter, then per organisation (always in that order), so
  -- concurrent invitations cannot both take the last place.
  perform pg_advisory_xact_lock(hashtextextended('org-invitations:inviter:' || p_user, 0));
  perform pg_advisory_xact_lock(hashtextextended('org-invitations:org:' || p_org, 0));
  foreach v_scope in array array['inviter', 'organisation'] loop
    select count(*), min(i.created_at) into v_count, v_oldest from billing.org_invitations i
    where case v_scope when 'inviter' then i.invited_by = p_user else i.org_id = p_org end
      and i.created_at > now() - interval '1 day';
    if v_count >= (v_limit ->> v_scope)::integer then
      perform billing.raise_error('INVITATION_LIMIT', jsonb_build_object('scope', v_scope,
        'limit', (v_limit ->> v_scope)::integer, 'window', '24 hours',
        'retry_at', billing.json_time(v_oldest + interval '1 day')));
    end if;
  end loop;
  update billing.org_invitations i set status = 'expired', answered_at = now()
  where i.org_id = p_org and lower(i.email) = lower(p_email) and i.status = 'pending' and i.expires_at <= now();
  insert into billing.org_invitations (id, org_id, email, role, token_hash, invited_by, expires_at)
  values (p_id, p_org, p_email, p_role, p_token_hash, p_user, now() + make_interval(secs => p_ttl_seconds))
  on conflict (org_id, lower(email)) where status = 'pending' do nothing
  returning * into v_invitation;
  if v_invitation.id is null then
    perform billing.raise_error('INVITATION_PENDING', '{}'); -- no address in the detail: refusals reach the Postgres log
  end if;
  -- Only the id: the sender derives the link's token from it and reads the rest when it sends.
  perform billing.enqueue_notification('org_invitation', null, 'org-invitation:' || v_invitation.id,
    jsonb_build_object('invitation_id', v_invitation.id));
  return billing.invitation_json(v_invitation) || jsonb_build_object('org_id', v_org.id);
end;
$$;
comment on function billing.invite_member(p_user uuid, p_org uuid, p_email text, p_role text, p_token_hash text, p_ttl_seconds integer, p_id uuid) is 'An owner or admin invites an address (one pending invitation per address; at most 20 a day per inviter and 50 per organisation: INVITATION_LIMIT). p_token_hash is the SHA-256 of the token derived from p_id; the email is queued with the id only.';
revoke execute on function billing.invite_member(p_user uuid, p_org uuid, p_email text, p_role text, p_token_hash text, p_ttl_seconds integer, p_id uuid) from public;
grant execute on function billing.invite_member(p_user uuid, p_org uuid, p_email text, p_role text, p_token_hash text, p_ttl_seconds integer, p_id uuid) to service_role;

-- An invitation as the API shows it (never its token hash); a pending one past its expiry reads expired.
create or replace function billing.invitation_json(p_invitation billing.org_invitations) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object('id', p_invitation.id, 'email', p_invitation.email, 'role', p_invitation.role,
    'status', case when p_invitation.status = 'pending' and p_invitation.expires_at <= now() then 'expired'
                   else p_invitation.status end,
    'invited_by', p_invitation.invited_by, 'created_at', billing.json_time(p_invitation.created_at),
    'expires_at', billing.json_time(p_invitation.expires_at), 'answered_at', billing.json_time(p_invitation.answered_at))
$$;
comment on function billing.invitation_json(p_invitation billing.org_invitations) is 'Internal: an invitation as the API shows it.';
revoke execute on function billing.invitation_json(p_invitation billing.org_invitations) from public;

create or replace function billing.list_org_invitations(p_user uuid, p_org uuid, p_after uuid, p_limit integer) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_limit integer := least(greatest(p_limit, 1), 100);
  v_page jsonb;
begin
  perform billing.require_org_role(p_org, p_user, true);
  select coalesce(jsonb_agg(billing.invitation_json(x) order by x.created_at desc, x.id desc), '[]') into v_page
  from (
    select i.* from billing.org_invitations i
    where i.org_id = p_org
      and (p_after is null or (i.created_at, i.id) < (select c.created_at, c.id from billing.org_invitations c
                                                      where c.id = p_after and c.org_id = p_org))
    order by i.created_at desc, i.id desc limit v_limit + 1
  ) x;
  return jsonb_build_object(
    'invitations', case when jsonb_array_length(v_page) > v_limit then v_page - v_limit else v_page end,
    'next_cursor', case when jsonb_array_length(v_page) > v_limit then v_page -> (v_limit - 1) ->> 'id' end);
end;
$$;
comment on function billing.list_org_invitations(p_user uuid, p_org uuid, p_after uuid, p_limit integer) is 'An owner or admin pages through the organisation''s invitations, newest first; p_after is the previous page''s next_cursor (an invitation id).';
revoke execute on function billing.list_org_invitations(p_user uuid, p_org uuid, p_after uuid, p_limit integer) from public;
grant execute on function billing.list_org_invitations(p_user uuid, p_org uuid, p_after uuid, p_limit integer) to service_role;

create or replace function billing.revoke_invitation(p_user uuid, p_org uuid, p_invitation uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_invitation billing.org_invitations;
begin
  perform billing.require_org_role(p_org, p_user, true);
  select * into v_invitation from billing.org_invitations i where i.id = p_invitation and i.org_id = p_org for update;
  if not found then
    perform billing.raise_error('INVITATION_NOT_FOUND', jsonb_build_object('id', p_invitation));
  end if;
  if v_invitation.status = 'pending' then
    update billing.org_invitations i set status = 'revoked', answered_by = p_user, answered_at = now()
    where i.id = v_invitation.id returning * into v_invitation;
  elsif v_invitation.status <> 'revoked' then
    perform billing.raise_error('INVITATION_CLOSED', jsonb_build_object('status', v_invitation.status));
  end if;
  return billing.invitation_json(v_invitation);
end;
$$;
comment on function billing.revoke_invitation(p_user uuid, p_org uuid, p_invitation uuid) is 'An owner or admin revokes a pending invitation of the organisation (again: the same answer); an answered one is INVITATION_CLOSED.';
revoke execute on function billing.revoke_invitation(p_user uuid, p_org uuid, p_invitation uuid) from public;
grant execute on function billing.revoke_invitation(p_user uuid, p_org uuid, p_invitation uuid) to service_role;

create or replace function billing.transfer_org_owner(p_user uuid, p_org uuid, p_new_owner uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_role text;
begin
  perform billing.require_org_role(p_org, p_user, true);
  perform 1 from billing.orgs o where o.id = p_org for no key update; -- membership changes: the org first
  -- Their own accounts next (as every path locks them), then the memberships.
  perform 1 from billing.accounts a where a.user_id in (p_user, p_new_owner) order by a.id for update;
  select m.role into v_role from billing.org_members m
  where m.org_id = p_org and m.user_id = p_user and m.active for update;
  if v_role is distinct from 'owner' then
    perform billing.raise_error('ORG_FORBIDDEN', jsonb_build_object('rule', 'only the owner transfers ownership'));
  end if;
  perform 1 from billing.org_members m where m.org_id = p_org and m.user_id = p_new_owner and m.active for update;
  if not found then
    perform billing.raise_error('MEMBER_NOT_FOUND', jsonb_build_object('user_id', p_new_owner));
  end if;
  if p_new_owner <> p_user then
    perform billing.ensure_user_account(p_new_owner);
    perform billing.set_member_role(p_org, p_user, 'admin');
    perform billing.set_member_role(p_org, p_new_owner, 'owner');
  end if;
  return jsonb_build_object('org_id', p_org, 'owner_id', p_new_owner, 'previous_owner_id', p_user,
    'previous_owner_role', case when p_new_owner = p_user then 'owner' else 'admin' end);
end;
$$;
comment on function billing.transfer_org_owner(p_user uuid, p_org uuid, p_new_owner uuid) is 'The owner makes another active member the owner and becomes an admin: the only way ownership moves.';
revoke execute on function billing.transfer_org_owner(p_user uuid, p_org uuid, p_new_owner uuid) from public;
grant execute on function billing.transfer_org_owner(p_user uuid, p_org uuid, p_new_owner uuid) to service_role;

-- A pending invitation's email: sent to the invitation's own address only.
create or replace function billing.get_invitation_email(p_invitation uuid) returns table (email text, role text, token_hash text, expires_at timestamptz, org_name text, inviter_email text)
language sql stable
security definer
set search_path = ''
as $$
  select i.email, i.role, i.token_hash, i.expires_at, o.name, u.email::text
  from billing.org_invitations i join billing.orgs o on o.id = i.org_id left join auth.users u on u.id = i.invited_by
  where i.id = p_invitation and i.status = 'pending' and i.expires_at > now()
$$;
comment on function billing.get_invitation_email(p_invitation uuid) is 'What an invitation''s email needs (its address, role, token hash, expiry, the organisation and the inviter); no row unless it is pending.';
revoke execute on function billing.get_invitation_email(p_invitation uuid) from public;
grant execute on function billing.get_invitation_email(p_invitation uuid) to service_role;

-- ============================================================ policies

create policy "Admins read their organisation's invitations" on billing.org_invitations
  for select to authenticated using (org_id in (select a.org_id from billing.org_admins a where a.user_id = (select auth.uid())));

-- ============================================================ references into this domain

-- What an invitation link names before sign-in: the organisation and the role, never the address.
create or replace function billing.preview_invitation(p_token_hash text) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_preview jsonb;
begin
  select jsonb_build_object('org_name', o.name, 'role', i.role,
      'status', case when i.status = 'pending' and i.expires_at <= now() then 'expired' else i.status end,
      'expires_at', billing.json_time(i.expires_at))
  into v_preview
  from billing.org_invitations i join billing.orgs o on o.id = i.org_id
  where i.token_hash = p_token_hash;
  if v_preview is null then
    perform billing.raise_error('INVITATION_NOT_FOUND', '{}');
  end if;
  return v_preview;
end;
$$;
comment on function billing.preview_invitation(text)
  is 'The organisation''s name, role and status of the invitation whose link carries the token (hashed); for the page before sign-in.';
revoke execute on function billing.preview_invitation(text) from public, anon, authenticated;
grant execute on function billing.preview_invitation(text) to service_role;
