// The user routes' contract, shared by the functions (their JSON builders are typed with it)
// and by the client in client/ (type-only imports, erased from browser bundles). Request
// bodies are the zod schemas' input types, so a changed route breaks the client's check.
import type { z } from 'zod';
import type { ErrorBody, Page } from '../envelope.ts';
import type { CreateSessionSchema } from './checkout.ts';
import type {
  AutoRechargeSchema,
  CapAlertsSchema,
  CapRequestSchema,
  CaptureRequestSchema,
  HoldRequestSchema,
  LowBalanceAlertSchema,
  UsageRequestSchema,
  UsageSummaryQuerySchema,
} from './credits.ts';
import type { CreateJobSchema } from './jobs.ts';
import type { PromoCodeSchema, RedeemCodeSchema, SponsorCodeSchema } from './codes.ts';
import type {
  AllowanceSchema,
  CreateOrgSchema,
  InviteSchema,
  MemberCapSchema,
  OrgInvoiceSchema,
  UpdateOrgSchema,
  UsageQuerySchema,
} from './orgs.ts';

/** The envelopes (envelope.ts, below every layer that builds them), part of the contract. */
export type { ErrorBody, Page };

export type UsageRequest = z.input<typeof UsageRequestSchema>;
export type HoldRequest = z.input<typeof HoldRequestSchema>;
export type CaptureRequest = z.input<typeof CaptureRequestSchema>;
export type CheckoutRequest = z.input<typeof CreateSessionSchema>;
export type JobRequest = z.input<typeof CreateJobSchema>;
export type CapRequest = z.input<typeof CapRequestSchema>;
export type LowBalanceAlertRequest = z.input<typeof LowBalanceAlertSchema>;
export type CapAlertsRequest = z.input<typeof CapAlertsSchema>;
export type AutoRechargeRequest = z.input<typeof AutoRechargeSchema>;
export type CreateOrgRequest = z.input<typeof CreateOrgSchema>;
export type UpdateOrgRequest = z.input<typeof UpdateOrgSchema>;
export type OrgInvoiceRequest = z.input<typeof OrgInvoiceSchema>;
export type InviteRequest = z.input<typeof InviteSchema>;
export type AllowanceRequest = z.input<typeof AllowanceSchema>;
export type MemberCapRequest = z.input<typeof MemberCapSchema>;
export type RedeemCodeRequest = z.input<typeof RedeemCodeSchema>;
export type PromoCodeRequest = z.input<typeof PromoCodeSchema>;
export type SponsorCodeRequest = z.input<typeof SponsorCodeSchema>;

/** What POST /credits/codes/redeem answers (the same again for a repeat of the same code). */
export interface CodeRedemption {
  code_id: string;
  kind: 'promo' | 'gift' | 'sponsor';
  credits: Credits;
  transfer_id: string;
  /** When the granted credits expire (promo codes), else null. */
  expires_at: string | null;
  /** The sponsoring organisation (sponsor codes), else null. */
  org_id: string | null;
  balance: Credits;
  available: Credits;
  redeemed_at: string;
}

/** A promo or sponsor code as its creator sees it; `code` only in the answer that made it. */
export interface Code {
  id: string;
  kind: 'promo' | 'gift' | 'sponsor';
  status: 'pending' | 'active' | 'disabled' | 'redeemed' | 'revoked' | 'void' | 'expired';
  credits: Credits;
  budget: Credits | null;
  max_redemptions: number | null;
  redeemed_count: number;
  redeemed_credits: Credits;
  valid_from: string;
  valid_until: string | null;
  lot_expires_at: string | null;
  lot_expires_after_days: number | null;
  org_id: string | null;
  for_user: string | null;
  for_email: string | null;
  /** The models its credits may pay for; null: any. */
  applies_to: string[] | null;
  note: string | null;
  created_at: string;
  code?: string | null;
  wallet?: { balance: Credits; held: Credits; available: Credits };
}
export type OrgUsageQuery = Omit<z.input<typeof UsageQuerySchema>, 'format'>;
export type UsageSummaryQuery = z.input<typeof UsageSummaryQuerySchema>;

