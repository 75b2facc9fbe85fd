# What the functions need, as `supabase secrets set` expects it (docs/deploy.md, step 3).
# Sensitive: `terraform output` hides them unless asked by name with -raw. The state file holds
# them in plain text: keep state out of the repository (see .gitignore) and encrypted at rest.

output "database_id" {
  description = "Upstash database id (for `terraform import` and the console)."
  value       = upstash_redis_database.billing.database_id
}

output "rest_url" {
  description = "UPSTASH_REDIS_REST_URL for the functions."
  value       = "https://${upstash_redis_database.billing.endpoint}"
  sensitive   = true
}

output "rest_token" {
  description = "UPSTASH_REDIS_REST_TOKEN for the functions (read-write)."
  value       = upstash_redis_database.billing.rest_token
  sensitive   = true
}
