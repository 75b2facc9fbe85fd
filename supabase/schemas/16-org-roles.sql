-- Organisations and their members: who belongs to which organisation and as what (owner,
-- admin, member), and the check every action for an organisation starts with
-- (billing.require_org_role). Low, beside the core: the ledger's writer routes a member's charge
-- by these rows (11-ledger-writer.sql), and a purchase for an organisation checks the buyer's
-- role (50-purchases.sql). What organisations do with their wallet (allowances, pools, terms):
-- 70-orgs.sql; invitations, joining, removal and ownership: 79-org-members.sql.

-- ============================================================ tables

create table billing.orgs (
  id uuid primary key default gen_random_uuid(),
  name text not null,
  funding text not null default 'allowance',
  org_pays_first boolean not null default true,      -- members spend org credits before their own
  term_started_at timestamptz not null default now(),
  term_ends_at timestamptz,                          -- allowances sweep back then; 'term' caps end then
  term_swept_at timestamptz,                         -- the sweep of the term that ended then ran
  created_by uuid not null references auth.users (id),
  created_at timestamptz not null default now(),
  stripe_customer_id text,                           -- who its invoices are made out to (72-org-invoices.sql)
  invoicing_approved_at timestamptz,                 -- an operator let it ask for invoices before a card purchase
  invoicing_approved_by uuid references auth.users (id),
  ai_content_consent boolean not null default false, -- keep the redacted content of the AI calls it pays for (30 days)
  verified_at timestamptz,                           -- an operator verified it: its wallet answers for its purchases
  verified_by uuid references auth.users (id),
  constraint orgs_name_length check (length(name) between 1 and 200),
  constraint orgs_funding check (funding in ('allowance', 'pool')),
  constraint orgs_term_order check (term_ends_at is null or term_ends_at > term_started_at)
);
comment on table billing.orgs is 'An organisation that funds its members'' spending from one wallet: allowances or a capped shared pool.';
alter table billing.orgs enable row level security;
grant select on table billing.orgs to authenticated;
grant select on table billing.orgs to service_role;

create index orgs_term_due on billing.orgs (term_ends_at) where term_ends_at is not null and term_swept_at is null;

create table billing.org_members (
  org_id uuid not null references billing.orgs (id),
  user_id uuid not null references auth.users (id),
  role text not null,                                -- owner and admin manage; member is funded
  active boolean not null default true,
  joined_at timestamptz not null default now(),
  removed_at timestamptz,
  primary key (org_id, user_id),
  constraint org_members_role check (role in ('owner', 'admin', 'member')),
  constraint org_members_removed check (active = (removed_at is null))
);
comment on table billing.org_members is 'Who belongs to an organisation and as what. A removed member keeps the row (inactive) for the record.';
alter table billing.org_members enable row level security;
grant select on table billing.org_members to authenticated;
grant select on table billing.org_members to service_role;

create index org_members_user on billing.org_members (user_id) where active;

-- Ownership only moves, never multiplies.
create unique index org_members_one_owner on billing.org_members (org_id) where role = 'owner' and active;

