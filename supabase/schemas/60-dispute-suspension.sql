-- A disputed buyer is suspended (issue #77, docs/credit-lots.md): while a purchase a student paid
-- for themselves (a gift code's purchase included) or one of their plan invoices has an open
-- dispute, billing.standing_refusal (10-ledger.sql) answers ACCOUNT_DISPUTED (403) on every
-- money path and organisation action that checks standing. It reads the dispute status the
-- dispute handlers keep (51-refunds-disputes.sql, 57-plan-credits.sql), so nothing is copied
-- and won or lost lifts the suspension in the same transaction. An organisation's purchase
-- suspends the admin who paid it, unless an operator verified the organisation before it was
-- paid (purchases.wallet_answers). These indexes keep that read to two lookups of open disputes, on
-- every money request.

-- ============================================================ indexes

create index purchases_open_dispute_buyer on billing.purchases (user_id)
  where dispute_status = 'open';

create index plan_grants_open_dispute on billing.plan_grants (subscription_id)
  where dispute_status = 'open';
