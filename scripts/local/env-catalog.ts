// Every variable each function reads, in one place: ./scripts/env-check checks an environment
// against it, docs/deploy.md's per-function table is rendered from it, and
// tests/unit/env-catalog.test.ts holds it equal to what each function's code reads (its import
// graph, scanned) and prod.env.example to it.

/** Provided by hosted Supabase; names starting with SUPABASE_ are reserved (never set as secrets). */
export const platform = {
  required: ['SUPABASE_URL', 'SUPABASE_DB_URL'],
  optional: [
    'SUPABASE_ANON_KEY',
    'SUPABASE_SERVICE_ROLE_KEY',
    'SUPABASE_JWKS',
    'SUPABASE_PUBLISHABLE_KEYS',
    'SUPABASE_SECRET_KEYS',
  ],
};

/** For the local stack and the tests only: unset in a deployment (live mode refuses two of them). */
export const localOnly = [
  'STRIPE_API_BASE',
  'POSTMARK_API_BASE',
  'AI_LOCAL_CHUNK_DELAY_MS',
  'JOBS_EXPORT_PAGE_DELAY_MS',
  'FAILPOINTS',
];

const redis = ['UPSTASH_REDIS_REST_URL', 'UPSTASH_REDIS_REST_TOKEN'];
const stripe = ['STRIPE_MODE', 'STRIPE_SECRET_KEY', 'STRIPE_WEBHOOK_SECRET'];
const stripeTuning = ['STRIPE_CONNECT_WEBHOOK_SECRET', 'STRIPE_TIMEOUT_MS', 'STRIPE_AUTOMATIC_TAX', 'STRIPE_API_BASE'];
const velocity = [
  'VELOCITY_SESSIONS_PER_10_MIN',
  'VELOCITY_AMOUNT_CENTS_PER_24_H',
  'VELOCITY_IP_SESSIONS_PER_10_MIN',
  'VELOCITY_IP_AMOUNT_CENTS_PER_24_H',
  'VELOCITY_FAILED_PAYMENTS_PER_HOUR',
  'VELOCITY_BLOCK_SECONDS',
];
const ai = [
  'AI_PROVIDER',
  'AI_API_BASE',
  'AI_API_KEY',
  'AI_TIMEOUT_MS',
  'AI_LOCAL_CHUNK_DELAY_MS',
];
/** The gateway's own: its limits and its upstreams beside OpenAI (_shared/adapters/ai-upstreams.ts). */
const gateway = [
  'AI_MAX_OUTPUT_TOKENS',
  'AI_MIN_OUTPUT_TOKENS',
  'AI_MAX_PROMPT_TOKENS',
  'AI_CALL_MAX_SECONDS',
  'AI_ANTHROPIC_BASE',
  'AI_ANTHROPIC_KEY',
  'AI_UPSTREAMS',
];

/** What every function reads through _shared (app factory, pool, rate limits, Redis, cron secret). */
export const everyFunction = [
  'CORS_ALLOWED_ORIGINS',
  'DB_POOLER_URL',
  'DB_POOL_MAX',
  'AUTH_TOKEN_MAX_LIFETIME_SECONDS',
  'CLIENT_IP_HEADER',
  'CRON_SECRET',
  'RATE_LIMIT_ENABLED',
  'RATE_LIMIT_GLOBAL_PER_MIN',
  'RATE_LIMIT_IP_PER_MIN',
  'RATE_LIMIT_API_KEY_PER_MIN',
  'RATE_LIMIT_DEFAULT_PER_MIN',
  'RATE_LIMIT_CHECKOUT_SESSIONS_PER_MIN',
  'RATE_LIMIT_CREDITS_USAGE_PER_MIN',
  'RATE_LIMIT_JOBS_CREATE_PER_MIN',
  'RATE_LIMIT_AI_CHAT_PER_MIN',
  'RATE_LIMIT_CODES_REDEEM_PER_MIN',
  'RATE_LIMIT_USAGE_BATCH_PER_MIN',
  'RATE_LIMIT_STRIPE_WEBHOOK_PER_MIN',
  'RATE_LIMIT_NOTIFY_PER_MIN',
  'RATE_LIMIT_SOFT_RATIO',
  'REDIS_TIMEOUT_MS',
  'REDIS_BREAKER_FAILURES',
  'REDIS_BREAKER_COOLDOWN_MS',
  'SERVER_TIMING',
  ...redis,
];

export interface FunctionEnv {
  /** Without these the function answers 503 CONFIG_MISSING on the routes that need them. */
  required: string[];
  /** Read with a default, or only for some routes or features (beyond everyFunction's). */
  optional: string[];
}