/** Credit amounts are exact decimal strings, never JS numbers. */
export type Credits = string;

export interface Balance {
  balance: Credits;
  held: Credits;
  available: Credits;
  /** The next expiry of any open lot: how much expires, and when; null when nothing does. */
  expiring: { amount: Credits; at: string } | null;
}

/** A balance as it stood at an instant (`?at=`): the instant asked for, as given, in UTC. */
export interface BalanceAsOf extends Balance {
  as_of: string;
}

/**
 * An upcoming expiry of the caller's own credits (GET /credits/expiries), if nothing more is
 * spent before it: plan credits end with their period, and of them `rolls_over` carries into the
 * next period by the plan's rule when the plan renews; `expires` is what ends for good.
 */
export interface Expiry {
  ends_at: string;
  /** `plan`: a plan period's credits (granted, or rolled into it); else the lots' category. */
  source: 'plan' | 'paid' | 'promotional';
  credits: Credits;
  rolls_over: Credits;
  expires: Credits;
  /** The plan whose current period ends then, and whether it renews; null on other rows. */
  plan_id: string | null;
  plan_renews: boolean | null;
}

/** What a ledger entry did to lots: the lot a grant created, or what a debit drew from each. */
export interface LotShare {
  lot_id: string;
  amount: Credits;
}

/** Who paid a charge: the caller's own credits, or an organisation (a wallet or an allowance). */
export type PaidBy = 'self' | { org_id: string };

export interface LedgerEntry {
  id: string;
  created_at: string;
  kind: string;
  amount: Credits;
  /** The caller's balance after the entry; null on a charge an organisation paid (its balance is not shown). */
  balance_after: Credits | null;
  correlation_id: string | null;
  reference: string | null;
  lots: LotShare[];
  paid_by: PaidBy;
  /** The model a charge paid for (usage, an AI gateway call, an AI job), else null. */
  model: string | null;
}

export type LedgerPage = Page<LedgerEntry>;

/** A credit lot: where credits came from, what is left of them, when they expire. */
export interface Lot {
  id: string;
  source: 'purchase' | 'promo_grant' | 'adjustment';
  category: 'paid' | 'promotional';
  priority: number;
  amount: Credits;
  remaining: Credits;
  granted_at: string;
  expires_at: string | null;
  /** Its purchase is disputed: spent last until the dispute ends. */
  frozen: boolean;
  /** The models these credits may pay for (names; `gpt-4o*` is a family); null: any. */
  applies_to: string[] | null;
}

/** A spend cap and its current period. */
export interface SpendCap {
  period: 'day' | 'week' | 'month';
  time_zone: string;
  /** null: all spending. */
  model: string | null;
  /** self: the student's own (they may change it); admin: only an admin changes it. Every cap applies. */
  set_by: 'self' | 'admin';
  cap: Credits;
  spent: Credits;
  remaining: Credits;
  period_started_at: string;
  resets_at: string;
}

/** The low-balance alert and each cap's percent alerts, with what has fired (and not re-armed). */
export interface Alerts {
  low_balance: { threshold: Credits; fired: boolean } | null;
  caps: { period: SpendCap['period']; model: string | null; percents: number[]; fired: number[] }[];
}

/** Auto-recharge: settings, whether a card is saved, why it turned itself off, the last recharges. */
export interface AutoRecharge {
  enabled: boolean;
  package_id: string | null;
  threshold: Credits | null;
  monthly_max_count: number;
  monthly_max_cents: number;
  disabled_reason: string | null;
  card_saved: boolean;
  recent: {
    id: string;
    status: 'queued' | 'processing' | 'submitted' | 'succeeded' | 'failed';
    package_id: string;
    price_cents: number;
    failure_code: string | null;
    created_at: string;
  }[];
}

export type LotPage = Page<Lot>;

export interface UsageCharge {
  transfer_id: string | null;
  charged: Credits;
  balance: Credits;
  available: Credits;
  rate_card_version: number;
  /** The organisation that paid; then `balance`/`available` are an allowance's, or for a pool the caller's own. */
  org_id?: string;
  paid_by: PaidBy;
}

