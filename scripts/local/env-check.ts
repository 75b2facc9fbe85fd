// The variables each function reads, checked against the environment. Never prints a value.
import { parseArgs } from 'node:util';

type Spec = { required: string[]; optional: string[] };
const base: Spec = {
  required: ['SUPABASE_URL', 'SUPABASE_DB_URL'],
  optional: ['CORS_ALLOWED_ORIGINS', 'SUPABASE_JWT_SECRET', 'DB_POOL_MAX'],
};
const redis = ['UPSTASH_REDIS_REST_URL', 'UPSTASH_REDIS_REST_TOKEN'];
const stripe = ['STRIPE_MODE', 'STRIPE_SECRET_KEY', 'STRIPE_WEBHOOK_SECRET'];
const limits = [
  'RATE_LIMIT_ENABLED',
  'RATE_LIMIT_GLOBAL_PER_MIN',
  'RATE_LIMIT_IP_PER_MIN',
  'RATE_LIMIT_DEFAULT_PER_MIN',
  'REDIS_TIMEOUT_MS',
];

const functions: Record<string, Spec> = {
  health: {
    required: [...redis, ...stripe],
    optional: [
      'METRICS_TOKEN',
      'CRON_SECRET',
      'SLO_AVAILABILITY',
      'SLO_P95_MS',
      'POSTMARK_SERVER_TOKEN',
      'AI_PROVIDER',
    ],
  },
  credits: { required: [...redis], optional: limits },
  orgs: { required: [...redis, 'INVITATION_TOKEN_SECRET'], optional: [...limits, 'BILLING_PAGE_URL'] },
  checkout: {
    required: [...redis, ...stripe, 'CHECKOUT_SUCCESS_URL', 'CHECKOUT_CANCEL_URL'],
    optional: [
      'FEATURE_B2C_CREDITS',
      'CHECKOUT_REDIRECT_ORIGINS',
      'STRIPE_API_BASE',
      'VELOCITY_SESSIONS_PER_10_MIN',
      ...limits,
    ],
  },
  'stripe-webhook': { required: [...redis, ...stripe], optional: ['STRIPE_API_BASE', 'STRIPE_CONNECT_WEBHOOK_SECRET'] },
  providers: {
    required: [
      ...redis,
      ...stripe,
      'CHECKOUT_SUCCESS_URL',
      'CHECKOUT_CANCEL_URL',
      'PROVIDER_ONBOARDING_RETURN_URL',
      'PROVIDER_ONBOARDING_REFRESH_URL',
    ],
    optional: ['FEATURE_B2B_PROVIDER_PAYMENTS', 'PLATFORM_FEE_BPS', 'CRON_SECRET', 'STRIPE_API_BASE', ...limits],
  },
  admin: { required: [...redis], optional: ['SLO_AVAILABILITY', 'SLO_P95_MS', 'SUPABASE_ANON_KEY', ...limits] },
  jobs: {
    required: [...redis, 'CRON_SECRET'],
    optional: ['AI_PROVIDER', 'AI_API_BASE', 'AI_API_KEY', 'JOBS_LEASE_SECONDS', ...limits],
  },
  notify: {
    required: ['NOTIFY_WEBHOOK_SECRET', 'POSTMARK_SERVER_TOKEN', 'CRON_SECRET', 'INVITATION_TOKEN_SECRET'],
    optional: [
      'POSTMARK_API_BASE',
      'NOTIFY_FROM',
      'ALERT_EMAIL',
      'ALERT_WEBHOOK_URL',
      'PRODUCT_WEBHOOK_URL',
      'PRODUCT_WEBHOOK_SECRET',
      'BILLING_PAGE_URL',
    ],
  },
};

const { values } = parseArgs({ args: Deno.args, options: { function: { type: 'string' } } });
const names = values.function ? [values.function] : Object.keys(functions);
let missing = 0;
for (const name of names) {
  const spec = functions[name];
  if (!spec) {
    console.error(`unknown function ${name}; known: ${Object.keys(functions).join(', ')} (./scripts/env-check --help)`);
    Deno.exit(2);
  }
  console.log(`${name}`);
  for (
    const [kind, vars] of [['required', [...base.required, ...spec.required]], ['optional', [
      ...base.optional,
      ...spec.optional,
    ]]] as const
  ) {
    for (const v of [...new Set(vars)]) {
      const present = (Deno.env.get(v) ?? '') !== '';
      if (!present && kind === 'required') missing++;
      console.log(`  ${present ? 'present' : 'MISSING'.padEnd(7)}  ${kind.padEnd(8)}  ${v}`);
    }
  }
  if (spec.required.includes('STRIPE_SECRET_KEY')) {
    const key = Deno.env.get('STRIPE_SECRET_KEY') ?? '';
    const mode = Deno.env.get('STRIPE_MODE') ?? '';
    const keyMode = key.match(/^(?:sk|rk)_(test|live)_/)?.[1];
    const okMode = !!keyMode && keyMode === mode;
    if (!okMode) missing++;
    console.log(
      `  ${okMode ? 'ok     ' : 'MISMATCH'}  stripe    STRIPE_SECRET_KEY is ${
        keyMode ? `a ${keyMode}` : 'an unrecognised'
      } key; STRIPE_MODE is ${mode || 'unset'}`,
    );
  }
}
if (missing) {
  console.log(`\n${missing} required variable(s) missing or mismatched.`);
  Deno.exit(1);
}
console.log('\nall required variables present.');
