-- billing.charge_caps had no caller left: the writer counts caps itself (take_cap_room).
drop function billing.charge_caps(p_account_id bigint, p_amount numeric, p_model text, p_member uuid);