export interface Hold {
  hold_id: string;
  status: string;
  amount: Credits;
  captured: Credits;
  released: Credits;
  transfer_id: string | null;
  expires_at: string;
  balance: Credits;
  available: Credits;
  /** The organisation whose wallet or allowance holds it (see UsageCharge). */
  org_id?: string;
}

export interface CreditPackage {
  id: string;
  name: string;
  price_cents: number;
  currency: string;
  credits: Credits;
  bonus_credits: Credits;
}

export interface CheckoutSession {
  purchase_id: string;
  status: string;
  package_id: string;
  session_id: string | null;
  url: string | null;
  expires_at: string | null;
  client_temp_id: string | null;
  price_cents: number;
  currency: string;
  credits: Credits;
  bonus_credits: Credits;
}

export interface PurchaseStatus {
  purchase_id: string;
  status: 'pending' | 'paid' | 'failed' | 'expired';
  package_id: string;
  price_cents: number;
  currency: string;
  credits: Credits;
  bonus_credits: Credits;
  /** Stripe Tax charged on top of price_cents (0 with tax off or before payment); refunds are of both. */
  tax_cents: number;
  amount_refunded_cents: number;
  paid_at: string | null;
  /** A gift purchase only: its code (once paid) and whether it was redeemed. */
  gift?: GiftStatus;
}

export interface GiftStatus {
  code_id: string;
  /** The code to give (null until the purchase is paid). */
  code: string | null;
  status: 'pending' | 'active' | 'redeemed' | 'void';
  credits: Credits;
}

export type JobStatus = 'queued' | 'processing' | 'completed' | 'failed' | 'cancelled';

export interface JobAccepted {
  job_id: string;
  status: JobStatus;
  poll_url: string;
  client_temp_id: string | null;
}

export interface Job {
  job_id: string;
  type: string;
  status: JobStatus;
  progress: number;
  checkpoints: unknown[];
  result?: unknown;
  error?: unknown;
  client_temp_id: string | null;
  created_at: string;
  started_at: string | null;
  completed_at: string | null;
  expires_at: string;
}

export type JobList = Page<Job>;

// ---------------------------------------------------------------- organisations (school wallets)

/** A wallet or an allowance: what it holds, what is held, what can be spent. */
export interface Wallet {
  balance: Credits;
  held: Credits;
  available: Credits;
}

export type OrgRole = 'owner' | 'admin' | 'member';

/** An organisation in the caller's list (GET /orgs): no balances. */
export interface OrgSummary {
  id: string;
  name: string;
  funding: 'allowance' | 'pool';
  org_pays_first: boolean;
  term_started_at: string;
  term_ends_at: string | null;
  created_at: string;
  /** The school keeps the redacted content of the AI calls it pays for, 30 days (docs/ai-gateway.md). */
  ai_content_consent: boolean;
  role: OrgRole;
}

/** One organisation (GET /orgs/:id, and what creating or changing one answers). */
export interface Org extends OrgSummary {
  /** The organisation's wallet: null unless the caller is an owner or admin. */
  wallet: Wallet | null;
  /** The caller's own allowance in it: null until one is funded. */
  allowance: Wallet | null;
}

/** An invitation as its organisation's admins see it (GET /orgs/:id/invitations): never its token. */
export interface Invitation {
  id: string;
  email: string;
  role: 'admin' | 'member';
  status: 'pending' | 'accepted' | 'declined' | 'expired' | 'revoked';
  invited_by: string;
  created_at: string;
  expires_at: string;
  answered_at: string | null;
}

/** What inviting answers. */
export interface OrgInvitation extends Invitation {
  org_id: string;
  /** The token the emailed link carries (answered once, to the admin who invited). */
  token: string;
}

/** A page of invitations, newest first. */
export type InvitationList = Page<Invitation>;

