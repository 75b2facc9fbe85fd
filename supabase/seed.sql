-- Local development data, applied after migrations by scripts/dev (and `supabase db reset`).
-- Reference data the product needs everywhere (packages, rate cards) lives in migrations.
select 1;
