-- Sponsor codes: an organisation's owner or admin sets credits aside for one named student (a
-- user id, or an email address, 75-codes.sql). They move from the wallet into the code's escrow
-- at issue; revoked, past their window, or voided with the organisation's refund, the escrow
-- goes back to the wallet. Redeeming is billing.redeem_code, as for every code.

-- ============================================================ functions

-- Whom an organisation's sponsor code may name: a current member (role member), by id or by
-- address, or an address with a pending invitation to join as one (who joins before redeeming).
create or replace function billing.may_be_sponsored(p_org uuid, p_user uuid, p_email text) returns boolean
language sql stable
set search_path = ''
as $$
  select billing.is_org_member(p_org, p_user)
    or exists (select 1 from auth.users u where p_user is null and billing.ascii_lower(u.email) = p_email
               and billing.is_org_member(p_org, u.id))
    or exists (select 1 from billing.org_invitations i where p_user is null and i.org_id = p_org
               and i.status = 'pending' and i.role = 'member' and i.expires_at > now()
               and billing.ascii_lower(i.email) = p_email)
$$;
comment on function billing.may_be_sponsored(p_org uuid, p_user uuid, p_email text) is 'Internal: whether a sponsor code of p_org may name this student (p_user, or p_email ASCII-lower-cased): a current member, or an address invited to join as one.';
revoke execute on function billing.may_be_sponsored(p_org uuid, p_user uuid, p_email text) from public;

