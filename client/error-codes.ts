// The codes the service answers with: docs/api.md's error table, one for one
// (tests/unit/client-error-codes.test.ts holds them equal), and what each documents in `details`.
import type { Credits } from './contract.ts';

export const documentedCodes = [
  'ACCOUNT_DISPUTED',
  'ACCOUNT_FELL_DUE',
  'AI_FILE_NOT_FOUND',
  'AI_FILE_USED',
  'AI_BATCH_NOT_FOUND',
  'AI_BATCH_NOT_ENDED',
  'AI_BATCH_LIMIT',
  'AI_CALL_NOT_FOUND',
  'ANSWER_CUT',
  'AUTH_UNAVAILABLE',
  'BAD_REQUEST',
  'BATCH_TOO_LARGE',
  'BILLING_EMAIL_NOT_VERIFIED',
  'CAPTURE_EXCEEDS_HOLD',
  'CAP_NOT_FOUND',
  'CARD_DECLINED',
  'CATALOG_ITEM_EXISTS',
  'CATALOG_ITEM_RETIRED',
  'CATALOG_VERSION_CONFLICT',
  'CHARGE_NOT_FOUND',
  'CHARGE_NOT_VOIDABLE',
  'CHECKOUT_IN_PROGRESS',
  'CODE_ATTEMPTS_LIMIT',
  'CODE_EXHAUSTED',
  'CODE_NOT_FOUND',
  'CODE_NOT_REDEEMABLE',
  'CONFIG_MISSING',
  'CORRECTION_NOT_FOUND',
  'CROSS_ORIGIN_REQUEST',
  'DATABASE_UNAVAILABLE',
  'ENDPOINT_NOT_SUPPORTED',
  'FEATURE_DISABLED',
  'FORBIDDEN',
  'FUNCTION_BOOT_ERROR',
  'FUNCTION_NOT_FOUND',
  'HOLD_ALREADY_CAPTURED',
  'HOLD_EXPIRED',
  'HOLD_NOT_FOUND',
  'HOLD_NOT_USER_MANAGED',
  'HOLD_RELEASED',
  'IDEMPOTENCY_ANSWER_GONE',
  'IDEMPOTENCY_KEY_INVALID',
  'IDEMPOTENCY_KEY_IN_USE',
  'IDEMPOTENCY_KEY_REQUIRED',
  'IDEMPOTENCY_KEY_REUSED',
  'INSUFFICIENT_CREDITS',
  'INTERNAL_ERROR',
  'INVALID_ALERT',
  'INVALID_AMOUNT',
  'INVALID_AUTO_RECHARGE',
  'INVALID_CAP',
  'INVALID_CATALOG_ITEM',
  'INVALID_CODE',
  'INVALID_CORRECTION',
  'INVALID_CREDENTIALS',
  'INVALID_EFFECTIVE_FROM',
  'INVALID_JOB_TRANSITION',
  'INVALID_JSON',
  'INVALID_KIND',
  'INVALID_LOT',
  'INVALID_ORG',
  'INVALID_RANGE',
  'INVALID_RATE_CARD',
  'INVALID_TOKENS',
  'INVALID_TTL',
  'INVITATION_CLOSED',
  'INVITATION_LIMIT',
  'INVITATION_NOT_FOUND',
  'INVITATION_PENDING',
  'INVOICE_LIMIT',
  'ITEM_REFERENCE_UNAVAILABLE',
  'ITEM_REFERENCE_UNRESOLVABLE',
  'JOB_CANCELLED',
  'JOB_FINISHED',
  'JOB_NOT_COMPLETED',
  'JOB_NOT_FOUND',
  'LEASE_LOST',
  'LEDGER_IMMUTABLE',
  'LEDGER_INVARIANT',
  'MEMBER_NOT_FOUND',
  'METHOD_NOT_ALLOWED',
  'METRICS_UNAVAILABLE',
  'MODEL_KIND_NOT_SUPPORTED',
  'MODEL_NOT_ALLOWED',
  'MONEY_UNBALANCED',
  'NOT_FOUND',
  'NOT_READY',
  'NO_PLAN',
  'NO_SAVED_CARD',
  'ORG_FORBIDDEN',
  'ORG_FUNDING_MODE',
  'ORG_INVOICING_NOT_ALLOWED',
  'ORG_NOT_FOUND',
  'OUTPUT_PRICE_REQUIRED',
  'PACKAGE_NOT_FOUND',
  'PASSWORD_SIGN_IN_UNAVAILABLE',
  'PAYLOAD_TOO_LARGE',
  'PAYMENT_AMOUNT_MISMATCH',
  'PAYMENT_NOT_FOUND',
  'PAYMENT_NOT_REFUNDABLE',
  'PLAN_ALREADY_ACTIVE',
  'PLAN_CHANGE_NOT_ALLOWED',
  'PLAN_INVOICE_PENDING',
  'PLAN_NOT_FOUND',
  'PLAN_PAST_DUE',
  'PROMPT_TOO_LONG',
  'PROVIDER_ERROR',
  'PROVIDER_NOT_FOUND',
  'PROVIDER_NOT_READY',
  'PROVIDER_REFUSED',
  'PROVIDER_TIMEOUT',
  'PURCHASE_NOT_FOUND',
  'PURCHASE_NOT_REFUNDABLE',
  'RATE_CARD_DRAFT_CLOSED',
  'RATE_CARD_DRAFT_NOT_FOUND',
  'RATE_LIMITED',
  'RECONCILIATION_NOT_FOUND',
  'REDIRECT_NOT_ALLOWED',
  'SERVER_KEY_NOT_FOUND',
  'SIGNATURE_INVALID',
  'SPEND_CAP_REACHED',
  'STRIPE_ERROR',
  'STRIPE_UNAVAILABLE',
  'UNAUTHORIZED',
  'UNKNOWN_JOB_TYPE',
  'UNKNOWN_MODEL',
  'UNKNOWN_TEMPLATE',
  'UNPRICED_USAGE',
  'USAGE_REPORTED_BY_SERVER',
  'USER_NOT_FOUND',
  'VALIDATION_FAILED',
  'VELOCITY_LIMIT',
  'WEBHOOK_PROCESSING_FAILED',
] as const;

