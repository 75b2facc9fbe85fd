-- Hand-written (data): unredeemed sponsor codes issued before 20261201000500 to someone who is
-- not a member of the organisation (by user id), or to an address that is neither a member's nor
-- invited, can no longer be redeemed (redeem_code: members only): their escrow goes back to the
-- wallet now rather than at the end of their window. The CLI adds no transaction: this file is one.
begin;
do $$
declare
  v_code billing.codes;
begin
  for v_code in
    select * from billing.codes c
    where c.kind = 'sponsor' and c.status = 'active'
      and not billing.is_org_member(c.org_id, c.for_user)
      and not exists (select 1 from auth.users u where c.for_user is null and billing.ascii_lower(u.email) = c.for_email
                      and billing.is_org_member(c.org_id, u.id))
      and not exists (select 1 from billing.org_invitations i where c.for_user is null and i.org_id = c.org_id
                      and i.status = 'pending' and i.role = 'member' and i.expires_at > now()
                      and billing.ascii_lower(i.email) = c.for_email)
    order by c.id for update
  loop
    perform billing.return_sponsor_escrow(v_code, 'void');
  end loop;
end
$$;
commit;