/** Beyond the platform's variables and everyFunction's. */
export const functions: Record<string, FunctionEnv> = {
  // Stripe only for the catalogue's creates and changes (a Stripe Price per version).
  admin: { required: [...redis], optional: ['SLO_AVAILABILITY', 'SLO_P95_MS', ...stripe, ...stripeTuning] },
  // The AI gateway calls each model's upstream: OpenAI at AI_API_BASE with AI_API_KEY, Anthropic
  // with AI_ANTHROPIC_KEY, and each OpenAI-compatible host named in AI_UPSTREAMS by its own
  // AI_UPSTREAM_<NAME>_BASE, _KEY, _SPEAKS and _FALLBACK_FOR (docs/ai-gateway.md § Upstreams); AI_REFERENCE_SECRET
  // seals the Responses API's answer item references (ai/references.ts), which open for
  // AI_REFERENCE_RETENTION_DAYS.
  ai: {
    required: [...redis, 'AI_API_BASE', 'AI_API_KEY', 'AI_REFERENCE_SECRET'],
    optional: [
      ...ai.filter((v) => v !== 'AI_API_BASE' && v !== 'AI_API_KEY'),
      ...gateway,
      'AI_REFERENCE_RETENTION_DAYS',
      'FAILPOINTS',
    ],
  },
  checkout: {
    required: [...redis, ...stripe, 'CHECKOUT_SUCCESS_URL', 'CHECKOUT_CANCEL_URL', 'CODE_SECRET'],
    optional: ['FEATURE_B2C_CREDITS', 'CHECKOUT_REDIRECT_ORIGINS', ...stripeTuning, ...velocity, 'FAILPOINTS'],
  },
  credits: { required: [...redis, 'CODE_SECRET'], optional: ['CODE_GUESSES_PER_ADDRESS_PER_HOUR'] },
  health: {
    // Readiness checks the Stripe configuration, and in live mode what live-config.ts refuses.
    required: [...stripe],
    optional: [
      ...stripeTuning,
      'METRICS_TOKEN',
      'OUTBOX_BACKLOG_WARN',
      'SLO_AVAILABILITY',
      'SLO_P95_MS',
      'POSTMARK_SERVER_TOKEN',
      'POSTMARK_API_BASE',
      'AI_HEALTH_DAILY_CALLS',
      ...ai,
      ...gateway,
      'BILLING_PAGE_URL',
      'CHECKOUT_SUCCESS_URL',
      'CHECKOUT_CANCEL_URL',
      'CHECKOUT_REDIRECT_ORIGINS',
      'PROVIDER_ONBOARDING_RETURN_URL',
      'PROVIDER_ONBOARDING_REFRESH_URL',
      'FAILPOINTS',
    ],
  },
  jobs: {
    // The tick charges saved cards off-session (auto-recharge): Stripe is required here too.
    // ai_completion jobs call each model's upstream as the gateway does (AI_PROVIDER=openai). The
    // tick deletes the AI references' kept items past AI_REFERENCE_RETENTION_DAYS.
    required: [...redis, ...stripe, 'CRON_SECRET'],
    optional: [
      ...stripeTuning,
      ...ai,
      ...gateway,
      'AI_REFERENCE_RETENTION_DAYS',
      'JOBS_LEASE_SECONDS',
      'JOBS_TICK_BUDGET_MS',
      'JOBS_EXPORT_PAGE_DELAY_MS',
      'FAILPOINTS',
    ],
  },
  notify: {
    required: [
      ...redis,
      'NOTIFY_WEBHOOK_SECRET',
      'POSTMARK_SERVER_TOKEN',
      'CRON_SECRET',
      'INVITATION_TOKEN_SECRET',
      'CODE_SECRET',
    ],
    optional: [
      'POSTMARK_API_BASE',
      'NOTIFY_FROM',
      'ALERT_EMAIL',
      'ALERT_WEBHOOK_URL',
      'PRODUCT_WEBHOOK_URL',
      'PRODUCT_WEBHOOK_SECRET',
      'BILLING_PAGE_URL',
      'OUTBOX_MAX_ATTEMPTS',
    ],
  },
  // Stripe: an organisation's invoices (POST /orgs/:id/invoices).
  orgs: {
    required: [...redis, ...stripe, 'INVITATION_TOKEN_SECRET'],
    optional: ['BILLING_PAGE_URL', ...stripeTuning, 'FAILPOINTS'],
  },
  providers: {
    required: [
      ...redis,
      ...stripe,
      'CHECKOUT_SUCCESS_URL',
      'CHECKOUT_CANCEL_URL',
      'PROVIDER_ONBOARDING_RETURN_URL',
      'PROVIDER_ONBOARDING_REFRESH_URL',
    ],
    optional: [
      'FEATURE_B2B_PROVIDER_PAYMENTS',
      'PLATFORM_FEE_BPS',
      ...stripeTuning,
      'RECONCILIATION_BUDGET_MS',
      'RECONCILIATION_BACKGROUND_MS',
      'RECONCILIATION_LEASE_SECONDS',
      'FAILPOINTS',
    ],
  },
  'stripe-webhook': { required: [...redis, ...stripe], optional: [...stripeTuning, ...velocity, 'FAILPOINTS'] },
};

/** Every variable `name` reads: the platform's, everyFunction's and its own. */
export function readsOf(name: string): Set<string> {
  const f = functions[name];
  return new Set([...platform.required, ...platform.optional, ...everyFunction, ...f.required, ...f.optional]);
}

const code = (names: string[]) => names.map((n) => `\`${n}\``).join(', ');

/** docs/deploy.md's per-function table (between its env-table markers), rendered from this catalog. */
export function markdownTable(): string {
  const rows = Object.entries(functions).map(([name, f]) => {
    const optional = f.optional.filter((n) => !localOnly.includes(n));
    return `| \`${name}\` | ${code(f.required)} | ${optional.length ? code(optional) : '—'} |`;
  });
  return [
    '| function | needs (503 `CONFIG_MISSING` without) | also reads (defaults or features) |',
    '| --- | --- | --- |',
    ...rows,
    '',
    `Every function also reads ${code(everyFunction.filter((n) => !redis.includes(n)))}, and the`,
    `platform's ${code([...platform.required, ...platform.optional])}. For local development only (leave unset):`,
    `${code(localOnly)}.`,
  ].join('\n');
}