/** A code from docs/api.md's table. */
export type DocumentedCode = typeof documentedCodes[number];

/** The client's own: nothing answered, the caller aborted, or something not the service answered. */
export type ClientCode = 'NETWORK_ERROR' | 'ABORTED' | `HTTP_${number}`;

export type ErrorCode = DocumentedCode | ClientCode;

/** A wallet a 402 names for a member of organisations (docs/api.md, orgs: spending order). */
export interface WalletShortfall {
  wallet: 'organisation' | 'personal';
  org_id?: string;
  reason: 'insufficient' | 'cap';
  available?: Credits;
  short_by?: Credits;
  cap?: Record<string, unknown>;
}

/** `details` as docs/api.md documents them, per code; other codes carry none or free-form ones. */
export interface DetailsByCode {
  INSUFFICIENT_CREDITS: {
    required?: Credits;
    available?: Credits;
    debt?: boolean;
    frozen_by_dispute?: Credits;
    wallets?: WalletShortfall[];
    /** Credits for some models only: the model charged, the credits that may not pay for it, and why. */
    model?: string;
    restricted?: Credits;
    reason?: string;
  };
  SPEND_CAP_REACHED: {
    cap: Credits;
    spent: Credits;
    required: Credits;
    period: string;
    model: string | null;
    resets_at: string;
  };
  CONFIG_MISSING: { variables: string[] };
  NOT_READY: Record<string, unknown>;
  VALIDATION_FAILED: { issues?: { path: string; message: string }[] };
  METHOD_NOT_ALLOWED: { allow: string[] };
  INVALID_CAP: { field: string; rule: string };
  CODE_NOT_REDEEMABLE: { reason: string; valid_from?: string };
  CODE_ATTEMPTS_LIMIT: { scope: 'user' | 'address'; window: string; retry_at: string };
  INVALID_CODE: { field: string; rule: string };
  INVALID_ORG: { field: string; rule: string };
  INVALID_LOT: { field: string };
  UNPRICED_USAGE: { model: string; kind: 'images' | 'audio_seconds' };
  RATE_CARD_DRAFT_CLOSED: { status: 'published' | 'discarded' };
  MODEL_KIND_NOT_SUPPORTED: { model: string; kind: 'chat' | 'embedding'; endpoint: string; endpoints: string[] };
  OUTPUT_PRICE_REQUIRED: { model: string; kind: 'chat'; rule: string };
  INVALID_RANGE: { field: string; rule: string };
  INVITATION_CLOSED: { status: 'accepted' | 'declined' | 'expired' | 'revoked' };
  INVITATION_LIMIT: { scope: 'inviter' | 'organisation'; limit: number; retry_at: string };
  INVOICE_LIMIT: { scope: 'requester' | 'organisation'; limit: number; retry_at: string };
  HOLD_NOT_USER_MANAGED: { purpose: 'job' | 'dispute' };
  HOLD_ALREADY_CAPTURED: { captured: Credits };
  RATE_LIMITED: { layer: string };
  VELOCITY_LIMIT: { rule: string };
  PROVIDER_NOT_READY: { requirements_due: string[] };
}

/** The `details` of an error with code `C`. */
export type DetailsOf<C extends string> = C extends keyof DetailsByCode ? DetailsByCode[C] : Record<string, unknown>;
