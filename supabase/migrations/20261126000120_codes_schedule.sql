-- Sponsor codes past their window, unredeemed, give their credits back to the wallet (75-codes.sql).
select cron.schedule('billing-close-sponsor-codes', '*/5 * * * *', $$select billing.close_expired_sponsor_codes(100)$$);

-- The redemption audit is kept 180 days.
select cron.schedule('billing-delete-old-code-attempts', '41 3 * * *', $$select billing.delete_old_code_attempts(50000)$$);
