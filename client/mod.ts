// A typed client for ScholarLink Billing over supabase-js: `supabase.functions.invoke`
// carries the signed-in user's token as in every Supabase app. Each mutating call gets one
// Idempotency-Key, reused on its retries; failures are BillingErrors with the service's code.
//
//   const billing = createBillingClient(supabase);
//   const { balance } = await billing.balance();
import type {
  Alerts,
  AllowanceRequest,
  AllowancesFunded,
  AutoRecharge,
  AutoRechargeRequest,
  Balance,
  CapAlertsRequest,
  CapRequest,
  CaptureRequest,
  CheckoutRequest,
  CheckoutSession,
  CreateOrgRequest,
  CreditPackage,
  Hold,
  HoldRequest,
  Invitation,
  InvitationAnswer,
  InvitationList,
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
  OrgLedgerEntry,
  OrgMember,
  OrgSummary,
  OrgUsageQuery,
  OrgUsageRow,
  OwnershipTransferred,
  PurchaseStatus,
  SpendCap,
  UpdateOrgRequest,
  UsageCharge,
  UsageRequest,
} from './contract.ts';
import { BillingError, toBillingError } from './errors.ts';
import { type RetryOptions, sleep, withRetries } from './retry.ts';

export type * from './contract.ts';
export { BillingError } from './errors.ts';
export type { RetryOptions } from './retry.ts';

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
  done: Promise<T>;
}

export interface WatchOptions {
  signal?: AbortSignal;
  onProgress?: (job: Job) => void;
}

const finished = (s: JobStatus) => s === 'completed' || s === 'failed' || s === 'cancelled';
const newTempId = () => `temp_${crypto.randomUUID()}`;

