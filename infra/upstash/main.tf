# The Upstash Redis database behind rate limits, velocity checks and latency histograms
# (supabase/functions/_shared/adapters/redis.ts). It holds nothing money depends on: every key expires
# within 26 hours, and a fresh database loses nothing but open windows (docs/runbook.md).

provider "upstash" {
  email   = var.upstash_email
  api_key = var.upstash_api_key
}

resource "upstash_redis_database" "billing" {
  database_name = var.database_name

  # New databases are global; every limiter call writes (INCRBY), and writes go to the
  # primary, so read regions would add cost without taking latency off the request path.
  region         = "global"
  primary_region = var.primary_region

  # Always on for new databases; stated so a plan never shows it drifting.
  tls = true

  # The guardrail: past this many USD in a month Upstash throttles the database until the
  # next month. The functions then treat Redis as down (circuit breaker): limits fail open,
  # checkout falls back to per-instance limits, velocity is counted in Postgres. Money is
  # safe either way; abuse protection degrades. See docs/costs.md for the expected spend.
  budget = var.monthly_budget_usd

  # Off: a full database should fail loudly (the breaker opens, /health/readyz says so)
  # rather than silently evict a velocity block.
  eviction = false

  # Off: no plan change, and no bill change, without a reviewed apply.
  auto_scale = false

  prod_pack = var.prod_pack

  # No ip_allowlist: Supabase Edge Functions have no fixed egress addresses to allow.
}
