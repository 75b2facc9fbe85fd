// The one place database failures become HTTP errors: SQL error tokens (P0001 with a JSON
// detail) by the table below, lost connections as 503, anything else as 500. docs/api.md lists
// the same codes (tests/unit/error-codes-documented.test.ts reads this table).
import { AppError, type ErrorType } from '../errors.ts';
import type { ErrorBody } from '../envelope.ts';
import { ConfigError } from '../env.ts';
import { errorSummary, log } from '../log.ts';

/** What a usage report with a revoked or unknown server key is told (401 UNAUTHORIZED). */
export const serverKeyRefused = 'This server key is unknown or was revoked.';

/**
 * SQL error tokens (raised as `message` with errcode P0001 and JSON `detail`) and how each
 * reaches the caller. The one place tokens become HTTP; docs/api.md lists the same table.
 */
const sqlErrors: Record<
  string,
  {
    type: ErrorType;
    message: string;
    /** The message with the refusal's figures, when its details have them. */
    say?: (details: Record<string, unknown>) => string | undefined;
    code?: string;
    status?: number;
    retryable?: boolean;
    field?: string;
  }
> = {
  INSUFFICIENT_CREDITS: {
    type: 'payment_required',
    message: 'Not enough credits for this request.',
    // The figures and the way out in the text: an SDK shows err.message and drops details.
    say: (d) =>
      d.required !== undefined && d.available !== undefined
        ? `Not enough credits for this request: it needs ${d.required} credits and ${d.available} are available. ` +
          (d.debt === true
            ? 'The account is in debt: credits bought pay the debt first. Buy credits.'
            : 'Buy credits, or ask for a shorter answer.')
        : undefined,
  },
  SPEND_CAP_REACHED: {
    type: 'payment_required',
    message: 'This would go over a spending cap: see details (cap, spent, resets_at).',
    say: (d) =>
      d.required !== undefined && d.cap !== undefined && d.spent !== undefined
        ? `This would go over a spending cap: it needs ${d.required} credits and the cap of ${d.cap} has ` +
          `${d.spent} spent (it resets ${
            d.resets_at ?? 'when the school says'
          }). Ask for a shorter answer, or raise the cap.`
        : undefined,
  },
  INVALID_CAP: { type: 'validation', message: 'The cap is not valid: see details.field and details.rule.' },
  INVALID_ALERT: { type: 'validation', message: 'The alert is not valid: see details.field and details.rule.' },
  CAP_NOT_FOUND: { type: 'not_found', message: 'There is no cap for that period and model: set the cap first.' },
  NO_SAVED_CARD: {
    type: 'conflict',
    message: 'Auto-recharge needs a saved card: buy a package with save_card: true first.',
  },
  INVALID_AUTO_RECHARGE: { type: 'validation', message: 'The auto-recharge settings are not valid: see details.rule.' },
  INVALID_AMOUNT: {
    type: 'validation',
    message: 'The amount must be a positive decimal with at most 18 decimal places.',
  },
  INVALID_TOKENS: { type: 'validation', message: 'Token, image and audio counts must be non-negative integers.' },
  INVALID_TTL: { type: 'validation', message: 'ttl_seconds must be between 1 and 86400.' },
  INVALID_KIND: { type: 'validation', message: 'That kind of transfer is not allowed here.' },
  INVALID_LOT: { type: 'validation', message: 'The lot is not valid: see details.field and details.rule.' },
  INVALID_RANGE: { type: 'validation', message: 'The range is not valid: see details.field and details.rule.' },
  UNKNOWN_MODEL: { type: 'validation', message: 'There is no rate card for that model.' },
  INVALID_RATE_CARD: { type: 'validation', message: 'The rate card is not valid: see details.rule.' },
  INVALID_EFFECTIVE_FROM: {
    type: 'validation',
    message: 'A rate card takes effect from now to 366 days ahead, never in the past.',
  },
  RATE_CARD_DRAFT_NOT_FOUND: { type: 'not_found', message: 'No such rate-card draft.' },
  RATE_CARD_DRAFT_CLOSED: {
    type: 'conflict',
    message: 'The draft was published or discarded already: see details.status.',
  },
  UNPRICED_USAGE: {
    type: 'validation',
    message: "The model's rate card has no price for a kind sent: see details.kind.",
  },
  ENDPOINT_NOT_SUPPORTED: {
    type: 'validation',
    message: "The model's upstream does not speak this API: see details.upstream and GET /ai/v1/models (endpoints).",
  },
  MODEL_KIND_NOT_SUPPORTED: {
    type: 'validation',
    message:
      "This API does not serve the model's kind: see details.kind and details.endpoints (GET /ai/v1/models lists each model's).",
  },
  OUTPUT_PRICE_REQUIRED: {
    type: 'validation',
    message: "A chat model's rate card must price output and reasoning above 0: see details.rule.",
  },
  HOLD_NOT_FOUND: { type: 'not_found', message: 'No such hold.' },
  MODEL_NOT_ALLOWED: {
    type: 'forbidden',
    message: 'Your plan does not include that model: GET /ai/v1/models lists the ones you may call.',
  },
  SERVER_KEY_NOT_FOUND: { type: 'not_found', message: 'No such server key.' },
  ORG_NOT_FOUND: { type: 'not_found', message: 'No such organisation (or you are not a member).' },
  ORG_FORBIDDEN: { type: 'forbidden', message: 'Only an owner or admin of the organisation may do this.' },
  ORG_FUNDING_MODE: { type: 'conflict', message: 'The organisation is not funded that way: see details.funding.' },
  INVALID_ORG: {
    type: 'validation',
    message: 'The organisation settings are not valid: see details.field and details.rule.',
  },
  MEMBER_NOT_FOUND: { type: 'not_found', message: 'No such active member of the organisation.' },
  INVITATION_NOT_FOUND: { type: 'not_found', message: 'No such invitation (for your email address, when answering).' },
  INVITATION_CLOSED: {
    type: 'conflict',
    message: 'The invitation was already answered or has expired: see details.status.',
  },
  // Organisation invoices (72-org-invoices.sql): who may be billed, and how often.
  BILLING_EMAIL_NOT_VERIFIED: {
    type: 'validation',
    message: 'Invoices go to your own confirmed email address only: leave billing_email out, or give that address.',
    field: 'billing_email',
  },
  ORG_INVOICING_NOT_ALLOWED: {
    type: 'forbidden',
    message:
      'This organisation cannot ask for invoices yet: buy a package for it by card (Checkout) first, or ask us to approve it.',
  },
  INVOICE_LIMIT: {
    type: 'rate_limit',
    message: 'Too many invoice requests in the last 24 hours: see details (scope, limit, retry_at).',
    retryable: false,
  },
  INVITATION_PENDING: { type: 'conflict', message: 'That address already has a pending invitation.' },
  // A day's limit: not worth an automatic retry (a client's backoff would only meet it again).
  INVITATION_LIMIT: {
    type: 'rate_limit',
    message: 'Too many invitations in the last 24 hours: see details (scope, limit, retry_at).',
    retryable: false,
  },
  HOLD_NOT_USER_MANAGED: {
    type: 'forbidden',
    message: 'This hold belongs to a job or a dispute: it is captured or released by them, not through this route.',
  },
  HOLD_EXPIRED: { type: 'conflict', message: 'The hold has expired; its credits were released.' },
  HOLD_RELEASED: { type: 'conflict', message: 'The hold was released.' },
  // Capturing again with another amount, or releasing a captured hold: details.captured says how much.
  HOLD_ALREADY_CAPTURED: { type: 'conflict', message: 'The hold was already captured (details.captured).' },
  CAPTURE_EXCEEDS_HOLD: { type: 'validation', message: 'The capture amount is larger than the hold.' },
  IDEMPOTENCY_KEY_REUSED: {
    type: 'conflict',
    message: 'This Idempotency-Key was already used for a different request.',
  },
  AI_FILE_NOT_FOUND: { type: 'not_found', message: 'There is no such file of yours.' },
  AI_FILE_USED: { type: 'conflict', message: 'This file already has its batch: upload the lines again for another.' },
  AI_BATCH_NOT_FOUND: { type: 'not_found', message: 'There is no such batch of yours.' },
  AI_BATCH_LIMIT: {
    type: 'rate_limit',
    message: 'Too many of your batches are running: wait for one to end (see details.limit).',
    say: (d) =>
      d.limit !== undefined ? `At most ${d.limit} of your batches run at once: wait for one to end.` : undefined,
  },
  IDEMPOTENCY_KEY_IN_USE: {
    type: 'conflict',
    message: 'A request with this Idempotency-Key is still in progress.',
    retryable: true,
  },
  IDEMPOTENCY_KEY_REQUIRED: { type: 'validation', message: 'An idempotency key is required.' },
  // A hold's and a finish's road never settle: the caller settles first (settle_spender inline)
  // or asks again behind the settle in one statement (settlingFirst, finishing). A user sees it
  // only when a paying account (a school's wallet) joined between the settle and the hold.
  ACCOUNT_FELL_DUE: {
    type: 'unavailable',
    message: 'Credits or holds of the account fell due just now. Please retry.',
  },
  LEDGER_IMMUTABLE: { type: 'server', message: 'Ledger rows cannot be changed.', status: 500 },
  PACKAGE_NOT_FOUND: { type: 'not_found', message: 'No such credit package on sale.' },
  INVALID_CATALOG_ITEM: { type: 'validation', message: 'The package or plan is not valid: see details.rule.' },
  CATALOG_ITEM_EXISTS: {
    type: 'conflict',
    message: 'A package or plan with that id exists already (retired ones too): change it, or pick another id.',
  },
  CATALOG_ITEM_RETIRED: { type: 'conflict', message: 'That package or plan is retired: it cannot change.' },
  CATALOG_VERSION_CONFLICT: {
    type: 'conflict',
    message: 'Someone changed it at the same time: read it again and retry.',
    retryable: true,
  },
  PURCHASE_NOT_FOUND: { type: 'not_found', message: 'No such purchase.' },
  PLAN_NOT_FOUND: { type: 'not_found', message: 'No such plan on sale.' },
  PLAN_ALREADY_ACTIVE: {
    type: 'conflict',
    message: 'You already have a plan: change it instead of subscribing again.',
  },
  CHECKOUT_IN_PROGRESS: {
    type: 'conflict',
    message: 'A checkout for this package is being created; retry in a moment.',
    retryable: true,
  },
  BATCH_TOO_LARGE: { type: 'validation', message: 'A batch holds at most 1,000 events.' },
  JOB_NOT_FOUND: { type: 'not_found', message: 'No such job.' },
  JOB_FINISHED: { type: 'conflict', message: 'The job has already finished.' },
  JOB_CANCELLED: { type: 'conflict', message: 'The job was cancelled.' },
  LEASE_LOST: { type: 'conflict', message: 'Another worker owns this job now.' },
  INVALID_JOB_TRANSITION: { type: 'conflict', message: 'That job status change is not allowed.' },
  PAYMENT_AMOUNT_MISMATCH: { type: 'server', message: 'The amount paid does not match the purchase.', status: 500 },
  // A plan invoice's refund or dispute before its invoice.paid was applied: Stripe retries it.
  PLAN_INVOICE_PENDING: { type: 'server', message: 'The invoice this charge paid is not applied yet.', status: 500 },
  USER_NOT_FOUND: { type: 'not_found', message: 'No such user.' },
  // The token is valid but its user is gone, banned, or no longer an admin: the same codes as
  // a bad token or a non-admin token, so clients handle them one way.
  USER_NOT_ACTIVE: {
    type: 'auth',
    code: 'UNAUTHORIZED',
    message: 'The signed-in user no longer exists or is suspended. Sign in again.',
  },
  ADMIN_REQUIRED: { type: 'forbidden', code: 'FORBIDDEN', message: 'This route is for administrators.' },
  // A buyer whose own payment is disputed (billing.standing_refusal): suspended until it closes.
  ACCOUNT_DISPUTED: {
    type: 'forbidden',
    message: 'A payment of yours is disputed: your account is suspended until the dispute closes.',
  },
  // A usage report's server key, checked by the statement that records the usage (usage-reporter.ts).
  SERVER_KEY_UNKNOWN: { type: 'auth', code: 'UNAUTHORIZED', message: serverKeyRefused },
  PROVIDER_NOT_FOUND: { type: 'not_found', message: 'No such provider.' },
  PROVIDER_NOT_READY: {
    type: 'conflict',
    message: 'The provider cannot take payments until Stripe onboarding is complete.',
  },
  PAYMENT_NOT_FOUND: { type: 'not_found', message: 'No such payment.' },
  // Codes (75-codes.sql): a code the caller may not redeem does not exist for them.
  CODE_NOT_FOUND: { type: 'not_found', message: 'No such code.' },
  CODE_NOT_REDEEMABLE: {
    type: 'conflict',
    message: 'This code cannot be redeemed now: see details.reason (expired, disabled, refunded, …).',
  },
  CODE_EXHAUSTED: { type: 'conflict', message: 'This code has been redeemed as many times as it allows.' },
  CODE_ATTEMPTS_LIMIT: {
    type: 'rate_limit',
    message: 'Too many codes that do not exist were tried: see details (scope, retry_at).',
    retryable: false,
  },
  INVALID_CODE: { type: 'validation', message: 'The code settings are not valid: see details.field and details.rule.' },
  CHARGE_NOT_FOUND: { type: 'not_found', message: 'No such charge (usage or hold capture).' },
  CHARGE_NOT_VOIDABLE: {
    type: 'conflict',
    message: 'This charge cannot be voided: it did not draw its whole amount from credit lots (see details.rule).',
  },
  INVALID_CORRECTION: {
    type: 'validation',
    message: 'The correction is not valid: see details.field and details.rule.',
  },
  CORRECTION_NOT_FOUND: { type: 'not_found', message: 'No such correction run.' },
  MONEY_UNBALANCED: { type: 'server', message: 'A money transfer did not balance.', status: 500 },
  LEDGER_INVARIANT: { type: 'server', message: 'A ledger movement broke an invariant.', status: 500 },
};