/** A package on a Stripe invoice (POST and GET /orgs/:id/invoices): its credits come when it is paid. */
export interface OrgInvoice {
  id: string;
  org_id: string;
  package_id: string;
  quantity: number;
  /** What it credits the wallet when paid: the package's credits and bonus × quantity. */
  credits: Credits;
  bonus_credits: Credits;
  /** Before tax; `tax_cents` and `total_cents` once Stripe finalized it (null before). */
  amount_cents: number;
  tax_cents: number | null;
  total_cents: number | null;
  currency: string;
  po_number: string | null;
  days_until_due: number;
  due_at: string | null;
  status: 'draft' | 'open' | 'paid' | 'void' | 'uncollectible';
  /** Stripe's page where the school pays (bank transfer or card), and its PDF. */
  hosted_invoice_url: string | null;
  invoice_pdf: string | null;
  stripe_invoice_id: string | null;
  created_by: string;
  created_at: string;
  paid_at: string | null;
}

/** A page of invoices, newest first. */
export type OrgInvoiceList = Page<OrgInvoice>;

export interface OwnershipTransferred {
  org_id: string;
  owner_id: string;
  previous_owner_id: string;
  /** `admin`; `owner` when the owner named themselves (nothing changed). */
  previous_owner_role: 'admin' | 'owner';
}

export interface InvitationAnswer {
  org_id: string;
  status: 'accepted' | 'declined';
}

/** What an invitation link's holder may see before signing in (POST /orgs/invitations/preview). */
export interface InvitationPreview {
  org_name: string;
  role: 'admin' | 'member';
  status: Invitation['status'];
  expires_at: string;
}

export interface OrgMember {
  user_id: string;
  /** From Supabase Auth: null for a user who signed up without one (by phone, say). */
  email: string | null;
  role: OrgRole;
  active: boolean;
  joined_at: string;
  removed_at: string | null;
  allowance: Wallet | null;
}

export interface MemberRemoved {
  org_id: string;
  user_id: string;
  active: false;
}

export interface MemberCap {
  period: 'day' | 'week' | 'month' | 'term';
  cap: Credits;
  spent: Credits;
  resets_at: string | null;
}

export interface AllowancesFunded {
  org_id: string;
  funded: { user_id: string; transfer_id: string; amount: Credits }[];
  wallet: Wallet;
}

/** Org-funded spending of one member on one model in one period. */
export interface OrgUsageRow {
  member_id: string;
  /** The member's email address (null for a user who signed up without one). */
  member_email: string | null;
  model: string | null;
  period_start: string;
  credits: Credits;
  charges: number;
}

/** Tokens a model reported for the charges the ledger priced (GET /credits/usage/summary). */
/** Usage by kind (docs/pricing.md): tokens, images and audio seconds. */
export interface TokenCounts {
  input: number;
  output: number;
  cached_input: number;
  reasoning: number;
  images: number;
  audio_seconds: number;
}

/** One model's share of a summary or of one of its buckets. */
export interface ModelUsage {
  /** The model charged (`other` for a debit that named none). */
  model: string;
  credits: Credits;
  requests: number;
  /** On the summary's models, not on a bucket's. */
  tokens?: TokenCounts;
}

/** How long the credits available last at the last 7 days' pace: "about `days` days". */
export interface Runway {
  days: number;
  pace_per_day: Credits;
  available: Credits;
  basis_days: number;
}

/** Where credits went over the UTC days [from, to), per model and per day or week (GET /credits/usage/summary). */
export interface UsageSummary {
  /** Dates, YYYY-MM-DD. */
  from: string;
  to: string;
  granularity: 'day' | 'week';
  totals: { credits: Credits; school_funded: Credits; requests: number; tokens: TokenCounts };
  models: ModelUsage[];
  /** Every day or week (from Monday) of the range by its first date, oldest first, empty ones included. */
  buckets: { start: string; credits: Credits; requests: number; models: ModelUsage[] }[];
  /** Null when nothing was charged in the last 7 days (no pace to go by). */
  runway: Runway | null;
}

export interface OrgLedgerEntry {
  id: string;
  kind: string;
  amount: Credits;
  balance_after: Credits;
  /** The member an org-funded movement was for (null: a grant, a purchase, a sweep's wallet side). */
  member_id: string | null;
  created_at: string;
}

