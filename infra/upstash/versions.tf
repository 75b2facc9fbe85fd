# Terraform and the Upstash provider, pinned exactly: a provider upgrade is a reviewed change,
# never a side effect of `terraform init`. Commit the .terraform.lock.hcl that the first
# `terraform init` writes (it records the provider's checksums).
terraform {
  required_version = ">= 1.5.0"

  required_providers {
    upstash = {
      source  = "upstash/upstash"
      version = "2.0.1"
    }
  }
}