/** The fields of an error that a refusal carries beside its token (the rest come from the table above). */
export type RefusalFields = Partial<ErrorBody> & { status?: number };

/**
 * The AppError a refusal stands for: its token's entry in the table above, with `fields` over it
 * (a SQL refusal brings its details, a refusal made in TypeScript every field); undefined when
 * neither says what the error is. Stored answers (billing.idempotency_keys) are read through it.
 * @example refusalOf('INSUFFICIENT_CREDITS', { details: { required: '5' } })?.status // 402
 */
export function refusalOf(token: string, fields: RefusalFields): AppError | undefined {
  const e = { ...sqlErrors[token], ...fields };
  if (!e.type || e.message === undefined) return undefined;
  const message = (fields.message === undefined && e.details && sqlErrors[token]?.say?.(e.details)) || e.message;
  return new AppError(e.type as ErrorType, e.code ?? token, message, {
    details: e.details,
    status: e.status,
    retryable: e.retryable,
    field: e.field,
  });
}

/**
 * The AppError a raised SQL error token stands for, or undefined for a token this table does not know.
 * @example sqlRefusal('INSUFFICIENT_CREDITS', '{"required":"5"}')?.status // 402
 */
export function sqlRefusal(token: string, detail: string | null | undefined): AppError | undefined {
  let details: Record<string, unknown> | undefined;
  try {
    details = detail ? JSON.parse(detail) : undefined;
  } catch { /* a plain-text detail is not shown */ }
  return refusalOf(token, { details });
}

