-- Plans (#35): the platform account plan credits come from and roll through, and the catalogue.
insert into billing.accounts (code) values ('plans') on conflict do nothing;

insert into billing.plans (id, name, price_cents, currency, billing_interval, credits, rollover, rollover_limit, sort_order) values
  ('basic_monthly', 'Basic', 999, 'usd', 'month', 10000, 'up_to_credits', 2000, 1),
  ('pro_monthly', 'Pro', 2999, 'usd', 'month', 35000, 'up_to_share', 0.25, 2),
  ('pro_yearly', 'Pro (yearly)', 29990, 'usd', 'year', 420000, 'none', null, 3)
on conflict (id) do nothing;
