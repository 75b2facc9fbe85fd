// One Supabase client for the app, and the billing client over it. The URL and key are inlined
// at build time, as Next.js inlines NEXT_PUBLIC_* variables.
import { createClient } from '@supabase/supabase-js';
import { createBillingClient } from '@scholarlink/billing-client';

declare const process: { env: Record<string, string | undefined> };

export const supabase = createClient(
  process.env.NEXT_PUBLIC_SUPABASE_URL ?? 'http://127.0.0.1:54321',
  process.env.NEXT_PUBLIC_SUPABASE_ANON_KEY ?? 'local-anon-key',
);
export const billing = createBillingClient(supabase);

/** The billing_api schema: read-only views the signed-in user's RLS policies filter. */
export const billingApi = () => supabase.schema('billing_api');