const transientCodes = new Set(['40001', '40P01', '57P01', '57P02', '57P03', '08000', '08003', '08006', '53300']);
// What a pooler reports for itself while Postgres restarts behind it (pgbouncer: "server login
// has been failing", "server conn crashed?"; Supavisor likewise).
transientCodes.add('08P01');
const clientCodes = [
  'ECONNREFUSED',
  'ECONNRESET',
  'CONNECT_TIMEOUT',
  'CONNECTION_CLOSED',
  'CONNECTION_ENDED',
  'CONNECTION_DESTROYED',
];

/**
 * Whether a connection failed (not a deadlock, a serialization failure or a full server): the
 * pool that gave it is retired (db.ts).
 * @example connectionFailed({ code: 'ECONNRESET' }) // true
 */
export function connectionFailed(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (/^(08|57P0)/.test(code) || clientCodes.includes(code));
}

/**
 * Whether Postgres rolled the statement back to break a lock or serialization conflict (a
 * deadlock, a serialization failure): a single statement so refused did nothing, so it may
 * simply be sent again.
 * @example rolledBackConflict({ code: '40P01' }) // true
 */
export function rolledBackConflict(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === '40P01' || code === '40001';
}

/** Turns a database failure into an AppError: known tokens keep their code, the rest are 5xx. */
export function fromDbError(err: unknown): AppError {
  if (err instanceof AppError) return err;
  if (err instanceof ConfigError) return err.appError();
  const e = err as { code?: string; message?: string; detail?: string; errno?: string };
  const refusal = e.code === 'P0001' && e.message ? sqlRefusal(e.message, e.detail) : undefined;
  if (refusal) return refusal;
  // A valid token for a user deleted since it was issued (Supabase tokens live until they expire).
  if (e.code === '23503' && /is not present in table "users"/.test(e.detail ?? '')) {
    return new AppError('auth', 'UNAUTHORIZED', 'The signed-in user no longer exists.');
  }
  const connectionLost = typeof e.code === 'string' && (transientCodes.has(e.code) || clientCodes.includes(e.code));
  log.error('database error', { code: e.code, ...errorSummary(err) });
  if (connectionLost) {
    return new AppError('unavailable', 'DATABASE_UNAVAILABLE', 'The database is briefly unavailable. Please retry.');
  }
  return new AppError('server', 'INTERNAL_ERROR', 'Something went wrong on our side. Please try again.', {
    retryable: true,
  });
}
