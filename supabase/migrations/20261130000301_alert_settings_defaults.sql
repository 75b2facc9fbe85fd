-- The usage alerts' thresholds (billing.alert_settings, 80-observability.sql): its one row, at
-- the column defaults. Data, so written by hand.
insert into billing.alert_settings default values on conflict do nothing;
