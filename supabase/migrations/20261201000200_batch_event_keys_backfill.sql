-- Hand-written (data): batch usage events' ledger keys become per user. A key
-- 'usage-event:<event id>' written before 20261201000100 becomes billing.usage_event_key(<user>,
-- <event id>): the user whose event it was is the paying account's user, or for a charge an
-- organisation paid, the member it records (transfers.member_id, else the allowance's member).
-- Transfers are immutable (transfers_immutable): this one rewrite of a key, which moves no credits
-- and changes no amount, runs with that trigger off for this transaction only, under a lock that
-- keeps every writer out meanwhile (the CLI adds no transaction: this file is one).
begin;
lock table billing.transfers in share row exclusive mode;
alter table billing.transfers disable trigger transfers_immutable;

update billing.transfers t
set idempotency_key = billing.usage_event_key(coalesce(a.user_id, t.member_id, a.member_id),
                                              substr(t.idempotency_key, length('usage-event:') + 1))
from billing.accounts a
where a.id = t.from_account_id
  and t.kind = 'usage'
  and t.idempotency_key like 'usage-event:%'
  and coalesce(a.user_id, t.member_id, a.member_id) is not null;

alter table billing.transfers enable trigger transfers_immutable;
commit;
