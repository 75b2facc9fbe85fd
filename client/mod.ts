// A typed client for ScholarLink Billing over supabase-js: `supabase.functions.invoke`
// carries the signed-in user's token as in every Supabase app. Like supabase-js, every method
// answers `{ data, error }` and never throws for an API or network failure; `error` is a
// BillingError with the service's code. Each mutating call gets one Idempotency-Key, reused on
// its retries. Usage is never reported from the browser: the product's server reports it with
// a server key (createUsageReporter), naming the user who spent.
//
//   const billing = createBillingClient(supabase);
//   const { data, error } = await billing.balance();
import type {
  Alerts,
  AllowanceRequest,
  AllowancesFunded,
  AutoRecharge,
  AutoRechargeRequest,
  Balance,
  BalanceAsOf,
  CapAlertsRequest,
  CapRequest,
  CaptureRequest,
  CheckoutRequest,
  CheckoutSession,
  Code,
  CodeRedemption,
  CreateOrgRequest,
  CreditPackage,
  Expiry,
  Hold,
  HoldRequest,
  Invitation,
  InvitationAnswer,
  InvitationList,
  InvitationPreview,
  InviteRequest,
  Job,
  JobAccepted,
  JobList,
  JobRequest,
  JobStatus,
  LedgerPage,
  LotPage,
  LowBalanceAlertRequest,
  MemberCap,
  MemberCapRequest,
  MemberRemoved,
  Org,
  OrgInvitation,
  OrgInvoice,
  OrgInvoiceList,
  OrgInvoiceRequest,
  OrgLedgerEntry,
  OrgMember,
  OrgSummary,
  OrgUsageQuery,
  OrgUsageRow,
  OwnershipTransferred,
  Page,
  PurchaseStatus,
  RateCardDraft,
  RateCardDraftRequest,
  RateCardPublished,
  RateCardSimulation,
  RateCardsOverview,
  SpendCap,
  SponsorCodeRequest,
  UpdateOrgRequest,
  UsageCharge,
  UsageRequest,
  UsageSummary,
  UsageSummaryQuery,
} from './contract.ts';
import { type ApiError, asBillingError, BillingError, toBillingError } from './errors.ts';
import { type RetryOptions, sleep, withRetries } from './retry.ts';

export type * from './contract.ts';
export { BillingError } from './errors.ts';
export type { ApiError } from './errors.ts';
export { documentedCodes } from './error-codes.ts';
export type { DetailsByCode, DetailsOf, DocumentedCode, ErrorCode, WalletShortfall } from './error-codes.ts';
export type { RetryOptions } from './retry.ts';

/**
 * What every method answers, as supabase-js does: the data, or the error (never both, never
 * thrown). Narrow on `error.code` to read that code's documented `details`.
 */
export type BillingResult<T> = { data: T; error: null } | { data: null; error: ApiError };

/** What the client needs of a Supabase client: `functions.invoke` with its `response` (supabase-js ≥ 2.50.3). */
export interface SupabaseLike {
  functions: {
    invoke(
      name: string,
      options?: {
        method?: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
        body?: Record<string, unknown>;
        headers?: Record<string, string>;
        signal?: AbortSignal;
      },
    ): Promise<{ data: unknown; error: unknown; response?: Response }>;
  };
}

/** An operation the UI can show at once under `tempId`; `done` brings the server's answer. */
export interface Pending<T> {
  tempId: string;
  done: Promise<BillingResult<T>>;
}

export interface WatchOptions {
  signal?: AbortSignal;
  onProgress?: (job: Job) => void;
}

/**
 * An instant to read as of (`balance`, `lots`): RFC 3339 with an offset (`Date#toISOString()`
 * gives one), not in the future; omitted: now.
 */
export type AsOf = { at?: string };

const finished = (s: JobStatus) => s === 'completed' || s === 'failed' || s === 'cancelled';
const newTempId = () => `temp_${crypto.randomUUID()}`;

type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

const failure = (err: unknown) => ({ data: null, error: asBillingError(err) as ApiError });

/**
 * Sends one logical operation through `supabase.functions.invoke`, with its retries: one
 * Idempotency-Key (if it mutates) for all attempts. `authorization`, when given, replaces the
 * token supabase-js would send (a server key).
 */