/** A rate card's prices (docs/pricing.md): USD decimal strings; null takes the kind's default. */
export interface RateCardPrices {
  model: string;
  usd_per_million_input: string;
  usd_per_million_cached_input: string | null;
  usd_per_million_output: string;
  usd_per_million_reasoning: string | null;
  /** Null: a request that asks to write the provider's cache is refused (a write reported anyway costs the input price). */
  usd_per_million_cache_write: string | null;
  /** Hour-long cache writes; null: a request that asks for one is refused (one reported anyway costs the input price). */
  usd_per_million_cache_write_1h: string | null;
  usd_per_image: string | null;
  usd_per_audio_second: string | null;
  markup: string;
  /** The upstream the gateway sends the model's calls to (docs/ai-gateway.md § Upstreams). */
  upstream: string;
  /** What the model answers: text (chat: chat, responses, messages, jobs) or vectors (embedding: embeddings only). */
  kind: 'chat' | 'embedding';
}

/** A published rate card: a model's version, in effect from `effective_from`. */
export interface RateCard extends RateCardPrices {
  id: string;
  version: number;
  effective_from: string;
}

/** A draft (admin): priced by the dry run only, until published. */
export interface RateCardDraft extends RateCardPrices {
  id: string;
  status: 'draft' | 'published' | 'discarded';
  created_by: string;
  created_at: string;
  rate_card_id: string | null;
}

/** POST /admin/rate-cards/drafts: prices as decimal strings, and why. */
export type RateCardDraftRequest =
  & Pick<RateCardPrices, 'model' | 'usd_per_million_input' | 'usd_per_million_output' | 'markup'>
  & Partial<Omit<RateCardPrices, 'model' | 'usd_per_million_input' | 'usd_per_million_output' | 'markup'>>
  & { reason: string };

/** One audited change of a rate card (who, why, before and after). */
export interface RateCardChange {
  id: string;
  draft_id: string;
  action: 'drafted' | 'published' | 'discarded';
  admin_id: string;
  reason: string;
  before: Record<string, unknown> | null;
  after: Record<string, unknown> | null;
  at: string;
}

/** GET /admin/rate-cards. */
export interface RateCardsOverview {
  current: RateCard[];
  scheduled: RateCard[];
  drafts: RateCardDraft[];
  changes: RateCardChange[];
}

/** Before and after a draft, for a group of re-priced charges. */
export interface RepricedTotals {
  charges: number;
  before: Credits;
  after: Credits;
  change: Credits;
}

/** GET /admin/rate-cards/drafts/:id/simulation: the dry run over past usage (moves no money). */
export interface RateCardSimulation {
  draft: RateCardDraft;
  from: string;
  to: string;
  totals: RepricedTotals & {
    students: number;
    organisations: number;
    change_percent: string | null;
    unpriced_charges: number;
    unpriced_before: Credits;
  };
  by_rate_card: (RepricedTotals & { rate_card_id: string; model: string; version: number })[];
  by_organisation: (RepricedTotals & { org_id: string | null; students: number })[];
  distribution: {
    buckets: { bucket: string; students: number }[];
    change_percentiles: { p10: Credits | null; p50: Credits | null; p90: Credits | null; p99: Credits | null };
  };
  most_affected: (RepricedTotals & { user_id: string; change_percent: string | null })[];
  /**
   * Margins before and after, against what the same counts cost at the provider price of the
   * draft's model at its upstream in effect now; cost and margins null (unknown) without one.
   */
  margins: {
    provider_price: { version: number; upstream: string; effective_from: string } | null;
    cost_usd: string | null;
    before: RepricedMargin;
    after: RepricedMargin;
  };
}

/** Revenue (USD, exact) of re-priced charges and its margin over their provider cost; null: unknown. */
export interface RepricedMargin {
  revenue_usd: string;
  margin_usd: string | null;
  margin_percent: string | null;
}

/** POST /admin/rate-cards/drafts/:id/publish. */
export interface RateCardPublished {
  rate_card: RateCard;
  draft_id: string;
  replayed: boolean;
}
