# Credentials come from the environment (TF_VAR_upstash_email, TF_VAR_upstash_api_key) or an
# untracked *.tfvars file; never commit a value for them.

variable "upstash_email" {
  description = "Email of the Upstash account that owns the database (Upstash console → Account)."
  type        = string
}

variable "upstash_api_key" {
  description = "Upstash Developer API key (Upstash console → Account → Management API)."
  type        = string
  sensitive   = true
}

variable "database_name" {
  description = "Name of the database in the Upstash console; changing it replaces the database."
  type        = string
  default     = "scholarlink-billing"

  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9_-]{0,63}$", var.database_name))
    error_message = "database_name: a letter, then letters, digits, '-' or '_' (64 characters at most)."
  }
}

variable "primary_region" {
  description = "Upstash primary region; pick the one nearest the Supabase project's region. Changing it replaces the database."
  type        = string
  default     = "us-east-1"

  validation {
    condition = contains([
      "us-east-1", "us-west-1", "us-west-2", "eu-central-1", "eu-west-1", "sa-east-1", "ap-southeast-1", "ap-southeast-2",
    ], var.primary_region)
    error_message = "primary_region must be one the Upstash provider accepts for global databases."
  }
}

variable "monthly_budget_usd" {
  description = "Monthly budget in whole USD for the pay-as-you-go database; past it Upstash throttles the database until the next month (rate limits then fail open). The default is about 1.35x the modelled spend at today's traffic (docs/costs.md); lower it while traffic is below the model."
  type        = number
  default     = 3000

  validation {
    condition     = var.monthly_budget_usd >= 20 && var.monthly_budget_usd <= 50000 && floor(var.monthly_budget_usd) == var.monthly_budget_usd
    error_message = "monthly_budget_usd must be a whole number of USD between 20 and 50000."
  }
}

variable "prod_pack" {
  description = "Upstash Prod Pack (uptime SLA, multi-zone, encryption at rest); a flat monthly add-on per database."
  type        = bool
  default     = false
}