export function createBillingClient(supabase: SupabaseLike, retry: RetryOptions = {}) {
  /** One logical operation: one Idempotency-Key (if it mutates) for all of its attempts. */
  async function call<T>(
    method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE',
    path: string,
    body?: Record<string, unknown>,
    signal?: AbortSignal,
  ): Promise<{ data: T; response?: Response }> {
    const headers: Record<string, string> = method === 'GET' ? {} : { 'Idempotency-Key': crypto.randomUUID() };
    return await withRetries(
      async () => {
        const r = await supabase.functions.invoke(path, { method, body, headers, signal });
        if (r.error) throw await toBillingError(r.error, r.response);
        return { data: (r.data as { data: T }).data, response: r.response };
      },
      retry,
      signal,
    );
  }
  const get = async <T>(path: string, signal?: AbortSignal) => (await call<T>('GET', path, undefined, signal)).data;
  const post = async <T>(path: string, body: object = {}) =>
    (await call<T>('POST', path, body as Record<string, unknown>)).data;
  const put = async <T>(path: string, body: object) =>
    (await call<T>('PUT', path, body as Record<string, unknown>)).data;
  const patch = async <T>(path: string, body: object) =>
    (await call<T>('PATCH', path, body as Record<string, unknown>)).data;
  const del = async <T>(path: string) => (await call<T>('DELETE', path)).data;
  const org = (id: string, rest = '') => `orgs/${encodeURIComponent(id)}${rest}`;
  const query = (params: Record<string, string | number | undefined>) => {
    const q = new URLSearchParams(
      Object.entries(params).filter(([, v]) => v !== undefined).map(([k, v]) => [k, String(v)]),
    ).toString();
    return q ? `?${q}` : '';
  };
  const optimistic = <T>(send: (tempId: string) => Promise<T>, tempId?: string): Pending<T> => {
    const id = tempId ?? newTempId();
    return { tempId: id, done: send(id) };
  };

  return {
    packages: async () => (await get<{ packages: CreditPackage[] }>('checkout/packages')).packages,
    /** Opens a hosted Checkout Session; redirect the browser to `url`. */
    startCheckout: (req: CheckoutRequest): Pending<CheckoutSession> =>
      optimistic(
        (id) => post<CheckoutSession>('checkout/sessions', { ...req, client_temp_id: id }),
        req.client_temp_id,
      ),
    /** A purchase by id or Checkout Session id; asks Stripe when still pending. */
    purchase: (id: string) => get<PurchaseStatus>(`checkout/sessions/${encodeURIComponent(id)}`),
    balance: () => get<Balance>('credits/balance'),
    ledger: (page: { limit?: number; cursor?: string } = {}) => get<LedgerPage>(`credits/ledger${query(page)}`),
    /** Where the caller's credits came from, what is left of each lot and when it expires. */
    lots: (page: { limit?: number; cursor?: string } = {}) => get<LotPage>(`credits/lots${query(page)}`),
    caps: () => get<SpendCap[]>('credits/caps'),
    /** Sets a cap for a period (and model); `amount: null` removes it. Answers with every cap. */
    setCap: (req: CapRequest) => put<SpendCap[]>('credits/caps', req),
    alerts: () => get<Alerts>('credits/alerts'),
    setLowBalanceAlert: (req: LowBalanceAlertRequest) => put<Alerts>('credits/alerts/low-balance', req),
    setCapAlerts: (req: CapAlertsRequest) => put<Alerts>('credits/alerts/caps', req),
    autoRecharge: () => get<AutoRecharge>('credits/auto-recharge'),
    /** Turns auto-recharge on (needs a card saved at Checkout: `startCheckout({…, save_card: true})`) or off. */
    setAutoRecharge: (req: AutoRechargeRequest) => put<AutoRecharge>('credits/auto-recharge', req),
    recordUsage: (req: UsageRequest) => post<UsageCharge>('credits/usage', req),
    createHold: (req: HoldRequest) => post<Hold>('credits/holds', req),
    captureHold: (holdId: string, req: CaptureRequest = {}) =>
      post<Hold>(`credits/holds/${encodeURIComponent(holdId)}/capture`, req),
    releaseHold: (holdId: string) => post<Hold>(`credits/holds/${encodeURIComponent(holdId)}/release`),
    createJob: (req: JobRequest): Pending<JobAccepted> =>
      optimistic((id) => post<JobAccepted>('jobs', { ...req, client_temp_id: id }), req.client_temp_id),
    job: (jobId: string) => get<Job>(`jobs/${encodeURIComponent(jobId)}`),
    jobs: (page: { status?: JobStatus; limit?: number; cursor?: string } = {}) => get<JobList>(`jobs${query(page)}`),
    cancelJob: async (jobId: string) => (await call<Job>('DELETE', `jobs/${encodeURIComponent(jobId)}`)).data,

    // Organisations (school wallets). Buying credits for one: startCheckout({ package_id, org_id }).
    /** The caller's organisations, with their role in each. */
    orgs: () => get<OrgSummary[]>('orgs'),
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
    acceptInvitation: (token: string) => post<InvitationAnswer>('orgs/invitations/accept', { token }),
    declineInvitation: (token: string) => post<InvitationAnswer>('orgs/invitations/decline', { token }),
    members: (id: string) => get<OrgMember[]>(org(id, '/members')),
    /** Removes a member at once; their allowance sweeps back to the wallet. */
    removeMember: (id: string, userId: string) => del<MemberRemoved>(org(id, `/members/${encodeURIComponent(userId)}`)),
    /** A member's cap on a pooled wallet for a period; `amount: null` removes it. */
    setMemberCap: (id: string, userId: string, req: MemberCapRequest) =>
      put<MemberCap[]>(org(id, `/members/${encodeURIComponent(userId)}/cap`), req),
    /** Moves `amount` to one member's allowance (`user_id`) or to every member's: all or nothing. */
    fundAllowances: (id: string, req: AllowanceRequest) => post<AllowancesFunded>(org(id, '/allowances'), req),
    /** Org-funded spending per member, model and period (a member sees only their own). */
    orgUsage: (id: string, q: OrgUsageQuery) => get<OrgUsageRow[]>(org(id, `/usage${query(q)}`)),
    orgLedger: (id: string, page: { limit?: number; cursor?: string } = {}) =>
      get<OrgLedgerEntry[]>(org(id, `/ledger${query(page)}`)),

    /**
     * Polls a job at the pace the server asks (Retry-After: 2 s, then 4 s, then 8 s) until it
     * completes, fails or is cancelled (resolving with it) or `signal` aborts (ABORTED).
     */
    async watchJob(jobId: string, opts: WatchOptions = {}): Promise<Job> {
      for (let polls = 0;; polls++) {
        const { data: job, response } = await call<Job>(
          'GET',
          `jobs/${encodeURIComponent(jobId)}`,
          undefined,
          opts.signal,
        );
        opts.onProgress?.(job);
        if (finished(job.status)) return job;
        const asked = Number(response?.headers.get('retry-after'));
        await sleep((asked > 0 ? asked : Math.min(8, 2 ** (polls + 1))) * 1000, opts.signal);
      }
    },
  };
}

export type BillingClient = ReturnType<typeof createBillingClient>;
export const isBillingError = (e: unknown): e is BillingError => e instanceof BillingError;
