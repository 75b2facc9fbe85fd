-- Sponsor codes past their window, unredeemed, give their credits back to the wallet (75-codes.sql).
select cron.schedule('billing-close-sponsor-codes', '*/5 * * * *', $$select billing.close_expired_sponsor_codes(100)$$);
