-- Promo, gift and sponsor codes (supabase/schemas/75-codes.sql): the movements through a code's
-- escrow account. Hand-written: a new enum value cannot be used in the transaction that adds it.
alter type billing.transfer_kind add value if not exists 'code_escrow';
alter type billing.transfer_kind add value if not exists 'code_redemption';
alter type billing.transfer_kind add value if not exists 'code_return';
