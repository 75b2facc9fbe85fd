-- The credit ledger's roll-up now keeps its lots part by source (plan and promo code lots), which
-- the rows written before lack: drop them, and the minute job rebuilds them from the ledger
-- (today by billing.roll_up_ledger, closed days by billing.stale_revenue_days).
delete from billing.revenue_rollup;
