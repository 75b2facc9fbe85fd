-- Credits for a purpose (docs/credit-lots.md § Credits for some models): a lot may name the
-- models it can pay for (`applies_to`: model names and families, `gpt-4o*` being every model whose
-- name starts with gpt-4o; null: any). A charge for a model draws, in spending order, only from
-- lots that may pay for it; a movement with no model (a user's own hold) only from
-- lots that pay for anything. Refunds, disputes and expiry take the lots they name whatever they
-- may pay for, then (refunds, disputes) only lots for anything: what those lack is a debt, which
-- credits for some models never pay (11-ledger-writer.sql); moves (allowances, codes) carry each
-- lot's list with its provenance.
--
-- Holds stay account-wide (accounts.held), so an account with restricted lots
-- (accounts.restricted_lots) must also keep every live hold payable: a hold for a model (a gateway
-- call's, a job's) can be paid only by lots for that model, a dispute's only by lots for anything
-- and the lots it freezes (their lists: metadata.covers), any other hold only by lots for anything. For such accounts, billing.plan_lot_draw chooses what a debit
-- draws so that the holds still fit (Hall's condition over the sets of the account's lists, by maximum flow: billing.hold_deficit), and
-- the writer draws exactly that (`take`). Accounts without restricted lots never come here: their
-- path is unchanged.
--
-- The writer's road reads a lot's list and plans the draw on every posting, so applies_to_of,
-- narrow_applies_to, plan_lot_draw and restricted_draw sit with it, in 11-ledger-writer.sql
-- (calls point down); this file keeps what a dispute's hold records of the lists it freezes.

-- ============================================================ functions

-- A dispute's hold is paid, should the dispute be lost, by the lots it freezes (whatever they pay
-- for) and then by credits for anything, never by other credits for some models: the lists of the
-- lots it freezes are its cover (metadata.covers, read by billing.plan_lot_draw).
create or replace function billing.cover_dispute_hold(p_hold_id uuid, p_lots bigint[]) returns void
language sql
set search_path = ''
as $$
  update billing.holds h
  set metadata = coalesce(h.metadata, '{}') || jsonb_build_object('covers', c.lists)
  from (select x.id, (select jsonb_agg(distinct to_jsonb(l.applies_to)) from billing.lots l
                      where l.id = any(p_lots) and l.account_id = x.account_id and l.applies_to is not null) as lists
        from billing.holds x where x.id = p_hold_id) c
  where h.id = c.id and c.lists is not null and h.metadata -> 'covers' is distinct from c.lists
$$;
comment on function billing.cover_dispute_hold(p_hold_id uuid, p_lots bigint[]) is 'Internal: records on a dispute''s hold the lists of the lots (of p_lots, in its account) it freezes: besides credits for any model, only those may cover it.';
revoke execute on function billing.cover_dispute_hold(p_hold_id uuid, p_lots bigint[]) from public;