function invoker(supabase: SupabaseLike, retry: RetryOptions, authorization?: string) {
  async function send<T>(method: Method, path: string, body?: Record<string, unknown>, signal?: AbortSignal) {
    const headers: Record<string, string> = method === 'GET' ? {} : { 'Idempotency-Key': crypto.randomUUID() };
    if (authorization) headers.Authorization = authorization;
    return await withRetries(
      async () => {
        const r = await supabase.functions.invoke(path, { method, body, headers, signal });
        if (r.error) throw await toBillingError(r.error, r.response);
        // A CSV answer (format=csv) arrives as text, not in the envelope.
        const data = typeof r.data === 'string' ? r.data : (r.data as { data: T }).data;
        return { data: data as T, response: r.response };
      },
      retry,
      signal,
    );
  }
  async function call<T>(method: Method, path: string, body?: object, signal?: AbortSignal): Promise<BillingResult<T>> {
    try {
      return { data: (await send<T>(method, path, body as Record<string, unknown>, signal)).data, error: null };
    } catch (err) {
      return failure(err);
    }
  }
  return { send, call };
}

export function createBillingClient(supabase: SupabaseLike, retry: RetryOptions = {}) {
  const { send, call } = invoker(supabase, retry);
  const get = <T>(path: string, signal?: AbortSignal) => call<T>('GET', path, undefined, signal);
  const post = <T>(path: string, body: object = {}) => call<T>('POST', path, body);
  const put = <T>(path: string, body: object) => call<T>('PUT', path, body);
  const patch = <T>(path: string, body: object) => call<T>('PATCH', path, body);
  const del = <T>(path: string) => call<T>('DELETE', path);
  const org = (id: string, rest = '') => `orgs/${encodeURIComponent(id)}${rest}`;
  const query = (params: Record<string, string | number | undefined>) => {
    const q = new URLSearchParams(
      Object.entries(params).filter(([, v]) => v !== undefined).map(([k, v]) => [k, String(v)]),
    ).toString();
    return q ? `?${q}` : '';
  };
  const optimistic = <T>(send: (tempId: string) => Promise<BillingResult<T>>, tempId?: string): Pending<T> => {
    const id = tempId ?? newTempId();
    return { tempId: id, done: send(id) };
  };

  return {
    packages: () => get<Page<CreditPackage>>('checkout/packages'),
    /** Opens a hosted Checkout Session; redirect the browser to `url`. */
    startCheckout: (req: CheckoutRequest): Pending<CheckoutSession> =>
      optimistic(
        (id) => post<CheckoutSession>('checkout/sessions', { ...req, client_temp_id: id }),
        req.client_temp_id,
      ),
    /** The plans on sale (monthly or yearly, credits each period, rollover rule). */
    plans: () => get<Page<Plan>>('checkout/plans'),
    /** Opens a plan's hosted Checkout (mode=subscription); credits arrive with Stripe's invoice.paid. */
    subscribe: (req: { plan_id: string; success_url?: string; cancel_url?: string }) =>
      post<PlanCheckout>('checkout/subscriptions', req),
    /** The caller's plan, or null. */
    plan: () => get<PlanState | null>('checkout/subscription'),
    /** Upgrade (the difference in credits now) or downgrade (from the next period). */
    changePlan: (planId: string) =>
      post<PlanState & { change: 'upgrade' | 'downgrade' }>('checkout/subscription/change', {
        plan_id: planId,
      }),
    /** Cancels at the period's end; the credits last until then. */
    cancelPlan: () => post<PlanState>('checkout/subscription/cancel', {}),
    /** Stripe's customer portal (card, invoices, cancellation): redirect the browser to `url`. */
    billingPortal: (returnUrl?: string) =>
      post<{ url: string }>('checkout/portal', returnUrl ? { return_url: returnUrl } : {}),
    /**
     * Buys a gift: a Checkout Session whose credits, once paid, wait behind a code for someone
     * else (read it with `purchase(purchase_id).gift.code`; it is also emailed to the buyer).
     */
    buyGift: (req: Omit<CheckoutRequest, 'gift' | 'org_id' | 'save_card' | 'client_temp_id'>) =>
      post<CheckoutSession>('checkout/sessions', { ...req, gift: true }),
    /** Redeems a promo, gift or sponsor code; the same code again answers the first redemption. */
    redeemCode: (code: string) => post<CodeRedemption>('credits/codes/redeem', { code }),
    /** A purchase by id or Checkout Session id; asks Stripe when still pending. */
    purchase: (id: string) => get<PurchaseStatus>(`checkout/sessions/${encodeURIComponent(id)}`),
    /**
     * The caller's balance now; or, with `at` (an instant with an offset, not in the future), as it
     * stood then, exactly, from the ledger (`BalanceAsOf`: the same fields and `as_of`).
     * @example const { data } = await billing.balance({ at: new Date('2026-11-03T18:00').toISOString() });
     */
    balance: <Q extends AsOf = Record<never, never>>(q?: Q) =>
      get<Q extends { at: string } ? BalanceAsOf : Balance>(`credits/balance${query({ at: q?.at })}`),
    ledger: (page: { limit?: number; cursor?: string } = {}) => get<LedgerPage>(`credits/ledger${query(page)}`),
    /**
     * Where the caller's credits came from, what is left of each lot and when it expires; with
     * `at`, each lot as it stood then (those granted by then, with what remained of each).
     */
    lots: (page: { limit?: number; cursor?: string } & AsOf = {}) => get<LotPage>(`credits/lots${query(page)}`),
    /** Every upcoming expiry of the caller's own credits, and what a plan's rule rolls over. */
    expiries: () => get<Page<Expiry>>('credits/expiries'),
    caps: () => get<Page<SpendCap>>('credits/caps'),
    /** Sets a cap for a period (and model); `amount: null` removes it. Answers with every cap. */
    setCap: (req: CapRequest) => put<Page<SpendCap>>('credits/caps', req),
    alerts: () => get<Alerts>('credits/alerts'),
    setLowBalanceAlert: (req: LowBalanceAlertRequest) => put<Alerts>('credits/alerts/low-balance', req),
    setCapAlerts: (req: CapAlertsRequest) => put<Alerts>('credits/alerts/caps', req),
    autoRecharge: () => get<AutoRecharge>('credits/auto-recharge'),
    /** Turns auto-recharge on (needs a card saved at Checkout: `startCheckout({…, save_card: true})`) or off. */
    setAutoRecharge: (req: AutoRechargeRequest) => put<AutoRecharge>('credits/auto-recharge', req),
    /**
     * Where the caller's credits went, per model and day or week (the last 30 days unless
     * `from`/`to` say otherwise), and how long the rest lasts at the last 7 days' pace.
     */
    usageSummary: (q: UsageSummaryQuery = {}) => get<UsageSummary>(`credits/usage/summary${query(q)}`),
    createHold: (req: HoldRequest) => post<Hold>('credits/holds', req),
    captureHold: (holdId: string, req: CaptureRequest = {}) =>
      post<Hold>(`credits/holds/${encodeURIComponent(holdId)}/capture`, req),
    releaseHold: (holdId: string) => post<Hold>(`credits/holds/${encodeURIComponent(holdId)}/release`),
    createJob: (req: JobRequest): Pending<JobAccepted> =>
      optimistic((id) => post<JobAccepted>('jobs', { ...req, client_temp_id: id }), req.client_temp_id),
    job: (jobId: string) => get<Job>(`jobs/${encodeURIComponent(jobId)}`),
    jobs: (page: { status?: JobStatus; limit?: number; cursor?: string } = {}) => get<JobList>(`jobs${query(page)}`),
    cancelJob: (jobId: string) => del<Job>(`jobs/${encodeURIComponent(jobId)}`),

    // Organisations (school wallets). Buying credits for one: startCheckout({ package_id, org_id }).
    /** The caller's organisations, with their role in each. */
    orgs: () => get<Page<OrgSummary>>('orgs'),
    /** One organisation: its wallet for owners and admins, the caller's allowance for members. */
    org: (id: string) => get<Org>(org(id)),
    createOrg: (req: CreateOrgRequest) => post<Org>('orgs', req),
    updateOrg: (id: string, req: UpdateOrgRequest) => patch<Org>(org(id), req),
    /** Emails an invitation; the answer carries its token (the link's) once. */
    invite: (id: string, req: InviteRequest) => post<OrgInvitation>(org(id, '/invitations'), req),
    /** The organisation's invitations, newest first (admins). */
    invitations: (id: string, page: { limit?: number; cursor?: string } = {}) =>
      get<InvitationList>(org(id, `/invitations${query(page)}`)),
    /** Revokes a pending invitation: its link stops working. */
    revokeInvitation: (id: string, invitationId: string) =>
      del<Invitation>(org(id, `/invitations/${encodeURIComponent(invitationId)}`)),
    /** The owner makes an active member the owner, and becomes an admin. */
    transferOwnership: (id: string, userId: string) =>
      post<OwnershipTransferred>(org(id, '/owner'), { user_id: userId }),
    /** Which organisation an invitation link is from, before signing in (no session needed). */
    previewInvitation: (token: string) => post<InvitationPreview>('orgs/invitations/preview', { token }),
    acceptInvitation: (token: string) => post<InvitationAnswer>('orgs/invitations/accept', { token }),
    declineInvitation: (token: string) => post<InvitationAnswer>('orgs/invitations/decline', { token }),
    members: (id: string) => get<Page<OrgMember>>(org(id, '/members')),
    /** Removes a member at once; their allowance sweeps back to the wallet. */
    removeMember: (id: string, userId: string) => del<MemberRemoved>(org(id, `/members/${encodeURIComponent(userId)}`)),
    /** A member's cap on a pooled wallet for a period; `amount: null` removes it. */
    setMemberCap: (id: string, userId: string, req: MemberCapRequest) =>
      put<Page<MemberCap>>(org(id, `/members/${encodeURIComponent(userId)}/cap`), req),
    /** Moves `amount` to one member's allowance (`user_id`) or to every member's: all or nothing. */
    fundAllowances: (id: string, req: AllowanceRequest) => post<AllowancesFunded>(org(id, '/allowances'), req),
    /**
     * Org-funded spending per member, model and period (a member sees only their own); the last
     * 30 days unless `from`/`to` (dates or instants) say otherwise. `format: 'csv'` answers the
     * CSV text.
     */
    orgUsage: <F extends 'json' | 'csv' = 'json'>(id: string, q: OrgUsageQuery & { format?: F } = {}) =>
      get<F extends 'csv' ? string : Page<OrgUsageRow>>(org(id, `/usage${query(q)}`)),
    /** One member's org-funded usage, as `usageSummary` (admins: any member; a member: themselves). */
    memberUsageSummary: (id: string, userId: string, q: UsageSummaryQuery = {}) =>
      get<UsageSummary>(org(id, `/members/${encodeURIComponent(userId)}/usage/summary${query(q)}`)),
    /** Sets credits aside for one student (by user id or email): the code is in this answer only. */
    issueSponsorCode: (id: string, req: SponsorCodeRequest) => post<Code>(org(id, '/sponsor-codes'), req),
    sponsorCodes: (id: string) => get<Page<Code>>(org(id, '/sponsor-codes')),
    /** Revokes an unredeemed sponsor code: its credits return to the wallet. */
    revokeSponsorCode: (id: string, codeId: string) =>
      del<Code>(org(id, `/sponsor-codes/${encodeURIComponent(codeId)}`)),
    orgLedger: (id: string, page: { limit?: number; cursor?: string } = {}) =>
      get<Page<OrgLedgerEntry>>(org(id, `/ledger${query(page)}`)),
    /**
     * Asks for a package on a Stripe invoice (owners and admins): sent to the requester's own confirmed address, payable
     * by bank transfer or card within `days_until_due`; the wallet is credited once it is paid.
     */
    requestOrgInvoice: (id: string, req: OrgInvoiceRequest) => post<OrgInvoice>(org(id, '/invoices'), req),
    /** The organisation's invoices, newest first (admins): status, amounts, PO number, links. */
    orgInvoices: (id: string, page: { limit?: number; cursor?: string } = {}) =>
      get<OrgInvoiceList>(org(id, `/invoices${query(page)}`)),

    // Rate cards (admins only; docs/pricing.md).
    /** The cards in effect and scheduled, the open drafts and the latest audited changes. */
    rateCards: () => get<RateCardsOverview>('admin/rate-cards'),
    draftRateCard: (req: RateCardDraftRequest) => post<RateCardDraft>('admin/rate-cards/drafts', req),
    /** The dry run: past usage in [from, to) re-priced under the draft; moves no money. */
    simulateRateCard: (draftId: string, q: { from?: string; to?: string } = {}) =>
      get<RateCardSimulation>(`admin/rate-cards/drafts/${encodeURIComponent(draftId)}/simulation${query(q)}`),
    /** Publishes a draft from `effective_from` (now by default; never in the past). Idempotent. */
    publishRateCard: (draftId: string, req: { reason: string; effective_from?: string }) =>
      post<RateCardPublished>(`admin/rate-cards/drafts/${encodeURIComponent(draftId)}/publish`, req),
    discardRateCardDraft: (draftId: string, reason: string) =>
      post<RateCardDraft>(`admin/rate-cards/drafts/${encodeURIComponent(draftId)}/discard`, { reason }),

    /**
     * Polls a job at the pace the server asks (Retry-After: 2 s, then 4 s, then 8 s) until it
     * completes, fails or is cancelled (answering it as `data`), a poll fails, or `signal`
     * aborts (`error.code` ABORTED).
     */
    async watchJob(jobId: string, opts: WatchOptions = {}): Promise<BillingResult<Job>> {
      try {
        for (let polls = 0;; polls++) {
          const { data: job, response } = await send<Job>(
            'GET',
            `jobs/${encodeURIComponent(jobId)}`,
            undefined,
            opts.signal,
          );
          opts.onProgress?.(job);
          if (finished(job.status)) return { data: job, error: null };
          const asked = Number(response?.headers.get('retry-after'));
          await sleep((asked > 0 ? asked : Math.min(8, 2 ** (polls + 1))) * 1000, opts.signal);
        }
      } catch (err) {
        return failure(err);
      }
    },
  };
}

