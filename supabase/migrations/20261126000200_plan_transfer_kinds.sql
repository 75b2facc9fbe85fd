-- Plans (#35): the two new reasons credits move, each in its own statement (a new enum value
-- cannot be used in the transaction that adds it; the plans migration after this one does).
alter type billing.transfer_kind add value if not exists 'plan_grant';
alter type billing.transfer_kind add value if not exists 'plan_rollover';
