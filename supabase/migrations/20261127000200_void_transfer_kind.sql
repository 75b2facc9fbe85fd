-- Corrections (#36): a void gives a charge back as a transfer of its own kind (45-corrections.sql).
-- Its own migration: a new enum value cannot be used in the transaction that adds it.
alter type billing.transfer_kind add value if not exists 'void';