export type BillingClient = ReturnType<typeof createBillingClient>;

/**
 * Reports usage from the product's server (never from a browser: POST /credits/usage answers a
 * user's token 403 USAGE_REPORTED_BY_SERVER). `serverKey` is a server key an admin created
 * (`slk_…`) or the service role key; keep it on the server. Each report names the user who spent
 * (`user_id`) and gets one Idempotency-Key, reused on its retries, so a retry never charges twice.
 * Calls made through the AI gateway are metered there and need no report.
 * @example
 * const supabase = createClient(process.env.SUPABASE_URL!, process.env.SUPABASE_ANON_KEY!);
 * const usage = createUsageReporter(supabase, process.env.BILLING_SERVER_KEY!);
 * const { data, error } = await usage.recordUsage({ user_id, model: 'gpt-4o-mini', input_tokens: 1000, output_tokens: 500 });
 */
export function createUsageReporter(supabase: SupabaseLike, serverKey: string, retry: RetryOptions = {}) {
  const { call } = invoker(supabase, retry, `Bearer ${serverKey}`);
  return {
    /** Charges `user_id` for one model call; answers what was charged and who paid (the user or their school). */
    recordUsage: (req: UsageRequest) => call<UsageCharge>('POST', 'credits/usage', req),
  };
}

export type UsageReporter = ReturnType<typeof createUsageReporter>;
export const isBillingError = (e: unknown): e is BillingError => e instanceof BillingError;

/** A plan on sale (GET /checkout/plans). */
export interface Plan {
  id: string;
  name: string;
  price_cents: number;
  currency: string;
  interval: 'month' | 'year';
  credits: string;
  rollover: { rule: 'none' | 'up_to_credits' | 'up_to_share'; limit: string | null };
}
/** A plan's Checkout (POST /checkout/subscriptions): open `url` in the browser. */
export interface PlanCheckout {
  subscription_id: string;
  plan_id: string;
  status: string;
  session_id: string | null;
  url: string | null;
  expires_at: string | null;
}
/** The caller's plan (GET /checkout/subscription). */
export interface PlanState {
  subscription_id: string;
  plan_id: string;
  status: string;
  current_period_start: string | null;
  current_period_end: string | null;
  cancel_at_period_end: boolean;
  plan_credits_left: string;
}