create or replace function billing.issue_sponsor_code(p_user uuid, p_org uuid, p_code_hash text, p_spec jsonb, p_key text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_code billing.codes;
  v_student uuid := (p_spec ->> 'user_id')::uuid;
  v_email text := billing.ascii_lower(p_spec ->> 'email');
begin
  perform billing.require_org_role(p_org, p_user, true);
  select * into v_code from billing.codes c where c.created_by = p_user and c.request_key = p_key and c.kind = 'sponsor';
  if found then
    if v_code.org_id <> p_org or v_code.credits <> (p_spec ->> 'credits')::numeric
       or v_code.for_user is distinct from v_student
       or v_code.for_email is distinct from (case when v_student is null then v_email end) then
      perform billing.raise_error('IDEMPOTENCY_KEY_REUSED', jsonb_build_object('action', 'sponsor code'));
    end if;
    return billing.code_json(v_code) || jsonb_build_object('replayed', true);
  end if;
  perform billing.check_amount((p_spec ->> 'credits')::numeric);
  -- Only printable ASCII addresses (as the route refuses others): no look-alike to match.
  if v_student is null and (v_email is null or v_email !~ '^[\x21-\x7e]+$') then
    perform billing.raise_error('INVALID_CODE', jsonb_build_object('field', 'email', 'rule', 'printable ASCII'));
  end if;
  if v_student is not null and not exists (select 1 from auth.users u where u.id = v_student) then
    perform billing.raise_error('USER_NOT_FOUND', '{}');
  end if;
  -- Every account the address may name (Auth does not make addresses unique once folded).
  if billing.is_org_admin(p_org, v_student)
     or exists (select 1 from auth.users u where v_student is null and billing.ascii_lower(u.email) = v_email
                and billing.is_org_admin(p_org, u.id)) then
    perform billing.raise_error('ORG_FORBIDDEN', jsonb_build_object('rule', 'a sponsor code funds a student, not an owner or admin'));
  end if;
  -- Nobody sponsors themselves under a second account (an address reaching the same mailbox), nor
  -- a member they brought in themselves: an admin could invite their own second account.
  if billing.same_person(p_user, v_student)
     or billing.mailbox(v_email) = (select billing.mailbox(u.email) from auth.users u where u.id = p_user) then
    perform billing.raise_error('ORG_FORBIDDEN', jsonb_build_object('rule', 'a sponsor code funds someone else'));
  end if;
  if billing.recruited_by(p_org, p_user, v_student, case when v_student is null then v_email end) then
    perform billing.raise_error('ORG_FORBIDDEN', jsonb_build_object('rule', 'a sponsor code funds a student someone else invited'));
  end if;
  -- It names a student of this organisation. Organisation credits never leave for an account that
  -- is not a member (an admin's own outside account included).
  if not billing.may_be_sponsored(p_org, v_student, case when v_student is null then v_email end) then
    perform billing.raise_error('MEMBER_NOT_FOUND', '{}');
  end if;
  insert into billing.codes (kind, code_hash, credits, max_redemptions, valid_until, org_id, for_user, for_email, note,
                             created_by, request_key, applies_to)
  values ('sponsor', p_code_hash, (p_spec ->> 'credits')::numeric, 1,
          coalesce((p_spec ->> 'valid_until')::timestamptz, now() + interval '90 days'), p_org, v_student,
          case when v_student is null then v_email end, p_spec ->> 'note', p_user, p_key, billing.applies_to_of(p_spec))
  returning * into v_code;
  -- Set aside now: the wallet's later spending cannot break the promise.
  perform billing.move_credits(billing.org_wallet_id(p_org), billing.code_escrow_id(v_code.id), v_code.credits,
    'code_escrow', 'code-escrow:' || v_code.id, null, jsonb_build_object('org_id', p_org, 'code_id', v_code.id,
    'issued_by', p_user), v_code.applies_to);
  return billing.code_json(v_code) || jsonb_build_object('replayed', false,
    'wallet', billing.wallet_json(billing.org_wallet_id(p_org)));
end;
$$;
comment on function billing.issue_sponsor_code(p_user uuid, p_org uuid, p_code_hash text, p_spec jsonb, p_key text) is 'An owner or admin issues a sponsor code for one student of the organisation (p_spec: credits, user_id of a member or email of a member or pending member invitee, valid_until, applies_to (its credits then pay only for those models), note; never themselves under another account): its credits move from the wallet into the code''s escrow now (INSUFFICIENT_CREDITS when the wallet lacks them).';
revoke execute on function billing.issue_sponsor_code(p_user uuid, p_org uuid, p_code_hash text, p_spec jsonb, p_key text) from public, anon, authenticated;
grant execute on function billing.issue_sponsor_code(p_user uuid, p_org uuid, p_code_hash text, p_spec jsonb, p_key text) to service_role;

create or replace function billing.list_sponsor_codes(p_user uuid, p_org uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform billing.require_org_role(p_org, p_user, true);
  return coalesce((select jsonb_agg(billing.code_json(c) order by c.created_at desc, c.id desc)
                   from (select * from billing.codes x where x.org_id = p_org and x.kind = 'sponsor'
                         order by x.created_at desc, x.id desc limit 500) c), '[]');
end;
$$;
comment on function billing.list_sponsor_codes(p_user uuid, p_org uuid) is 'An owner or admin lists the organisation''s sponsor codes, newest first (the last 500).';
revoke execute on function billing.list_sponsor_codes(p_user uuid, p_org uuid) from public, anon, authenticated;
grant execute on function billing.list_sponsor_codes(p_user uuid, p_org uuid) to service_role;

-- A sponsor code's escrow goes back to the wallet (revoked, or its window closed unredeemed).
create or replace function billing.return_sponsor_escrow(p_code billing.codes, p_status text) returns billing.codes
language plpgsql
set search_path = ''
as $$
declare
  v_escrow billing.accounts;
  v_wallet bigint := billing.org_wallet_id(p_code.org_id);
  v_code billing.codes;
  v_free numeric;
begin
  perform 1 from billing.accounts a where a.id in (v_wallet, billing.code_escrow_id(p_code.id)) order by a.id for update;
  select * into v_escrow from billing.accounts a where a.id = billing.code_escrow_id(p_code.id);
  v_escrow := billing.settled(v_escrow);
  -- Only free credits go back: a disputed purchase's frozen lots stay here until it closes (its
  -- loss takes them from here; won, they thaw and go back on the next run).
  v_free := v_escrow.balance - v_escrow.held;
  if v_escrow.frozen_lots then
    v_free := least(v_free, billing.free_credits(v_escrow.id, null, true));
  end if;
  if v_free > 0 then
    perform billing.move_credits(v_escrow.id, v_wallet, v_free, 'code_return',
      'code-return:' || p_code.id || ':' || v_escrow.version, null,
      jsonb_build_object('org_id', p_code.org_id, 'code_id', p_code.id, 'reason', p_status));
  end if;
  -- A closed code's later return (a dispute won after it closed) keeps when it closed.
  update billing.codes c set status = p_status, updated_at = case when c.status = p_status then c.updated_at else now() end
  where c.id = p_code.id returning * into v_code;
  return v_code;
end;
$$;
comment on function billing.return_sponsor_escrow(p_code billing.codes, p_status text) is 'Internal: moves the free credits of a sponsor code''s escrow (none of a frozen lot''s) back to the wallet; the code gets p_status.';
revoke execute on function billing.return_sponsor_escrow(p_code billing.codes, p_status text) from public;

create or replace function billing.revoke_sponsor_code(p_user uuid, p_org uuid, p_id uuid) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_code billing.codes;
begin
  perform billing.require_org_role(p_org, p_user, true);
  select * into v_code from billing.codes c where c.id = p_id and c.org_id = p_org and c.kind = 'sponsor' for update;
  if not found then
    perform billing.raise_error('CODE_NOT_FOUND', '{}');
  end if;
  if v_code.status = 'active' then
    v_code := billing.return_sponsor_escrow(v_code, 'revoked');
  elsif v_code.status <> 'revoked' then
    perform billing.raise_error('CODE_NOT_REDEEMABLE', jsonb_build_object('status', v_code.status));
  end if;
  return billing.code_json(v_code) || jsonb_build_object('wallet', billing.wallet_json(billing.org_wallet_id(p_org)));
end;
$$;
comment on function billing.revoke_sponsor_code(p_user uuid, p_org uuid, p_id uuid) is 'An owner or admin revokes an unredeemed sponsor code: its escrow returns to the wallet (again: the same answer; redeemed: CODE_NOT_REDEEMABLE).';
revoke execute on function billing.revoke_sponsor_code(p_user uuid, p_org uuid, p_id uuid) from public, anon, authenticated;
grant execute on function billing.revoke_sponsor_code(p_user uuid, p_org uuid, p_id uuid) to service_role;

create or replace function billing.close_expired_sponsor_codes(p_limit integer default 100) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_code billing.codes;
  v_count integer := 0;
begin
  for v_code in
    select * from billing.codes c where c.kind = 'sponsor' and c.status = 'active'
      and (c.valid_until <= now()
           -- Its issuer no longer speaks for the organisation (removed, demoted, banned or deleted).
           or not billing.speaks_for_org(c.org_id, c.created_by)
           -- Its student left, or their invitation lapsed, since it was issued (a removal that met
           -- the code under a redemption's lock skipped it).
           or not billing.may_be_sponsored(c.org_id, c.for_user, c.for_email))
    order by c.valid_until limit p_limit for update skip locked
  loop
    perform billing.return_sponsor_escrow(v_code, 'void');
    v_count := v_count + 1;
  end loop;
  -- A code closed while a dispute froze part of its escrow returned only the rest: once the
  -- dispute is won (its lots thawed), they go back too. Nobody can redeem or
  -- revoke a closed code, and sync_purchase may not take a code's row after accounts (see top).
  for v_code in
    select c.* from billing.codes c join billing.accounts a on a.code_id = c.id
    where c.kind = 'sponsor' and c.status in ('revoked', 'void') and a.balance > a.held and not a.frozen_lots
    order by c.id limit p_limit for update of c skip locked
  loop
    perform billing.return_sponsor_escrow(v_code, v_code.status);
    v_count := v_count + 1;
  end loop;
  return v_count;
end;
$$;
comment on function billing.close_expired_sponsor_codes(p_limit integer) is 'pg_cron: unredeemed sponsor codes past their window, whose issuer is no longer an owner or admin, or whose student is no longer a member or invitee, give their escrow back to the wallet, and closed codes give back what a won dispute freed in theirs. Idempotent.';
revoke execute on function billing.close_expired_sponsor_codes(p_limit integer) from public, anon, authenticated;
grant execute on function billing.close_expired_sponsor_codes(p_limit integer) to service_role;

-- When someone leaves an organisation or changes role, what they issued or were promised goes
-- back: called by billing.remove_member and billing.set_member_role. Codes a redemption holds
-- right now are skipped (this runs under account locks a redemption takes after the code's row);
-- close_expired_sponsor_codes closes those an issuer no longer speaks for at its next run.
create or replace function billing.void_sponsor_codes_of(p_org uuid, p_user uuid, p_issued boolean, p_named boolean)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_code billing.codes;
  v_email text := (select billing.ascii_lower(u.email) from auth.users u where u.id = p_user);
  v_count integer := 0;
begin
  for v_code in
    select * from billing.codes c
    where c.kind = 'sponsor' and c.org_id = p_org and c.status = 'active'
      and ((p_issued and c.created_by = p_user)
           or (p_named and (c.for_user = p_user or (v_email is not null and c.for_email = v_email))))
    order by c.id for update skip locked
  loop
    perform billing.return_sponsor_escrow(v_code, 'void');
    v_count := v_count + 1;
  end loop;
  return v_count;
end;
$$;
comment on function billing.void_sponsor_codes_of(p_org uuid, p_user uuid, p_issued boolean, p_named boolean) is 'Internal: voids the organisation''s unredeemed sponsor codes p_user issued (p_issued) or is named in (p_named), their escrow back to the wallet; returns how many.';
revoke execute on function billing.void_sponsor_codes_of(p_org uuid, p_user uuid, p_issued boolean, p_named boolean) from public;