-- A member sees their own membership and their organisations; an org admin sees the
-- organisation's members and invitations; nobody else sees anything. Writes go through the
-- functions of 70-orgs.sql and 79-org-members.sql only.
-- Who administers what, kept beside org_members by those functions: a policy on
-- org_members that read org_members would recurse, and a definer-rights helper would be a
-- function the API roles could call (both refused here, as Supabase's advisor refuses them).
create table billing.org_admins (
  org_id uuid not null references billing.orgs (id),
  user_id uuid not null references auth.users (id),
  primary key (org_id, user_id)
);
comment on table billing.org_admins is 'The active owners and admins of each organisation (for RLS); maintained with org_members.';
alter table billing.org_admins enable row level security;
grant select on table billing.org_admins to authenticated;
grant select on table billing.org_admins to service_role;

create index org_admins_user on billing.org_admins (user_id);

-- ============================================================ functions

-- The caller's role in the organisation, refusing when they have none that suffices: a
-- non-member gets ORG_NOT_FOUND (the organisation's existence is not revealed), a member
-- asking for an admin's action ORG_FORBIDDEN.
create or replace function billing.require_org_role(p_org uuid, p_user uuid, p_admin boolean) returns billing.orgs
language plpgsql
set search_path = ''
as $$
declare
  v_org billing.orgs;
  v_role text;
begin
  -- A user banned or deleted since their token was issued acts in no organisation: the wallet's
  -- credits move only by someone who may move credits now.
  perform billing.assert_user_standing(p_user);
  select m.role into v_role from billing.org_members m where m.org_id = p_org and m.user_id = p_user and m.active;
  select * into v_org from billing.orgs o where o.id = p_org;
  if v_role is null or v_org.id is null then
    perform billing.raise_error('ORG_NOT_FOUND', jsonb_build_object('org_id', p_org));
  end if;
  if p_admin and v_role not in ('owner', 'admin') then
    perform billing.raise_error('ORG_FORBIDDEN', jsonb_build_object('org_id', p_org, 'role', v_role));
  end if;
  return v_org;
end;
$$;
comment on function billing.require_org_role(p_org uuid, p_user uuid, p_admin boolean) is 'Internal: the organisation, when p_user is in good standing (USER_NOT_ACTIVE otherwise) and an active member (an owner or admin if p_admin).';
revoke execute on function billing.require_org_role(p_org uuid, p_user uuid, p_admin boolean) from public;

-- Whether p_user is an active owner or admin of p_org now (locking the membership for share).
create or replace function billing.is_org_admin(p_org uuid, p_user uuid) returns boolean
language sql
set search_path = ''
as $$
  select exists (select 1 from billing.org_members m where m.org_id = p_org and m.user_id = p_user and m.active
                 and m.role in ('owner', 'admin') for share)
$$;
comment on function billing.is_org_admin(p_org uuid, p_user uuid) is 'Internal: whether p_user is an active owner or admin of p_org, the membership locked until the transaction ends.';
revoke execute on function billing.is_org_admin(p_org uuid, p_user uuid) from public;

-- Whether what p_user left behind as an owner or admin of p_org (a sponsor code, an invitation)
-- still speaks for the organisation: only while they are an active owner or admin in good
-- standing now. Banned or deleted since, they act in no organisation (require_org_role), and
-- nothing they issued acts for them.
create or replace function billing.speaks_for_org(p_org uuid, p_user uuid) returns boolean
language plpgsql
set search_path = ''
as $$
begin
  return billing.is_org_admin(p_org, p_user) and billing.standing_refusal(p_user) is null;
end;
$$;
comment on function billing.speaks_for_org(p_org uuid, p_user uuid) is 'Internal: whether p_user is an active owner or admin of p_org in good standing now (their sponsor codes and invitations still count), the membership locked until the transaction ends.';
revoke execute on function billing.speaks_for_org(p_org uuid, p_user uuid) from public;

-- Whether p_user is an active member (role member: the one funded) of p_org now.
create or replace function billing.is_org_member(p_org uuid, p_user uuid) returns boolean
language sql stable
set search_path = ''
as $$
  select exists (select 1 from billing.org_members m where m.org_id = p_org and m.user_id = p_user and m.active
                 and m.role = 'member')
$$;
comment on function billing.is_org_member(p_org uuid, p_user uuid) is 'Internal: whether p_user is an active member (role member) of p_org.';
revoke execute on function billing.is_org_member(p_org uuid, p_user uuid) from public;

-- ============================================================ policies

create policy "Members can read their organisations" on billing.orgs
  for select to authenticated using (id in (select m.org_id from billing.org_members m where m.user_id = (select auth.uid()) and m.active));

create policy "Members read their own membership, admins their organisation's" on billing.org_members
  for select to authenticated
  using (user_id = (select auth.uid()) or org_id in (select a.org_id from billing.org_admins a where a.user_id = (select auth.uid())));

create policy "Admins read their own admin rows" on billing.org_admins
  for select to authenticated using (user_id = (select auth.uid()));

-- ============================================================ references into this domain

alter table billing.accounts add constraint accounts_org_id_fkey foreign key (org_id) references billing.orgs(id);
